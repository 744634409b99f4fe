"""Webhooks: PUT /v1/webhook, the events each change makes (written in its own
transaction), their signed delivery to a real receiver, retries, isolation, and
GET /v1/events. Delivery is driven by calling the Deliverer, on the test clock."""

import base64
import json
import pathlib
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest
import webtest

import livestream_api
from ingest_support import make_channel, publish, publish_done, stream_args, update
from test_reliability import Api, spawn  # noqa: F401 (spawn: a fixture)
from webhook_support import Receiver, deliver, signatures, verifies


@pytest.fixture
def app(make_app, stat_server):
    app = make_app(ingest={'stat_url': stat_server.url})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    yield app
    app.livestream.deliverer.stop()


def register(client, receiver, **body):
    return client.put_json('/v1/webhook', dict(url=receiver.url, **body), status=201).json['data']


# The endpoint #################################################################

def test_put_shows_the_secret_once_and_get_hides_it(new_client, receiver):
    client = new_client()
    created = register(client, receiver)
    assert created['url'] == receiver.url
    assert created['events'] == list(livestream_api.EVENT_TYPES)
    assert created['secret'].startswith('whsec_')
    assert len(base64.b64decode(created['secret'][len('whsec_'):])) == 32
    shown = client.get('/v1/webhook').json['data']
    assert 'secret' not in shown and shown['url'] == receiver.url
    replaced = client.put_json('/v1/webhook', {'url': receiver.url + '/2',
                                               'events': ['channel.live']}, status=200)
    assert 'secret' not in replaced.json['data']
    assert replaced.json['data']['events'] == ['channel.live']


@pytest.mark.parametrize('url', [
    'http://127.0.0.1:9000/hook', 'https://app.example.com', 'https://[::1]:65535/events?x=1#y',
    'http://host-1.internal:8080/a%20b'])
def test_good_urls_are_taken(new_client, url):
    assert new_client().put_json('/v1/webhook', {'url': url}, status=201).json['data']['url'] == url


def test_no_webhook_is_404(new_client):
    client = new_client()
    for method, path in (('get', '/v1/webhook'), ('delete', '/v1/webhook'),
                         ('post', '/v1/webhook/rotate-secret'), ('post', '/v1/webhook/test')):
        answer = getattr(client, method)(path, status=404)
        assert answer.json['ec'] == 6


@pytest.mark.parametrize('body, field', [
    ({'url': 'ftp://example.com/hook'}, 'url'),
    ({'url': 'https://user:pass@example.com/hook'}, 'url'),
    ({'url': 'https://user@example.com/hook'}, 'url'),
    ({'url': 'example.com/hook'}, 'url'),
    ({'url': 'https://example.com/' + 'a' * 2048}, 'url'),
    ({'url': 'https://example.com/\nx'}, 'url'),
    ({'url': 'https://example.com:65536/hook'}, 'url'),
    ({'url': 'https://exämple.com/hook'}, 'url'),
    ({'url': 'HTTPS://example.com/hook'}, 'url'),
    ({'url': 42}, 'url'),
    ({}, 'url'),
    ({'url': 'https://example.com/hook', 'events': ['channel.exploded']}, 'events'),
    ({'url': 'https://example.com/hook', 'events': []}, 'events'),
    ({'url': 'https://example.com/hook', 'events': 'channel.live'}, 'events'),
    ({'url': 'https://example.com/hook', 'events': None}, 'events'),
    ({'url': 'https://example.com/hook', 'secret': 'mine'}, 'secret'),
])
def test_bad_webhooks_are_422(new_client, body, field):
    answer = new_client().put_json('/v1/webhook', body, status=422)
    assert answer.json['ec'] == 2
    assert field in answer.json['data']['fields']


# Channel events, signed #######################################################

