"""The admin clients routes: create, list, rotate, delete."""

import re

import pytest
import webtest

from conftest import ADMIN


def as_client(app, token_id, secret):
    test_app = webtest.TestApp(app)
    test_app.authorization = ('Basic', (token_id, secret))
    return test_app


# Create -----------------------------------------------------------------------

def test_create_client_answers_201_with_its_fields(admin):
    response = admin.post_json('/v1/clients', {'name': 'web backend', 'role': 'app'},
                               status=201)
    assert response.content_type == 'application/json'
    data = response.json['data']
    assert response.json['ec'] == 0
    assert set(data) >= {'id', 'name', 'role', 'tokenId', 'tokenSecret', 'createdAt'}
    assert data['name'] == 'web backend'
    assert data['role'] == 'app'
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$', data['createdAt'])
    assert data['tokenSecret'] and data['tokenId'] and data['tokenId'] != data['id']


def test_create_client_role_defaults_to_app(admin):
    assert admin.post_json('/v1/clients', {'name': 'x'}).json['data']['role'] == 'app'


def test_created_credentials_work(admin, app):
    data = admin.post_json('/v1/clients', {'name': 'x', 'role': 'admin'}).json['data']
    as_client(app, data['tokenId'], data['tokenSecret']).get('/v1/clients', status=200)


def test_created_secret_is_shown_only_once(admin):
    data = admin.post_json('/v1/clients', {'name': 'x'}).json['data']
    listing = admin.get('/v1/clients')
    assert data['tokenSecret'] not in listing.text
    item = next(i for i in listing.json['data']['items'] if i['tokenId'] == data['tokenId'])
    assert 'tokenSecret' not in item


def test_each_client_gets_a_distinct_token(admin):
    first = admin.post_json('/v1/clients', {'name': 'a'}).json['data']
    second = admin.post_json('/v1/clients', {'name': 'a'}).json['data']
    assert first['tokenId'] != second['tokenId']
    assert first['tokenSecret'] != second['tokenSecret']
    assert first['id'] != second['id']


@pytest.mark.parametrize('role', ['root', 'ADMIN', '', None, 1])
def test_create_client_with_bad_role_is_422(admin, role):
    response = admin.post_json('/v1/clients', {'name': 'x', 'role': role}, status=422)
    assert response.json['ec'] == 2
    assert set(response.json['data']['fields']) == {'role'}


@pytest.mark.parametrize('name', [None, '', '   ', 'x' * 201, 42, 'bad\x00name'])
def test_create_client_with_bad_name_is_422(admin, name):
    body = {} if name is None else {'name': name}
    response = admin.post_json('/v1/clients', body, status=422)
    assert response.json['ec'] == 2
    assert 'name' in response.json['data']['fields']


def test_create_client_with_unknown_field_is_422(admin):
    response = admin.post_json('/v1/clients', {'name': 'x', 'tokenSecret': 'mine'}, status=422)
    assert response.json['ec'] == 2
    assert response.json['data']['fields'] == {'tokenSecret': 'unknown field'}


def test_rejected_create_stores_nothing(admin):
    admin.post_json('/v1/clients', {'name': 'x', 'role': 'root'}, status=422)
    assert admin.get('/v1/clients').json['data']['total'] == 1


# List -------------------------------------------------------------------------

def test_list_has_no_secret_or_hash(admin):
    admin.post_json('/v1/clients', {'name': 'x'})
    data = admin.get('/v1/clients').json['data']
    for item in data['items']:
        assert not [key for key in item if 'secret' in key.lower() or 'hash' in key.lower()]
    assert ADMIN[1] not in admin.get('/v1/clients').text


def test_list_shape_is_items_total_next_cursor(admin):
    data = admin.get('/v1/clients').json['data']
    assert set(data) == {'items', 'total', 'nextCursor'}
    assert data['total'] == 1
    assert data['nextCursor'] is None
    assert data['items'][0]['tokenId'] == ADMIN[0]


