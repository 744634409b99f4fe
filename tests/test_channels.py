"""Channels: the channel object, validation, CRUD, key rotation, disabling and listing."""

import base64
import json
import re
from datetime import datetime, timezone

import pytest
import webtest

import livestream_api
from conftest import ADMIN

PUBLIC_ID = re.compile(r'^[a-z2-7]{16}$')
ISO_Z = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')
CHANNEL_FIELDS = {'id', 'userId', 'name', 'description', 'metadata', 'enabled', 'status', 'ingest',
                  'streamUrl', 'streamId', 'playback', 'liveSince', 'createdAt', 'updatedAt',
                  'reconnectWindowSeconds'}


def iso(timestamp):
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def key_of(channel):
    """The secret part of a channel's streamId."""
    channel_id, _, key = channel['streamId'].partition('?key=')
    assert channel_id == channel['id']
    return key


def assert_error(response, status, ec):
    assert response.status_int == status, response.body
    assert response.content_type == 'application/json'
    assert response.json['ec'] == ec
    assert isinstance(response.json['msg'], str) and response.json['msg']
    return response.json


@pytest.fixture
def client(new_client):
    return new_client()


def create(client, user_id='alice', name='My channel', status=201, **fields):
    body = dict(fields, userId=user_id, name=name)
    response = client.post_json('/v1/channels', body, status=status)
    return response.json['data'] if status == 201 else response


# The channel object ##########################################################

@pytest.fixture
def ingest_client(make_app):
    """An app client on a service whose [ingest] URLs are not the defaults."""
    _, app = make_app(ingest={'rtmp_url': 'rtmp://ingest.example.com:1935/live',
                              'hls_url': 'https://cdn.example.com/hls'})
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    created = admin.post_json('/v1/clients', {'name': 'app', 'role': 'app'}).json['data']
    test_app = webtest.TestApp(app)
    test_app.authorization = ('Basic', (created['tokenId'], created['tokenSecret']))
    return test_app


def test_create_returns_the_full_channel_object(ingest_client, clock):
    response = ingest_client.post_json('/v1/channels', {
        'userId': 'alice', 'name': '  Morning show  ', 'description': 'daily',
        'metadata': {'game': 'chess', 'tags': ['a', 'b']}}, status=201)
    assert response.content_type == 'application/json'
    assert response.json['ec'] == 0
    channel = response.json['data']
    assert set(channel) == CHANNEL_FIELDS
    assert PUBLIC_ID.match(channel['id'])
    assert channel['userId'] == 'alice'
    assert channel['name'] == 'Morning show'
    assert channel['description'] == 'daily'
    assert channel['metadata'] == {'game': 'chess', 'tags': ['a', 'b']}
    assert channel['enabled'] is True
    assert channel['status'] == 'idle'
    assert channel['liveSince'] is None
    assert channel['streamUrl'] == 'rtmp://ingest.example.com:1935/live'
    key = key_of(channel)
    assert channel['streamId'] == '%s?key=%s' % (channel['id'], key)
    assert re.fullmatch(r'[0-9a-f]{32,}', key), key
    assert channel['playback'] == {
        'hls': 'https://cdn.example.com/hls/%s.m3u8' % channel['id'],
        'rtmp': 'rtmp://ingest.example.com:1935/live/%s' % channel['id']}
    for url in channel['playback'].values():
        assert key not in url
    assert ISO_Z.match(channel['createdAt']) and ISO_Z.match(channel['updatedAt'])
    assert channel['createdAt'] == channel['updatedAt'] == iso(clock.now)


def test_ids_and_keys_are_random_and_distinct(client):
    channels = [create(client, name='c%d' % n) for n in range(20)]
    ids = [channel['id'] for channel in channels]
    keys = [key_of(channel) for channel in channels]
    assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys)
    assert all(PUBLIC_ID.match(channel_id) for channel_id in ids)
    # Not a counter: 20 random ids come out sorted with probability 2/20!.
    assert ids != sorted(ids) and ids != sorted(ids, reverse=True)


def test_default_description_and_metadata(client):
    channel = create(client)
    assert channel['description'] == '' and channel['metadata'] == {}