def test_channel_changes_arrive_once_in_order_and_signed(app, new_client, receiver, clock):
    client = new_client()
    secret = register(client, receiver)['secret']
    channel = make_channel(client)
    path = '/v1/channels/' + channel['id']
    client.patch_json(path, {'name': 'renamed'})
    client.patch_json(path, {'enabled': False})
    client.patch_json(path, {'enabled': True})
    rotated = client.post(path + '/rotate-key').json['data']
    client.delete(path)
    deliver(app)
    assert receiver.types == ['channel.created', 'channel.updated', 'channel.disabled',
                              'channel.enabled', 'channel.key_rotated', 'channel.deleted']
    for headers, body in receiver.requests:
        event = json.loads(body)
        assert headers['X-Livestream-Event-Id'] == event['id']
        assert headers['Content-Type'] == 'application/json'
        assert verifies(secret, headers, body)
        assert signatures(headers['X-Livestream-Signature'])[0] == int(clock.now)
        assert event['data']['channel']['id'] == channel['id']
        assert 'clientId' not in event['data']['channel']  # as the app client sees it
    events = receiver.events
    assert events[1]['data']['channel']['name'] == 'renamed'
    assert events[2]['data']['channel']['status'] == 'disabled'
    assert events[4]['data']['channel']['streamId'] == rotated['streamId']
    assert set(events[0]) == {'id', 'type', 'createdAt', 'data'}
    deliver(app)  # nothing twice
    assert len(receiver.requests) == 6
    listed = client.get('/v1/events').json['data']
    assert [event['type'] for event in listed['items']] == receiver.types[::-1]
    assert all(event['delivery']['status'] == 'delivered' and event['delivery']['attempts'] == 1
               and event['delivery']['lastStatus'] == 200 for event in listed['items'])


def test_events_are_logged_without_a_webhook(app, new_client, receiver):
    client = new_client()
    make_channel(client)
    [event] = client.get('/v1/events').json['data']['items']
    assert event['type'] == 'channel.created'
    assert event['delivery'] == {'status': 'none', 'attempts': 0, 'lastStatus': None,
                                 'lastError': None, 'nextAttemptAt': None, 'deliveredAt': None}
    register(client, receiver)
    deliver(app)
    assert receiver.requests == []  # it happened before there was an endpoint


def test_a_create_refused_for_max_channels_is_an_event(app, new_client, receiver):
    client = new_client()
    register(client, receiver, events=['limit.exceeded'])
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 0}})
    client.post_json('/v1/channels', {'userId': 'alice', 'name': 'x'}, status=403)
    deliver(app)
    [event] = receiver.events
    assert event['type'] == 'limit.exceeded'
    assert event['data'] == {'channelId': None, 'userId': 'alice', 'limit': 'maxChannels',
                             'value': 0}


def test_the_filter_sends_only_the_types_named(app, new_client, receiver):
    client = new_client()
    register(client, receiver, events=['channel.deleted'])
    channel = make_channel(client)
    client.delete('/v1/channels/' + channel['id'])
    deliver(app)
    assert receiver.types == ['channel.deleted']
    statuses = {event['type']: event['delivery']['status']
                for event in client.get('/v1/events').json['data']['items']}
    assert statuses == {'channel.created': 'none', 'channel.deleted': 'delivered'}


def test_a_change_that_fails_leaves_no_event(app, new_client, monkeypatch):
    """The event is in the change's transaction: a change rolled back takes it along."""
    client = new_client()
    channel = make_channel(client)
    store = app.livestream.store
    real = store._event

    def record_then_fail(db, kind, *args, **kwargs):
        real(db, kind, *args, **kwargs)
        raise RuntimeError('crash after the event was written')
    monkeypatch.setattr(store, '_event', record_then_fail)
    with pytest.raises(RuntimeError):
        client.patch_json('/v1/channels/' + channel['id'], {'name': 'never'})
    monkeypatch.undo()
    assert [event['type'] for event in client.get('/v1/events').json['data']['items']] == [
        'channel.created']
    assert client.get('/v1/channels/' + channel['id']).json['data']['name'] == 'my channel'


