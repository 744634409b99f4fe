"""HTTP Basic authentication, roles, check order, hashed secrets and bootstrap."""

import base64
import hashlib
import io
import sqlite3

import pytest
import webtest

import livestream_api
from conftest import ADMIN, basic

REALM = 'Basic realm="livestream"'
#: The environment admin's secret in these tests: the shortest allowed is 16 characters.
OPS_SECRET = 'ops-secret-16-ch'


def b64(raw):
    return base64.b64encode(raw).decode()


def assert_401(response):
    assert response.status_int == 401
    assert response.content_type == 'application/json'
    assert response.json['ec'] == 3
    assert response.headers['WWW-Authenticate'] == REALM
    return response


BAD_AUTHORIZATION = {
    'non_basic_scheme': 'Bearer ' + b64(b'%s:%s' % (ADMIN[0].encode(), ADMIN[1].encode())),
    'bad_base64': 'Basic !!!not-base64!!!',
    'truncated_base64': 'Basic ' + b64(b'admin-token:secret')[:-3],
    'non_utf8': 'Basic ' + b64(b'\xff\xfe:\xc3\x28'),
    'no_colon': 'Basic ' + b64(ADMIN[0].encode()),
    'empty_token_id': 'Basic ' + b64(b':' + ADMIN[1].encode()),
    'scheme_only': 'Basic',
    'empty_header': '',
    'unknown_token_id': basic('no-such-token', ADMIN[1]),
    'wrong_secret': basic(ADMIN[0], 'not-the-secret'),
    'empty_secret': basic(ADMIN[0], ''),
}


def test_missing_authorization_is_401(app):
    assert_401(webtest.TestApp(app).get('/v1/clients', status=401))


@pytest.mark.parametrize('header', list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION))
def test_bad_authorization_is_401(app, header):
    response = webtest.TestApp(app).get('/v1/clients', headers={'Authorization': header},
                                        status=401)
    assert_401(response)


def test_correct_credentials_are_accepted(app):
    response = webtest.TestApp(app).get('/v1/clients', headers={'Authorization': basic(*ADMIN)})
    assert response.json['ec'] == 0


def test_scheme_name_is_case_insensitive(app):
    header = 'basic ' + b64(('%s:%s' % ADMIN).encode())
    assert webtest.TestApp(app).get('/v1/clients', headers={'Authorization': header}).status_int \
        == 200


def test_secret_may_contain_colons(make_app):
    test_app, app = make_app()
    livestream_api.bootstrap_admin(app, {'LIVE_TOKEN_ID': 'colon-admin',
                                         'LIVE_TOKEN_SECRET': 'a:b:c-sixteen-characters'})
    test_app.get('/v1/clients', headers={'Authorization': basic('colon-admin', 'a:b:c-sixteen-characters')},
                 status=200)


def test_unknown_id_and_wrong_secret_answer_identically(app):
    client = webtest.TestApp(app)
    unknown = client.get('/v1/clients', headers={
        'Authorization': BAD_AUTHORIZATION['unknown_token_id']}, status=401)
    wrong = client.get('/v1/clients', headers={
        'Authorization': BAD_AUTHORIZATION['wrong_secret']}, status=401)
    assert unknown.body == wrong.body
    assert unknown.headers['WWW-Authenticate'] == wrong.headers['WWW-Authenticate']


def test_an_unknown_id_with_the_secret_of_the_row_it_reads_is_refused(app):
    """An unknown id reads another client's row (the first one) to cost what a wrong
    secret costs; that client's secret under the unknown id must not let it in."""
    first = app.livestream.store.client_for_login('no-such-token')
    assert first['token_id'] == ADMIN[0]
    assert_401(webtest.TestApp(app).get('/v1/stats', headers={
        'Authorization': basic('no-such-token', ADMIN[1])}, status=401))
    assert_401(webtest.TestApp(app).get('/v1/stats', headers={
        'Authorization': basic(ADMIN[0][:-1], ADMIN[1])}, status=401))


@pytest.mark.parametrize('method, path', [
    ('POST', '/v1/clients'), ('GET', '/v1/clients'),
    ('POST', '/v1/clients/admin-token/rotate'), ('DELETE', '/v1/clients/admin-token'),
])
def test_app_client_is_forbidden_on_clients_routes(new_client, method, path):
    response = new_client().request(path, method=method, body=b'{"name": "x"}',
                                    content_type='application/json', expect_errors=True)
    assert response.status_int == 403
    assert response.json['ec'] == 4
    assert response.content_type == 'application/json'


