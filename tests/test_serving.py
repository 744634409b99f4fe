"""Serving: the listeners, their budgets and timeouts, what waitress itself
answers, binding before anything is made, and the address behind a proxy.

The subprocess tests run the real server (tests/test_reliability.py's `spawn`)
and talk to it over raw sockets where a well-behaved client would not do.
"""

import contextlib
import io
import json
import logging
import re
import signal
import socket
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import webtest

import livestream_api
from conftest import ADMIN, basic
from test_config import run_main  # noqa: F401 (a fixture)
from test_reliability import HOOK_SECRET, Api, spawn, sqlite_one  # noqa: F401 (spawn)


def raw_request(port, data, timeout=10):
    """Send `data` as it is; (status, headers, body) of the answer, read until
    the server closes the connection or has sent Content-Length bytes."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):   # the server may answer before reading it all
            sock.sendall(data)
        answer = b''
        while b'\r\n\r\n' not in answer or len(answer.partition(b'\r\n\r\n')[2]) < int(
                dict(_headers(answer)).get('content-length', 1 << 30)):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b'\r\n\r\n')
    return int(head.split()[1]), dict(_headers(answer)), body


def _headers(answer):
    head = answer.partition(b'\r\n\r\n')[0].decode('latin-1')
    return [(name.strip().lower(), value.strip()) for name, _, value in
            (line.partition(':') for line in head.split('\r\n')[1:])]


def timed(function, *args, **kwargs):
    started = time.monotonic()
    result = function(*args, **kwargs)
    return time.monotonic() - started, result


# Idle and trickling connections (issue 14 #1) ##################################

@pytest.mark.slow
def test_idle_sockets_on_the_api_port_starve_neither_the_hooks_nor_the_api(tmp_path, spawn):
    """Twice the connection limit of idle sockets on the API port: a hook on the
    hook listener still answers at once, and so do the API and the hook path on
    the API port (the quietest idle connections make room for new ones)."""
    server = spawn(tmp_path / 'x.db', 'idle', LIVESTREAM_SERVER_CONNECTION_LIMIT='20',
                   LIVESTREAM_SERVER_CHANNEL_TIMEOUT='300')
    api = Api(server.port)
    status, _, body = api.request('POST', '/v1/channels', {'userId': 'u', 'name': 'n'})
    assert status == 201
    channel_id, key = body['data']['id'], body['data']['streamId'].split('key=')[1]
    hooks = Api(server.port + 1, keep_alive=False)
    for _ in range(8):   # each hook thread opens its database connection
        assert hooks.hook('play', channel_id)[0] == 200
        assert hooks.hook('play_done', channel_id)[0] == 200

    idle = []
    try:
        for _ in range(40):
            idle.append(socket.create_connection(('127.0.0.1', server.port), timeout=5))
        time.sleep(0.5)   # the server has taken them on (and closed the quietest)
        hook_times = []
        for call in ('publish', 'update_publish', 'update_publish', 'publish_done', 'publish'):
            seconds, (status, _, _) = timed(hooks.hook, call, channel_id, HOOK_SECRET, key=key)
            assert status == 200, call
            hook_times.append(seconds)
        seconds, (status, _, _) = timed(Api(server.port, keep_alive=False).request,
                                        'GET', '/v1/channels/' + channel_id)
        assert status == 200 and seconds < 1, seconds
        seconds, (status, _, _) = timed(Api(server.port, keep_alive=False).hook,
                                        'update_publish', channel_id, HOOK_SECRET, key=key)
        assert status == 200 and seconds < 1, seconds
    finally:
        for sock in idle:
            sock.close()
    assert statistics.median(hook_times) < 0.1 and max(hook_times) < 0.5, hook_times


@pytest.mark.slow
def test_slow_drip_and_idle_connections_are_closed_after_channel_timeout(tmp_path, spawn):
    """A connection that sends a header byte every 0.2 s never completes a
    request; it is closed channel_timeout after it opened, on both listeners,
    as is one that sends nothing."""
    server = spawn(tmp_path / 'x.db', 'drip', LIVESTREAM_SERVER_CHANNEL_TIMEOUT='1')
    drips = [socket.create_connection(('127.0.0.1', port), timeout=5)
             for port in (server.port, server.port, server.port + 1)]
    silent = socket.create_connection(('127.0.0.1', server.port), timeout=5)
    for sock in drips:
        sock.sendall(b'GET /v1/health HTTP/1.1\r\nX-Drip: ')
    closed_after = {}
    started = time.monotonic()
    while len(closed_after) < len(drips) and time.monotonic() < started + 10:
        for n, sock in enumerate(drips):
            if n in closed_after:
                continue
            try:
                sock.sendall(b'a')
            except OSError:
                closed_after[n] = time.monotonic() - started
        time.sleep(0.2)
    silent.settimeout(1)
    silent_closed = silent.recv(1) == b''
    for sock in drips + [silent]:
        sock.close()
    assert sorted(closed_after) == [0, 1, 2], closed_after
    assert max(closed_after.values()) < 6, closed_after
    assert silent_closed
    assert Api(server.port).request('GET', '/v1/health', auth=None)[0] == 200


# What waitress answers itself (issue 14 #7, #11) ###############################

AUTH = ('Authorization: %s\r\n' % basic(*ADMIN)).encode()


@pytest.mark.slow
def test_what_waitress_refuses_is_answered_with_an_envelope(tmp_path, spawn):
    """Requests refused before the app sees them still get a JSON envelope with
    the documented status and ec, and change nothing; a body over
    max_body_bytes is refused as soon as its headers arrive (before it is read),
    on the hook listener over 8 kB."""
    db = tmp_path / 'x.db'
    server = spawn(db, 'refusals')
    post = b'POST /v1/channels HTTP/1.1\r\n' + AUTH + b'Content-Type: application/json\r\n'
    cases = [
        (b'GET /v1/health HTTP/1.1\r\nX-Big: ' + b'a' * 300_000 + b'\r\n\r\n', 431, 1),
        (post + b'Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n', 400, 1),
        (post + b'Content-Length: abc\r\n\r\n{}', 400, 1),
        (post + b'Transfer-Encoding: gzip\r\n\r\n', 501, 1),
        (b'NOT A REQUEST LINE\r\n\r\n', 400, 1),
        (post + b'Content-Length: %d\r\n\r\n{"name": "' % (10 * 2 ** 20)
         + b'a' * 2 ** 16, 413, 8),
    ]
    # A chunked body is refused once its chunks pass the limit.
    cases.append((post + b'Transfer-Encoding: chunked\r\n\r\n200000\r\n'
                  + b'a' * (2 ** 20 + 2 ** 16), 413, 8))
    # With Expect: 100-continue, the refusal comes instead of the go-ahead, so
    # the client never sends the body.
    cases.append((post + b'Content-Length: %d\r\nExpect: 100-continue\r\n\r\n'
                  % (10 * 2 ** 20), 413, 8))
    before = sqlite_one(db, 'SELECT count(*) FROM channels')
    for request, status, ec in cases:
        seconds, (answered, headers, body) = timed(raw_request, server.port, request)
        assert (answered, headers['content-type']) == (status, 'application/json'), body
        assert json.loads(body)['ec'] == ec
        assert seconds < 5
    ten_mb_hook = (b'POST /v1/hooks/nginx-rtmp?secret=%s HTTP/1.1\r\n'
                   b'Content-Type: application/x-www-form-urlencoded\r\n'
                   b'Content-Length: %d\r\n\r\ncall=publish&pad=' % (HOOK_SECRET.encode(),
                                                                      10 * 2 ** 20))
    status, headers, body = raw_request(server.port, ten_mb_hook + b'a' * 2 ** 16)
    assert (status, json.loads(body)['ec']) == (413, 8)
    status, headers, body = raw_request(
        server.port + 1, b'POST /v1/hooks/nginx-rtmp?secret=%s HTTP/1.1\r\n'
        b'Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9000\r\n\r\n'
        % HOOK_SECRET.encode() + b'call=publish&pad=' + b'a' * 8983)
    assert (status, headers['content-type']) == (413, 'application/json')
    assert sqlite_one(db, 'SELECT count(*) FROM channels') == before
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(post + b'Content-Length: 2\r\nExpect: 100-continue\r\n\r\n')
        assert sock.recv(100).startswith(b'HTTP/1.1 100 Continue')   # a body within the limit
    assert Api(server.port).request('GET', '/v1/health', auth=None)[0] == 200


@pytest.mark.slow
def test_transfer_encoding_and_content_length_together_is_read_as_chunked(tmp_path, spawn):
    """As the README says: with both headers, the body is read as chunked and
    Content-Length is ignored."""
    server = spawn(tmp_path / 'x.db', 'te-cl')
    channel = b'{"userId": "u", "name": "chunked wins"}'
    status, _, body = raw_request(server.port, (
        b'POST /v1/channels HTTP/1.1\r\n' + AUTH + b'Content-Type: application/json\r\n'
        b'Content-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'
        b'%x\r\n%s\r\n0\r\n\r\n' % (len(channel), channel)))
    assert status == 201 and b'chunked wins' in body


def test_the_hook_listener_serves_only_the_hooks_and_health(app):
    hooks = webtest.TestApp(livestream_api.hooks_only(app))
    assert hooks.get('/v1/health').status_int == 200
    refused = hooks.get('/v1/channels', headers={'Authorization': basic(*ADMIN)}, status=404)
    assert refused.json['ec'] == 6 and refused.content_type == 'application/json'
    answer = hooks.post('/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
                        {'call': 'connect'})
    assert answer.json['data'] == {'ignored': 'connect'}


# Start-up (issue 16 #10) ######################################################

@contextlib.contextmanager
def held_port(free_below):
    """A port held by a listening socket; with free_below, one whose port - 1 is free
    as far as can be told (the box's other processes take ports too)."""
    for _ in range(20):
        with socket.socket() as holder:
            holder.bind(('127.0.0.1', 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            with socket.socket() as probe:
                try:
                    probe.bind(('127.0.0.1', port - 1))
                except OSError:
                    if free_below:
                        continue
            yield port
            return
    raise AssertionError('no port with a free one below it in 20 tries')


@pytest.mark.parametrize('taken', ['API', 'hooks'])
def test_a_port_in_use_stops_start_up_before_anything_is_made(tmp_path, run_main, capfd,
                                                              taken):
    """Exit 1 naming the address in use; no database, no admin token."""
    with held_port(free_below=taken == 'hooks') as port:
        api_port = port if taken == 'API' else port - 1
        db = tmp_path / 'new.db'
        status = run_main(['serve', '--port', str(api_port), '--db', str(db)], {})
    err = capfd.readouterr().err
    assert status == 1
    assert '127.0.0.1:%d' % port in err and 'in use' in err, err
    assert ('hook_listen' in err) == (taken == 'hooks')
    assert not db.exists() and 'LIVE_TOKEN_SECRET' not in err and 'database' not in err


def test_nginx_conf_points_the_hooks_at_the_hook_listener():
    config = livestream_api.load_config(environ={}, overrides={'server': {'port': '9000'}})
    assert 'http://127.0.0.1:9001/v1/hooks/nginx-rtmp?secret=s' in livestream_api.NginxRtmp(config).conf(
        's', 1935, 8088, '/tmp/p')
    config['server']['hook_listen'] = None
    assert 'http://127.0.0.1:9000/v1/hooks/nginx-rtmp?secret=s' in livestream_api.NginxRtmp(config).conf(
        's', 1935, 8088, '/tmp/p')
    config['server']['hook_listen'] = ('::1', 9100)
    assert 'http://[::1]:9100/v1/hooks/' in livestream_api.NginxRtmp(config).conf(
        's', 1935, 8088, '/tmp/p')


@pytest.mark.parametrize('value', ['8081', 'host:', ':80', 'h:99999'])
def test_a_bad_hook_listen_is_a_config_error(value):
    with pytest.raises(livestream_api.ConfigError, match='hook_listen'):
        livestream_api.load_config(environ={}, overrides={'server': {'hook_listen': value}})


# Logs (issue 14 #10, issue 16 #12) #############################################

def logged(app, requests, log_format='text', trusted_proxies=()):
    """The log lines written while `requests(test_app)` runs against `app`
    behind the access log."""
    stream = io.StringIO()
    writer = livestream_api.LogWriter(stream, livestream_api.LogFormat(log_format == 'json'))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(writer)
    root.setLevel(logging.INFO)   # as serve sets it
    try:
        requests(webtest.TestApp(livestream_api.AccessLog(app, writer, trusted_proxies)))
    finally:
        root.removeHandler(writer)
        root.setLevel(level)
        writer.close()
    return stream.getvalue().splitlines()


LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) \S+: ')


def test_a_forged_line_in_a_path_stays_one_escaped_line(app):
    forged = '/v1/x\n2026-11-30T00:00:00.000Z INFO access: DELETE /v1/clients/admin 204\x1b[2J'
    lines = logged(app, lambda test_app: test_app.get(urllib.parse.quote(forged), status=401))
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    assert '\\n2026-11-30T00:00:00.000Z%20INFO%20access:%20DELETE' in lines[0]
    assert '\\x1b[2J' in lines[0]
    assert not any(char in lines[0] for char in '\x1b\r')


def test_every_line_has_one_format_utc_and_a_level_and_json_is_one_object(app):
    def requests(test_app):
        test_app.get('/v1/health')
        test_app.get('/v1/stats', headers={'Authorization': basic(*ADMIN)})
        test_app.post('/v1/hooks/nginx-rtmp?secret=wrong\n', {'call': 'publish'}, status=403,
                      extra_environ={'REMOTE_ADDR': '192.0.2.1'})
        livestream_api.log.error('a traceback\nspans lines')
    lines = logged(app, requests)
    assert len(lines) == 5 and all(LINE.match(line) for line in lines), lines
    assert 'client=-' in lines[0] and 'client=%s' % ADMIN[0] in lines[1]
    assert 'hook refused' in lines[2] and 'addr=192.0.2.1' in lines[2]
    assert lines[4].endswith('a traceback\\nspans lines')
    records = [json.loads(line) for line in logged(app, requests, 'json')]
    assert [record['level'] for record in records] == [
        'INFO', 'INFO', 'WARNING', 'INFO', 'ERROR']
    assert records[0]['time'].endswith('Z') and records[0]['logger'] == 'access'
    assert records[0]['msg'].startswith('GET /v1/health 200 ')
    assert records[1]['client'] == ADMIN[0] and records[4]['msg'].endswith('\nspans lines')


def test_routine_hook_calls_log_at_debug_and_a_hold_is_logged_once(app, admin):
    channel = admin.post_json('/v1/channels', {'userId': 'u', 'name': 'n'}).json['data']
    secret = app.livestream.hook_secret
    key = channel['streamId'].split('key=')[1]

    def requests(test_app):
        for call in ('publish', 'update_publish', 'update_publish', 'publish_done'):
            test_app.post('/v1/hooks/nginx-rtmp?secret=' + secret,
                          {'call': call, 'name': channel['id'], 'key': key, 'clientid': '1'})
        for _ in range(12):
            test_app.get('/v1/stats', headers={'Authorization': basic(ADMIN[0], 'wrong')},
                         status='*')
    lines = logged(app, requests)
    assert not any('nginx-rtmp 200' in line for line in lines), lines
    assert sum(' is live ' in line for line in lines) == 1
    assert sum('put on hold' in line for line in lines) == 1


@pytest.mark.slow
def test_with_log_format_json_every_line_the_server_writes_is_one_object(tmp_path, spawn):
    server = spawn(tmp_path / 'x.db', 'json-logs', LIVESTREAM_SERVER_LOG_FORMAT='json')
    assert Api(server.port).request('GET', '/v1/channels/nosuchchannel')[0] == 404
    assert raw_request(server.port, b'NOT A REQUEST LINE\r\n\r\n')[0] == 400
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    records = [json.loads(line) for line in server.stderr().splitlines()]
    messages = [record['msg'] for record in records]
    assert any(message.startswith('GET /v1/channels/nosuchchannel 404 ') for message in messages)
    assert any(message.startswith('- - 400 ') for message in messages)
    assert messages[-1] == 'stopped' and all(record['time'].endswith('Z') for record in records)


# Behind a proxy (issue 16 #13) #################################################

@pytest.mark.parametrize('trusted', [False, True])
def test_x_forwarded_for_counts_only_from_trusted_proxies(make_app, trusted):
    """Behind a trusted proxy the throttle and the log use the client's address
    (the rightmost one the proxy did not add itself); without trusted_proxies
    they use the peer's, and a client's own X-Forwarded-For changes nothing."""
    proxies = {'trusted_proxies': '10.0.0.0/8, 192.0.2.7'} if trusted else {}
    _, app = make_app(server=proxies)
    wrong = {'Authorization': basic(ADMIN[0], 'wrong')}
    admin = {'Authorization': basic(*ADMIN)}

    def via_proxy(client):   # nginx's $proxy_add_x_forwarded_for, through two proxies
        return {'REMOTE_ADDR': '10.1.1.1',
                'HTTP_X_FORWARDED_FOR': '6.6.6.6, %s, 192.0.2.7' % client}

    def requests(test_app):
        for _ in range(10):
            test_app.get('/v1/stats', headers=wrong, extra_environ=via_proxy('203.0.113.5'),
                         status=401)
        answers.append(test_app.get('/v1/stats', headers=admin,
                                    extra_environ=via_proxy('203.0.113.5'), status='*'))
        answers.append(test_app.get('/v1/stats', headers=admin,
                                    extra_environ=via_proxy('203.0.113.6'), status='*'))
    answers = []
    lines = logged(app, requests, trusted_proxies=app.livestream.config['server'][
        'trusted_proxies'])
    held, other = answers
    assert held.status_int == 429
    assert other.status_int == (200 if trusted else 429)
    assert ('addr=203.0.113.5' in lines[0]) == trusted
    assert ('addr=10.1.1.1' in lines[0]) != trusted


@pytest.mark.parametrize('forwarded, expected', [
    ('', '10.0.0.1'),                         # no header: the proxy itself
    ('1.2.3.4', '1.2.3.4'),
    ('1.2.3.4, 10.0.0.2', '1.2.3.4'),         # through two trusted proxies
    ('junk, 5.6.7.8', '5.6.7.8'),             # what the client claims left of it: ignored
    ('5.6.7.8, junk', '10.0.0.1'),            # a malformed hop: its proxy's address
    ('2001:db8::1', '2001:db8::1'),
])
def test_client_addr_takes_the_rightmost_untrusted_address(forwarded, expected):
    trusted = livestream_api._networks('10.0.0.0/8')
    environ = {'REMOTE_ADDR': '10.0.0.1'}
    if forwarded:
        environ['HTTP_X_FORWARDED_FOR'] = forwarded
    assert livestream_api.client_addr(environ, trusted) == expected
    assert livestream_api.client_addr({'REMOTE_ADDR': '8.8.8.8', 'HTTP_X_FORWARDED_FOR':
                                       '1.2.3.4'}, trusted) == '8.8.8.8'


@pytest.mark.parametrize('soft, hard, raised_to, limit', [
    (1024, 1 << 20, 2000 + 356, 2000),   # raised as far as needed (356: hooks, files)
    (1024, 1500, 1500, 1500 - 356),      # only to the hard limit: fewer connections
    (1 << 20, 1 << 20, None, 2000),      # already enough: left alone
])
def test_the_open_files_limit_is_raised_to_fit_the_connections(monkeypatch, caplog, soft, hard,
                                                               raised_to, limit):
    raised = []
    monkeypatch.setattr(livestream_api.resource, 'getrlimit', lambda _: (soft, hard))
    monkeypatch.setattr(livestream_api.resource, 'setrlimit',
                        lambda _, limits: raised.append(limits))
    server = livestream_api.load_config(environ={})['server']
    assert livestream_api._fit_open_files(server, 2000) == limit
    assert raised == ([(raised_to, hard)] if raised_to else [])
    assert ('connection_limit lowered to %d' % limit in caplog.text) == (limit < 2000)


def test_the_hook_listener_answers_in_its_own_thread_and_outlives_a_failing_request():
    """_InLoop: each hook is answered by the listener's loop thread, not handed to
    worker threads; a request that fails is a 500 and the next one is answered."""
    answered_by = []

    def app(environ, start_response):
        answered_by.append(threading.current_thread().name)
        if environ['PATH_INFO'] == '/fail':
            raise RuntimeError('this request fails')
        start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '2')])
        return [b'ok']

    sock = livestream_api.bind('127.0.0.1', 0, 'ingest hooks')
    server = livestream_api.load_config(environ={})['server']
    listener = livestream_api._listener(app, sock, server, **livestream_api.HOOK_LISTENER)
    assert isinstance(listener.task_dispatcher, livestream_api._InLoop)
    stopping = threading.Event()
    loop = threading.Thread(target=livestream_api._run, args=(listener, stopping, 1),
                            name='hook-listener-under-test', daemon=True)
    loop.start()
    base = 'http://127.0.0.1:%d' % sock.getsockname()[1]
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(base + '/fail', timeout=5)
        assert failed.value.code == 500
        for _ in range(3):
            with urllib.request.urlopen(base + '/ok', timeout=5) as answer:
                assert answer.read() == b'ok'
    finally:
        stopping.set()
        loop.join(5)
    assert answered_by == ['hook-listener-under-test'] * 4
    assert not loop.is_alive()