# Hook-driven events ###########################################################

def test_publish_and_publish_done(app, new_client, receiver, hook, clock, stat_server):
    client = new_client()
    register(client, receiver)
    channel = make_channel(client)
    assert publish(hook, channel).status_int == 200
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 2000 * 1000, 'bytes_in': 10 ** 6})
    assert update(hook, channel).status_int == 200
    clock.advance(5)
    assert publish_done(hook, channel).status_int == 200
    deliver(app)
    assert receiver.types == ['channel.created', 'channel.live', 'channel.idle']
    live, idle = receiver.events[1:]
    assert live['data']['channel']['status'] == 'live'
    assert live['data']['session']['endedAt'] is None
    assert idle['data']['session']['id'] == live['data']['session']['id']
    assert idle['data']['session']['endReason'] == 'publisher_left'
    assert idle['data']['session']['bytesIn'] >= 10 ** 6
    assert idle['data']['session']['durationSeconds'] == 15
    assert idle['data']['channel']['status'] == 'idle'


@pytest.mark.parametrize('case', ['wrong key', 'max live channels', 'disabled', 'already live'])
def test_a_refused_publish_is_an_event_without_the_key(app, new_client, receiver, hook, case):
    client = new_client()
    register(client, receiver, events=['publish.refused'])
    channel = make_channel(client, maxLiveChannels=0 if case == 'max live channels' else 1)
    name, key = stream_args(channel)
    tried = 'not-the-key-' + 'x' * 28 if case == 'wrong key' else key
    if case == 'disabled':
        client.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    if case == 'already live':
        assert publish(hook, channel, clientid='1').status_int == 200
    assert publish(hook, channel, clientid='2', key=tried).status_int == 403
    deliver(app)
    [(_, body)] = receiver.requests
    event = json.loads(body)
    assert event['data'] == {'channelId': channel['id'], 'userId': 'streamer', 'reason': {
        'wrong key': 'wrong_key', 'max live channels': 'max_live_channels',
        'disabled': 'channel_disabled', 'already live': 'already_live'}[case]}
    assert key.encode() not in body and tried.encode() not in body


def test_an_unknown_channel_makes_no_event(app, new_client, receiver, hook, admin):
    register(admin, receiver)
    assert hook('publish', 'a' * 16, key='x').status_int == 403
    deliver(app)
    assert receiver.requests == []


def test_a_stale_session_reaped_by_the_worker_is_idle(app, new_client, receiver, hook, clock,
                                                      interval):
    client = new_client()
    register(client, receiver, events=['channel.idle'])
    channel = make_channel(client)
    publish(hook, channel)
    clock.advance(3 * interval + 1)
    app.livestream.deliverer.run_once()  # the worker's pass ends it, with no request
    app.livestream.deliverer.settle()
    [idle] = receiver.wait_for(1)
    assert idle['data']['session']['endReason'] == 'stale'


def test_a_bitrate_cut_is_limit_exceeded_then_idle(app, new_client, receiver, hook, clock,
                                                   interval, stat_server):
    client = new_client()
    register(client, receiver, events=['limit.exceeded', 'channel.idle'])
    channel = make_channel(client, maxBitrateKbps=2500)
    publish(hook, channel)
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bw_in': 3000 * 1000, 'bytes_in': 10 ** 6})
    assert update(hook, channel).status_int == 403
    deliver(app)
    assert receiver.types == ['limit.exceeded', 'channel.idle']
    assert receiver.events[0]['data'] == {'channelId': channel['id'], 'userId': 'streamer',
                                          'limit': 'maxBitrateKbps', 'value': 2500}
    assert receiver.events[1]['data']['session']['endReason'] == 'max_bitrate'


