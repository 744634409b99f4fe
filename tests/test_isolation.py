"""Isolation: an app client never sees nor touches another client's users and channels."""

import pytest


def assert_not_found(response):
    assert response.status_int == 404, (response.request.method, response.request.url,
                                        response.body)
    assert response.content_type == 'application/json'
    assert response.json['ec'] == 6
    return response


@pytest.fixture
def world(new_client, hook):
    """Client A with user `shared` (two channels, one live) and client B with its own."""
    a, b = new_client(name='A'), new_client(name='B')
    a.put_json('/v1/users/shared', {'limits': {'maxChannels': 7}}, status=201)
    a_live = a.post_json('/v1/channels', {'userId': 'shared', 'name': 'A live',
                                          'metadata': {'owner': 'A'}}).json['data']
    a_idle = a.post_json('/v1/channels', {'userId': 'shared', 'name': 'A idle'}).json['data']
    assert hook('publish', a_live['id'], key=a_live['streamId'].split('?key=')[1]
                ).status_int == 200
    b_channel = b.post_json('/v1/channels', {'userId': 'bonly', 'name': 'B chan'}).json['data']
    return a, b, a_live, a_idle, b_channel


def snapshot(a, a_live, a_idle):
    """Everything A can read about its own data."""
    return {
        'channels': [a.get('/v1/channels/' + c['id']).json['data'] for c in (a_live, a_idle)],
        'stats': [a.get('/v1/channels/%s/stats' % c['id']).json['data']
                  for c in (a_live, a_idle)],
        'sessions': [a.get('/v1/channels/%s/sessions' % c['id']).json['data']
                     for c in (a_live, a_idle)],
        'user': a.get('/v1/users/shared').json['data'],
        'list': a.get('/v1/channels').json['data'],
        'users': a.get('/v1/users').json['data'],
        'totals': a.get('/v1/stats').json['data'],
    }


def test_b_gets_404_on_every_channel_route_of_a(world):
    a, b, a_live, a_idle, _ = world
    before = snapshot(a, a_live, a_idle)
    for channel in (a_live, a_idle):
        path = '/v1/channels/' + channel['id']
        assert_not_found(b.get(path, expect_errors=True))
        assert_not_found(b.put_json(path, {'name': 'taken'}, expect_errors=True))
        assert_not_found(b.patch_json(path, {'enabled': False}, expect_errors=True))
        # 404 comes before 400 and 422: B learns nothing from a bad body either.
        assert_not_found(b.put(path, '[]', content_type='application/json',
                               expect_errors=True))
        assert_not_found(b.patch_json(path, {'name': ''}, expect_errors=True))
        assert_not_found(b.post(path + '/rotate-key', expect_errors=True))
        assert_not_found(b.get(path + '/stats', expect_errors=True))
        assert_not_found(b.get(path + '/sessions', expect_errors=True))
        assert_not_found(b.delete(path, expect_errors=True))
    assert snapshot(a, a_live, a_idle) == before
    assert before['channels'][0]['status'] == 'live'


def test_b_gets_the_same_answer_for_a_channel_of_a_and_one_that_does_not_exist(world):
    _, b, a_live, _, _ = world
    mine = b.get('/v1/channels/' + a_live['id'], expect_errors=True)
    nobody = b.get('/v1/channels/' + 'a' * 16, expect_errors=True)
    assert (mine.status_int, mine.json) == (nobody.status_int, nobody.json)


def test_b_gets_404_on_every_user_route_of_a(world):
    a, b, a_live, a_idle, _ = world
    before = snapshot(a, a_live, a_idle)
    assert_not_found(b.get('/v1/users/shared', expect_errors=True))
    assert_not_found(b.patch_json('/v1/users/shared', {'limits': {'maxChannels': 0}},
                                  expect_errors=True))
    assert_not_found(b.patch_json('/v1/users/shared', {'limits': {'maxChannels': -1}},
                                  expect_errors=True))
    assert_not_found(b.delete('/v1/users/shared', expect_errors=True))
    assert_not_found(b.delete('/v1/users/shared?force=true', expect_errors=True))
    assert snapshot(a, a_live, a_idle) == before


def test_put_of_the_same_user_id_by_b_creates_b_own_user(world):
    a, b, a_live, a_idle, _ = world
    before = snapshot(a, a_live, a_idle)
    created = b.put_json('/v1/users/shared', {'limits': {'maxChannels': 1}}, status=201)
    mine = created.json['data']
    assert mine['userId'] == 'shared'
    assert mine['limits']['maxChannels'] == 1
    assert mine['usage'] == {'channels': 0, 'liveChannels': 0}
    # B's `shared` is a different user: its limit and usage are B's alone.
    b.post_json('/v1/channels', {'userId': 'shared', 'name': 'B shared'}, status=201)
    refused = b.post_json('/v1/channels', {'userId': 'shared', 'name': 'over'},
                          expect_errors=True)
    assert (refused.status_int, refused.json['ec']) == (403, 5)
    assert b.get('/v1/users/shared').json['data']['usage'] == {'channels': 1, 'liveChannels': 0}
    b.patch_json('/v1/users/shared', {'limits': {'maxLiveChannels': 0}})
    assert a.get('/v1/users/shared').json['data'] == before['user']
    assert before['user']['limits']['maxChannels'] == 7
    assert before['user']['usage'] == {'channels': 2, 'liveChannels': 1}
    # Deleting B's `shared` leaves A's in place.
    b.delete('/v1/users/shared?force=true', status=204)
    after = snapshot(a, a_live, a_idle)
    assert after == before


