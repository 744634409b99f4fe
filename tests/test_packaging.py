"""The wheel, installed in a fresh venv, serves from an unrelated directory.

A data file missing from the wheel (schema.sql) fails here, not in production.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import livestream_api

pytestmark = pytest.mark.slow

REPO = Path(livestream_api.__file__).resolve().parent


def clean_env():
    """The environment minus anything that could make the venv see this checkout
    or change the service's configuration."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(('LIVESTREAM_', 'LIVE_TOKEN_', 'PYTHON', 'VIRTUAL_ENV'))}


def run(args, cwd, timeout):
    result = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, '%s failed:\n%s\n%s' % (args, result.stdout, result.stderr)
    return result


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
    """A fresh venv with the wheel built from this checkout installed (not editable)."""
    root = tmp_path_factory.mktemp('packaging')
    source = root / 'source'
    source.mkdir()
    # A copy of the checkout's top-level files, so the build leaves no build/ or
    # *.egg-info behind in the working tree.
    for path in REPO.iterdir():
        if path.is_file() and not path.name.startswith('.'):
            shutil.copy2(path, source / path.name)
    dist = root / 'dist'
    run([sys.executable, '-m', 'build', '--wheel', '--outdir', str(dist), str(source)],
        cwd=root, timeout=300)
    wheels = list(dist.glob('*.whl'))
    assert len(wheels) == 1, wheels
    env_dir = root / 'venv'
    run([sys.executable, '-m', 'venv', str(env_dir)], cwd=root, timeout=120)
    run([str(env_dir / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet',
         '--disable-pip-version-check', str(wheels[0])], cwd=root, timeout=300)
    return env_dir


@pytest.fixture
def elsewhere(tmp_path):
    """An empty directory unrelated to the checkout, to run the command from."""
    directory = tmp_path / 'elsewhere'
    directory.mkdir()
    return directory


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_wheel_does_not_import_from_the_checkout(venv, elsewhere):
    result = run([str(venv / 'bin' / 'python'), '-c',
                  'import livestream_api; print(livestream_api.__file__)'], elsewhere, 60)
    assert str(venv) in result.stdout
    assert str(REPO) not in result.stdout


def test_wheel_serves_health_and_stops_cleanly_on_sigterm(venv, elsewhere, tmp_path):
    port = free_port()
    db = tmp_path / 'x.db'
    log = open(tmp_path / 'serve.log', 'w+')
    server = subprocess.Popen(
        [str(venv / 'bin' / 'livestream-api'), 'serve', '--port', str(port), '--db', str(db)],
        # The hook listener on a port of its own choosing: the next port may be taken.
        cwd=elsewhere, env=dict(clean_env(), LIVESTREAM_SERVER_HOOK_LISTEN='127.0.0.1:0'),
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen('http://127.0.0.1:%d/v1/health' % port,
                                            timeout=2) as response:
                    answer = response.status, json.load(response)
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        log.seek(0)
        output = log.read()
        assert answer is not None, 'no answer from /v1/health; server said:\n' + output
        assert answer[0] == 200
        assert answer[1]['data'] == {'status': 'ok', 'version': livestream_api.__version__,
                                     'db': 'ok'}
        assert db.exists()
        assert os.listdir(elsewhere) == []
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def test_wheel_client_create_prints_the_token_once(venv, elsewhere, tmp_path):
    db = str(tmp_path / 'x.db')
    run([str(venv / 'bin' / 'livestream-api'), 'init-db', '--db', db], elsewhere, 60)
    result = run([str(venv / 'bin' / 'livestream-api'), 'client', 'create', 'ci', '--db', db],
                 elsewhere, 60)
    lines = dict(line.split('=', 1) for line in result.stdout.splitlines() if '=' in line)
    assert set(lines) == {'LIVE_TOKEN_ID', 'LIVE_TOKEN_SECRET'}
    assert lines['LIVE_TOKEN_ID'] and len(lines['LIVE_TOKEN_SECRET']) >= 43
    listed = run([str(venv / 'bin' / 'livestream-api'), 'client', 'list', '--db', db],
                 elsewhere, 60)
    assert lines['LIVE_TOKEN_ID'] in listed.stdout
    assert lines['LIVE_TOKEN_SECRET'] not in listed.stdout


def test_wheel_config_error_exits_2(venv, elsewhere):
    result = subprocess.run([str(venv / 'bin' / 'livestream-api'), 'serve', '--config',
                             'missing.ini'], cwd=elsewhere, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'missing.ini' in result.stderr