def test_a_session_length_cut_is_limit_exceeded_then_idle(app, new_client, receiver, hook,
                                                          clock, interval):
    client = new_client()
    register(client, receiver, events=['limit.exceeded', 'channel.idle'])
    channel = make_channel(client, maxSessionSeconds=60)
    publish(hook, channel)
    clock.advance(61)
    assert update(hook, channel).status_int == 403
    deliver(app)
    assert receiver.types == ['limit.exceeded', 'channel.idle']
    assert receiver.events[0]['data']['limit'] == 'maxSessionSeconds'
    assert receiver.events[0]['data']['value'] == 60
    assert receiver.events[1]['data']['session']['endReason'] == 'max_session_seconds'


# Delivery: retries, hanging endpoints, redirects ##############################

def test_two_failures_then_success_is_delivered_on_the_third_attempt(app, new_client,
                                                                     receiver, clock):
    client = new_client()
    register(client, receiver)
    receiver.answers = [500, 503]
    make_channel(client)
    deliver(app)
    [event] = client.get('/v1/events').json['data']['items']
    assert event['delivery']['status'] == 'pending'
    assert event['delivery']['lastStatus'] == 500 and event['delivery']['attempts'] == 1
    clock.advance(5)
    deliver(app)  # not due yet: the first retry waits about 10 s
    assert len(receiver.requests) == 1
    clock.advance(8)
    deliver(app)
    clock.advance(40)
    deliver(app)
    assert len(receiver.requests) == 3
    assert len({body for _, body in receiver.requests}) == 1  # the same event each time
    event = client.get('/v1/events/' + event['id']).json['data']
    assert event['delivery']['status'] == 'delivered'
    assert event['delivery']['attempts'] == 3 and event['delivery']['lastStatus'] == 200
    assert event['delivery']['nextAttemptAt'] is None


def test_a_redirect_is_not_followed(app, new_client, receiver, clock):
    client = new_client()
    register(client, receiver)
    receiver.answers = [302]
    make_channel(client)
    deliver(app)
    assert len(receiver.requests) == 1  # not the Location
    [event] = client.get('/v1/events').json['data']['items']
    assert event['delivery']['lastStatus'] == 302
    assert event['delivery']['status'] == 'pending'


def test_a_down_endpoint_fails_after_24_hours(app, new_client, receiver, clock):
    client = new_client()
    register(client, receiver)
    receiver.answers = [500] * 100
    make_channel(client)
    for _ in range(60):
        deliver(app)
        clock.advance(3600)
    [event] = client.get('/v1/events').json['data']['items']
    assert event['delivery']['status'] == 'failed'
    assert 5 <= event['delivery']['attempts'] <= 30
    assert client.get('/v1/events?status=failed').json['data']['total'] == 1


def test_retry_schedule_with_jitter():
    fixed = [livestream_api.retry_delay(n, lambda: 0.5) for n in range(1, 9)]
    assert fixed == [10, 30, 120, 600, 1800, 3600, 3600, 3600]
    assert livestream_api.retry_delay(1, lambda: 0.0) == 8
    assert livestream_api.retry_delay(1, lambda: 0.999999) == pytest.approx(12)
    assert livestream_api.next_attempt(0, 1, 100, lambda: 0.5) == 110
    assert livestream_api.next_attempt(0, 7, 86400 - 3000, lambda: 0.5) is None


def test_a_hanging_endpoint_holds_back_no_other_client(app, new_client, receiver, clock):
    hanging, other = Receiver(), receiver
    try:
        hanging.hang = True
        slow_client, client = new_client(name='slow'), new_client(name='fine')
        register(slow_client, hanging)
        register(client, other)
        make_channel(slow_client)
        make_channel(slow_client)
        app.livestream.deliverer.start()  # the worker's own loop, as serve runs it
        assert hanging.wait_for(1, timeout=5)
        make_channel(client)
        make_channel(client)
        assert len(other.wait_for(2, timeout=3)) == 2
        assert len(hanging.requests) == 1  # its second waits for its first
    finally:
        hanging.close()


