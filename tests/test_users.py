"""Users: limits (PUT/PATCH/GET/DELETE), defaults, usage, maxChannels, listing."""

import re
from datetime import datetime, timezone

import pytest
import webtest

from conftest import ADMIN

LIMIT_NAMES = ('maxChannels', 'maxLiveChannels', 'maxBitrateKbps', 'maxSessionSeconds')
#: The [limits] this file's service runs with: distinct, so a default is recognisable.
CONFIG_LIMITS = {'max_channels': '3', 'max_live_channels': '2', 'max_bitrate_kbps': '5000',
                 'max_session_seconds': 'none'}
DEFAULTS = {'maxChannels': 3, 'maxLiveChannels': 2, 'maxBitrateKbps': 5000,
            'maxSessionSeconds': None}
ISO_Z = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')


def iso(timestamp):
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def assert_error(response, status, ec):
    assert response.status_int == status, response.body
    assert response.content_type == 'application/json'
    assert response.json['ec'] == ec
    return response.json


class Service:
    """A service with CONFIG_LIMITS as [limits]: its admin, app clients and hook."""

    def __init__(self, app):
        self.app = app
        self.admin = webtest.TestApp(app)
        self.admin.authorization = ('Basic', ADMIN)
        self._hook = webtest.TestApp(app)

    def client(self):
        created = self.admin.post_json('/v1/clients', {'name': 'app', 'role': 'app'}).json['data']
        test_app = webtest.TestApp(self.app)
        test_app.authorization = ('Basic', (created['tokenId'], created['tokenSecret']))
        test_app.client = created
        return test_app

    def hook(self, call, channel, clientid='1'):
        """An nginx-rtmp notify call for `channel` with its current key."""
        name, _, key = channel['streamId'].partition('?key=')
        return self._hook.post('/v1/hooks/nginx-rtmp?secret=' + self.app.livestream.hook_secret,
                               {'app': 'live', 'call': call, 'name': name, 'key': key,
                                'addr': '127.0.0.1', 'clientid': clientid},
                               expect_errors=True)


@pytest.fixture
def service(make_app):
    return Service(make_app(limits=CONFIG_LIMITS)[1])


@pytest.fixture
def client(service):
    return service.client()


def create_channel(client, user_id, name='ch', status=201):
    response = client.post_json('/v1/channels', {'userId': user_id, 'name': name},
                                status=status, expect_errors=status != 201)
    return response.json['data'] if status == 201 else response


def get_user(client, user_id):
    return client.get('/v1/users/' + user_id).json['data']


# PUT, PATCH, GET #############################################################

def test_put_creates_with_defaults_for_unnamed_limits(client, clock):
    response = client.put_json('/v1/users/alice', {'limits': {'maxChannels': 10}}, status=201)
    assert response.json['ec'] == 0
    user = response.json['data']
    assert set(user) == {'userId', 'limits', 'usage', 'createdAt', 'updatedAt'}
    assert user['userId'] == 'alice'
    assert user['limits'] == dict(DEFAULTS, maxChannels=10)
    assert user['usage'] == {'channels': 0, 'liveChannels': 0}
    assert ISO_Z.match(user['createdAt'])
    assert user['createdAt'] == user['updatedAt'] == iso(clock.now)
    assert get_user(client, 'alice') == user


def test_put_with_no_limits_takes_every_default(client):
    assert client.put_json('/v1/users/bob', {}, status=201).json['data']['limits'] == DEFAULTS


def test_put_again_is_200_and_replaces(client, clock):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 10, 'maxLiveChannels': 4}},
                    status=201)
    created_at = iso(clock.now)
    clock.advance(90)
    response = client.put_json('/v1/users/alice', {'limits': {'maxBitrateKbps': 100}},
                               status=200)
    user = response.json['data']
    assert user['limits'] == dict(DEFAULTS, maxBitrateKbps=100)
    assert user['createdAt'] == created_at
    assert user['updatedAt'] == iso(clock.now)
    assert get_user(client, 'alice')['limits'] == user['limits']


