"""Files that hold secrets (the database, generated nginx.conf) are the owner's alone."""

import io
import logging
import os
import stat

import pytest
import webtest

import livestream_api


@pytest.fixture(autouse=True)
def usual_umask():
    """The common 022 umask, under which a plain open() makes files world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def open_app(db):
    config = livestream_api.load_config(environ={}, overrides={
        'database': {'path': str(db)}, 'ingest': {'stat_url': ''}})
    return livestream_api.create_app(config)


def test_database_and_its_wal_and_shm_are_created_0600(tmp_path):
    db = tmp_path / 'live.db'
    app = open_app(db)
    app.livestream.store.create_client('c', 'app', 'tok', b'hash', 0)
    files = [db, tmp_path / 'live.db-wal', tmp_path / 'live.db-shm']
    assert all(path.exists() for path in files)
    assert {str(path): mode(path) for path in files} == {str(path): 0o600 for path in files}
    app.livestream.store.close()


def test_start_warns_about_a_database_readable_by_others(tmp_path, caplog):
    db = tmp_path / 'live.db'
    open_app(db).livestream.store.close()
    with caplog.at_level(logging.WARNING, logger='livestream'):
        open_app(db).livestream.store.close()
    assert 'readable by other users' not in caplog.text
    db.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger='livestream'):
        open_app(db).livestream.store.close()
    assert '%s is readable by other users (mode 644)' % db in caplog.text


@pytest.mark.parametrize('existing_mode', [None, 0o644])
def test_nginx_conf_output_is_written_0600(tmp_path, existing_mode):
    db, conf = str(tmp_path / 'live.db'), tmp_path / 'nginx.conf'
    if existing_mode is not None:
        conf.write_text('old')
        conf.chmod(existing_mode)
    assert livestream_api.main(['init-db', '--db', db], environ={}) == 0
    status = livestream_api.main(['nginx-conf', '--db', db, '--prefix', str(tmp_path),
                                  '--output', str(conf)], environ={})
    assert status == 0
    assert mode(conf) == 0o600
    assert '/v1/hooks/nginx-rtmp?secret=' in conf.read_text()


# The first admin's credentials ------------------------------------------------

def first_start(db, out):
    app = open_app(db)
    livestream_api.bootstrap_admin(app, {}, out=out)
    return app


def assert_admin_works(app, token_id, secret):
    test_app = webtest.TestApp(app)
    test_app.authorization = ('Basic', (token_id, secret))
    assert test_app.get('/v1/clients').json['data']['items'][0]['role'] == 'admin'


def test_first_admin_is_printed_on_a_terminal_and_written_nowhere(tmp_path):
    controller, terminal = os.openpty()
    with open(terminal, 'w') as out, open(controller, 'rb', buffering=0) as screen:
        app = first_start(tmp_path / 'live.db', out)
        out.flush()
        printed = screen.read(4096).decode()
    lines = dict(line.strip().split('=', 1) for line in printed.splitlines() if '=' in line)
    assert set(lines) == {'LIVE_TOKEN_ID', 'LIVE_TOKEN_SECRET'}
    assert not (tmp_path / 'live.db.admin-token').exists()
    assert_admin_works(app, lines['LIVE_TOKEN_ID'], lines['LIVE_TOKEN_SECRET'])


def test_first_admin_off_a_terminal_goes_to_a_0600_file_the_log_names(tmp_path, caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger='livestream'):
        app = first_start(tmp_path / 'live.db', out)
    token_file = tmp_path / 'live.db.admin-token'
    assert mode(token_file) == 0o600
    lines = dict(line.split('=', 1) for line in token_file.read_text().splitlines())
    assert set(lines) == {'LIVE_TOKEN_ID', 'LIVE_TOKEN_SECRET'}
    assert str(token_file) in caplog.text
    assert lines['LIVE_TOKEN_SECRET'] not in caplog.text + out.getvalue()
    assert_admin_works(app, lines['LIVE_TOKEN_ID'], lines['LIVE_TOKEN_SECRET'])


def test_a_database_that_cannot_be_created_is_still_a_503_not_a_500(tmp_path):
    db = tmp_path / 'gone' / 'live.db'
    db.parent.mkdir()
    app = open_app(db)
    app.livestream.store.close()
    for path in db.parent.iterdir():
        path.unlink()
    db.parent.rmdir()
    app.catchall = False
    response = webtest.TestApp(app).get('/v1/health', status=503)
    assert response.json['ec'] == 99