def test_boundary_values_are_accepted(client):
    channel = create(client, user_id='A-z_0.9' + 'x' * 57, name='n' * 200,
                     description='d' * 2000, metadata={'k': 'v' * 4000})
    assert len(channel['userId']) == 64
    assert channel['name'] == 'n' * 200
    assert len(channel['description']) == 2000
    assert channel['metadata'] == {'k': 'v' * 4000}


# Validation ##################################################################

GOOD = {'userId': 'alice', 'name': 'ok'}
VALIDATION_CASES = [
    ('userId', {'userId': 'bad id!'}),
    ('userId', {'userId': 'a/b'}),
    ('userId', {'userId': 'x' * 65}),
    ('userId', {'userId': ''}),
    ('userId', {'userId': 42}),
    ('userId', {'userId': None}),
    ('name', {'name': ''}),
    ('name', {'name': '   \t '}),
    ('name', {'name': 'n' * 201}),
    ('name', {'name': 12345}),
    ('name', {'name': None}),
    ('name', {'name': ['a']}),
    ('description', {'description': 'd' * 2001}),
    ('description', {'description': 7}),
    ('metadata', {'metadata': ['not', 'an', 'object']}),
    ('metadata', {'metadata': 'text'}),
    ('metadata', {'metadata': None}),
    ('metadata', {'metadata': {'k': 'v' * 4100}}),
    ('enabled', {'enabled': 'yes'}),
    ('color', {'color': 'red'}),
]


@pytest.mark.parametrize('field, change', VALIDATION_CASES,
                         ids=['%s-%d' % (case[0], n) for n, case in enumerate(VALIDATION_CASES)])
def test_create_validation(client, field, change):
    body = dict(GOOD, **change)
    body_ = assert_error(client.post_json('/v1/channels', body, expect_errors=True), 422, 2)
    assert field in body_['data']['fields'], body_
    assert client.get('/v1/channels').json['data']['total'] == 0


@pytest.mark.parametrize('missing', ['userId', 'name'])
def test_create_requires_user_id_and_name(client, missing):
    body = dict(GOOD)
    del body[missing]
    body_ = assert_error(client.post_json('/v1/channels', body, expect_errors=True), 422, 2)
    assert list(body_['data']['fields']) == [missing]


def test_every_bad_field_is_named(client):
    body_ = assert_error(client.post_json('/v1/channels', {'userId': '!', 'name': '',
                                                           'metadata': 1, 'x': 1},
                                          expect_errors=True), 422, 2)
    assert set(body_['data']['fields']) == {'userId', 'name', 'metadata', 'x'}


PATCH_CASES = [case for case in VALIDATION_CASES if case[0] != 'userId']


@pytest.mark.parametrize('method', ['patch_json', 'put_json'])
@pytest.mark.parametrize('field, change', PATCH_CASES,
                         ids=['%s-%d' % (case[0], n) for n, case in enumerate(PATCH_CASES)])
def test_update_validation(client, method, field, change):
    channel = create(client)
    body = dict({'name': 'ok'}, **change)
    response = getattr(client, method)('/v1/channels/' + channel['id'], body,
                                       expect_errors=True)
    assert field in assert_error(response, 422, 2)['data']['fields']
    assert client.get('/v1/channels/' + channel['id']).json['data'] == channel


@pytest.mark.parametrize('method', ['patch_json', 'put_json'])
def test_user_id_cannot_be_changed(client, method):
    channel = create(client)
    response = getattr(client, method)('/v1/channels/' + channel['id'],
                                       {'name': 'ok', 'userId': 'bob'}, expect_errors=True)
    assert 'userId' in assert_error(response, 422, 2)['data']['fields']


@pytest.mark.parametrize('raw', ['[1, 2]', '"text"', '42', 'null', 'true', '{"name": ',
                                 'not json', ''])
def test_body_that_is_not_an_object_is_400(client, raw):
    response = client.post('/v1/channels', raw, content_type='application/json',
                           expect_errors=True)
    assert_error(response, 400, 1)


def test_body_with_wrong_content_type_is_400(client):
    response = client.post('/v1/channels', json.dumps(GOOD), content_type='text/plain',
                           expect_errors=True)
    assert_error(response, 400, 1)