def test_patch_changes_only_the_named_limits(client, clock):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 10, 'maxLiveChannels': 4,
                                                   'maxBitrateKbps': 800,
                                                   'maxSessionSeconds': 60}})
    clock.advance(30)
    user = client.patch_json('/v1/users/alice',
                             {'limits': {'maxLiveChannels': 9, 'maxSessionSeconds': None}}
                             ).json['data']
    assert user['limits'] == {'maxChannels': 10, 'maxLiveChannels': 9, 'maxBitrateKbps': 800,
                              'maxSessionSeconds': None}
    assert user['updatedAt'] == iso(clock.now)
    assert get_user(client, 'alice')['limits'] == user['limits']


def test_patch_unknown_user_is_404_and_creates_nothing(client):
    response = client.patch_json('/v1/users/ghost', {'limits': {'maxChannels': 1}},
                                 expect_errors=True)
    assert_error(response, 404, 6)
    assert_error(client.get('/v1/users/ghost', expect_errors=True), 404, 6)


@pytest.mark.parametrize('user_id', ['ghost', 'bad%20id', 'x' * 65])
def test_get_user_never_created_is_404(client, user_id):
    assert_error(client.get('/v1/users/' + user_id, expect_errors=True), 404, 6)


@pytest.mark.parametrize('user_id', ['bad%20id', 'x' * 65, '%C3%A9', 'a:b'])
def test_put_bad_user_id_is_422(client, user_id):
    response = client.put_json('/v1/users/' + user_id, {}, expect_errors=True)
    assert 'userId' in assert_error(response, 422, 2)['data']['fields']


def test_user_created_with_config_defaults_on_first_channel(client):
    assert_error(client.get('/v1/users/newbie', expect_errors=True), 404, 6)
    create_channel(client, 'newbie')
    user = get_user(client, 'newbie')
    assert user['limits'] == DEFAULTS
    assert user['usage'] == {'channels': 1, 'liveChannels': 0}
    # The defaults really apply: maxChannels 3 from [limits].
    create_channel(client, 'newbie')
    create_channel(client, 'newbie')
    body = assert_error(create_channel(client, 'newbie', status=403), 403, 5)
    assert body['data'] == {'limit': 'maxChannels', 'value': 3}


def test_first_channel_keeps_limits_set_beforehand(client):
    client.put_json('/v1/users/pre', {'limits': {'maxChannels': 1}})
    create_channel(client, 'pre')
    assert get_user(client, 'pre')['limits']['maxChannels'] == 1
    assert_error(create_channel(client, 'pre', status=403), 403, 5)


# Limits validation ###########################################################

BAD_VALUES = [-1, 1.5, '3', True, False, 2 ** 31, [], {}]


def test_a_whole_number_written_as_a_float_is_an_integer(client):
    # JSON has one number type and JSON Schema's "integer" admits 2.0: so do we.
    response = client.put_json('/v1/users/alice', {'limits': {'maxChannels': 2.0}})
    assert response.json['data']['limits']['maxChannels'] == 2


@pytest.mark.parametrize('method', ['put_json', 'patch_json'])
@pytest.mark.parametrize('name', LIMIT_NAMES)
@pytest.mark.parametrize('value', BAD_VALUES, ids=repr)
def test_bad_limit_is_422_naming_it(client, method, name, value):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 7}})
    before = get_user(client, 'alice')
    valid = 'maxBitrateKbps' if name != 'maxBitrateKbps' else 'maxChannels'
    response = getattr(client, method)('/v1/users/alice', {'limits': {name: value, valid: 1}},
                                       expect_errors=True)
    assert list(assert_error(response, 422, 2)['data']['fields']) == ['limits.' + name]
    assert get_user(client, 'alice') == before


@pytest.mark.parametrize('method', ['put_json', 'patch_json'])
@pytest.mark.parametrize('body, field', [
    ({'limits': {'maxViewers': 3}}, 'limits.maxViewers'),
    ({'limits': {'max_channels': 3}}, 'limits.max_channels'),
    ({'limits': {}, 'name': 'x'}, 'name'),
    ({'maxChannels': 3}, 'maxChannels'),
    ({'limits': [1]}, 'limits'),
    ({'limits': None}, 'limits'),
    ({'limits': 5}, 'limits'),
])
def test_bad_user_body_is_422_naming_the_field(client, method, body, field):
    client.put_json('/v1/users/alice', {})
    response = getattr(client, method)('/v1/users/alice', body, expect_errors=True)
    assert field in assert_error(response, 422, 2)['data']['fields']


