"""GET /v1/health: public; 503 when the database cannot be read."""

import webtest

import livestream_api


def test_health_needs_no_auth(app):
    response = webtest.TestApp(app).get('/v1/health', status=200)
    assert response.content_type == 'application/json'
    assert response.json == {'ec': 0, 'data': {'status': 'ok',
                                               'version': livestream_api.__version__,
                                               'db': 'ok'}}


def test_health_ignores_bad_credentials(app):
    response = webtest.TestApp(app).get('/v1/health', headers={'Authorization': 'Basic !!'},
                                        status=200)
    assert response.json['data']['status'] == 'ok'


def test_health_wrong_method_is_405(app):
    response = webtest.TestApp(app).post('/v1/health', status=405)
    assert response.json['ec'] == 7
    assert response.headers['Allow'] == 'GET'


def break_database(app, tmp_path):
    """Close the app's connections and overwrite its files with garbage."""
    app.livestream.store.close()
    for name in ('live.db', 'live.db-wal', 'live.db-shm'):
        (tmp_path / name).write_bytes(b'this is not a database\x00' * 512)


def test_health_is_503_ec_99_when_database_is_unreadable(app, tmp_path):
    break_database(app, tmp_path)
    response = webtest.TestApp(app).get('/v1/health', status=503)
    assert response.content_type == 'application/json'
    assert response.json['ec'] == 99
    assert response.json['msg']
    assert response.json['data']['db'] == 'error'
    assert response.json['data']['status'] != 'ok'


def test_health_503_does_not_leak_the_database_error(app, tmp_path):
    break_database(app, tmp_path)
    response = webtest.TestApp(app).get('/v1/health', status=503)
    assert 'not a database' not in response.text
    assert str(tmp_path) not in response.text


def test_health_is_503_when_database_file_was_removed_and_replaced_by_directory(app, tmp_path):
    app.livestream.store.close()
    for name in ('live.db', 'live.db-wal', 'live.db-shm'):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / 'live.db').mkdir()
    response = webtest.TestApp(app).get('/v1/health', status=503)
    assert response.json['ec'] == 99