@pytest.mark.parametrize('method', ['put', 'patch'])
def test_update_body_that_is_not_an_object_is_400(client, method):
    channel = create(client)
    response = getattr(client, method)('/v1/channels/' + channel['id'], '[]',
                                       content_type='application/json', expect_errors=True)
    assert_error(response, 400, 1)


# Get, put, patch, delete #####################################################

def test_get_returns_the_created_channel(client):
    channel = create(client, metadata={'a': 1})
    response = client.get('/v1/channels/' + channel['id'])
    assert response.json == {'ec': 0, 'data': channel}


@pytest.mark.parametrize('channel_id', ['aaaaaaaaaaaaaaaa', 'nope', '1', 'A' * 16])
def test_get_unknown_channel_is_404(client, channel_id):
    assert_error(client.get('/v1/channels/' + channel_id, expect_errors=True), 404, 6)


def test_put_replaces_and_resets_omitted_fields_to_defaults(client, clock):
    channel = create(client, description='old', metadata={'a': 1})
    client.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    clock.advance(60)
    updated = client.put_json('/v1/channels/' + channel['id'], {'name': ' New name '}).json['data']
    assert updated['name'] == 'New name'
    assert updated['description'] == ''
    assert updated['metadata'] == {}
    assert updated['enabled'] is True and updated['status'] == 'idle'
    assert updated['streamId'] == channel['streamId']
    assert updated['createdAt'] == channel['createdAt']
    assert updated['updatedAt'] == iso(clock.now) != channel['updatedAt']
    assert client.get('/v1/channels/' + channel['id']).json['data'] == updated


def test_put_sets_every_field(client):
    channel = create(client)
    body = {'name': 'N', 'description': 'D', 'metadata': {'m': [1]}, 'enabled': False}
    updated = client.put_json('/v1/channels/' + channel['id'], body).json['data']
    assert {name: updated[name] for name in body} == body
    assert updated['status'] == 'disabled'


def test_put_requires_name(client):
    channel = create(client)
    response = client.put_json('/v1/channels/' + channel['id'], {'description': 'x'},
                               expect_errors=True)
    assert list(assert_error(response, 422, 2)['data']['fields']) == ['name']


@pytest.mark.parametrize('change', [{'name': 'Other'}, {'description': 'about'},
                                    {'metadata': {'x': True}}, {'enabled': False}])
def test_patch_changes_only_the_named_field(client, clock, change):
    channel = create(client, description='desc', metadata={'keep': 1})
    clock.advance(5)
    updated = client.patch_json('/v1/channels/' + channel['id'], change).json['data']
    for name in ('name', 'description', 'metadata', 'enabled'):
        assert updated[name] == change.get(name, channel[name])
    assert updated['streamId'] == channel['streamId']
    assert updated['userId'] == channel['userId']
    assert updated['updatedAt'] == iso(clock.now)


def test_patch_with_empty_body_changes_nothing(client):
    channel = create(client)
    assert client.patch_json('/v1/channels/' + channel['id'], {}).json['data'] == channel


def test_delete_then_404_everywhere(client):
    channel = create(client)
    other = create(client, name='other')
    response = client.delete('/v1/channels/' + channel['id'], status=204)
    assert response.body == b''
    path = '/v1/channels/' + channel['id']
    assert_error(client.get(path, expect_errors=True), 404, 6)
    assert_error(client.patch_json(path, {'name': 'x'}, expect_errors=True), 404, 6)
    assert_error(client.put_json(path, {'name': 'x'}, expect_errors=True), 404, 6)
    assert_error(client.delete(path, expect_errors=True), 404, 6)
    assert_error(client.post(path + '/rotate-key', expect_errors=True), 404, 6)
    listed = client.get('/v1/channels').json['data']
    assert [item['id'] for item in listed['items']] == [other['id']]
    assert listed['total'] == 1


# Rotating the key and disabling ###############################################

