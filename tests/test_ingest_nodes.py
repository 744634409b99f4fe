"""Several ingest nodes behind one API: [ingest.NAME] sections, placement of new
channels, draining, hooks naming their node, limits and staleness across nodes,
GET/PATCH /v1/ingest, and the per-node stats poller (driven by poll_once(), against
real local HTTP servers that are slow, down, or serve 2,000 streams)."""

import http.server
import logging
import threading
import time
import urllib.parse

import pytest
import webtest

import livestream_api
from conftest import ADMIN
from ingest_support import (ControlServer, get, make_channel, sessions,
                            stat_xml, stream_args)

#: Two nodes beside `default`, as an [ingest.NAME] section each.
NODES = {
    'ingest.a': {'rtmp_url': 'rtmp://a.example.com/live', 'hls_url': 'https://a.example.com/hls'},
    'ingest.b': {'rtmp_url': 'rtmp://b.example.com:1936/show',
                 'hls_url': 'https://b.example.com/hls'},
}


@pytest.fixture
def app(make_app):
    """The app with nodes default, a and b."""
    return make_app(**NODES)[1]


def node_hook(app, node=None, addr='127.0.0.1'):
    """post(call, channel, clientid='1', key=None): an nginx-rtmp notify call from
    `node` (None: the default node, whose URLs name none)."""
    test_app = webtest.TestApp(app, extra_environ={'REMOTE_ADDR': addr})
    url = '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret
    if node:
        url += '&node=' + node

    def post(call, channel, clientid='1', key=None):
        name, right_key = stream_args(channel)
        return test_app.post(url, {'call': call, 'name': name, 'clientid': clientid,
                                   'app': 'live', 'addr': '10.0.0.9',
                                   'key': right_key if key is None else key},
                             expect_errors=True)
    return post


def create(client, ingest=None, user='streamer', status=201):
    body = {'userId': user, 'name': 'show'}
    if ingest is not None:
        body['ingest'] = ingest
    return client.post_json('/v1/channels', body, status=status).json


# Configuration ################################################################

def test_ingest_is_the_default_node_and_sections_add_nodes(tmp_path):
    path = tmp_path / 'c.ini'
    path.write_text('[ingest]\nrtmp_url = rtmp://main/live\n'
                    '[ingest.b]\nrtmp_url = rtmp://b/live\nhls_url = http://b/hls\n'
                    'stat_url = http://b:8088/stat\naccepting = false\n'
                    '[ingest.edge-2]\nkind = nginx-rtmp\nrtmp_url = rtmp://e/live\n'
                    'hls_url = http://e/hls\n')
    nodes = livestream_api.load_config(str(path), environ={})['ingest_nodes']
    assert list(nodes) == ['default', 'b', 'edge-2']
    assert nodes['default']['rtmp_url'] == 'rtmp://main/live'
    assert nodes['default']['accepting'] is True
    assert nodes['b'] == {'name': 'b', 'kind': 'nginx-rtmp', 'rtmp_url': 'rtmp://b/live',
                          'hls_url': 'http://b/hls', 'stat_url': 'http://b:8088/stat',
                          'control_url': '', 'api_url': '', 'accepting': False}


def test_a_config_without_node_sections_has_the_default_node_only():
    nodes = livestream_api.load_config(environ={})['ingest_nodes']
    assert list(nodes) == ['default']
    assert nodes['default']['stat_url'] == 'http://127.0.0.1:8088/stat'