def test_delete_fails_pending_deliveries(app, new_client, receiver):
    client = new_client()
    register(client, receiver)
    make_channel(client)
    client.delete('/v1/webhook', status=204)
    deliver(app)
    assert receiver.requests == []
    [event] = client.get('/v1/events').json['data']['items']
    assert event['delivery']['status'] == 'failed'
    assert event['delivery']['lastError'] == 'webhook deleted'


def test_test_event_and_redeliver(app, new_client, receiver):
    client = new_client()
    register(client, receiver)
    queued = client.post('/v1/webhook/test', status=202).json['data']
    assert queued['type'] == 'webhook.test' and queued['delivery']['status'] == 'pending'
    deliver(app)
    assert receiver.types == ['webhook.test']
    again = client.post('/v1/events/%s/redeliver' % queued['id'], status=202).json['data']
    assert again['delivery']['status'] == 'pending' and again['delivery']['attempts'] == 0
    deliver(app)
    assert receiver.types == ['webhook.test'] * 2
    assert receiver.events[0]['id'] == receiver.events[1]['id']


def test_redeliver_without_a_webhook_is_409(new_client):
    client = new_client()
    make_channel(client)
    [event] = client.get('/v1/events').json['data']['items']
    answer = client.post('/v1/events/%s/redeliver' % event['id'], status=409)
    assert answer.json['ec'] == 10


@pytest.mark.slow
def test_pending_deliveries_survive_kill_9(tmp_path, spawn):  # noqa: F811 (the fixture)
    """50 events pending against a receiver that is down when the server is killed
    with SIGKILL: after a restart, with the receiver up, every one arrives, once."""
    down = Receiver()
    url = down.url
    down.close()  # nothing listens there now: every attempt fails at once
    db = tmp_path / 'hooks.db'
    server = spawn(db, 'before')
    api = Api(server.port)
    assert api.request('PUT', '/v1/webhook', {'url': url})[0] == 201
    assert api.request('PUT', '/v1/users/u', {'limits': {'maxChannels': None}})[0] == 201
    for n in range(50):
        assert api.request('POST', '/v1/channels', {'userId': 'u', 'name': 'c%d' % n})[0] == 201
    status, _, events = api.request('GET', '/v1/events?limit=100')
    assert events['data']['total'] == 50
    time.sleep(1)  # let the worker try (and fail) some of them
    api.close()
    server.signal(signal.SIGKILL)
    server.wait(timeout=10)
    receiver = Receiver(port=urllib.parse.urlsplit(url).port)
    try:
        spawn(db, 'after')
        # Attempted before the kill: due again about 10 s (+-20%) after that attempt.
        received = receiver.wait_for(50, timeout=40)
        time.sleep(1)
        assert sorted(event['id'] for event in received) == sorted(
            event['id'] for event in events['data']['items'])
        assert len(receiver.requests) == 50  # none twice: no answer was lost this time
    finally:
        receiver.close()


# Secret rotation ##############################################################

def test_rotation_signs_with_both_secrets_for_24_hours(app, new_client, receiver, clock):
    client = new_client()
    old = register(client, receiver)['secret']
    new = client.post('/v1/webhook/rotate-secret').json['data']['secret']
    assert new != old and new.startswith('whsec_')
    make_channel(client)
    deliver(app)
    headers, body = receiver.requests[0]
    assert len(signatures(headers['X-Livestream-Signature'])[1]) == 2
    assert verifies(new, headers, body) and verifies(old, headers, body)
    clock.advance(24 * 3600 + 1)
    make_channel(client)
    deliver(app)
    headers, body = receiver.requests[1]
    assert len(signatures(headers['X-Livestream-Signature'])[1]) == 1
    assert verifies(new, headers, body) and not verifies(old, headers, body)


# Isolation ####################################################################