def test_rotate_key_refuses_the_old_key_and_accepts_the_new(client, hook, clock):
    channel = create(client)
    old_key = key_of(channel)
    clock.advance(10)
    rotated = client.post('/v1/channels/%s/rotate-key' % channel['id']).json['data']
    new_key = key_of(rotated)
    assert rotated['id'] == channel['id']
    assert new_key != old_key and re.fullmatch(r'[0-9a-f]{32,}', new_key)
    assert rotated['streamId'] == '%s?key=%s' % (channel['id'], new_key)
    assert rotated['playback'] == channel['playback']
    assert rotated['updatedAt'] == iso(clock.now)
    assert client.get('/v1/channels/' + channel['id']).json['data']['streamId'] == \
        rotated['streamId']
    assert hook('publish', channel['id'], key=old_key).status_int == 403
    assert client.get('/v1/channels/' + channel['id']).json['data']['status'] == 'idle'
    assert hook('publish', channel['id'], key=new_key).status_int == 200
    assert client.get('/v1/channels/' + channel['id']).json['data']['status'] == 'live'


def test_rotate_key_ends_a_live_stream(client, hook):
    channel = create(client)
    assert hook('publish', channel['id'], key=key_of(channel)).status_int == 200
    client.post('/v1/channels/%s/rotate-key' % channel['id'])
    current = client.get('/v1/channels/' + channel['id']).json['data']
    assert current['status'] == 'idle' and current['liveSince'] is None
    # The encoder still holding the old key is dropped at its next update.
    assert hook('update_publish', channel['id'], key=key_of(channel)).status_int == 403
    sessions = client.get('/v1/channels/%s/sessions' % channel['id']).json['data']['items']
    assert [s['endReason'] for s in sessions] == ['key_rotated']


def test_publish_with_a_wrong_or_missing_key_is_refused(client, hook):
    channel = create(client)
    assert hook('publish', channel['id'], key='0' * 40).status_int == 403
    assert hook('publish', channel['id']).status_int == 403
    assert client.get('/v1/channels/' + channel['id']).json['data']['status'] == 'idle'


def test_disable_refuses_publishing(client, hook):
    channel = create(client)
    disabled = client.patch_json('/v1/channels/' + channel['id'], {'enabled': False}).json['data']
    assert disabled['enabled'] is False and disabled['status'] == 'disabled'
    assert hook('publish', channel['id'], key=key_of(channel)).status_int == 403
    assert client.get('/v1/channels/' + channel['id']).json['data']['status'] == 'disabled'
    client.patch_json('/v1/channels/' + channel['id'], {'enabled': True})
    assert hook('publish', channel['id'], key=key_of(channel)).status_int == 200


def test_disable_ends_a_live_stream(client, hook):
    channel = create(client)
    assert hook('publish', channel['id'], key=key_of(channel)).status_int == 200
    live = client.get('/v1/channels/' + channel['id']).json['data']
    assert live['status'] == 'live' and ISO_Z.match(live['liveSince'])
    client.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    assert client.get('/v1/channels/' + channel['id']).json['data']['status'] == 'disabled'
    assert hook('update_publish', channel['id'], key=key_of(channel)).status_int == 403
    sessions = client.get('/v1/channels/%s/sessions' % channel['id']).json['data']['items']
    assert [s['endReason'] for s in sessions] == ['channel_disabled']


def test_delete_ends_a_live_stream(client, hook, clock):
    channel = create(client)
    assert hook('publish', channel['id'], key=key_of(channel)).status_int == 200
    clock.advance(20)
    assert hook('update_publish', channel['id'], key=key_of(channel)).status_int == 200
    stats = client.get('/v1/stats').json['data']
    assert (stats['liveChannels'], stats['liveSeconds']) == (1, 20)
    client.delete('/v1/channels/' + channel['id'], status=204)
    assert client.get('/v1/stats').json['data']['liveChannels'] == 0
    assert hook('update_publish', channel['id'], key=key_of(channel)).status_int == 403


# Listing #####################################################################

def ids_of(listing):
    return [item['id'] for item in listing['items']]


def test_list_is_newest_first_with_the_envelope_shape(client):
    created = [create(client, name='c%d' % n)['id'] for n in range(5)]
    response = client.get('/v1/channels')
    assert response.json['ec'] == 0
    listing = response.json['data']
    assert set(listing) == {'items', 'total', 'nextCursor'}
    assert ids_of(listing) == created[::-1]
    assert listing['total'] == 5 and listing['nextCursor'] is None
    assert all(set(item) == CHANNEL_FIELDS for item in listing['items'])