def test_new_user_with_bad_limits_is_not_created(client):
    response = client.put_json('/v1/users/fresh', {'limits': {'maxChannels': -1}},
                               expect_errors=True)
    assert_error(response, 422, 2)
    assert_error(client.get('/v1/users/fresh', expect_errors=True), 404, 6)


@pytest.mark.parametrize('raw', ['[]', '"x"', '3', 'null', '{', ''])
def test_user_body_that_is_not_an_object_is_400(client, raw):
    response = client.put('/v1/users/alice', raw, content_type='application/json',
                          expect_errors=True)
    assert_error(response, 400, 1)


def test_limit_bounds_accepted(client):
    limits = {'maxChannels': 0, 'maxLiveChannels': 2 ** 31 - 1, 'maxBitrateKbps': None,
              'maxSessionSeconds': 1}
    assert client.put_json('/v1/users/alice', {'limits': limits}).json['data']['limits'] == limits


def test_null_is_unlimited(client, service):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': None,
                                                   'maxLiveChannels': None}})
    channels = [create_channel(client, 'alice', 'c%d' % n) for n in range(6)]  # default is 3
    for n, channel in enumerate(channels[:4]):  # default maxLiveChannels is 2
        assert service.hook('publish', channel, clientid=str(n)).status_int == 200
    assert get_user(client, 'alice')['usage'] == {'channels': 6, 'liveChannels': 4}


def test_zero_max_channels_refuses_the_first(client):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 0}})
    body = assert_error(create_channel(client, 'alice', status=403), 403, 5)
    assert body['data'] == {'limit': 'maxChannels', 'value': 0}


# Usage and maxChannels #######################################################

def test_usage_follows_creates_deletes_and_live(client, service):
    first = create_channel(client, 'alice', 'one')
    second = create_channel(client, 'alice', 'two')
    create_channel(client, 'bob', 'three')
    assert get_user(client, 'alice')['usage'] == {'channels': 2, 'liveChannels': 0}
    assert service.hook('publish', first).status_int == 200
    assert get_user(client, 'alice')['usage'] == {'channels': 2, 'liveChannels': 1}
    assert get_user(client, 'bob')['usage'] == {'channels': 1, 'liveChannels': 0}
    assert service.hook('publish_done', first).status_int == 200
    assert get_user(client, 'alice')['usage'] == {'channels': 2, 'liveChannels': 0}
    assert service.hook('publish', second).status_int == 200
    client.delete('/v1/channels/' + second['id'], status=204)
    assert get_user(client, 'alice')['usage'] == {'channels': 1, 'liveChannels': 0}
    client.delete('/v1/channels/' + first['id'], status=204)
    assert get_user(client, 'alice')['usage'] == {'channels': 0, 'liveChannels': 0}


def test_max_channels_enforced_with_the_limit_named(client):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 2}})
    kept = [create_channel(client, 'alice', 'c%d' % n)['id'] for n in range(2)]
    body = assert_error(create_channel(client, 'alice', status=403), 403, 5)
    assert body['data'] == {'limit': 'maxChannels', 'value': 2}
    assert 'maxChannels' in body['msg']
    listing = client.get('/v1/channels?userId=alice').json['data']
    assert listing['total'] == 2 and {item['id'] for item in listing['items']} == set(kept)
    # Other users are not affected, and freeing a slot or raising the limit lets one more in.
    create_channel(client, 'bob')
    client.delete('/v1/channels/' + kept[0], status=204)
    create_channel(client, 'alice')
    assert_error(create_channel(client, 'alice', status=403), 403, 5)
    client.patch_json('/v1/users/alice', {'limits': {'maxChannels': 3}})
    create_channel(client, 'alice')
    assert get_user(client, 'alice')['usage']['channels'] == 3


def test_validation_comes_before_the_limit(client):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 0}})
    response = client.post_json('/v1/channels', {'userId': 'alice', 'name': ''},
                                expect_errors=True)
    assert_error(response, 422, 2)


# DELETE ######################################################################

def test_delete_user_without_channels(client):
    client.put_json('/v1/users/alice', {})
    response = client.delete('/v1/users/alice', status=204)
    assert response.body == b''
    assert_error(client.get('/v1/users/alice', expect_errors=True), 404, 6)
    assert_error(client.delete('/v1/users/alice', expect_errors=True), 404, 6)