def test_a_client_never_receives_or_lists_another_clients_events(app, new_client, admin,
                                                                 receiver):
    a_receiver, admin_receiver = receiver, Receiver()
    try:
        a, b = new_client(name='a'), new_client(name='b')
        register(a, a_receiver)
        register(admin, admin_receiver)
        mine = make_channel(a)
        theirs = make_channel(b)
        deliver(app)
        assert [event['data']['channel']['id'] for event in a_receiver.events] == [mine['id']]
        assert sorted(event['data']['channel']['id'] for event in admin_receiver.events) == \
            sorted([mine['id'], theirs['id']])
        assert all(event['data']['channel']['clientId'] for event in admin_receiver.events)
        [listed] = a.get('/v1/events').json['data']['items']
        assert listed['data']['channel']['id'] == mine['id']
        b_event = b.get('/v1/events').json['data']['items'][0]
        assert a.get('/v1/events/' + b_event['id'], status=404).json['ec'] == 6
        assert a.post('/v1/events/%s/redeliver' % b_event['id'], status=404).json['ec'] == 6
        assert a.get('/v1/events?channelId=' + theirs['id']).json['data']['total'] == 0
        assert admin.get('/v1/events').json['data']['total'] == 2
        assert admin.get('/v1/events/' + b_event['id']).json['data']['delivery'][
            'status'] == 'delivered'
    finally:
        admin_receiver.close()


# The event log ################################################################

def test_events_page_and_filter(app, new_client):
    client = new_client()
    channels = [make_channel(client) for _ in range(3)]
    client.delete('/v1/channels/' + channels[0]['id'])
    first = client.get('/v1/events?limit=2').json['data']
    assert first['total'] == 4 and len(first['items']) == 2
    second = client.get('/v1/events?limit=2&cursor=' + first['nextCursor']).json['data']
    assert second['nextCursor'] is None
    assert [event['type'] for event in first['items'] + second['items']] == [
        'channel.deleted'] + ['channel.created'] * 3
    only = client.get('/v1/events?type=channel.deleted').json['data']
    assert only['total'] == 1
    by_channel = client.get('/v1/events?channelId=' + channels[0]['id']).json['data']
    assert by_channel['total'] == 2
    for query in ('type=nope', 'status=nope', 'channelId=x', 'limit=0', 'cursor=zz'):
        assert client.get('/v1/events?' + query, status=400).json['ec'] == 1


def test_old_events_are_pruned_in_batches(app, new_client, clock, monkeypatch):
    client = new_client()
    for _ in range(5):
        make_channel(client)
    clock.advance(7 * 86400 + 1)
    make_channel(client)
    deliverer = app.livestream.deliverer
    monkeypatch.setattr(deliverer, 'PRUNE_BATCH', 2)
    for _ in range(3):
        deliverer.run_once()
    assert client.get('/v1/events').json['data']['total'] == 1


def test_a_deleted_clients_endpoint_gets_nothing_more(app, new_client, admin, receiver):
    client = new_client()
    register(client, receiver)
    make_channel(client)
    admin.delete('/v1/clients/%s?force=true' % client.client['id'], status=204)
    deliver(app)
    assert receiver.requests == []
    [event] = admin.get('/v1/events?type=channel.created').json['data']['items']
    assert tuple(app.livestream.store.db.execute(
        'SELECT status, last_error FROM deliveries').fetchone()) == ('failed', 'webhook deleted')
    assert event['data']['channel']['clientId'] == client.client['id']


def test_disabled_webhooks_log_events_and_send_nothing(make_app, new_client, receiver):
    app = make_app(webhooks={'enabled': 'false'})[1]
    client = new_client()
    register(client, receiver)
    make_channel(client)
    app.livestream.deliverer.run_once()
    app.livestream.deliverer.settle()
    assert receiver.requests == []
    [event] = client.get('/v1/events').json['data']['items']
    assert event['delivery']['status'] == 'pending'


README = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text()


