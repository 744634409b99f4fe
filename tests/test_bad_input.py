"""Issue 7, point 5: the bad-input table.

Every write route gets every kind of bad input; each answer is the 4xx that
API.md's order of checks gives (401/429 -> 403 -> 405 -> 404 -> 400/413 -> 422),
as a JSON envelope with the matching `ec`, never a 500, and the database file
is byte-for-byte the same afterwards (a full `iterdump` of every table, nothing
ignored).

Routes that take no body (`POST /v1/clients/{t}/rotate`,
`POST /v1/channels/{id}/rotate-key`) do not read one: whatever body is sent is
ignored and the rotation happens (200; test_no_body_route_ignores_any_body).
Their bad *paths* and *query strings* are refused like everyone else's.

The order of checks holds for query strings too: the resource (and a
`clientId`) is looked up first, so an unknown query parameter on an unknown id
is a 404, and on a known one a 400.

The nginx-rtmp hook takes form fields (application/x-www-form-urlencoded, as
nginx-rtmp sends them), not JSON: any other content type is a 400, a missing or
unknown `call` is a 400, a stream name that is not a channel id is a 403 for
publish/play (what nginx-rtmp needs to refuse) and a 400 otherwise. The hook URL
takes only `secret`: another query parameter, or `secret` twice, is a 400 (after
the secret is checked: a wrong one is a 403 first).
"""

import base64
import contextlib
import json
import sqlite3

import pytest
import webtest

MiB = 1024 * 1024
LONG = 'a' * 10_000          # an over-long path segment / field


def dump(path):
    """Every row of every table, as SQL text: the whole database."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


@pytest.fixture
def world(app, admin):
    """An admin, an app client (to rotate), a user and a channel of the admin's."""
    app_client = admin.post_json('/v1/clients', {'name': 'app', 'role': 'app'}).json['data']
    admin.put_json('/v1/users/u1', {'limits': {'maxChannels': 5}})
    channel = admin.post_json('/v1/channels', {'userId': 'u1', 'name': 'first'}).json['data']
    return {'admin': admin, 'app': app, 'db': app.livestream.store.path,
            'token': app_client['tokenId'], 'channel': channel['id'],
            'key': channel['streamId'].split('key=')[1]}


def expect_error(response, status, ec):
    assert response.status_int == status, response.body[:500]
    assert response.content_type == 'application/json'
    body = response.json
    assert body['ec'] == ec, body
    assert isinstance(body['msg'], str) and body['msg']
    assert 'data' in body
    return body


# JSON-body routes ############################################################

#: name -> (method, path template, a valid body, where a bad value goes)
JSON_ROUTES = {
    'POST /v1/clients': ('POST', '/v1/clients', {'name': 'x', 'role': 'app'}, 'name'),
    'PUT /v1/users/{u}': ('PUT', '/v1/users/{user}', {'limits': {'maxChannels': 3}},
                          'limits.maxChannels'),
    'PATCH /v1/users/{u}': ('PATCH', '/v1/users/{user}', {'limits': {'maxChannels': 3}},
                            'limits.maxChannels'),
    'POST /v1/channels': ('POST', '/v1/channels', {'userId': 'u1', 'name': 'x'}, 'name'),
    'PUT /v1/channels/{id}': ('PUT', '/v1/channels/{channel}', {'name': 'x'}, 'name'),
    'PATCH /v1/channels/{id}': ('PATCH', '/v1/channels/{channel}', {'name': 'x'}, 'name'),
}

#: A placeholder replaced by the raw JSON text of a bad value.
SLOT = '"@@VALUE@@"'


def with_value(route, raw_value):
    """The route's valid body, as bytes, with `raw_value` (JSON text) in its slot."""
    _, _, body, field = JSON_ROUTES[route]
    body = json.loads(json.dumps(body))
    if field == 'limits.maxChannels':
        body['limits']['maxChannels'] = '@@VALUE@@'
    else:
        body[field] = '@@VALUE@@'
    text = json.dumps(body)
    assert SLOT in text
    return text.replace(SLOT, raw_value).encode('utf-8') if isinstance(raw_value, str) \
        else text.encode('utf-8').replace(SLOT.encode(), raw_value)