def test_list_items_are_the_objects_get_returns(client, admin, hook, clock):
    """A page is rendered in one SQL statement and a GET from the row cache: the
    same object either way, awkward text and numbers included."""
    clock.now = 1_800_000_000.999  # a second's fraction is dropped, never rounded up
    plain = create(client, name='plain')
    odd = create(client, user_id='bob', name='Quote " back\\slash \u00e9t\u00e9 \U0001f3a5 </script>',
                 description='tab\there', metadata={
                     'big': 123456789012345678901234567890, 'float': 1.5, 'exp': 1e100,
                     'none': None, 'yes': True, 'nested': {'list': [1, 'two', {'3': []}]},
                     'unicode \u2603': '\u00fc'})
    clock.advance(1)
    live = create(client, name='live')
    assert hook('publish', live['id'], key=key_of(live)).status_int == 200
    disabled = create(client, name='off')
    client.patch_json('/v1/channels/' + disabled['id'], {'enabled': False})

    assert odd['name'] == 'Quote " back\\slash \u00e9t\u00e9 \U0001f3a5 </script>'
    assert odd['description'] == 'tab\there'
    assert odd['metadata']['big'] == 123456789012345678901234567890
    assert odd['metadata']['exp'] == 1e100 and odd['metadata']['nested']['list'][2] == {'3': []}
    assert plain['createdAt'] == iso(1_800_000_000) == '2027-01-15T08:00:00Z'
    for caller, extra in ((client, set()), (admin, {'clientId'})):
        listing = caller.get('/v1/channels?limit=100').json['data']
        mine = [item for item in listing['items']
                if item['id'] in {plain['id'], odd['id'], live['id'], disabled['id']}]
        assert [item['id'] for item in mine] == [disabled['id'], live['id'], odd['id'],
                                                  plain['id']]
        for item in mine:
            assert set(item) == CHANNEL_FIELDS | extra
            assert item == caller.get('/v1/channels/' + item['id']).json['data']
        assert [item['status'] for item in mine] == ['disabled', 'live', 'idle', 'idle']
        assert mine[1]['liveSince'] == iso(1_800_000_001)
        assert mine[2] == dict(odd, **({'clientId': client.client['id']} if extra else {}))


def test_a_cached_page_follows_every_write_at_once(client, admin, hook, clock, interval):
    """Pages are served from memory until a write that can change a channel; each
    step below changes what the same page shows, and the next read shows it."""
    def page():
        return client.get('/v1/channels?limit=5').json['data']

    def shown():
        return {item['id']: item for item in page()['items']}

    channel = create(client, name='first')
    assert list(shown()) == [channel['id']]
    other = create(client, user_id='bob', name='second')
    assert list(shown()) == [other['id'], channel['id']] and page()['total'] == 2
    client.patch_json('/v1/channels/' + channel['id'], {'name': 'renamed'})
    assert shown()[channel['id']]['name'] == 'renamed'
    rotated = client.post('/v1/channels/%s/rotate-key' % channel['id']).json['data']
    assert shown()[channel['id']]['streamId'] == rotated['streamId'] != channel['streamId']
    assert hook('publish', channel['id'], key=key_of(rotated)).status_int == 200
    assert shown()[channel['id']]['status'] == 'live'
    clock.advance(2)
    assert hook('update_publish', channel['id'], key=key_of(rotated)).status_int == 200
    assert shown()[channel['id']]['status'] == 'live'
    clock.advance(3 * interval + 1)  # no word from the encoder: the session goes stale
    assert shown()[channel['id']]['status'] == 'idle'
    assert hook('publish', channel['id'], key=key_of(rotated)).status_int == 200
    assert shown()[channel['id']]['status'] == 'live'
    assert hook('publish_done', channel['id'], key=key_of(rotated)).status_int == 200
    assert shown()[channel['id']]['status'] == 'idle'
    client.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    assert shown()[channel['id']]['status'] == 'disabled'
    client.delete('/v1/channels/' + channel['id'], status=204)
    assert list(shown()) == [other['id']] and page()['total'] == 1
    client.delete('/v1/users/bob?force=true', status=204)
    assert page() == {'items': [], 'total': 0, 'nextCursor': None}
    third = create(client, name='third')
    assert third['id'] in {item['id'] for item in
                           admin.get('/v1/channels?limit=100').json['data']['items']}
    admin.delete('/v1/clients/%s?force=true' % client.client['tokenId'], status=204)
    assert third['id'] not in {item['id'] for item in
                               admin.get('/v1/channels?limit=100').json['data']['items']}