def test_app_client_cannot_rotate_itself(new_client):
    app_client = new_client()
    app_client.post('/v1/clients/%s/rotate' % app_client.client['tokenId'], status=403)


def test_admin_client_created_by_api_may_manage_clients(new_client):
    second_admin = new_client(role='admin')
    assert second_admin.get('/v1/clients').json['data']['total'] == 2


def test_app_client_may_use_non_admin_routes(new_client):
    assert new_client().get('/v1/users').json['ec'] == 0


# Order of checks: 401 before 405, 403 before 405 and 404 -------------------

def test_unauthenticated_wrong_method_is_401_not_405(app):
    assert_401(webtest.TestApp(app).put('/v1/clients', status=401))


def test_unauthenticated_unknown_route_is_401_not_404(app):
    assert_401(webtest.TestApp(app).get('/v1/no-such-route', status=401))


def test_app_client_wrong_method_on_clients_is_403_not_405(new_client):
    response = new_client().put('/v1/clients', status=403)
    assert response.json['ec'] == 4
    assert 'Allow' not in response.headers


def test_app_client_unknown_client_is_403_not_404(new_client):
    assert new_client().delete('/v1/clients/no-such-token', status=403).json['ec'] == 4


# Secrets are stored only as a SHA-256 hash ----------------------------------

def database_bytes(tmp_path):
    """The database file and its WAL/SHM files, as they are on disk."""
    return b''.join(path.read_bytes() for path in tmp_path.glob('live.db*'))


def test_secrets_are_stored_only_as_sha256(admin, tmp_path):
    created = admin.post_json('/v1/clients', {'name': 'hashed'}).json['data']
    secret = created['tokenSecret']
    rotated = admin.post('/v1/clients/%s/rotate' % created['tokenId']).json['data']['tokenSecret']
    on_disk = database_bytes(tmp_path)
    for plaintext in (secret, rotated, ADMIN[1]):
        assert plaintext.encode() not in on_disk
        assert base64.b64encode(plaintext.encode()) not in on_disk
    with sqlite3.connect(str(tmp_path / 'live.db')) as raw:
        stored = raw.execute('SELECT secret_hash FROM clients WHERE token_id = ?',
                             (created['tokenId'],)).fetchone()[0]
        admin_hash = raw.execute('SELECT secret_hash FROM clients WHERE token_id = ?',
                                 (ADMIN[0],)).fetchone()[0]
    assert stored == hashlib.sha256(rotated.encode()).digest()
    assert admin_hash == hashlib.sha256(ADMIN[1].encode()).digest()


def test_api_secrets_are_256_bit(admin):
    secret = admin.post_json('/v1/clients', {'name': 'strong'}).json['data']['tokenSecret']
    assert len(base64.urlsafe_b64decode(secret + '=' * (-len(secret) % 4))) >= 32


# Bootstrap from the environment, and the first start -------------------------

class Terminal(io.StringIO):
    """stderr on a terminal, where the first admin's credentials are printed."""

    def isatty(self):
        return True


def start(tmp_path, environ):
    """A fresh start of the service on tmp_path/live.db: (TestApp, printed text)."""
    config = livestream_api.load_config(environ={}, overrides={
        'database': {'path': str(tmp_path / 'live.db')}, 'ingest': {'stat_url': ''}})
    app = livestream_api.create_app(config)
    app.catchall = False
    out = Terminal()
    livestream_api.bootstrap_admin(app, environ, out=out)
    return webtest.TestApp(app), out.getvalue()