def valid(route):
    return json.dumps(JSON_ROUTES[route][2]).encode()


#: name -> route -> (body bytes, content type, path user/channel override, query,
#:                   expected status, expected ec); None where the input does not apply.
def json_case(name, route):
    ct = 'application/json'
    has_path = '{' in JSON_ROUTES[route][1]
    takes_client_id = route in ('PUT /v1/users/{u}', 'PATCH /v1/users/{u}', 'POST /v1/channels')
    cases = {
        'malformed JSON': (b'{"name": "x", ', ct, None, '', 400, 1),
        'malformed JSON (single quotes)': (b"{'name': 'x'}", ct, None, '', 400, 1),
        'JSON array': (b'[{"name": "x"}]', ct, None, '', 400, 1),
        'JSON string': (b'"x"', ct, None, '', 400, 1),
        'JSON number': (b'42', ct, None, '', 400, 1),
        'JSON null': (b'null', ct, None, '', 400, 1),
        'wrong content type text/plain': (valid(route), 'text/plain', None, '', 400, 1),
        'wrong content type form': (b'name=x&userId=u1', 'application/x-www-form-urlencoded',
                                    None, '', 400, 1),
        'no content type': (valid(route), '', None, '', 400, 1),
        'empty body': (b'', ct, None, '', 400, 1),
        'whitespace body': (b' \r\n\t ', ct, None, '', 400, 1),
        '10 MB body': (b'{"name": "' + b'a' * (10 * MiB) + b'"}', ct, None, '', 413, 8),
        'just over max_body_bytes': (b'{"name": "' + b'a' * MiB + b'"}', ct, None, '', 413, 8),
        'nested 1000 arrays': (b'[' * 1000 + b']' * 1000, ct, None, '', 400, 1),
        'nested 1000 objects': (b'{"a":' * 1000 + b'1' + b'}' * 1000, ct, None, '', 400, 1),
        'nested 1000 in a field': (with_value(route, '[' * 1000 + ']' * 1000), ct, None, '',
                                   400, 1),
        'integer 10**5000': (with_value(route, '1' + '0' * 5000), ct, None, '', 400, 1),
        'integer 2**70': (with_value(route, str(2 ** 70)), ct, None, '', 422, 2),
        'integer -2**70': (with_value(route, str(-2 ** 70)), ct, None, '', 422, 2),
        'float 1e400': (with_value(route, '1e400'), ct, None, '', 400, 1),
        'NaN literal': (with_value(route, 'NaN'), ct, None, '', 400, 1),
        'Infinity literal': (with_value(route, 'Infinity'), ct, None, '', 400, 1),
        '-Infinity literal': (with_value(route, '-Infinity'), ct, None, '', 400, 1),
        'invalid UTF-8': (with_value(route, b'"\xff\xfe\xc3("'), ct, None, '', 400, 1),
        'UTF-16 body': (valid(route).decode().encode('utf-16'), ct, None, '', 400, 1),
        'lone surrogate escape': (with_value(route, '"\\ud800"'), ct, None, '', 422, 2),
        'NUL escaped in a string': (with_value(route, '"a\\u0000b"'), ct, None, '', 422, 2),
        'NUL byte raw in a string': (with_value(route, b'"a\x00b"'), ct, None, '', 400, 1),
        'NUL as a field name': (b'{"\\u0000": 1}', ct, None, '', 422, 2),
        'unknown field': (b'{"bogus": 1}', ct, None, '', 422, 2),
        'unknown query parameter': (valid(route), ct, None, '?bogus=1', 400, 1),
        # clientId names the owner, so it is looked up (404) before the query is
        # validated (400): API.md's order of checks.
        'query parameter twice': ((valid(route), ct, None, '?clientId=a&clientId=b', 404, 6)
                                  if takes_client_id else
                                  (valid(route), ct, None, '?x=1&x=2', 400, 1)),
        'unknown clientId value': ((valid(route), ct, None, '?clientId=nope', 404, 6)
                                   if takes_client_id else None),
        'over-long path segment': ((valid(route), ct, LONG, '',
                                    # PUT creates the user, so a bad userId is a bad field
                                    *((422, 2) if route == 'PUT /v1/users/{u}' else (404, 6)))
                                   if has_path else None),
        'over-long path segment + malformed body': (
            (b'{', ct, LONG, '', *((400, 1) if route == 'PUT /v1/users/{u}' else (404, 6)))
            if has_path else None),
        # The resource is looked up (404) before the query is validated (400), as
        # API.md orders the checks; PUT creates the user, so there is no lookup.
        'over-long path segment + unknown query': (
            (valid(route), ct, LONG, '?bogus=1',
             *((400, 1) if route == 'PUT /v1/users/{u}' else (404, 6)))
            if has_path else None),
        'float 1e400 in metadata': ((json.dumps(dict(JSON_ROUTES[route][2], metadata={'x': 1}))
                                     .replace('1}', '1e400}').encode(), ct, None, '', 400, 1)
                                    if 'channels' in route else None),
        'path segment with NUL': ((valid(route), ct, 'ab%00cd', '',
                                   *((422, 2) if route == 'PUT /v1/users/{u}' else (404, 6)))
                                  if has_path else None),
    }
    return cases[name]


