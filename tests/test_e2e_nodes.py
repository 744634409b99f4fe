"""End to end with two ingest nodes: one API under waitress and two nginx-rtmp
servers on their own loopback ports and prefixes, each on the config
`livestream-api nginx-conf --node a` / `--node b` writes, ffmpeg publishing to each.
Skipped where nginx, its RTMP module or ffmpeg is missing; failed instead when
LIVESTREAM_E2E=1."""

import secrets
import signal
import time

import pytest

from e2e_support import UPDATE_INTERVAL, Stack, skip_or_fail_if_missing, wait_exit, wait_for
from test_e2e_nginx import REFUSED_SECONDS, channel_of, sessions_of, wait_live

pytestmark = pytest.mark.e2e

#: The nodes beside `default` (whose nginx is never started: it is drained).
NODES = ('a', 'b')


def node_section(name, node):
    """The [ingest.NAME] section for the nginx of `node` (a Stack of its own)."""
    base = 'http://127.0.0.1:%d' % node.http_port
    return ('[ingest.%s]\nrtmp_url = rtmp://127.0.0.1:%d/%s\nhls_url = %s/hls\n'
            'stat_url = %s/stat\ncontrol_url = %s/control\n'
            % (name, node.rtmp_port, 'live' if name == 'a' else 'show', base, base, base))


@pytest.fixture(scope='module')
def nodes():
    """{'api': the Stack running the API, 'a': ..., 'b': Stacks running only nginx},
    every Stack on its own ports, prefix and logs; the nodes' nginx.conf is written
    by the API's nginx-conf --node, so their hooks name their node."""
    skip_or_fail_if_missing()
    api = Stack(UPDATE_INTERVAL)
    stacks = {'api': api}
    try:
        for name in NODES:
            node = stacks[name] = Stack(UPDATE_INTERVAL)
            node.env, node.db = api.env, api.db
        # Node b's app differs from a's ('show', not 'live'): the conf follows rtmp_url.
        api.config_file = api.workdir / 'nodes.ini'
        api.config_file.write_text(''.join(node_section(name, stacks[name]) for name in NODES))
        api.start_api()
        for name in NODES:
            stacks[name].config_file = api.config_file
            stacks[name].write_nginx_conf(node=name)
            stacks[name].start_nginx()
        api.api.ok('PATCH', '/v1/ingest/default', {'accepting': False})
        yield stacks
    finally:
        for name in NODES + ('api',):
            if name in stacks:
                stacks[name].stop()


@pytest.fixture
def e2e(nodes):
    """The nodes with both nginx running; the test's encoders are killed after it."""
    for name in NODES:
        if not nodes[name].nginx_running():
            nodes[name].start_nginx()
    yield nodes
    for name in NODES:
        nodes[name].stop_encoders()


def new_user(nodes, max_live_channels=1):
    user_id = 'e2e-%s' % secrets.token_hex(6)
    nodes['api'].api.ok('PUT', '/v1/users/' + user_id,
                        {'limits': {'maxLiveChannels': max_live_channels}}, status=201)
    return user_id


def new_channel(nodes, user_id, ingest=None):
    body = {'userId': user_id, 'name': 'e2e on %s' % ingest}
    if ingest:
        body['ingest'] = ingest
    return nodes['api'].api.ok('POST', '/v1/channels', body, status=201)


def publish(nodes, channel, node=None):
    """ffmpeg publishing to the channel's streamUrl (its node's), from `node`'s
    Stack (for its logs); `node` defaults to the channel's."""
    return nodes[node or channel['ingest']].publish(channel['streamUrl'], channel['streamId'])


def ingest_nodes(nodes):
    return {node['name']: node for node in nodes['api'].api.ok('GET', '/v1/ingest')}