def test_environment_admin_secret_is_replaced_at_every_start(tmp_path):
    start(tmp_path, {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': 'first-secret-0123456789'})
    test_app, printed = start(tmp_path, {'LIVE_TOKEN_ID': 'ops',
                                         'LIVE_TOKEN_SECRET': 'second-secret-0123456789'})
    assert printed == ''
    assert_401(test_app.get('/v1/clients', headers={
        'Authorization': basic('ops', 'first-secret-0123456789')}, status=401))
    test_app.get('/v1/clients', headers={'Authorization': basic('ops', 'second-secret-0123456789')},
                 status=200)


def test_environment_admin_is_not_duplicated_across_starts(tmp_path):
    for _ in range(3):
        test_app, _ = start(tmp_path, {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': OPS_SECRET})
    items = test_app.get('/v1/clients', headers={'Authorization': basic('ops', OPS_SECRET)}) \
        .json['data']['items']
    assert [item['tokenId'] for item in items] == ['ops']
    assert items[0]['role'] == 'admin'
    assert items[0]['fromEnvironment'] is True


@pytest.mark.parametrize('environ', [
    {'LIVE_TOKEN_ID': 'ops'}, {'LIVE_TOKEN_SECRET': OPS_SECRET},
    {'LIVE_TOKEN_ID': 'a:b', 'LIVE_TOKEN_SECRET': OPS_SECRET},
    {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': 'b'},
    {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': OPS_SECRET[:15]}])
def test_incomplete_or_short_environment_admin_is_a_config_error(tmp_path, environ):
    with pytest.raises(livestream_api.ConfigError, match='LIVE_TOKEN'):
        start(tmp_path, environ)


def test_first_start_prints_a_working_admin_once(tmp_path):
    test_app, printed = start(tmp_path, {})
    lines = dict(line.strip().split('=', 1) for line in printed.splitlines() if '=' in line)
    assert set(lines) == {'LIVE_TOKEN_ID', 'LIVE_TOKEN_SECRET'}
    assert printed.count(lines['LIVE_TOKEN_SECRET']) == 1
    response = test_app.get('/v1/clients', headers={
        'Authorization': basic(lines['LIVE_TOKEN_ID'], lines['LIVE_TOKEN_SECRET'])})
    assert response.json['data']['items'][0]['role'] == 'admin'


def test_second_start_prints_nothing(tmp_path):
    _, first = start(tmp_path, {})
    _, second = start(tmp_path, {})
    assert 'LIVE_TOKEN_SECRET' in first
    assert second == ''


def test_first_start_with_environment_admin_prints_nothing(tmp_path):
    _, printed = start(tmp_path, {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': OPS_SECRET})
    assert printed == ''


def test_a_start_without_the_environment_admin_makes_it_an_ordinary_admin(tmp_path, caplog):
    start(tmp_path, {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': OPS_SECRET})
    with caplog.at_level('INFO', logger='livestream'):
        test_app, printed = start(tmp_path, {})
    assert printed == ''  # the database has an admin: none is made
    assert 'LIVE_TOKEN_ID is no longer set: client ops' in caplog.text
    test_app.authorization = ('Basic', ('ops', OPS_SECRET))
    [ops] = test_app.get('/v1/clients').json['data']['items']
    assert ops['fromEnvironment'] is False
    other = test_app.post_json('/v1/clients', {'name': 'next', 'role': 'admin'}).json['data']
    test_app.post('/v1/clients/ops/rotate', status=200)
    test_app.authorization = ('Basic', (other['tokenId'], other['tokenSecret']))
    test_app.delete('/v1/clients/ops', status=204)


def test_the_cli_refuses_to_delete_the_environment_admin(tmp_path, capsys):
    start(tmp_path, {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': OPS_SECRET})
    db = str(tmp_path / 'live.db')
    assert livestream_api.main(['client', 'delete', 'ops', '--db', db], environ={}) == 1
    assert 'defined by LIVE_TOKEN_ID' in capsys.readouterr().err
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT from_env FROM clients WHERE token_id = 'ops'").fetchone() \
            == (1,)


def test_a_token_the_environment_no_longer_names_becomes_an_ordinary_admin(make_app):
    test_app, app = make_app()
    livestream_api.bootstrap_admin(app, {'LIVE_TOKEN_ID': 'second-admin',
                                         'LIVE_TOKEN_SECRET': 'second-secret-0123456789'})
    test_app.authorization = ('Basic', ('second-admin', 'second-secret-0123456789'))
    clients = {c['tokenId']: c for c in test_app.get('/v1/clients').json['data']['items']}
    assert clients['second-admin']['fromEnvironment'] is True
    assert clients[ADMIN[0]]['fromEnvironment'] is False
    assert test_app.delete('/v1/clients/' + ADMIN[0]).status_int == 204