JSON_INPUTS = ['malformed JSON', 'malformed JSON (single quotes)', 'JSON array', 'JSON string',
               'JSON number', 'JSON null', 'wrong content type text/plain',
               'wrong content type form', 'no content type', 'empty body', 'whitespace body',
               '10 MB body', 'just over max_body_bytes', 'nested 1000 arrays',
               'nested 1000 objects', 'nested 1000 in a field', 'integer 10**5000',
               'integer 2**70', 'integer -2**70', 'float 1e400', 'NaN literal',
               'Infinity literal', '-Infinity literal', 'invalid UTF-8', 'UTF-16 body',
               'lone surrogate escape', 'NUL escaped in a string', 'NUL byte raw in a string',
               'NUL as a field name', 'unknown field', 'unknown query parameter',
               'query parameter twice', 'unknown clientId value', 'over-long path segment',
               'over-long path segment + malformed body',
               'over-long path segment + unknown query', 'float 1e400 in metadata',
               'path segment with NUL']

JSON_MATRIX = [pytest.param(route, name, id='%s | %s' % (route, name))
               for route in JSON_ROUTES for name in JSON_INPUTS
               if json_case(name, route) is not None]


@pytest.mark.parametrize('route,input_name', JSON_MATRIX)
def test_json_route_refuses_bad_input(world, route, input_name):
    body, content_type, segment, query_string, status, ec = json_case(input_name, route)
    method, template, _, _ = JSON_ROUTES[route]
    path = template.format(user=segment or 'u1', channel=segment or world['channel'])
    before = dump(world['db'])
    headers = {'Content-Type': content_type} if content_type else {}
    response = world['admin'].request(path + query_string, method=method, body=body,
                                      headers=headers, expect_errors=True)
    expect_error(response, status, ec)
    if ec == 2:
        assert response.json['data']['fields'], response.json
    assert dump(world['db']) == before


def test_the_table_covers_every_json_route_and_input():
    """No row silently dropped: each input applies to each route except the
    documented gaps (no path parameter; no clientId parameter; no metadata)."""
    assert len(JSON_MATRIX) == 6 * len(JSON_INPUTS) - 2 * 4 - 3 - 3
    assert len(set(JSON_INPUTS)) == len(JSON_INPUTS)