def test_the_read_cache_keeps_to_its_byte_budget(client, app, monkeypatch):
    monkeypatch.setattr(livestream_api, 'READ_CACHE_BYTES', 200_000)
    created = [create(client, name='c%d' % n, description='d' * 2000)['id'] for n in range(30)]
    store = app.livestream.store
    seen = set()
    for limit in range(5, 30):  # 25 distinct pages of 12-70 kB each: 1 MB uncapped
        listing = client.get('/v1/channels?limit=%d' % limit).json['data']
        assert ids_of(listing) == created[::-1][:limit]
        assert 0 < store._rows_bytes <= 200_000
        seen.add(store._rows_bytes)
    assert len(seen) > 1


def test_list_default_limit_is_20(client):
    for n in range(21):
        create(client, name='c%d' % n)
    listing = client.get('/v1/channels').json['data']
    assert len(listing['items']) == 20 and listing['total'] == 21
    assert listing['nextCursor'] is not None


@pytest.mark.parametrize('limit', ['1', '100'])
def test_list_limit_bounds_accepted(client, limit):
    create(client)
    create(client, name='second')
    listing = client.get('/v1/channels?limit=' + limit).json['data']
    assert len(listing['items']) == min(int(limit), 2)


@pytest.mark.parametrize('limit', ['0', '101', 'x', '-1', '', '1.5', '1000000000000'])
def test_list_limit_out_of_range_is_400(client, limit):
    assert_error(client.get('/v1/channels?limit=' + limit, expect_errors=True), 400, 1)