def test_channels_placed_on_both_nodes_go_live_each_on_its_own(e2e):
    user_id = new_user(e2e, max_live_channels=2)
    # default is drained: a and b have no channel of this module yet or as many.
    before = {name: node['liveStreams'] for name, node in ingest_nodes(e2e).items()}
    assert before == {'default': 0, 'a': 0, 'b': 0}
    first = new_channel(e2e, user_id)
    second = new_channel(e2e, user_id)
    assert {first['ingest'], second['ingest']} == {'a', 'b'}
    channels = {channel['ingest']: channel for channel in (first, second)}
    assert channels['b']['streamUrl'] == 'rtmp://127.0.0.1:%d/show' % e2e['b'].rtmp_port
    assert channels['a']['streamUrl'] == 'rtmp://127.0.0.1:%d/live' % e2e['a'].rtmp_port
    encoders = {name: publish(e2e, channel) for name, channel in channels.items()}
    for name, channel in channels.items():
        wait_live(e2e['api'], channel, encoders[name])

    def measured():
        listed = ingest_nodes(e2e)
        return all(listed[name]['liveStreams'] == 1 and listed[name]['bitrateKbpsIn'] > 0
                   and listed[name]['reachable'] for name in NODES) and listed
    listed = wait_for(measured, 30, 'one live stream with a bitrate on each node')
    assert listed['default']['liveStreams'] == 0 and listed['default']['accepting'] is False
    system = {node['name']: node for node in
              e2e['api'].api.ok('GET', '/v1/stats')['system']['ingest']}
    assert system['a']['reachable'] and system['a']['streams'] == 1
    assert system['b']['reachable'] and system['b']['streams'] == 1
    for name, channel in channels.items():
        session = sessions_of(e2e['api'], channel)['items'][0]
        assert session['ingest'] == name
        assert channel_of(e2e['api'], channel)['playback']['hls'] == \
            'http://127.0.0.1:%d/hls/%s.m3u8' % (e2e[name].http_port, channel['id'])


def test_one_user_cannot_be_live_on_both_nodes_past_max_live_channels(e2e):
    user_id = new_user(e2e, max_live_channels=1)
    on_a, on_b = new_channel(e2e, user_id, 'a'), new_channel(e2e, user_id, 'b')
    encoder = publish(e2e, on_a)
    wait_live(e2e['api'], on_a, encoder)
    refused = publish(e2e, on_b)
    assert wait_exit(refused, REFUSED_SECONDS) != 0
    assert channel_of(e2e['api'], on_b)['status'] == 'idle'
    assert sessions_of(e2e['api'], on_b)['total'] == 0
    assert 'nginx-rtmp publish on channel %s refused: user is at maxLiveChannels (1)' \
        % on_b['id'] in e2e['api'].api_log.read_text()
    assert channel_of(e2e['api'], on_a)['status'] == 'live'


def test_a_channel_disabled_while_live_on_node_b_is_cut_on_node_b(e2e):
    channel = new_channel(e2e, new_user(e2e), 'b')
    encoder = publish(e2e, channel)
    wait_live(e2e['api'], channel, encoder)
    e2e['api'].api.ok('PATCH', '/v1/channels/' + channel['id'], {'enabled': False})
    cut = time.monotonic()
    assert wait_exit(encoder, 10) != 0
    print('cut on node b %.2f s after the answer' % (time.monotonic() - cut))
    assert sessions_of(e2e['api'], channel)['items'][0]['endReason'] == 'channel_disabled'
    session_id = sessions_of(e2e['api'], channel)['items'][0]['id']
    assert 'kicked the publisher of channel %s (session %s) at http://127.0.0.1:%d/control' \
        % (channel['id'], session_id, e2e['b'].http_port) in e2e['api'].api_log.read_text()


def test_killing_node_a_ends_only_its_streams_as_stale(e2e):
    user_id = new_user(e2e, max_live_channels=2)
    on_a, on_b = new_channel(e2e, user_id, 'a'), new_channel(e2e, user_id, 'b')
    encoders = {'a': publish(e2e, on_a), 'b': publish(e2e, on_b)}
    wait_live(e2e['api'], on_a, encoders['a'])
    wait_live(e2e['api'], on_b, encoders['b'])
    e2e['a'].kill_nginx(signal.SIGKILL)  # no publish_done: only staleness ends it
    killed = time.monotonic()
    wait_for(lambda: channel_of(e2e['api'], on_a)['status'] == 'idle',
             3 * UPDATE_INTERVAL + 6, "node a's channel to go idle after its nginx was killed")
    print('idle %.1f s after the kill' % (time.monotonic() - killed))
    assert time.monotonic() - killed < 3 * UPDATE_INTERVAL + 6
    assert [session['endReason'] for session in sessions_of(e2e['api'], on_a)['items']] == \
        ['stale']
    assert channel_of(e2e['api'], on_b)['status'] == 'live'
    assert encoders['b'].poll() is None
    listed = ingest_nodes(e2e)
    assert (listed['a']['liveStreams'], listed['b']['liveStreams']) == (0, 1)
    assert listed['a']['reachable'] is False and listed['b']['reachable'] is True
