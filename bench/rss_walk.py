"""Peak RSS of the server under a walk of many distinct pages of channels whose
names and descriptions are astral-plane text (issue 14 #9).

    python bench/rss_walk.py [--channels 1000] [--pages 48000] [--threads 8]

Every page is requested once, so each one is read, cached and later evicted: the
read cache's byte bound (READ_CACHE_BYTES) is what keeps the server's memory
flat. Astral characters take 4 bytes each in memory (and in UTF-8), so a bound
that counted characters held 4 times what it says. Target: peak RSS < 80 MB.
"""

import argparse
import http.client
import json
import os
import queue
import sys
import tempfile
import threading
import time

from run import ADMIN, TARGET_RSS_MB, basic, expect, request, start_server, verdict

import livestream_api

#: 4 bytes a character in memory and in UTF-8 (U+1D4D0 MATHEMATICAL BOLD SCRIPT A).
ASTRAL = '\U0001d4d0'


def create_channels(port, auth, count, workers=4):
    """`count` channels with astral names (200 characters) and descriptions (500)."""
    numbers = queue.Queue()
    for number in range(count):
        numbers.put(number)

    def work():
        while True:
            try:
                number = numbers.get_nowait()
            except queue.Empty:
                return
            body = {'userId': 'walker', 'name': ASTRAL * 195 + '%05d' % number,
                    'description': ASTRAL * 500}
            expect('create channel', request(port, 'POST', '/v1/channels', json.dumps(body),
                                             'application/json', auth), 201)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def walk(port, auth, paths, workers=4):
    """GET every path once over keep-alive connections; (requests, seconds)."""
    todo = queue.Queue()
    for path in paths:
        todo.put(path)
    failures = []

    def work():
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                break
            conn.request('GET', path, headers={'Authorization': auth})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append((path, answer.status))
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError('%d pages failed, e.g. %r' % (len(failures), failures[:3]))
    return len(paths), time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--channels', type=int, default=1000)
    parser.add_argument('--pages', type=int, default=48000)
    parser.add_argument('--threads', type=int,
                        default=int(livestream_api.CONFIG_KEYS['server']['threads'][1]))
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix='livestream-rss-walk-')
    server = start_server(os.path.join(workdir, 'walk.db'), args.threads, workdir, 'walk')
    try:
        created = expect('create client', request(
            server.port, 'POST', '/v1/clients', json.dumps({'name': 'walker'}),
            'application/json', basic(*ADMIN)), 201)
        auth = basic(created['tokenId'], created['tokenSecret'])
        expect('unlimited user', request(
            server.port, 'PUT', '/v1/users/walker',
            json.dumps({'limits': {'maxChannels': None}}), 'application/json', auth), 201)
        create_channels(server.port, auth, args.channels)
        before = server.peak_rss_mb()
        # Distinct pages: page sizes from 10 up, each at every starting point.
        sizes = range(10, 10 + -(-args.pages // args.channels))
        paths = ['/v1/channels?limit=%d&cursor=%s' % (limit, livestream_api.next_cursor(after))
                 for after in range(args.channels + 1, 1, -1) for limit in sizes]
        count, seconds = walk(server.port, auth, paths[:args.pages])
        server.alive()
        after = server.peak_rss_mb()
    finally:
        server.stop()
    print('%d channels with astral names and descriptions; %d distinct pages of %d-%d '
          'channels walked in %.0f s (%.0f req/s)' % (args.channels, count, sizes[0],
                                                      sizes[-1], seconds, count / seconds))
    print('Peak RSS (VmHWM) of the server: %.1f MB after the creates, %.1f MB after the walk '
          '(target < %d MB): %s' % (before, after, TARGET_RSS_MB,
                                    verdict(after < TARGET_RSS_MB)))
    return 0 if after < TARGET_RSS_MB else 1


if __name__ == '__main__':
    sys.exit(main())