def test_valid_bodies_of_the_table_are_accepted(world):
    """The control: the same routes with their valid bodies succeed, so the
    refusals above are about the bad input and nothing else."""
    admin = world['admin']
    for route, (method, template, body, _) in JSON_ROUTES.items():
        path = template.format(user='u1', channel=world['channel'])
        response = admin.request(path, method=method, body=json.dumps(body).encode(),
                                 headers={'Content-Type': 'application/json'})
        assert response.status_int in (200, 201), (route, response.body)
        assert response.json['ec'] == 0


@pytest.mark.parametrize('depth', [10, 100, 300, 600, 800, 900, 950, 980, 995, 1000])
def test_deep_metadata_never_breaks_a_channel(world, depth):
    """Nested metadata close to Python's recursion limit: refused (4xx) or
    stored, but never a 500, and a stored channel can still be read and listed."""
    admin = world['admin']
    metadata = b'{"a":' * depth + b'1' + b'}' * depth
    body = b'{"userId": "u1", "name": "deep", "metadata": ' + metadata + b'}'
    before = dump(world['db'])
    response = admin.post('/v1/channels', body, content_type='application/json',
                          expect_errors=True)
    assert response.status_int in (201, 400, 422), response.body[:300]
    if response.status_int != 201:
        expect_error(response, response.status_int, 1 if response.status_int == 400 else 2)
        assert dump(world['db']) == before
        return
    channel_id = response.json['data']['id']
    assert admin.get('/v1/channels/' + channel_id).status_int == 200
    assert admin.get('/v1/channels').status_int == 200


# Routes that take no body ####################################################

NO_BODY_ROUTES = {
    'POST /v1/clients/{t}/rotate': '/v1/clients/{token}/rotate',
    'POST /v1/channels/{id}/rotate-key': '/v1/channels/{channel}/rotate-key',
}

NO_BODY_BAD = {
    'over-long path segment': (LONG, '', 404, 6),
    'path segment with NUL': ('ab%00cd', '', 404, 6),
    'unknown query parameter': (None, '?bogus=1', 400, 1),
    # The id is looked up before the query string is checked (API.md's order).
    'unknown query parameter + unknown id': (LONG, '?bogus=1', 404, 6),
}


@pytest.mark.parametrize('route,input_name', [
    pytest.param(route, name, id='%s | %s' % (route, name))
    for route in NO_BODY_ROUTES for name in NO_BODY_BAD])
def test_no_body_route_refuses_bad_path_and_query(world, route, input_name):
    segment, query_string, status, ec = NO_BODY_BAD[input_name]
    path = NO_BODY_ROUTES[route].format(token=segment or world['token'],
                                        channel=segment or world['channel'])
    before = dump(world['db'])
    response = world['admin'].post(path + query_string, b'{}', content_type='application/json',
                                   expect_errors=True)
    expect_error(response, status, ec)
    assert dump(world['db']) == before


NO_BODY_BODIES = {
    'malformed JSON': (b'{"name": ', 'application/json'),
    'JSON array': (b'[1]', 'application/json'),
    'wrong content type': (b'hello', 'text/plain'),
    'empty body': (b'', 'application/json'),
    '10 MB body': (b'a' * (10 * MiB), 'application/json'),
    'nested 1000': (b'[' * 1000 + b']' * 1000, 'application/json'),
    'NaN literal': (b'{"x": NaN}', 'application/json'),
    'invalid UTF-8': (b'\xff\xfe', 'application/json'),
}


