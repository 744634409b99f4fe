"""The command line apart from `serve`: client management, nginx-conf, and what
every command does with the database it is pointed at."""

import pytest

import livestream_api


@pytest.fixture
def cli(tmp_path, capsys):
    """cli(*argv) -> (exit status, stdout, stderr) of livestream-api on tmp_path/live.db."""
    def run(*argv, environ=None):
        argv = list(argv)
        if '--db' not in argv and '--config' not in argv:
            argv += ['--db', str(tmp_path / 'live.db')]
        status = livestream_api.main(argv, environ=environ or {})
        out, err = capsys.readouterr()
        return status, out, err
    return run


@pytest.fixture
def db(cli):
    """A database made as the README says: by init-db."""
    assert cli('init-db')[0] == 0


def created(cli, *argv):
    """{'LIVE_TOKEN_ID': ..., 'LIVE_TOKEN_SECRET': ...} printed by `client create`."""
    status, out, _ = cli('client', 'create', *argv)
    assert status == 0
    return dict(line.split('=', 1) for line in out.splitlines())


def test_client_list_prints_a_header_and_both_ids(cli, db, tmp_path):
    token_id = created(cli, 'web app')['LIVE_TOKEN_ID']
    status, out, _ = cli('client', 'list')
    assert status == 0
    header, line = out.splitlines()
    assert header.split() == ['ID', 'TOKEN', 'ID', 'ROLE', 'CREATED', 'NAME']
    store = livestream_api.Store(tmp_path / 'live.db', {})
    public_id = store.client_by_token(token_id)['public_id']
    store.close()
    assert line.split()[:3] == [public_id, token_id, 'app']
    assert line.endswith('  web app')
    # The columns line up under the header.
    assert line.index(token_id) == header.index('TOKEN ID')


@pytest.mark.parametrize('named_by', ['public_id', 'token_id'])
def test_client_delete_takes_the_id_or_the_token_id(cli, db, tmp_path, named_by):
    token_id = created(cli, 'gone')['LIVE_TOKEN_ID']
    store = livestream_api.Store(tmp_path / 'live.db', {})
    name = store.client_by_token(token_id)[named_by]
    store.close()
    assert cli('client', 'delete', name)[:2] == (0, 'deleted %s\n' % name)
    status, _, err = cli('client', 'delete', name)
    assert status == 1 and name in err
    assert token_id not in cli('client', 'list')[1]


@pytest.mark.parametrize('flag, value', [('--rtmp-port', '99999'), ('--http-port', '0'),
                                         ('--rtmp-port', '-1'), ('--http-port', 'http'),
                                         ('--rtmp-port', '65536')])
def test_nginx_conf_refuses_a_port_that_is_not_one(cli, db, capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        cli('nginx-conf', flag, value)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and '1-65535' in err


def test_nginx_conf_on_the_defaults_warns_of_nothing(cli, db):
    status, out, err = cli('nginx-conf', '--prefix', '/tmp/x')
    assert status == 0 and 'listen 1935;' in out and 'listen 127.0.0.1:8088;' in out
    assert 'warning' not in err


def test_nginx_conf_warns_when_its_ports_are_not_the_ingest_urls(cli, db):
    status, out, err = cli('nginx-conf', '--http-port', '9000', '--rtmp-port', '1935',
                           environ={'LIVESTREAM_INGEST_HLS_URL': 'https://cdn.example.com/hls'})
    assert status == 0 and 'listen 127.0.0.1:9000;' in out
    warnings = [line for line in err.splitlines() if 'warning' in line]
    assert len(warnings) == 2
    assert '--http-port 9000' in warnings[0] and 'hls_url = https://cdn.example.com/hls' \
        in warnings[0] and 'port 443' in warnings[0]
    assert '--http-port 9000' in warnings[1] and 'stat_url = http://127.0.0.1:8088/stat' \
        in warnings[1] and 'port 8088' in warnings[1]
    status, _, err = cli('nginx-conf', '--rtmp-port', '1936')
    assert status == 0 and 'rtmp_url = rtmp://127.0.0.1:1935/live names port 1935' in err


@pytest.mark.parametrize('argv', [['nginx-conf'], ['client', 'list'],
                                  ['client', 'create', 'x'], ['client', 'delete', 'x']])
def test_commands_other_than_serve_and_init_db_refuse_a_missing_database(
        cli, tmp_path, monkeypatch, argv):
    """Run in the wrong directory, they made a fresh database with a new hook secret."""
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(*argv, '--db', 'live.db')
    assert status == 1 and out == ''
    assert 'no database at %s;' % (tmp_path / 'live.db') in err
    assert list(tmp_path.iterdir()) == []


def test_a_relative_database_path_is_found_from_the_working_directory(cli, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli('init-db', '--db', 'live.db')[:2] == (0, 'database ready: %s\n'
                                                     % (tmp_path / 'live.db'))
    status, out, _ = cli('nginx-conf', '--db', 'live.db')
    assert status == 0 and 'secret=' in out
