"""GET /v1/channels/{id} under wrk, alone and during a flood of 20,000 HLS access-log
datagrams a second for 5 s on [ingest] viewer_log_port: the ratio shows whether
the viewer-log thread can starve the HTTP threads.

    python bench/viewer_flood.py [--rate 20000] [--seconds 5] [--connections 16]
"""

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKEN_ID, SECRET = 'bench-admin', 'bench-secret-0123456789abcdef'


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def flood(port, channel_id, rate, seconds):
    """Send `rate` datagrams a second for `seconds`, from 20,000 distinct viewers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            line = ('<190>Nov 30 18:02:56 livestream: 1796061776.552|10.%d.%d.%d|Player/2|'
                    '/hls/%s-%d.ts|200' % (sent % 20000 // 65536, sent % 20000 // 256 % 256,
                                           sent % 256, channel_id, sent))
            sock.sendto(line.encode(), ('127.0.0.1', port))
            sent += 1
        time.sleep(0.001)
    return sent


def wrk(port, path, auth, seconds, connections):
    done = subprocess.run(['wrk', '-t2', '-c%d' % connections, '-d%ds' % seconds,
                           '-H', 'Authorization: ' + auth, 'http://127.0.0.1:%d%s' % (port, path)],
                          capture_output=True, text=True, check=True)
    return float(re.search(r'Requests/sec:\s+([0-9.]+)', done.stdout).group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--rate', type=int, default=20000)
    parser.add_argument('--seconds', type=int, default=5)
    parser.add_argument('--connections', type=int, default=16)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix='viewer-flood-')
    port, log_port = free_port(), free_port(socket.SOCK_DGRAM)
    env = dict(os.environ, PYTHONPATH=ROOT, LIVE_TOKEN_ID=TOKEN_ID, LIVE_TOKEN_SECRET=SECRET,
               LIVESTREAM_INGEST_VIEWER_LOG_PORT=str(log_port),
               LIVESTREAM_SERVER_HOOK_LISTEN='127.0.0.1:%d' % free_port())
    server = subprocess.Popen([sys.executable, '-m', 'livestream_api', 'serve', '--port',
                               str(port), '--db', os.path.join(workdir, 'flood.db')],
                              env=env, stderr=subprocess.DEVNULL)
    auth = 'Basic ' + base64.b64encode(('%s:%s' % (TOKEN_ID, SECRET)).encode()).decode()
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen('http://127.0.0.1:%d/v1/health' % port, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(
            'http://127.0.0.1:%d/v1/channels' % port, method='POST',
            data=json.dumps({'userId': 'bench', 'name': 'flood'}).encode(),
            headers={'Authorization': auth, 'Content-Type': 'application/json'})
        urllib.request.urlopen(urllib.request.Request(
            'http://127.0.0.1:%d/v1/users/bench' % port, method='PUT', data=b'{}',
            headers={'Authorization': auth, 'Content-Type': 'application/json'}))
        channel = json.load(urllib.request.urlopen(request))['data']
        path = '/v1/channels/' + channel['id']
        wrk(port, path, auth, 1, args.connections)  # warm up
        plain = wrk(port, path, auth, args.seconds, args.connections)
        sender = subprocess.Popen([sys.executable, '-c', 'import sys; sys.path.insert(0, %r); '
                                   'import viewer_flood; print(viewer_flood.flood(%d, %r, %d, %d))'
                                   % (HERE, log_port, channel['id'], args.rate, args.seconds)],
                                  stdout=subprocess.PIPE, text=True)
        flooded = wrk(port, path, auth, args.seconds, args.connections)
        sent = int(sender.communicate()[0])
        print('GET channel: %.0f req/s plain, %.0f req/s during %d datagrams in %d s '
              '(%.0f/s): ratio %.2f' % (plain, flooded, sent, args.seconds,
                                        sent / args.seconds, flooded / plain))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == '__main__':
    main()