def test_list_pages_with_limit_and_next_cursor_newest_first(admin):
    names = ['c1', 'c2', 'c3', 'c4']
    for name in names:
        admin.post_json('/v1/clients', {'name': name})
    first = admin.get('/v1/clients?limit=2').json['data']
    assert [item['name'] for item in first['items']] == ['c4', 'c3']
    assert first['total'] == 5
    assert first['nextCursor']
    second = admin.get('/v1/clients?limit=2&cursor=' + first['nextCursor']).json['data']
    assert [item['name'] for item in second['items']] == ['c2', 'c1']
    third = admin.get('/v1/clients?limit=2&cursor=' + second['nextCursor']).json['data']
    assert [item['tokenId'] for item in third['items']] == [ADMIN[0]]
    assert third['nextCursor'] is None


def test_list_last_full_page_has_null_cursor(admin):
    admin.post_json('/v1/clients', {'name': 'c1'})
    assert admin.get('/v1/clients?limit=2').json['data']['nextCursor'] is None


#: Cursors this API never returned: not base64, {"a": "x"}, {}, a NUL, {"a": -1},
#: {"a": 1e400} (infinity), [1], a non-ASCII character, bytes that are not UTF-8.
TAMPERED_CURSORS = ['garbage', 'eyJhIjogIngifQ', 'e30', '%00', 'eyJhIjogLTF9',
                    'eyJhIjogMWU0MDB9', 'WzFd', '%C3%A9', '__-_']


@pytest.mark.parametrize('cursor', TAMPERED_CURSORS)
def test_list_with_tampered_cursor_is_400(admin, cursor):
    response = admin.get('/v1/clients?cursor=' + cursor, status=400)
    assert response.json['ec'] == 1
    assert 'cursor' in response.json['msg']


def test_list_with_edited_real_cursor_is_400(admin):
    for name in ('c1', 'c2', 'c3'):
        admin.post_json('/v1/clients', {'name': name})
    cursor = admin.get('/v1/clients?limit=1').json['data']['nextCursor']
    response = admin.get('/v1/clients?cursor=' + cursor[:-2] + '!!', status=400)
    assert response.json['ec'] == 1


@pytest.mark.parametrize('limit', ['0', '101', '-1', 'ten', '1.5', ''])
def test_list_with_bad_limit_is_400(admin, limit):
    response = admin.get('/v1/clients?limit=' + limit, status=400)
    assert response.json['ec'] == 1


def test_list_with_unknown_query_parameter_is_400(admin):
    assert admin.get('/v1/clients?role=app', status=400).json['ec'] == 1


# Rotate -----------------------------------------------------------------------

def test_rotate_gives_a_new_secret_and_the_old_one_stops_working(admin, app):
    data = admin.post_json('/v1/clients', {'name': 'x', 'role': 'admin'}).json['data']
    rotated = admin.post('/v1/clients/%s/rotate' % data['tokenId']).json['data']
    assert rotated['tokenId'] == data['tokenId']
    assert rotated['tokenSecret'] != data['tokenSecret']
    old = as_client(app, data['tokenId'], data['tokenSecret']).get('/v1/clients', status=401)
    assert old.json['ec'] == 3
    as_client(app, data['tokenId'], rotated['tokenSecret']).get('/v1/clients', status=200)


@pytest.mark.parametrize('named_by', ['id', 'tokenId'])
def test_rotate_and_delete_take_the_id_or_the_token_id(admin, app, named_by):
    """A client has two ids, `id` (as in clientId) and `tokenId` (its credentials'
    name); the paths under /v1/clients take either."""
    data = admin.post_json('/v1/clients', {'name': 'x', 'role': 'admin'}).json['data']
    rotated = admin.post('/v1/clients/%s/rotate' % data[named_by]).json['data']
    assert (rotated['id'], rotated['tokenId']) == (data['id'], data['tokenId'])
    as_client(app, data['tokenId'], rotated['tokenSecret']).get('/v1/clients', status=200)
    admin.delete('/v1/clients/%s' % data[named_by], status=204)
    admin.delete('/v1/clients/%s' % data[named_by], status=404)
    as_client(app, data['tokenId'], rotated['tokenSecret']).get('/v1/clients', status=401)