def test_delete_user_with_channels_is_409(client):
    channel = create_channel(client, 'alice')
    body = assert_error(client.delete('/v1/users/alice', expect_errors=True), 409, 10)
    assert body['data'] == {'channels': 1}
    assert get_user(client, 'alice')['usage']['channels'] == 1
    assert client.get('/v1/channels/' + channel['id']).json['data']['userId'] == 'alice'
    assert_error(client.delete('/v1/users/alice?force=false', expect_errors=True), 409, 10)


def test_delete_user_force_deletes_channels_and_ends_live_stream(client, service):
    live = create_channel(client, 'alice', 'live')
    idle = create_channel(client, 'alice', 'idle')
    other = create_channel(client, 'bob', 'bob')
    assert service.hook('publish', live).status_int == 200
    stats = client.get('/v1/stats').json['data']
    assert (stats['users'], stats['channels'], stats['liveChannels']) == (2, 3, 1)
    client.delete('/v1/users/alice?force=true', status=204)
    assert_error(client.get('/v1/users/alice', expect_errors=True), 404, 6)
    for channel in (live, idle):
        assert_error(client.get('/v1/channels/' + channel['id'], expect_errors=True), 404, 6)
    stats = client.get('/v1/stats').json['data']
    assert (stats['users'], stats['channels'], stats['liveChannels']) == (1, 1, 0)
    assert [item['id'] for item in client.get('/v1/channels').json['data']['items']] == \
        [other['id']]
    # The encoder still on air is dropped at its next update, and cannot publish again.
    assert service.hook('update_publish', live).status_int == 403
    assert service.hook('publish', live).status_int == 403


def test_delete_user_bad_force_value_is_400(client):
    create_channel(client, 'alice')
    assert_error(client.delete('/v1/users/alice?force=yes', expect_errors=True), 400, 1)
    assert get_user(client, 'alice')['usage']['channels'] == 1


def test_delete_unknown_user_is_404(client):
    assert_error(client.delete('/v1/users/ghost', expect_errors=True), 404, 6)
    assert_error(client.delete('/v1/users/ghost?force=true', expect_errors=True), 404, 6)


def test_deleted_user_comes_back_with_defaults(client):
    client.put_json('/v1/users/alice', {'limits': {'maxChannels': 50}})
    client.delete('/v1/users/alice', status=204)
    create_channel(client, 'alice')
    assert get_user(client, 'alice')['limits'] == DEFAULTS


# Listing #####################################################################

def test_list_users_pagination(client):
    for n in range(5):
        client.put_json('/v1/users/u%d' % n, {'limits': {'maxChannels': n}}, status=201)
    seen, cursor, pages = [], None, 0
    while True:
        listing = client.get('/v1/users?limit=2' + ('&cursor=' + cursor if cursor else '')
                             ).json['data']
        assert set(listing) == {'items', 'total', 'nextCursor'}
        assert listing['total'] == 5
        pages += 1
        seen += listing['items']
        cursor = listing['nextCursor']
        if cursor is None:
            break
    assert pages == 3
    assert [user['userId'] for user in seen] == ['u4', 'u3', 'u2', 'u1', 'u0']
    assert [user['limits']['maxChannels'] for user in seen] == [4, 3, 2, 1, 0]
    assert all('clientId' not in user for user in seen)


def test_list_users_counts_auto_created_and_deleted_users(client):
    create_channel(client, 'auto')
    client.put_json('/v1/users/explicit', {})
    listing = client.get('/v1/users').json['data']
    assert [user['userId'] for user in listing['items']] == ['explicit', 'auto']
    assert listing['total'] == 2 and listing['nextCursor'] is None
    client.delete('/v1/users/auto?force=true', status=204)
    listing = client.get('/v1/users').json['data']
    assert [user['userId'] for user in listing['items']] == ['explicit']
    assert listing['total'] == 1


@pytest.mark.parametrize('query', ['limit=0', 'limit=101', 'limit=x', 'cursor=bogus',
                                   'sort=userId'])
def test_list_users_bad_query_is_400(client, query):
    client.put_json('/v1/users/alice', {})
    assert_error(client.get('/v1/users?' + query, expect_errors=True), 400, 1)
