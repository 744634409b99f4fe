"""Configuration: defaults, file and environment overrides, and start-up errors."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

import livestream_api
from livestream_api import ConfigError, load_config

REPO = Path(livestream_api.__file__).resolve().parent


def write_ini(path, text):
    path.write_text(text, encoding='utf-8')
    return str(path)


def test_defaults_run_without_a_file():
    config = load_config(environ={})
    assert config['server']['host'] == '127.0.0.1'
    assert config['server']['port'] == 8080
    assert config['database']['path'] == 'livestream.db'
    assert config['server']['max_body_bytes'] == 1024 * 1024


def test_file_overrides_defaults(tmp_path):
    path = write_ini(tmp_path / 'c.ini', '[server]\nport = 9000\nthreads = 3\n'
                                         '[database]\npath = /tmp/other.db\n')
    config = load_config(path, environ={})
    assert config['server']['port'] == 9000
    assert config['server']['threads'] == 3
    assert config['database']['path'] == '/tmp/other.db'
    assert config['server']['host'] == '127.0.0.1'


def test_environment_overrides_file(tmp_path):
    path = write_ini(tmp_path / 'c.ini', '[server]\nport = 9000\n')
    config = load_config(path, environ={'LIVESTREAM_SERVER_PORT': '9100',
                                        'LIVESTREAM_DATABASE_PATH': 'env.db'})
    assert config['server']['port'] == 9100
    assert config['database']['path'] == 'env.db'


def test_overrides_beat_environment():
    config = load_config(environ={'LIVESTREAM_SERVER_PORT': '9100'},
                         overrides={'server': {'port': '9200'}})
    assert config['server']['port'] == 9200


def test_example_config_file_loads_to_the_defaults():
    assert load_config(str(REPO / 'config.example.ini'), environ={}) == load_config(environ={})


def test_unknown_key_in_file_names_the_key(tmp_path):
    path = write_ini(tmp_path / 'c.ini', '[server]\nprot = 9000\n')
    with pytest.raises(ConfigError, match='prot'):
        load_config(path, environ={})


def test_unknown_section_in_file_names_the_section(tmp_path):
    path = write_ini(tmp_path / 'c.ini', '[sever]\nport = 9000\n')
    with pytest.raises(ConfigError, match='sever'):
        load_config(path, environ={})


def test_unknown_key_in_environment_names_the_variable():
    with pytest.raises(ConfigError, match='LIVESTREAM_SERVER_PROT'):
        load_config(environ={'LIVESTREAM_SERVER_PROT': '9000'})


def test_bad_value_in_file_names_the_key(tmp_path):
    path = write_ini(tmp_path / 'c.ini', '[server]\nthreads = 0\n')
    with pytest.raises(ConfigError, match='threads'):
        load_config(path, environ={})


@pytest.mark.parametrize('name', ['LIVESTREAM_DB_PATH', 'LIVESTREAM_SEVER_PORT',
                                  'LIVESTREAM_SERVER', 'LIVESTREAM_', 'LIVESTREAM_INGEST_',
                                  'LIVESTREAM_LIMITS_MAX_CHANELS', 'LIVESTREAM_E2E_X'])
def test_unknown_section_or_key_in_environment_names_the_variable(name):
    with pytest.raises(ConfigError, match=name):
        load_config(environ={name: '/x.db'})


def test_the_projects_other_variables_are_not_settings():
    environ = dict.fromkeys(['LIVESTREAM_E2E', 'LIVESTREAM_SRS_SOURCE',
                             'LIVESTREAM_SRS_BINARY', 'LIVE_TOKEN_ID', 'LIVESTREAMX'], '1')
    assert load_config(environ=environ) == load_config(environ={})


def test_bad_value_in_environment_names_the_variable():
    with pytest.raises(ConfigError, match="LIVESTREAM_SERVER_PORT = 'eighty'"):
        load_config(environ={'LIVESTREAM_SERVER_PORT': 'eighty'})


def test_bad_value_overridden_by_a_flag_names_the_key():
    with pytest.raises(ConfigError, match=r"^\[server\] port = '99999'"):
        load_config(environ={'LIVESTREAM_SERVER_PORT': '9000'},
                    overrides={'server': {'port': '99999'}})


@pytest.mark.parametrize('secret', [
    'abc', 'x' * 15, 'x' * 129, 'sec;ret-0123456789abcdef', 'with space-0123456789',
    'a&b=c-0123456789abcdef', 'quote"0123456789abcdef', 'caf\u00e9-0123456789abcdef',
    'slash/0123456789abcdef'])
def test_hook_secret_must_be_16_to_128_url_safe_characters(secret):
    with pytest.raises(ConfigError, match='hook_secret') as raised:
        load_config(environ={}, overrides={'ingest': {'hook_secret': secret}})
    assert secret not in str(raised.value)   # a config error never repeats a secret


@pytest.mark.parametrize('secret', ['', 'x' * 16, 'A-z_09' * 21 + 'ab'])
def test_hook_secret_may_be_empty_or_16_to_128_url_safe_characters(secret):
    config = load_config(environ={}, overrides={'ingest': {'hook_secret': secret}})
    assert config['ingest']['hook_secret'] == secret


def test_missing_file_names_the_file(tmp_path):
    missing = str(tmp_path / 'nowhere.ini')
    with pytest.raises(ConfigError, match='nowhere.ini'):
        load_config(missing, environ={})


# The command line: configuration errors stop `serve` with status 2 -----------

@pytest.fixture
def run_main(tmp_path):
    """main(argv, environ) with an alarm, so a serve that wrongly starts fails
    the test instead of hanging it."""
    def timed_out(*_):
        raise TimeoutError('livestream-api serve started instead of failing')

    def run(argv, environ):
        previous = {signum: signal.getsignal(signum)
                    for signum in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGALRM, timed_out)
        signal.alarm(20)
        try:
            return livestream_api.main(argv, environ=environ)
        finally:
            signal.alarm(0)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return run


def serve_args(tmp_path, *extra):
    return ['serve', '--host', '127.0.0.1', '--port', '0', '--db', str(tmp_path / 'x.db')] \
        + list(extra)


def test_cli_unknown_key_exits_2_naming_it(tmp_path, run_main, capsys):
    status = run_main(serve_args(tmp_path), {'LIVESTREAM_SERVER_PROT': '1'})
    assert status == 2
    assert 'LIVESTREAM_SERVER_PROT' in capsys.readouterr().err


def test_cli_unknown_key_in_file_exits_2_naming_it(tmp_path, run_main, capsys):
    path = write_ini(tmp_path / 'c.ini', '[ingest]\nhls = http://x\n')
    status = run_main(serve_args(tmp_path, '--config', path), {})
    assert status == 2
    assert "'hls'" in capsys.readouterr().err


def test_cli_bad_value_exits_2_naming_the_variable(tmp_path, run_main, capsys):
    status = run_main(serve_args(tmp_path), {'LIVESTREAM_SERVER_MAX_BODY_BYTES': 'lots'})
    assert status == 2
    assert "LIVESTREAM_SERVER_MAX_BODY_BYTES = 'lots'" in capsys.readouterr().err


def test_cli_misspelled_section_exits_2_naming_the_variable(tmp_path, run_main, capsys):
    status = run_main(serve_args(tmp_path), {'LIVESTREAM_SEVER_PORT': '9010'})
    assert status == 2
    assert 'LIVESTREAM_SEVER_PORT' in capsys.readouterr().err
    assert not (tmp_path / 'x.db').exists()


def test_cli_bad_port_flag_exits_2_naming_port(tmp_path, run_main, capsys):
    status = run_main(['serve', '--port', '99999', '--db', str(tmp_path / 'x.db')], {})
    assert status == 2
    assert 'port' in capsys.readouterr().err


def test_cli_missing_config_file_exits_2_naming_it(tmp_path, run_main, capsys):
    missing = str(tmp_path / 'absent.ini')
    status = run_main(serve_args(tmp_path, '--config', missing), {})
    assert status == 2
    assert missing in capsys.readouterr().err


def test_cli_bad_hook_secret_exits_2(tmp_path, run_main, capsys):
    status = run_main(['init-db', '--db', str(tmp_path / 'x.db')],
                      {'LIVESTREAM_INGEST_HOOK_SECRET': 'sec;ret'})
    assert status == 2
    assert 'LIVESTREAM_INGEST_HOOK_SECRET = (not shown): must be 16-128' \
        in capsys.readouterr().err


def test_cli_short_environment_admin_secret_exits_2(tmp_path, run_main, capsys):
    status = run_main(serve_args(tmp_path), {'LIVE_TOKEN_ID': 'ops', 'LIVE_TOKEN_SECRET': 'b'})
    assert status == 2
    assert 'LIVE_TOKEN_SECRET must be at least 16 characters' in capsys.readouterr().err


def test_cli_config_error_creates_no_database(tmp_path, run_main, capsys):
    status = run_main(['serve', '--db', str(tmp_path / 'x.db')], {'LIVESTREAM_SERVER_PORT': 'x'})
    assert status == 2
    assert not (tmp_path / 'x.db').exists()


def test_python_dash_m_help_works():
    result = subprocess.run([sys.executable, '-m', 'livestream_api', '--help'], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ('serve', 'init-db', 'client'):
        assert command in result.stdout