@pytest.mark.parametrize('route', list(NO_BODY_ROUTES))
@pytest.mark.parametrize('input_name', list(NO_BODY_BODIES))
def test_no_body_route_ignores_any_body(world, route, input_name):
    """Documented behaviour: rotate and rotate-key never read the body, so any
    body, however broken, is ignored and the rotation happens (200, new secret
    or key); nothing else in the database changes and nothing fails."""
    body, content_type = NO_BODY_BODIES[input_name]
    admin = world['admin']
    path = NO_BODY_ROUTES[route].format(token=world['token'], channel=world['channel'])
    before = dump(world['db'])
    response = admin.post(path, body, content_type=content_type)
    assert response.status_int == 200 and response.json['ec'] == 0
    data = response.json['data']
    if 'rotate-key' in route:
        assert data['id'] == world['channel']
        assert data['streamId'].split('key=')[1] != world['key']
    else:
        assert data['tokenId'] == world['token'] and len(data['tokenSecret']) >= 40
    after = dump(world['db'])
    # Every write also numbers itself (the `commits` setting, for other processes),
    # and a channel's change logs its event (channel.key_rotated).
    events = [line for line in after if line not in before
              and line.startswith('INSERT INTO "events"')]
    assert len(events) == ('rotate-key' in route)
    changed = [line for line in after if line not in before and "'commits'" not in line
               and line not in events]
    assert len(changed) == 1, changed   # exactly the one rotated row
    assert ('"clients"' if 'rotate-key' not in route else '"channels"') in changed[0]


# List routes: tampered cursors and query values ##############################

LIST_ROUTES = ['/v1/clients', '/v1/users', '/v1/channels', '/v1/channels/{channel}/sessions']