def test_the_readme_receivers_verify_a_real_delivery(app, new_client, receiver, clock):
    """The README's Python and Node receivers accept a delivery signed with their
    secret (the old one too during a rotation) and refuse a changed body."""
    clock.now = time.time()  # the receivers refuse a t more than 5 minutes off
    client = new_client()
    secret = register(client, receiver)['secret']
    make_channel(client)
    deliver(app)
    [(headers, body)] = receiver.requests
    python = re.search(r'```python\n(.*?)```', README.split('### Webhooks')[1], re.S).group(1)
    namespace = {}
    exec(python, namespace)
    assert namespace['verified'](secret, headers, body)
    assert not namespace['verified'](secret, headers, body + b' ')
    assert not namespace['verified']('whsec_other', headers, body)
    if shutil.which('node') is None:
        return
    node = re.search(r'```js\n(.*?)```', README.split('### Webhooks')[1], re.S).group(1)
    program = node + ''.join(
        'console.log(verified(%s, %s, Buffer.from(%s, "base64")));\n' % (
            json.dumps(key), json.dumps({'x-livestream-signature':
                                         headers['X-Livestream-Signature']}),
            json.dumps(base64.b64encode(data).decode()))
        for key, data in ((secret, body), (secret, body + b' '), ('whsec_other', body)))
    done = subprocess.run(['node', '-e', program], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ['true', 'false', 'false'], done.stderr


def test_two_processes_on_one_database_send_each_event_once(make_app, new_client, receiver):
    """Each server's worker takes a delivery before its attempt, so two `serve`s
    sharing the database do not both send it (here: while the first attempt hangs)."""
    first, second = make_app()[1], make_app()[1]
    try:
        client = new_client()
        register(client, receiver)
        receiver.hang = True
        make_channel(client)
        first.livestream.deliverer.deliver_due()
        assert len(receiver.wait_for(1)) == 1
        assert second.livestream.deliverer.deliver_due() == 0
        assert len(receiver.wait_for(2, timeout=1)) == 1
        receiver.release()
        first.livestream.deliverer.settle()
        assert client.get('/v1/events').json['data']['items'][0]['delivery'][
            'status'] == 'delivered'
    finally:
        receiver.release()
        for app in (first, second):
            app.livestream.deliverer.stop()


def test_an_app_built_with_background_delivers_without_being_driven(tmp_path, receiver):
    config = livestream_api.load_config(environ={}, overrides={
        'database': {'path': str(tmp_path / 'embedded.db')}})
    app = livestream_api.create_app(config, background=True)  # as the README shows
    try:
        livestream_api.bootstrap_admin(app, {'LIVE_TOKEN_ID': 'embedder',
                                             'LIVE_TOKEN_SECRET': 'embedder-secret-0123456789'})
        api = webtest.TestApp(app)
        api.authorization = ('Basic', ('embedder', 'embedder-secret-0123456789'))
        api.put_json('/v1/webhook', {'url': receiver.url}, status=201)
        api.post('/v1/webhook/test', status=202)
        [event] = receiver.wait_for(1, timeout=10)  # nobody called the deliverer
        assert event['type'] == 'webhook.test'
    finally:
        app.livestream.stop()
    assert not app.livestream.deliverer._thread.is_alive()


def test_an_endpoints_events_go_out_back_to_back_not_one_per_pass(app, new_client, receiver,
                                                                  monkeypatch):
    """A burst (say 1,000 streams going live after a restart) is sent as fast as the
    endpoint answers, in order, one at a time: not one event per dispatcher pass."""
    monkeypatch.setattr(livestream_api.Deliverer, 'IDLE_SECONDS', 60.0)
    client = new_client()
    register(client, receiver)
    for _ in range(20):
        make_channel(client)
    app.livestream.deliverer.start()
    events = receiver.wait_for(20, timeout=10)
    assert len(events) == 20  # within one 60 s pass: each attempt's end starts the next
    assert [event['type'] for event in events] == ['channel.created'] * 20