@pytest.mark.parametrize('section, body, named', [
    ('ingest.B', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\n', '[ingest.B]'),
    ('ingest.default', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\n', '[ingest.default]'),
    ('ingest.' + 'x' * 33, 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\n', 'x' * 33),
    ('ingest.b_2', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\n', '[ingest.b_2]'),
    ('ingest.b', 'hls_url = http://b/hls\n', '[ingest.b] rtmp_url'),
    ('ingest.b', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\nport = 1\n', "'port'"),
    ('ingest.b', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\nkind = wowza\n',
     "[ingest.b] kind = 'wowza'"),
    ('ingest.b', 'rtmp_url = rtmp://b/live\nhls_url = http://b/hls\naccepting = 2\n',
     '[ingest.b] accepting'),
    ('ingest.b', 'rtmp_url = b/live\nhls_url = http://b/hls\n', '[ingest.b] rtmp_url'),
])
def test_a_bad_node_section_stops_start_up_with_exit_2_naming_it(
        tmp_path, capsys, section, body, named):
    path = tmp_path / 'c.ini'
    path.write_text('[%s]\n%s' % (section, body))
    with pytest.raises(livestream_api.ConfigError, match=__import__('re').escape(named)):
        livestream_api.load_config(str(path), environ={})
    status = livestream_api.main(['init-db', '--config', str(path), '--db',
                                  str(tmp_path / 'x.db')], environ={})
    assert status == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / 'x.db').exists()


def test_migrations_apply_by_number_whatever_their_order_in_the_file(tmp_path, monkeypatch):
    schema = tmp_path / 'schema.sql'
    schema.write_text('-- migration: 1\nCREATE TABLE settings (name TEXT PRIMARY KEY, '
                      'value TEXT);\nCREATE TABLE log (step INTEGER);\n'
                      '-- migration: 3\nINSERT INTO log VALUES (3);\n'
                      '-- migration: 2\nINSERT INTO log VALUES (2);\n')
    monkeypatch.setattr(livestream_api, '_schema_path', lambda: schema)
    store = livestream_api.Store(tmp_path / 'm.db', {})
    store.migrate()
    assert [row[0] for row in store.db.execute('SELECT step FROM log')] == [2, 3]
    assert store.db.execute('PRAGMA user_version').fetchone()[0] == 3
    store.close()


# Placement ####################################################################

def test_channels_are_spread_over_the_nodes_by_their_channel_counts(admin):
    placed = [create(admin)['data']['ingest'] for _ in range(6)]
    assert placed == ['default', 'a', 'b', 'default', 'a', 'b']


def test_a_channel_follows_its_node_in_stream_url_and_playback(admin):
    channel = create(admin, 'b')['data']
    assert channel['ingest'] == 'b'
    assert channel['streamUrl'] == 'rtmp://b.example.com:1936/show'
    assert channel['playback'] == {
        'hls': 'https://b.example.com/hls/%s.m3u8' % channel['id'],
        'rtmp': 'rtmp://b.example.com:1936/show/%s' % channel['id']}
    assert get(admin, channel) == channel
    listed = admin.get('/v1/channels').json['data']['items']
    assert listed == [channel]


def test_the_node_with_fewest_live_streams_wins_then_fewest_channels(app, admin):
    on_default = create(admin, 'default')['data']
    on_a = create(admin, 'a', user='other')['data']
    assert node_hook(app)('publish', on_default).status_int == 200
    assert node_hook(app, 'a')('publish', on_a).status_int == 200
    create(admin, 'b', user='third')
    create(admin, 'b', user='third')
    # default and a: 1 live stream and 1 channel each; b: none live, but 2 channels.
    assert create(admin, user='fourth')['data']['ingest'] == 'b'
    assert node_hook(app, 'a')('publish_done', on_a).status_int == 200
    assert create(admin, user='fifth')['data']['ingest'] == 'a'  # 0 live, fewer channels


@pytest.mark.parametrize('ingest, why', [
    ('nowhere', 'no such ingest node'), ('B', 'must be the name'), (7, 'must be the name'),
    ('', 'must be the name')])
def test_an_unknown_node_is_a_422(admin, ingest, why):
    answer = create(admin, ingest, status=422)
    assert answer['ec'] == 2
    assert why in answer['data']['fields']['ingest']


def test_a_drained_node_gets_no_new_channels_and_keeps_its_live_ones(app, admin):
    channel = create(admin, 'a')['data']
    assert node_hook(app, 'a')('publish', channel).status_int == 200
    drained = admin.patch_json('/v1/ingest/a', {'accepting': False}).json['data']
    assert drained['accepting'] is False and drained['liveStreams'] == 1
    placed = {create(admin, user='u%d' % n)['data']['ingest'] for n in range(6)}
    assert placed == {'default', 'b'}
    refused = create(admin, 'a', status=409)
    assert refused['ec'] == 10 and 'a is not accepting' in refused['msg']
    assert node_hook(app, 'a')('update_publish', channel).status_int == 200
    assert get(admin, channel)['status'] == 'live'
    assert admin.patch_json('/v1/ingest/a', {'accepting': True}).json['data']['accepting']
    assert create(admin, 'a')['data']['ingest'] == 'a'


def test_with_every_node_drained_a_create_is_a_409(admin):
    for name in ('default', 'a', 'b'):
        admin.patch_json('/v1/ingest/' + name, {'accepting': False})
    answer = create(admin, status=409)
    assert answer['ec'] == 10 and answer['msg'] == 'no ingest node is accepting new channels'


def test_a_drain_is_kept_across_restarts_and_seen_by_every_process(app, admin, make_app):
    admin.patch_json('/v1/ingest/b', {'accepting': False})
    other = webtest.TestApp(make_app(**NODES)[1])  # another process, or the next start
    other.authorization = ('Basic', ADMIN)
    nodes = {node['name']: node['accepting'] for node in other.get('/v1/ingest').json['data']}
    assert nodes == {'default': True, 'a': True, 'b': False}
    assert {create(other, user='u%d' % n)['data']['ingest'] for n in range(4)} == \
        {'default', 'a'}


def test_a_node_configured_not_accepting_is_drained_until_patched(make_app):
    app = make_app(**{'ingest.a': dict(NODES['ingest.a'], accepting='false')})[1]
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    assert {create(admin, user='u%d' % n)['data']['ingest'] for n in range(3)} == {'default'}
    admin.patch_json('/v1/ingest/a', {'accepting': True})
    assert create(admin, user='x')['data']['ingest'] == 'a'


# /v1/ingest ###################################################################

def test_ingest_lists_every_node_with_its_live_streams(app, admin):
    channels = [create(admin, node, user='u%d' % number)['data']
                for number, node in enumerate(('a', 'b', 'b'))]
    for channel in channels:
        assert node_hook(app, channel['ingest'])('publish', channel).status_int == 200
    nodes = admin.get('/v1/ingest').json['data']
    assert [node['name'] for node in nodes] == ['default', 'a', 'b']
    assert nodes[2] == {'name': 'b', 'kind': 'nginx-rtmp',
                        'rtmpUrl': 'rtmp://b.example.com:1936/show',
                        'hlsUrl': 'https://b.example.com/hls', 'accepting': True,
                        'reachable': False, 'liveStreams': 2, 'bitrateKbpsIn': 0,
                        'viewers': 0}
    assert [node['liveStreams'] for node in nodes] == [0, 1, 2]


def test_ingest_routes_are_admin_only(new_client):
    client = new_client()
    for answer in (client.get('/v1/ingest', expect_errors=True),
                   client.patch_json('/v1/ingest/a', {'accepting': False},
                                     expect_errors=True),
                   client.patch_json('/v1/ingest/nowhere', {}, expect_errors=True)):
        assert (answer.status_int, answer.json['ec']) == (403, 4)


@pytest.mark.parametrize('body, field', [
    ({}, 'accepting'), ({'accepting': 'no'}, 'accepting'), ({'accepting': None}, 'accepting'),
    ({'accepting': False, 'name': 'x'}, 'name')])
def test_patch_ingest_takes_accepting_only(admin, body, field):
    answer = admin.patch_json('/v1/ingest/a', body, status=422).json
    assert answer['ec'] == 2 and field in answer['data']['fields']


def test_patch_of_an_unknown_node_is_a_404(admin):
    answer = admin.patch_json('/v1/ingest/nowhere', {'accepting': False}, status=404).json
    assert answer['ec'] == 6


def test_stats_system_lists_every_node(admin):
    ingest = admin.get('/v1/stats').json['data']['system']['ingest']
    assert [(node['name'], node['kind'], node['url']) for node in ingest] == [
        ('default', 'nginx-rtmp', None), ('a', 'nginx-rtmp', None), ('b', 'nginx-rtmp', None)]


# Hooks naming their node ######################################################

def test_a_session_names_the_node_it_is_live_on(app, admin):
    channel = create(admin, 'a')['data']
    assert node_hook(app, 'b')('publish', channel).status_int == 200  # failover to b
    live = get(admin, channel)
    assert live['ingest'] == 'a'
    assert live['streamUrl'] == 'rtmp://a.example.com/live'
    assert live['playback'] == {'hls': 'https://b.example.com/hls/%s.m3u8' % channel['id'],
                                'rtmp': 'rtmp://b.example.com:1936/show/%s' % channel['id']}
    assert sessions(admin, channel)['items'][0]['ingest'] == 'b'
    assert node_hook(app, 'b')('publish_done', channel).json['data'] == {'ended': True}
    assert get(admin, channel)['playback']['hls'].startswith('https://a.example.com/')


def test_a_hook_naming_an_unknown_node_is_refused_logged_and_holds_no_address(
        app, admin, caplog):
    channel = create(admin)['data']
    for _ in range(app.livestream.config['auth']['throttle_failures'] + 2):
        answer = node_hook(app, 'c')('publish', channel)
        assert (answer.status_int, answer.json['ec']) == (403, 4)
        assert answer.json['msg'] == 'unknown ingest node'
    assert "unknown ingest node 'c'" in caplog.text
    assert get(admin, channel)['status'] == 'idle'
    assert len(app.livestream.throttle) == 0
    assert node_hook(app)('publish', channel).status_int == 200  # same address, still heard


def test_a_channel_live_on_one_node_is_refused_on_another_until_stale(app, admin, clock):
    channel = create(admin, 'a')['data']
    # The same client id and address on both nodes: nginx numbers connections per node.
    assert node_hook(app, 'a')('publish', channel).status_int == 200
    elsewhere = node_hook(app, 'b')('publish', channel)
    assert elsewhere.status_int == 403 and 'another connection' in elsewhere.json['msg']
    assert node_hook(app, 'b')('update_publish', channel).status_int == 403
    assert sessions(admin, channel)['items'][0]['ingest'] == 'a'
    clock.advance(app.livestream.stale_after + 1)
    assert node_hook(app, 'b')('publish', channel).status_int == 200
    ended, live = sessions(admin, channel)['items'][1], sessions(admin, channel)['items'][0]
    assert (ended['ingest'], ended['endReason']) == ('a', 'stale')
    assert (live['ingest'], live['endReason']) == ('b', None)


def test_max_live_channels_holds_across_nodes(app, admin):
    on_a, on_b = (make_channel(admin, 'solo', maxLiveChannels=1) for _ in range(2))
    assert node_hook(app, 'a')('publish', on_a).status_int == 200
    refused = node_hook(app, 'b')('publish', on_b)
    assert refused.status_int == 403 and 'maxLiveChannels' in refused.json['msg']
    assert node_hook(app, 'a')('publish_done', on_a).status_int == 200
    assert node_hook(app, 'b')('publish', on_b).status_int == 200


def test_two_publishes_at_once_on_two_nodes_in_two_processes_one_wins(make_app, admin):
    """Each node's hooks reach another API process (its own app, connections and
    caches) on the one database: the limit check and the insert are one transaction."""
    first = make_app(**NODES)[1]
    second = make_app(**NODES)[1]
    for attempt in range(5):
        on_a, on_b = (make_channel(admin, 'race%d' % attempt, maxLiveChannels=1)
                      for _ in range(2))
        start = threading.Barrier(2)
        answers = {}

        def publish(app, node, channel):
            post = node_hook(app, node)
            start.wait(5)
            answers[node] = post('publish', channel).status_int
        threads = [threading.Thread(target=publish, args=(first, 'a', on_a)),
                   threading.Thread(target=publish, args=(second, 'b', on_b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(answers.values()) == [200, 403], answers
        live = [get(admin, channel)['status'] for channel in (on_a, on_b)]
        assert sorted(live) == ['idle', 'live']


def test_one_node_going_quiet_ends_only_its_sessions_as_stale(app, admin, clock):
    on_a, on_b = create(admin, 'a', user='x')['data'], create(admin, 'b', user='y')['data']
    assert node_hook(app, 'a')('publish', on_a).status_int == 200
    assert node_hook(app, 'b')('publish', on_b).status_int == 200
    interval = app.livestream.config['ingest']['update_interval']
    for _ in range(4):  # node a's nginx is dead: only b still calls
        clock.advance(interval)
        assert node_hook(app, 'b')('update_publish', on_b).status_int == 200
    assert get(admin, on_a)['status'] == 'idle'
    assert sessions(admin, on_a)['items'][0]['endReason'] == 'stale'
    assert get(admin, on_b)['status'] == 'live'
    nodes = {node['name']: node['liveStreams'] for node in admin.get('/v1/ingest').json['data']}
    assert nodes == {'default': 0, 'a': 0, 'b': 1}


def test_a_cut_is_kicked_at_the_node_the_stream_is_on(make_app):
    controls = {name: ControlServer() for name in ('default', 'b')}
    try:
        app = make_app(ingest={'control_url': controls['default'].url},
                       **{'ingest.b': dict(NODES['ingest.b'], control_url=controls['b'].url)})[1]
        admin = webtest.TestApp(app)
        admin.authorization = ('Basic', ADMIN)
        channel = create(admin, 'default')['data']
        assert node_hook(app, 'b')('publish', channel, clientid='9').status_int == 200
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
        for kicker in app.livestream.kickers.values():
            kicker.run_once()
        assert controls['default'].calls == []
        assert controls['b'].calls == ['/control/drop/publisher?' + urllib.parse.urlencode(
            {'app': 'show', 'name': channel['id'], 'clientid': '9'})]
    finally:
        for control in controls.values():
            control.close()


# nginx-conf --node ############################################################

def test_nginx_conf_for_a_node_names_it_in_every_hook(tmp_path, capsys):
    config = tmp_path / 'c.ini'
    config.write_text('[ingest.b]\nrtmp_url = rtmp://127.0.0.1:1936/show\n'
                      'hls_url = http://127.0.0.1:8089/hls\n')
    db = str(tmp_path / 'x.db')
    assert livestream_api.main(['init-db', '--config', str(config), '--db', db], {}) == 0
    capsys.readouterr()
    assert livestream_api.main(['nginx-conf', '--node', 'b', '--rtmp-port', '1936',
                                '--http-port', '8089', '--config', str(config), '--db', db],
                               {}) == 0
    conf = capsys.readouterr().out
    hooks = [line.split()[1].rstrip(';') for line in conf.splitlines()
             if line.strip().startswith('on_')]
    assert len(hooks) == 5 and all(hook.endswith('&node=b') for hook in hooks)
    assert 'application show {' in conf
    assert livestream_api.main(['nginx-conf', '--config', str(config), '--db', db], {}) == 0
    assert '&node=' not in capsys.readouterr().out  # the default node's, as before


def test_nginx_conf_for_an_unknown_node_exits_2_naming_it(tmp_path, capsys):
    db = str(tmp_path / 'x.db')
    assert livestream_api.main(['nginx-conf', '--node', 'c', '--db', db], {}) == 2
    assert '--node c' in capsys.readouterr().err


# The stats poller #############################################################

class SlowStatServer:
    """A real HTTP server whose /stat answer trickles out a byte every `pause` seconds."""

    def __init__(self, pause=0.05):
        self.closing = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = stat_xml({'name': 'abcdefghijklmnop'})
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                for byte in body:
                    if server.closing.wait(pause):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d/stat' % self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def poller_for(make_app, url, **ingest):
    app = make_app(ingest=dict(stat_url=url, **ingest))[1]
    return app, app.livestream.pollers['default']


def test_the_poller_keeps_the_latest_reading_with_its_time(make_app, clock, stat_server):
    app, poller = poller_for(make_app, stat_server.url)
    assert poller.snapshot['at'] is None and not poller.snapshot['reachable']
    stat_server.serve({'name': 'abcdefghijklmnop', 'bw_in': 2000000, 'bytes_in': 5})
    snapshot = poller.poll_once()
    assert snapshot is poller.snapshot
    assert snapshot['reachable'] and snapshot['at'] == clock.now
    assert 0 <= snapshot['took'] < 5
    assert snapshot['streams']['abcdefghijklmnop']['bitrateKbps'] == 2000


def test_a_node_whose_stats_are_down_is_unreachable_and_its_sessions_keep_their_figures(
        make_app, clock, stat_server):
    app, poller = poller_for(make_app, stat_server.url)
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    channel = create(admin)['data']
    hook = node_hook(app)
    assert hook('publish', channel).status_int == 200
    stat_server.serve({'name': channel['id'], 'bw_in': 3000000, 'bytes_in': 10 ** 6})
    poller.poll_once()
    clock.advance(10)
    assert hook('update_publish', channel).status_int == 200
    stat_server.close()
    assert poller.poll_once()['reachable'] is False
    clock.advance(10)
    assert hook('update_publish', channel).status_int == 200
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert (current['bitrateKbps'], current['bytesIn']) == (3000, 10 ** 6)
    node = admin.get('/v1/ingest').json['data'][0]
    assert (node['reachable'], node['liveStreams'], node['bitrateKbpsIn']) == (False, 1, 3000)


def test_a_slow_stats_answer_is_abandoned_within_its_deadline(make_app):
    slow = SlowStatServer()
    try:
        app, poller = poller_for(make_app, slow.url, update_interval='1')
        began = time.monotonic()
        assert poller.poll_once()['reachable'] is False
        assert time.monotonic() - began < 3  # the interval (1 s), with a loaded box's margin
    finally:
        slow.close()


def test_a_poller_stuck_on_a_slow_node_holds_no_hook(make_app):
    slow = SlowStatServer(pause=0.5)
    try:
        app, poller = poller_for(make_app, slow.url, update_interval='5')
        admin = webtest.TestApp(app)
        admin.authorization = ('Basic', ADMIN)
        channel = create(admin)['data']
        poller.start()  # its thread is now reading, a byte every 0.5 s
        try:
            began = time.monotonic()
            assert node_hook(app)('publish', channel).status_int == 200
            assert node_hook(app)('update_publish', channel).status_int == 200
            assert admin.get('/v1/stats').json['data']['system']['ingest'][0]['reachable'] \
                is False
            assert time.monotonic() - began < 1.0
        finally:
            slow.close()  # the reading fails at once, and the thread sees it must stop
            began = time.monotonic()
            poller.stop()
            assert time.monotonic() - began < 5
    finally:
        slow.close()


def test_the_poller_reads_2000_streams_in_bounded_time(make_app, stat_server):
    names = ['%016d' % number for number in range(2000)]
    stat_server.xml = stat_xml(*({'name': name, 'bw_in': 1000 * number, 'bytes_in': number,
                                  'viewers': number % 3}
                                 for number, name in enumerate(names)))
    assert len(stat_server.xml) > 1.5 * 1024 * 1024
    app, poller = poller_for(make_app, stat_server.url)
    snapshot = poller.poll_once()
    assert snapshot['reachable'] and len(snapshot['streams']) == 2000
    assert snapshot['streams'][names[1999]] == dict(
        snapshot['streams'][names[1999]], bitrateKbps=1999.0, bytesIn=1999, viewers=1999 % 3)
    logging.getLogger('livestream').info('2,000 streams read in %.3f s', snapshot['took'])
    assert snapshot['took'] < 5  # ~0.1 s here; the margin is for a loaded machine


def test_pollers_start_and_stop_with_the_service(make_app, stat_server):
    app = make_app(ingest={'stat_url': stat_server.url, 'viewer_log_port': ''},
                   **{'ingest.b': dict(NODES['ingest.b'], stat_url=stat_server.url)})[1]
    svc = app.livestream
    svc.start()
    try:
        threads = {thread.name for thread in threading.enumerate()}
        assert {'default-poller', 'b-poller'} <= threads
    finally:
        svc.stop()
    assert all(poller._thread is None for poller in svc.pollers.values())
    assert not {'default-poller', 'b-poller'} & {t.name for t in threading.enumerate()}



def test_the_nodes_readings_are_spread_over_the_interval(make_app):
    """All nodes parsing their /stat at one instant stalled hooks (bench/capacity.py:
    p99 294 ms at 5 nodes); each poller starts at its own phase of the interval."""
    app = make_app(ingest={'update_interval': '9'}, **dict(NODES, **{
        'ingest.c': {'rtmp_url': 'rtmp://c/live', 'hls_url': 'https://c/hls'}}))[1]
    phases = {name: poller.phase for name, poller in app.livestream.pollers.items()}
    assert phases == {'default': 0.0, 'a': 2.25, 'b': 4.5, 'c': 6.75}
