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
    store = livestream_api.Store(tmp_path / 'live.db', '', '')
    public_id = store.client_by_token(token_id)['public_id']
    store.close()
    assert line.split()[:3] == [public_id, token_id, 'app']
    assert line.endswith('  web app')
    # The columns line up under the header.
    assert line.index(token_id) == header.index('TOKEN ID')


@pytest.mark.parametrize('named_by', ['public_id', 'token_id'])
def test_client_delete_takes_the_id_or_the_token_id(cli, db, tmp_path, named_by):
    token_id = created(cli, 'gone')['LIVE_TOKEN_ID']
    store = livestream_api.Store(tmp_path / 'live.db', '', '')
    name = store.client_by_token(token_id)[named_by]
    store.close()
    assert cli('client', 'delete', name)[:2] == (0, 'deleted %s\n' % name)
    status, _, err = cli('client', 'delete', name)
    assert status == 1 and name in err
    assert token_id not in cli('client', 'list')[1]
