"""The wheel, installed in a fresh venv, serves from an unrelated directory; the
README's Quick start, run as printed from a fresh clone, serves and tests.

A data file missing from the wheel (schema.sql) or from git fails here, not in
production or on a newcomer's first try.
"""

import json
import os
import re
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


def test_wheel_serves_health_and_the_dashboard_then_stops_on_sigterm(venv, elsewhere, tmp_path):
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
        for name in livestream_api.DASHBOARD_FILES:  # package data
            with urllib.request.urlopen('http://127.0.0.1:%d/dashboard/%s' % (port, name),
                                        timeout=5) as response:
                assert response.status == 200 and response.read() == (REPO / name).read_bytes()
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


def test_wheel_writes_each_ingest_conf_from_its_template(venv, elsewhere, tmp_path):
    db = str(tmp_path / 'x.db')
    run([str(venv / 'bin' / 'livestream-api'), 'init-db', '--db', db], elsewhere, 60)
    result = run([str(venv / 'bin' / 'livestream-api'), 'nginx-conf', '--db', db],
                 elsewhere, 60)
    assert '/v1/hooks/nginx-rtmp?secret=' in result.stdout
    assert 'rtmp_control all;' in result.stdout
    srs = run([str(venv / 'bin' / 'livestream-api'), 'srs-conf', '--db', db], elsewhere, 60)
    assert '/v1/hooks/srs?secret=' in srs.stdout and 'srs_log_level_v2 warn;' in srs.stdout
    mediamtx = run([str(venv / 'bin' / 'livestream-api'), 'mediamtx-conf', '--db', db],
                   elsewhere, 60)
    assert '/v1/hooks/mediamtx?secret=' in mediamtx.stdout


def test_wheel_config_error_exits_2(venv, elsewhere):
    result = subprocess.run([str(venv / 'bin' / 'livestream-api'), 'serve', '--config',
                             'missing.ini'], cwd=elsewhere, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'missing.ini' in result.stderr


# The README's Quick start, as printed ------------------------------------------

def quick_start():
    """The Quick start's ```sh blocks: (get the code, install and serve, install and test)."""
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    section = readme.split('\n## Quick start\n', 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'```sh\n(.*?)```', section, flags=re.S)

    def the_block(needle):
        found = [block for block in blocks if needle in block]
        assert len(found) == 1, 'the Quick start needs one sh block with %r: %s' % (needle, found)
        return found[0]
    return the_block('git clone '), the_block('livestream-api serve'), the_block('pytest')


@pytest.mark.skipif(shutil.which('git') is None or not (REPO / '.git').exists(),
                    reason='needs git and a git checkout to clone from')
def test_quick_start_as_printed_serves_and_tests_from_a_fresh_clone(tmp_path):
    """The three blocks as one bash script, as a reader pastes them, in an empty
    directory: the clone comes from a bare copy of this checkout's HEAD standing in
    for the README's URL; Ctrl-C (SIGINT) stops serve once it answers, and the
    test command follows. The environment picks the serve port (the default may
    be taken here) and the fast subset of the tests (the whole suite would run
    this test again)."""
    get_code, serve, run_tests = quick_start()
    url = re.search(r'git clone (\S+)', get_code).group(1)
    upstream = tmp_path / 'upstream' / url.rstrip('/').rsplit('/', 1)[-1]
    run(['git', 'clone', '--quiet', '--bare', str(REPO), str(upstream)], tmp_path, 120)
    reader = tmp_path / 'reader'
    reader.mkdir()
    port = free_port()
    env = dict(clean_env(), LIVESTREAM_SERVER_PORT=str(port),
               PYTEST_ADDOPTS='-m "not slow and not e2e and not schemathesis" '
                              '-p no:cacheprovider')
    script = '\n'.join([get_code.replace(url, str(upstream)), serve, run_tests])
    log_path = tmp_path / 'quick-start.log'
    with open(log_path, 'w') as log:
        process = subprocess.Popen(['bash', '-e', '-c', script], cwd=reader, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not healthy(port):
            assert process.poll() is None and time.monotonic() < deadline, \
                'serve never answered:\n' + log_path.read_text()[-5000:]
            time.sleep(0.5)
        clone = reader / upstream.name[:-len('.git')]
        # Not on a terminal: the first admin's secret is in a private file, not the log.
        token_file = clone / 'livestream.db.admin-token'
        assert token_file.stat().st_mode & 0o777 == 0o600
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=1200)
        output = log_path.read_text()
        assert status == 0, output[-5000:]
        assert re.search(r'^\d+ passed', output, flags=re.M), output[-5000:]
        assert 'LIVE_TOKEN_SECRET=' not in output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def healthy(port):
    try:
        with urllib.request.urlopen('http://127.0.0.1:%d/v1/health' % port, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False
