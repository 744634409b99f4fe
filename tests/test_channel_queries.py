"""Channel lists that must cost what they find, not the number of channels:
their query plans, their totals, and the shortest name search."""

import re

import pytest

from livestream_api import EC_BAD_REQUEST

#: A plan line that reads every channel or user (other than the disabled ones), or
#: every channel of a client (a page's walk has `id<?` and stops at its LIMIT).
WALK = re.compile(r'^SCAN (c|u|channels|users)\b(?! USING (COVERING )?INDEX channels_disabled)'
                  r'|INDEX channels_by_client \(client_id=\?\)$')


def plan_of_list(store, client_pk, admin, user_id=None, status=None):
    """EXPLAIN QUERY PLAN of the statement Store.list_channels runs for these filters."""
    statements = []
    store.db.set_trace_callback(statements.append)
    try:
        store._rows.clear()
        store.list_channels(client_pk, user_id, status, None, 2 ** 63 - 1, 20, admin)
    finally:
        store.db.set_trace_callback(None)
    page_sql = [sql for sql in statements if 'json_group_array' in sql][-1]
    return [row[3] for row in store.db.execute('EXPLAIN QUERY PLAN ' + page_sql)]


@pytest.mark.parametrize('as_admin, filters', [
    (True, {'user_id': 'alice'}), (False, {'user_id': 'alice'}),
    (True, {'status': 'disabled'}), (False, {'status': 'disabled'}),
    (True, {'status': 'idle'}), (False, {'status': 'idle'}),
    (True, {'status': 'live'}), (False, {'status': 'live'})])
def test_filtered_lists_and_their_totals_walk_no_channels(app, new_client, as_admin, filters):
    client = new_client()
    client.post_json('/v1/channels', {'userId': 'alice', 'name': 'one'}, status=201)
    store = app.livestream.store
    client_pk = store.client_by_token(client.client['tokenId'])['id']
    plan = plan_of_list(store, None if as_admin else client_pk, as_admin, **filters)
    assert not [line for line in plan if WALK.search(line)], plan
    if 'user_id' in filters and as_admin:
        assert any('users_by_user_id' in line for line in plan), plan


def test_idle_and_disabled_totals_follow_every_change(admin, new_client, hook):
    client, other = new_client(), new_client(name='other')
    channels = [client.post_json('/v1/channels', {'userId': 'alice', 'name': 'c%d' % n})
                .json['data'] for n in range(4)]
    other.post_json('/v1/channels', {'userId': 'alice', 'name': 'theirs'})
    client.patch_json('/v1/channels/' + channels[0]['id'], {'enabled': False})
    name, key = channels[1]['streamId'].split('?key=')
    assert hook('publish', name, key=key).status_int == 200

    def totals(api):
        return [api.get('/v1/channels?status=' + status).json['data']['total']
                for status in ('idle', 'live', 'disabled')]
    assert totals(client) == [2, 1, 1]
    assert totals(admin) == [3, 1, 1]
    client.patch_json('/v1/channels/' + channels[1]['id'], {'enabled': False})
    assert totals(client) == [2, 0, 2]
    client.delete('/v1/channels/' + channels[0]['id'])
    assert totals(client) == [2, 0, 1]
    assert totals(admin) == [3, 0, 1]


def test_admin_user_filter_spans_clients(admin, new_client):
    for name in ('first', 'second'):
        new_client(name=name).post_json('/v1/channels', {'userId': 'alice', 'name': name})
    new_client(name='third').post_json('/v1/channels', {'userId': 'bob', 'name': 'bob'})
    listing = admin.get('/v1/channels?userId=alice').json['data']
    assert [item['name'] for item in listing['items']] == ['second', 'first']
    assert listing['total'] == 2


@pytest.mark.parametrize('q', ['a', 'ab', 'é'])
def test_q_under_three_characters_is_400_naming_the_minimum(admin, q):
    answer = admin.get('/v1/channels', {'q': q}, status=400)
    assert answer.json['ec'] == EC_BAD_REQUEST
    assert 'q must be 3 to 200 characters' in answer.json['msg']


def test_q_of_three_characters_searches(admin, new_client):
    new_client().post_json('/v1/channels', {'userId': 'alice', 'name': 'Cooking'})
    assert admin.get('/v1/channels', {'q': 'coo'}).json['data']['total'] == 1