def b64(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip('=')


TAMPERED_CURSORS = {
    'not base64': '!!!!',
    'one character': 'a',
    'non-ASCII': '%C3%A9t%C3%A9',
    'base64 of garbage': b64(b'\xff\x00garbage'),
    'base64 of non-JSON text': b64(b'hello'),
    'JSON without a': b64(b'{"b": 5}'),
    'JSON list': b64(b'[5]'),
    'a is null': b64(b'{"a": null}'),
    'a is text': b64(b'{"a": "x"}'),
    'a is an object': b64(b'{"a": {}}'),
    'a is zero': b64(b'{"a": 0}'),
    'a is negative': b64(b'{"a": -5}'),
    'a is 2**63': b64(b'{"a": %d}' % 2 ** 63),
    'a is 2**70': b64(b'{"a": %d}' % 2 ** 70),
    'a is 10**5000': b64(b'{"a": 1' + b'0' * 5000 + b'}'),
    'a is 1e400': b64(b'{"a": 1e400}'),
    'a is -1e400': b64(b'{"a": -1e400}'),
    'a is NaN': b64(b'{"a": NaN}'),
    'nested 1000': b64(b'[' * 1000 + b']' * 1000),
    'over-long': 'A' * 10_000,
}

BAD_QUERIES = {
    'unknown parameter': '?bogus=1',
    'limit 0': '?limit=0',
    'limit 101': '?limit=101',
    'limit -1': '?limit=-1',
    'limit text': '?limit=ten',
    'limit huge': '?limit=' + '9' * 5000,
    'limit twice': '?limit=1&limit=2',
    'cursor twice': '?cursor=%s&cursor=%s' % (b64(b'{"a": 5}'), b64(b'{"a": 5}')),
}


@pytest.mark.parametrize('path', LIST_ROUTES)
@pytest.mark.parametrize('cursor_name', list(TAMPERED_CURSORS))
def test_list_refuses_tampered_cursor(world, path, cursor_name):
    before = dump(world['db'])
    response = world['admin'].get(path.format(channel=world['channel']) + '?cursor='
                                  + TAMPERED_CURSORS[cursor_name], expect_errors=True)
    body = expect_error(response, 400, 1)
    assert 'cursor' in body['msg']
    assert dump(world['db']) == before


@pytest.mark.parametrize('path', LIST_ROUTES)
@pytest.mark.parametrize('query_name', list(BAD_QUERIES))
def test_list_refuses_bad_query(world, path, query_name):
    before = dump(world['db'])
    response = world['admin'].get(path.format(channel=world['channel'])
                                  + BAD_QUERIES[query_name], expect_errors=True)
    expect_error(response, 400, 1)
    assert dump(world['db']) == before


@pytest.mark.parametrize('path', LIST_ROUTES)
def test_list_accepts_its_own_cursor(world, path):
    """The control for the cursor table: a cursor the API returned is accepted."""
    admin = world['admin']
    path = path.format(channel=world['channel'])
    if 'sessions' in path:   # give the channel two sessions
        hook = webtest.TestApp(world['app'])
        url = '/v1/hooks/nginx-rtmp?secret=' + world['app'].livestream.hook_secret
        for clientid in ('1', '2'):
            form = {'call': 'publish', 'name': world['channel'], 'key': world['key'],
                    'clientid': clientid, 'app': 'live', 'addr': '127.0.0.1'}
            hook.post(url, form)
            hook.post(url, dict(form, call='publish_done'))
    else:
        admin.put_json('/v1/users/u2', {})
        admin.post_json('/v1/channels', {'userId': 'u1', 'name': 'second'})
    first = admin.get(path + '?limit=1').json['data']
    assert first['nextCursor'] and first['total'] >= 2
    second = admin.get(path + '?limit=1&cursor=' + first['nextCursor']).json['data']
    assert second['items'] and second['items'][0] != first['items'][0]


# The nginx-rtmp hook #########################################################

FORM = 'application/x-www-form-urlencoded'


def hook_case(name, world):
    channel, key = world['channel'], world['key']
    publish = 'call=publish&app=live&clientid=9&addr=127.0.0.1&name=%s&key=%s' % (channel, key)
    cases = {
        # -> (body, content type, extra query, status, ec)
        'malformed JSON': (b'{"call": "publish", ', 'application/json', '', 400, 1),
        'JSON object': (json.dumps({'call': 'publish', 'name': channel, 'key': key}).encode(),
                        'application/json', '', 400, 1),
        'JSON array': (b'[1, 2]', 'application/json', '', 400, 1),
        'wrong content type (a valid publish as text/plain)': (publish.encode(), 'text/plain',
                                                               '', 400, 1),
        'no content type (a valid publish)': (publish.encode(), '', '', 400, 1),
        'empty body': (b'', FORM, '', 400, 1),
        'no call': (('app=live&name=%s&key=%s' % (channel, key)).encode(), FORM, '', 400, 1),
        'empty call': (('call=&name=%s' % channel).encode(), FORM, '', 400, 1),
        'unknown call': (('call=bogus&name=%s' % channel).encode(), FORM, '', 400, 1),
        'call with NUL': (('call=publish%%00&name=%s&key=%s' % (channel, key)).encode(), FORM,
                          '', 400, 1),
        'publish without name': (('call=publish&key=%s' % key).encode(), FORM, '', 403, 4),
        'update_publish without name': (b'call=update_publish&clientid=9', FORM, '', 400, 1),
        'publish_done without name': (b'call=publish_done&clientid=9', FORM, '', 400, 1),
        'publish, name not a channel id': (b'call=publish&name=../../etc/passwd&key=x', FORM,
                                           '', 403, 4),
        'publish, name with NUL': (('call=publish&name=%s%%00&key=%s' % (channel, key)).encode(),
                                   FORM, '', 403, 4),
        'publish, over-long name': (('call=publish&name=%s&key=x' % LONG).encode(), FORM, '',
                                    403, 4),
        'update_publish, name not a channel id': (b'call=update_publish&name=x&clientid=9',
                                                  FORM, '', 400, 1),
        'publish without key': (('call=publish&clientid=9&name=%s' % channel).encode(), FORM,
                                '', 403, 4),
        'publish, key with NUL': (publish.replace('key=', 'key=%00').encode(), FORM, '', 403, 4),
        'publish, over-long key': (('call=publish&name=%s&key=%s' % (channel, LONG)).encode(),
                                   FORM, '', 403, 4),
        'publish, huge clientid, wrong key': (
            ('call=publish&name=%s&key=x&clientid=%s' % (channel, '9' * 5000)).encode(), FORM,
            '', 403, 4),
        'invalid UTF-8 (percent-encoded)': (publish.replace('addr=127.0.0.1', 'addr=%FF%FE')
                                            .encode(), FORM, '', 400, 1),
        'invalid UTF-8 (raw bytes)': (publish.encode().replace(b'addr=127.0.0.1',
                                                               b'addr=\xff\xfe'),
                                      FORM, '', 400, 1),
        'NaN and huge numbers are just text': (
            ('call=publish&name=%s&key=NaN&clientid=1e400' % channel).encode(), FORM, '', 403, 4),
        '10 MB body': (publish.encode() + b'&pad=' + b'a' * (10 * MiB), FORM, '', 413, 8),
        'just over max_body_bytes': (publish.encode() + b'&pad=' + b'a' * MiB, FORM, '', 413, 8),
        'missing secret': (publish.encode(), FORM, 'NO SECRET', 403, 4),
        'wrong secret': (publish.encode(), FORM, 'WRONG SECRET', 403, 4),
        'secret with NUL': (publish.encode(), FORM, 'NUL SECRET', 403, 4),
    }
    return cases[name]


HOOK_INPUTS = ['malformed JSON', 'JSON object', 'JSON array',
               'wrong content type (a valid publish as text/plain)',
               'no content type (a valid publish)', 'empty body', 'no call', 'empty call',
               'unknown call', 'call with NUL', 'publish without name',
               'update_publish without name', 'publish_done without name',
               'publish, name not a channel id', 'publish, name with NUL',
               'publish, over-long name', 'update_publish, name not a channel id',
               'publish without key', 'publish, key with NUL', 'publish, over-long key',
               'publish, huge clientid, wrong key', 'invalid UTF-8 (percent-encoded)',
               'invalid UTF-8 (raw bytes)', 'NaN and huge numbers are just text', '10 MB body',
               'just over max_body_bytes', 'missing secret', 'wrong secret', 'secret with NUL']


@pytest.mark.parametrize('input_name', HOOK_INPUTS)
def test_hook_refuses_bad_input(world, input_name):
    body, content_type, extra, status, ec = hook_case(input_name, world)
    secret = world['app'].livestream.hook_secret
    url = {'NO SECRET': '/v1/hooks/nginx-rtmp',
           'WRONG SECRET': '/v1/hooks/nginx-rtmp?secret=' + 'x' * len(secret),
           'NUL SECRET': '/v1/hooks/nginx-rtmp?secret=' + secret + '%00'}.get(
        extra, '/v1/hooks/nginx-rtmp?secret=' + secret + extra)
    before = dump(world['db'])
    headers = {'Content-Type': content_type} if content_type else {}
    response = webtest.TestApp(world['app']).request(url, method='POST', body=body,
                                                     headers=headers, expect_errors=True)
    expect_error(response, status, ec)
    # A refused publish of a real channel is logged (publish.refused, never the key),
    # which numbers the write (the `commits` setting): nothing else changes.
    after = [line for line in dump(world['db']) if "'commits'" not in line]
    refusals = [line for line in after if line not in before]
    assert all("'publish.refused'" in line and 'INSERT INTO "events"' in line
               for line in refusals), refusals
    assert [line for line in after if line not in refusals] == \
        [line for line in before if "'commits'" not in line]


@pytest.mark.parametrize('query_string', ['&bogus=1', '&limit=0', '&secret=other',
                                          '&secret={secret}'])
def test_hook_refuses_unknown_or_repeated_query_parameters(world, query_string):
    """The hook URL takes only `secret`, once, as every other route refuses what it
    does not take; a valid publish with anything more is a 400 that changes nothing."""
    secret = world['app'].livestream.hook_secret
    before = dump(world['db'])
    response = webtest.TestApp(world['app']).post(
        '/v1/hooks/nginx-rtmp?secret=' + secret + query_string.format(secret=secret),
        {'call': 'publish', 'name': world['channel'], 'app': 'live', 'clientid': '3',
         'key': world['key']}, expect_errors=True)
    assert 'query parameter' in expect_error(response, 400, 1)['msg']
    assert dump(world['db']) == before


@pytest.mark.parametrize('path', ['/v1/health', '/v1/openapi.json'])
@pytest.mark.parametrize('query_string', ['?bogus=1', '?verbose=true&verbose=true'])
def test_public_routes_refuse_unknown_query_parameters(app, path, query_string):
    response = webtest.TestApp(app).get(path + query_string, expect_errors=True)
    assert 'query parameter' in expect_error(response, 400, 1)['msg']


@pytest.mark.parametrize('q', ['zzz%ff', '%c3', '%ed%a0%80', 'caf%e9'])
def test_q_that_is_not_utf8_is_400(world, q):
    """Before, bottle turned such a q into None: the list answered as if no q was sent."""
    response = world['admin'].get('/v1/channels?q=' + q, expect_errors=True)
    assert 'q is not valid UTF-8' in expect_error(response, 400, 1)['msg']
    assert world['admin'].get('/v1/channels?q=caf%C3%A9').json['data']['total'] == 0


def test_hook_acknowledges_other_nginx_calls_without_change(world):
    """nginx-rtmp's other notify calls (connect, done, record_done, update_play)
    are acknowledged with 200 so a wider nginx.conf does not break streams."""
    secret = world['app'].livestream.hook_secret
    before = dump(world['db'])
    for call in ('connect', 'done', 'record_done', 'update_play'):
        response = webtest.TestApp(world['app']).post(
            '/v1/hooks/nginx-rtmp?secret=' + secret, {'call': call, 'name': world['channel']})
        assert response.status_int == 200 and response.json['data'] == {'ignored': call}
    assert dump(world['db']) == before


def test_hook_control_a_valid_publish_is_allowed(world):
    """The control for the hook table: the same publish form, sent as nginx-rtmp
    sends it, goes live."""
    channel, key = world['channel'], world['key']
    secret = world['app'].livestream.hook_secret
    response = webtest.TestApp(world['app']).post(
        '/v1/hooks/nginx-rtmp?secret=' + secret,
        'call=publish&app=live&clientid=9&addr=127.0.0.1&name=%s&key=%s' % (channel, key),
        content_type=FORM)
    assert response.status_int == 200
    assert world['admin'].get('/v1/channels/' + channel).json['data']['status'] == 'live'


def test_unauthenticated_bad_input_is_401_first(app):
    """401 comes before everything else: a stranger's malformed body is not parsed."""
    response = webtest.TestApp(app).post('/v1/channels', b'{', content_type='application/json',
                                         expect_errors=True)
    expect_error(response, 401, 3)
    assert response.headers['WWW-Authenticate'] == 'Basic realm="livestream"'
    response = webtest.TestApp(app).post('/v1/channels', b'{', content_type='application/json',
                                         headers={'Authorization': 'Basic !!!'},
                                         expect_errors=True)
    expect_error(response, 401, 3)


def test_app_client_gets_404_for_anothers_channel_before_body_checks(world, app):
    """404 (another client's resource) comes before 400: an app client sending
    a malformed body to the admin's channel learns only 'not found'."""
    secret = world['admin'].post(
        '/v1/clients/%s/rotate' % world['token']).json['data']['tokenSecret']
    other = webtest.TestApp(app)
    other.authorization = ('Basic', (world['token'], secret))
    before = dump(world['db'])
    for method in ('PUT', 'PATCH'):
        response = other.request('/v1/channels/' + world['channel'], method=method, body=b'{',
                                 headers={'Content-Type': 'application/json'},
                                 expect_errors=True)
        expect_error(response, 404, 6)
    response = other.post('/v1/channels/%s/rotate-key' % world['channel'], expect_errors=True)
    expect_error(response, 404, 6)
    response = other.patch('/v1/users/u1', b'{', content_type='application/json',
                           expect_errors=True)
    expect_error(response, 404, 6)
    assert dump(world['db']) == before