def test_list_pagination_walks_every_page(client):
    created = [create(client, name='c%d' % n)['id'] for n in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        url = '/v1/channels?limit=3' + ('&cursor=' + cursor if cursor else '')
        listing = client.get(url).json['data']
        assert listing['total'] == 7
        pages += 1
        seen += ids_of(listing)
        cursor = listing['nextCursor']
        if cursor is None:
            break
        assert len(listing['items']) == 3
    assert pages == 3
    assert seen == created[::-1]


def test_list_pagination_with_filters(client):
    alice = [create(client, user_id='alice', name='a%d' % n)['id'] for n in range(5)]
    for n in range(4):
        create(client, user_id='bob', name='b%d' % n)
    first = client.get('/v1/channels?userId=alice&limit=2').json['data']
    second = client.get('/v1/channels?userId=alice&limit=2&cursor=' +
                        first['nextCursor']).json['data']
    third = client.get('/v1/channels?userId=alice&limit=2&cursor=' +
                       second['nextCursor']).json['data']
    assert ids_of(first) + ids_of(second) + ids_of(third) == alice[::-1]
    assert third['nextCursor'] is None
    assert first['total'] == second['total'] == third['total'] == 5


def _b64(text):
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip('=')


@pytest.mark.parametrize('tamper', [
    lambda cursor: cursor + 'x',
    lambda cursor: cursor[:-2],
    lambda cursor: 'garbage',
    lambda cursor: '!!!!',
    lambda cursor: _b64('not json'),
    lambda cursor: _b64('[1]'),
    lambda cursor: _b64('{"a": "x"}'),
    lambda cursor: _b64('{"a": -5}'),
    lambda cursor: _b64('{"a": 99999999999999999999999}'),
    lambda cursor: _b64('{"b": 1}'),
    lambda cursor: '%C3%A9',
])
def test_tampered_cursor_is_400(client, tamper):
    for n in range(3):
        create(client, name='c%d' % n)
    cursor = client.get('/v1/channels?limit=1').json['data']['nextCursor']
    assert cursor
    response = client.get('/v1/channels?limit=1&cursor=' + tamper(cursor), expect_errors=True)
    assert_error(response, 400, 1)


def test_filter_by_user_id(client):
    alice = [create(client, user_id='alice', name='a%d' % n)['id'] for n in range(2)]
    bob = [create(client, user_id='bob', name='b%d' % n)['id'] for n in range(3)]
    listing = client.get('/v1/channels?userId=alice').json['data']
    assert ids_of(listing) == alice[::-1] and listing['total'] == 2
    listing = client.get('/v1/channels?userId=bob').json['data']
    assert ids_of(listing) == bob[::-1] and listing['total'] == 3
    listing = client.get('/v1/channels?userId=carol').json['data']
    assert listing == {'items': [], 'total': 0, 'nextCursor': None}


def test_filter_by_status(client, hook):
    live = create(client, user_id='u1', name='live')
    disabled = create(client, user_id='u2', name='disabled')
    idle = [create(client, user_id='u3', name='idle%d' % n)['id'] for n in range(2)]
    assert hook('publish', live['id'], key=key_of(live)).status_int == 200
    client.patch_json('/v1/channels/' + disabled['id'], {'enabled': False})
    for status, expected in (('live', [live['id']]), ('disabled', [disabled['id']]),
                             ('idle', idle[::-1])):
        listing = client.get('/v1/channels?status=' + status).json['data']
        assert ids_of(listing) == expected, status
        assert listing['total'] == len(expected)
        assert all(item['status'] == status for item in listing['items'])


@pytest.mark.parametrize('status', ['bogus', 'LIVE', ''])
def test_filter_by_unknown_status_is_400(client, status):
    assert_error(client.get('/v1/channels?status=' + status, expect_errors=True), 400, 1)


def test_filter_q_is_a_case_insensitive_substring(client):
    names = ['Morning Show', 'evening SHOW', 'News', 'Showcase', 'talk']
    ids = {name: create(client, name=name)['id'] for name in names}
    for q, expected in (('show', ['Showcase', 'evening SHOW', 'Morning Show']),
                        ('SHOW', ['Showcase', 'evening SHOW', 'Morning Show']),
                        ('ning s', ['evening SHOW', 'Morning Show']),
                        ('news', ['News']), ('nothing', [])):
        listing = client.get('/v1/channels', {'q': q}).json['data']
        assert ids_of(listing) == [ids[name] for name in expected], q
        assert listing['total'] == len(expected)


def test_filter_q_folds_ascii_case_only(client):
    """The trigram index folds all of Unicode; the substring test after it folds
    A-Z only, as LIKE does."""
    ids = {name: create(client, name=name)['id'] for name in ('Été show', 'été SHOW', 'Straße')}
    for q, expected in (('été', ['été SHOW']), ('ÉTÉ', []), ('Été S', ['Été show']),
                        ('éTÉ', []), ('ÉtÉ', []), ('ÉTé', ['Été show']), ('té ', ['été SHOW', 'Été show']),
                        ('STRASSE', []), ('straße', ['Straße'])):
        listing = client.get('/v1/channels', {'q': q}).json['data']
        assert ids_of(listing) == [ids[name] for name in expected], q
        assert listing['total'] == len(expected), q


def test_filter_q_treats_like_wildcards_literally(client):
    names = ['100% real', '1000 real', 'snake_case', 'snakeXcase', 'back\\slash', 'backslash']
    ids = {name: create(client, name=name)['id'] for name in names}
    for q, expected in (('0% ', ['100% real']), ('00%', ['100% real']), ('e_c', ['snake_case']),
                        ('k\\s', ['back\\slash']), ('%%%', []), ('___', []), ('e%c', [])):
        listing = client.get('/v1/channels', {'q': q}).json['data']
        assert ids_of(listing) == [ids[name] for name in expected], q
        assert listing['total'] == len(expected), q


def test_total_matches_combined_filters(client, hook):
    wanted = [create(client, user_id='alice', name='Show %d' % n)['id'] for n in range(3)]
    create(client, user_id='alice', name='other')
    create(client, user_id='bob', name='Show bob')
    off = create(client, user_id='alice', name='Show off')
    client.patch_json('/v1/channels/' + off['id'], {'enabled': False})
    listing = client.get('/v1/channels?userId=alice&q=show&status=idle&limit=2').json['data']
    assert listing['total'] == 3
    assert ids_of(listing) == wanted[::-1][:2]
    assert client.get('/v1/channels?userId=alice&q=show').json['data']['total'] == 4
    assert client.get('/v1/channels').json['data']['total'] == 6


def test_list_rejects_unknown_query_parameters(client):
    assert_error(client.get('/v1/channels?sort=name', expect_errors=True), 400, 1)