def test_rotate_unknown_token_id_is_404(admin):
    response = admin.post('/v1/clients/no-such-token/rotate', status=404)
    assert response.json['ec'] == 6


def test_rotate_environment_admin_is_409(admin):
    response = admin.post('/v1/clients/%s/rotate' % ADMIN[0], status=409)
    assert response.json['ec'] == 10
    assert 'LIVE_TOKEN' in response.json['msg']
    admin.get('/v1/clients', status=200)


# Delete -----------------------------------------------------------------------

def test_delete_answers_204_and_the_token_stops_working(admin, app):
    data = admin.post_json('/v1/clients', {'name': 'x', 'role': 'admin'}).json['data']
    response = admin.delete('/v1/clients/%s' % data['tokenId'], status=204)
    assert response.body == b''
    as_client(app, data['tokenId'], data['tokenSecret']).get('/v1/clients', status=401)
    tokens = [item['tokenId'] for item in admin.get('/v1/clients').json['data']['items']]
    assert data['tokenId'] not in tokens


def test_delete_unknown_token_id_is_404(admin):
    response = admin.delete('/v1/clients/no-such-token', status=404)
    assert response.json['ec'] == 6


def test_delete_twice_is_404(admin):
    token_id = admin.post_json('/v1/clients', {'name': 'x'}).json['data']['tokenId']
    admin.delete('/v1/clients/%s' % token_id, status=204)
    admin.delete('/v1/clients/%s' % token_id, status=404)


def test_delete_environment_admin_is_409(admin):
    response = admin.delete('/v1/clients/%s' % ADMIN[0], status=409)
    assert response.json['ec'] == 10
    admin.get('/v1/clients', status=200)


@pytest.fixture
def owning_client(admin, new_client):
    """An app client that owns one user with two channels."""
    owner = new_client()
    for name in ('one', 'two'):
        owner.post_json('/v1/channels', {'userId': 'alice', 'name': name}, status=201)
    assert admin.get('/v1/channels').json['data']['total'] == 2
    return owner


def test_delete_client_owning_users_is_409(admin, owning_client):
    response = admin.delete('/v1/clients/%s' % owning_client.client['tokenId'], status=409)
    assert response.json['ec'] == 10
    assert response.json['data'] == {'users': 1}
    owning_client.get('/v1/channels', status=200)


def test_delete_client_owning_users_with_force_false_is_409(admin, owning_client):
    admin.delete('/v1/clients/%s?force=false' % owning_client.client['tokenId'], status=409)


def test_delete_client_with_bad_force_value_is_400(admin, owning_client):
    response = admin.delete('/v1/clients/%s?force=yes' % owning_client.client['tokenId'],
                            status=400)
    assert response.json['ec'] == 1


def test_force_delete_removes_its_users_and_channels(admin, owning_client):
    admin.delete('/v1/clients/%s?force=true' % owning_client.client['tokenId'], status=204)
    assert admin.get('/v1/channels').json['data'] == {'items': [], 'total': 0,
                                                      'nextCursor': None}
    assert admin.get('/v1/users').json['data']['total'] == 0
    owning_client.get('/v1/channels', status=401)


def test_force_delete_leaves_other_clients_channels(admin, owning_client, new_client):
    other = new_client(name='other')
    other.post_json('/v1/channels', {'userId': 'bob', 'name': 'kept'}, status=201)
    admin.delete('/v1/clients/%s?force=true' % owning_client.client['tokenId'], status=204)
    items = admin.get('/v1/channels').json['data']['items']
    assert [item['name'] for item in items] == ['kept']
    assert other.get('/v1/channels').json['data']['total'] == 1


def test_client_that_never_owned_users_deletes_without_force(admin, new_client):
    idle = new_client()
    admin.delete('/v1/clients/%s' % idle.client['tokenId'], status=204)