def test_a_channels_never_appear_in_b_lists_or_totals(world):
    _, b, a_live, a_idle, b_channel = world
    a_ids = {a_live['id'], a_idle['id']}
    listing = b.get('/v1/channels').json['data']
    assert [item['id'] for item in listing['items']] == [b_channel['id']]
    assert listing['total'] == 1
    for query in ('?userId=shared', '?status=live', '?q=A%20i', '?userId=shared&status=live'):
        assert b.get('/v1/channels' + query).json['data'] == \
            {'items': [], 'total': 0, 'nextCursor': None}, query
    assert b.get('/v1/channels?status=idle').json['data']['total'] == 1
    users = b.get('/v1/users').json['data']
    assert [user['userId'] for user in users['items']] == ['bonly'] and users['total'] == 1
    stats = b.get('/v1/stats').json['data']
    assert (stats['users'], stats['channels'], stats['liveChannels'], stats['sessions']) == \
        (1, 1, 0, 0)
    assert not a_ids & {item['id'] for item in listing['items']}


def test_b_cannot_name_a_client_id(world):
    a, b, a_live, a_idle, _ = world
    before = snapshot(a, a_live, a_idle)
    a_client = a.client['id']
    for path in ('/v1/channels', '/v1/users', '/v1/users/shared'):
        assert_not_found(b.get('%s?clientId=%s' % (path, a_client), expect_errors=True))
    assert_not_found(b.put_json('/v1/users/shared?clientId=' + a_client,
                                {'limits': {'maxChannels': 0}}, expect_errors=True))
    assert_not_found(b.patch_json('/v1/users/shared?clientId=' + a_client,
                                  {'limits': {'maxChannels': 0}}, expect_errors=True))
    assert_not_found(b.delete('/v1/users/shared?force=true&clientId=' + a_client,
                              expect_errors=True))
    assert_not_found(b.post_json('/v1/channels?clientId=' + a_client,
                                 {'userId': 'shared', 'name': 'planted'}, expect_errors=True))
    assert snapshot(a, a_live, a_idle) == before
    # B's own id is fine.
    own = b.get('/v1/channels?clientId=' + b.client['id']).json['data']
    assert own['total'] == 1


def test_admin_sees_both_with_client_id(world, admin):
    a, b, a_live, a_idle, b_channel = world
    listing = admin.get('/v1/channels').json['data']
    owners = {item['id']: item['clientId'] for item in listing['items']}
    assert owners == {a_live['id']: a.client['id'], a_idle['id']: a.client['id'],
                      b_channel['id']: b.client['id']}
    assert listing['total'] == 3
    assert [item['id'] for item in listing['items']] == \
        [b_channel['id'], a_idle['id'], a_live['id']]
    only_a = admin.get('/v1/channels?clientId=' + a.client['id']).json['data']
    assert {item['id'] for item in only_a['items']} == {a_live['id'], a_idle['id']}
    assert only_a['total'] == 2
    users = admin.get('/v1/users').json['data']
    assert {(user['userId'], user['clientId']) for user in users['items']} == \
        {('shared', a.client['id']), ('bonly', b.client['id'])}
    assert users['total'] == 2
    seen = admin.get('/v1/channels/' + a_live['id']).json['data']
    assert seen['clientId'] == a.client['id'] and seen['status'] == 'live'
    stats = admin.get('/v1/stats').json['data']
    assert (stats['users'], stats['channels'], stats['liveChannels']) == (2, 3, 1)


def test_admin_acts_on_a_user_through_client_id(world, admin):
    a, _, _, _, _ = world
    query = '?clientId=' + a.client['id']
    user = admin.get('/v1/users/shared' + query).json['data']
    assert user['clientId'] == a.client['id'] and user['usage']['channels'] == 2
    admin.patch_json('/v1/users/shared' + query, {'limits': {'maxChannels': 2}})
    assert a.get('/v1/users/shared').json['data']['limits']['maxChannels'] == 2
    refused = a.post_json('/v1/channels', {'userId': 'shared', 'name': 'third'},
                          expect_errors=True)
    assert (refused.status_int, refused.json['ec']) == (403, 5)
    created = admin.post_json('/v1/channels' + query, {'userId': 'other', 'name': 'by admin'},
                              status=201).json['data']
    assert created['clientId'] == a.client['id']
    assert a.get('/v1/channels/' + created['id']).json['data']['userId'] == 'other'
    response = admin.delete('/v1/users/shared' + query, expect_errors=True)
    assert (response.status_int, response.json['ec']) == (409, 10)
    admin.delete('/v1/users/shared?force=true&clientId=' + a.client['id'], status=204)
    assert_not_found(a.get('/v1/users/shared', expect_errors=True))
    assert a.get('/v1/stats').json['data']['liveChannels'] == 0


def test_admin_unknown_client_id_is_404(world, admin):
    assert_not_found(admin.get('/v1/users/shared?clientId=nosuchclient', expect_errors=True))
    assert_not_found(admin.get('/v1/channels?clientId=nosuchclient', expect_errors=True))


def test_a_still_manages_its_own_after_b_tried(world):
    a, b, a_live, _, _ = world
    for _ in range(3):
        b.post('/v1/channels/%s/rotate-key' % a_live['id'], expect_errors=True)
        b.delete('/v1/channels/' + a_live['id'], expect_errors=True)
    rotated = a.post('/v1/channels/%s/rotate-key' % a_live['id']).json['data']
    assert rotated['streamId'] != a_live['streamId']
    a.delete('/v1/channels/' + a_live['id'], status=204)
