"""The real thing for the end-to-end tests: the API as a process under waitress,
nginx with the RTMP module on the config `livestream-api nginx-conf` prints, and
ffmpeg publishing as OBS does."""

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

#: The project root, where `python -m livestream_api` finds the module.
ROOT = Path(__file__).resolve().parent.parent
#: Debian's libnginx-mod-rtmp (what the generated nginx.conf loads).
RTMP_MODULE = '/usr/lib/nginx/modules/ngx_rtmp_module.so'
#: [ingest] update_interval for the tests: nginx's notify_update_timeout, and a
#: session with no hook call for 3 of these is stale.
UPDATE_INTERVAL = 2
#: Test streams end by themselves after this long, whatever happens to the test.
MAX_STREAM_SECONDS = 60


def missing_requirements():
    """What the end-to-end tests need and this machine lacks."""
    missing = [program for program in ('nginx', 'ffmpeg') if shutil.which(program) is None]
    if not os.path.exists(RTMP_MODULE):
        missing.append('%s (Debian package libnginx-mod-rtmp)' % RTMP_MODULE)
    return missing


def skip_or_fail_if_missing(missing=None, what='end-to-end tests'):
    """Skip the test where this machine lacks what it needs (missing_requirements(),
    or the `missing` given); fail when LIVESTREAM_E2E=1."""
    import pytest
    missing = missing_requirements() if missing is None else missing
    if missing:
        reason = '%s need %s' % (what, ', '.join(missing))
        if os.environ.get('LIVESTREAM_E2E') == '1':
            pytest.fail(reason + ' (required because LIVESTREAM_E2E=1)', pytrace=False)
        pytest.skip(reason)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_for(check, timeout, what, interval=0.2):
    """Poll check() until it returns something true (returned), or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.0f s waiting for %s (last: %r)'
                                 % (timeout, what, result))
        time.sleep(interval)


def group_alive(pgid):
    """Whether any process (not a zombie) is left in process group `pgid`."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            return True
    return False


def kill_group(process, sig=signal.SIGTERM, timeout=5.0):
    """Signal the process group `process` leads (started with start_new_session),
    then SIGKILL whatever is left of it after `timeout`; reap the leader."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None and not group_alive(process.pid):
                return
            time.sleep(0.05)
    process.poll()


def tail(path, size=3000):
    try:
        return Path(path).read_text(errors='replace')[-size:]
    except OSError as error:
        return '(%s)' % error


class Api:
    """A JSON client for the API over real HTTP, as the App Server would call it."""

    def __init__(self, base_url, token_id, secret):
        self.base_url = base_url
        self.authorization = 'Basic ' + base64.b64encode(
            ('%s:%s' % (token_id, secret)).encode()).decode()

    def call(self, method, path, body=None):
        """(status, decoded JSON body or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header('Authorization', self.authorization)
        if data is not None:
            request.add_header('Content-Type', 'application/json')
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw else None

    def get(self, path):
        return self.call('GET', path)

    def ok(self, method, path, body=None, status=200):
        """The `data` of a call that must answer `status` with ec 0."""
        answer_status, answer = self.call(method, path, body)
        assert (answer_status, answer and answer.get('ec')) == (status, 0), \
            '%s %s -> %s %r' % (method, path, answer_status, answer)
        return answer['data']


class Stack:
    """The API and nginx-rtmp on free ports in one temporary directory, nginx calling
    update_publish every `update_interval` seconds."""

    def __init__(self, update_interval=UPDATE_INTERVAL):
        self.token_id, self.token_secret = 'e2e-admin', secrets.token_urlsafe(24)
        self.hook_secret = secrets.token_urlsafe(32)
        self.api_port, self.rtmp_port, self.http_port = free_port(), free_port(), free_port()
        # The nginx worker runs as `nobody` when nginx runs as root: every directory
        # on the way to the HLS files must be traversable (mkdtemp makes 0700).
        self.workdir = Path(tempfile.mkdtemp(prefix='livestream-e2e-', dir='/tmp'))
        self.workdir.chmod(0o755)
        self.prefix = self.workdir / 'nginx'
        self.prefix.mkdir()
        self.prefix.chmod(0o755)
        # nginx creates only the last component of a path, as its worker user; make
        # hls/ ourselves, writable by that user (chmod after mkdir: the umask).
        self.hls_dir = self.prefix / 'hls'
        self.hls_dir.mkdir()
        self.hls_dir.chmod(0o777)
        self.db = self.workdir / 'e2e.db'
        self.api_log = self.workdir / 'api.stderr'
        self.nginx_log = self.workdir / 'nginx.out'
        self.error_log = self.prefix / 'error.log'
        self.api = Api('http://127.0.0.1:%d' % self.api_port, self.token_id, self.token_secret)
        #: An INI file given to serve and nginx-conf as --config (None: none), for
        #: what the environment cannot say ([ingest.NAME] sections).
        self.config_file = None
        self.api_process = self.nginx = None
        self.encoders = []
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith('LIVESTREAM_')}
        self.env.update({
            'PYTHONPATH': str(ROOT),
            'LIVE_TOKEN_ID': self.token_id, 'LIVE_TOKEN_SECRET': self.token_secret,
            # nginx-conf reads the API's port from the config for the hook URL.
            'LIVESTREAM_SERVER_PORT': str(self.api_port),
            # and the hooks' port, which the API's port + 1 (the default) may not be free.
            'LIVESTREAM_SERVER_HOOK_LISTEN': '127.0.0.1:%d' % free_port(),
            'LIVESTREAM_INGEST_UPDATE_INTERVAL': str(update_interval),
            # A sample row at every update (30 s by default), so a short test charts some.
            'LIVESTREAM_INGEST_SAMPLE_INTERVAL': str(update_interval),
            # nginx's HLS access log, for the HLS viewer count (5140 may be taken).
            'LIVESTREAM_INGEST_VIEWER_LOG_PORT': str(free_udp_port()),
            'LIVESTREAM_INGEST_HOOK_SECRET': self.hook_secret,
            'LIVESTREAM_INGEST_RTMP_URL': 'rtmp://127.0.0.1:%d/live' % self.rtmp_port,
            'LIVESTREAM_INGEST_HLS_URL': 'http://127.0.0.1:%d/hls' % self.http_port,
            'LIVESTREAM_INGEST_STAT_URL': 'http://127.0.0.1:%d/stat' % self.http_port,
            'LIVESTREAM_INGEST_CONTROL_URL': 'http://127.0.0.1:%d/control' % self.http_port,
        })

    # The API -----------------------------------------------------------------

    def start_api(self):
        with open(self.api_log, 'ab') as log, open(self.workdir / 'api.stdout', 'ab') as out:
            self.api_process = subprocess.Popen(
                [sys.executable, '-m', 'livestream_api', 'serve', '--port', str(self.api_port),
                 '--db', str(self.db)] + self._config_args(),
                cwd=str(ROOT), env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                start_new_session=True)

        def healthy():
            if self.api_process.poll() is not None:
                raise AssertionError('the API exited with %s:\n%s'
                                     % (self.api_process.returncode, tail(self.api_log)))
            try:
                with urllib.request.urlopen(self.api.base_url + '/v1/health', timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False
        wait_for(healthy, 30, 'the API to answer /v1/health')

    # nginx -------------------------------------------------------------------

    def _config_args(self):
        return ['--config', str(self.config_file)] if self.config_file else []

    def generate(self, command, *args):
        """What `livestream-api <command> ... --db <the stack's>` prints (a config)."""
        generated = subprocess.run(
            [sys.executable, '-m', 'livestream_api', command, *args, '--db', str(self.db)]
            + self._config_args(),
            cwd=str(ROOT), env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60)
        assert generated.returncode == 0, generated.stderr
        return generated.stdout

    def write_nginx_conf(self, node=None):
        """nginx.conf as `livestream-api nginx-conf` writes it (for ingest node `node`)."""
        (self.prefix / 'nginx.conf').write_text(self.generate(
            'nginx-conf', '--rtmp-port', str(self.rtmp_port), '--http-port',
            str(self.http_port), '--prefix', str(self.prefix),
            *(['--node', node] if node else [])))

    def start_nginx(self):
        with open(self.nginx_log, 'ab') as log:
            self.nginx = subprocess.Popen(
                ['nginx', '-p', str(self.prefix) + '/', '-c', str(self.prefix / 'nginx.conf')],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

        def listening():
            if self.nginx.poll() is not None:
                raise AssertionError('nginx exited with %s:\n%s\n%s' % (
                    self.nginx.returncode, tail(self.nginx_log), tail(self.error_log)))
            return port_open(self.rtmp_port) and port_open(self.http_port)
        wait_for(listening, 20, 'nginx to listen on its RTMP and HTTP ports')

    def nginx_running(self):
        return self.nginx is not None and self.nginx.poll() is None

    def kill_nginx(self, sig=signal.SIGKILL):
        """Stop nginx: its whole process group (the master alone leaves a worker serving)."""
        if self.nginx is not None:
            kill_group(self.nginx, sig)
            self.nginx = None

    # Everything --------------------------------------------------------------

    def start(self):
        self.start_api()
        self.write_nginx_conf()
        self.start_nginx()

    def stop(self):
        self.stop_encoders()
        self.kill_nginx(signal.SIGTERM)
        if self.api_process is not None:
            kill_group(self.api_process, signal.SIGTERM, timeout=15)
            self.api_process = None
        if os.environ.get('LIVESTREAM_E2E_KEEP') != '1':
            shutil.rmtree(self.workdir, ignore_errors=True)

    # Encoders ------------------------------------------------------------------

    def publish(self, stream_url, stream_id, seconds=MAX_STREAM_SECONDS):
        """ffmpeg publishing a 640x360 H.264/AAC test stream to `stream_url`/`stream_id`
        for `seconds`, as OBS does; returns the running process."""
        log_path = self.workdir / ('ffmpeg-%d.log' % len(self.encoders))
        progress_path = log_path.with_suffix('.progress')
        with open(log_path, 'wb') as log:
            # -g 50: a keyframe every 2 s, as OBS is told to send. HLS cuts fragments
            # only on keyframes; with x264's default (every 10 s) the first playlist
            # would take 10 s to appear.
            encoder = subprocess.Popen(
                ['ffmpeg', '-hide_banner', '-nostdin', '-loglevel', 'error', '-re',
                 '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=25', '-f', 'lavfi', '-i', 'sine',
                 '-t', str(seconds), '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '50',
                 '-c:a', 'aac', '-progress', str(progress_path),
                 '-f', 'flv', '%s/%s' % (stream_url, stream_id)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        encoder.log_path, encoder.progress_path = log_path, progress_path
        self.encoders.append(encoder)
        return encoder

    def stop_encoders(self):
        for encoder in self.encoders:
            if encoder.poll() is None:
                encoder.kill()
            encoder.wait(10)
        self.encoders = []


def bytes_sent(encoder):
    """What the encoder reports it sent (ffmpeg -progress total_size), in bytes."""
    sizes = [line.split('=', 1)[1] for line in encoder.progress_path.read_text().splitlines()
             if line.startswith('total_size=')]
    return int(sizes[-1])


def wait_exit(encoder, timeout):
    """The encoder's exit status once it exits; fails if it runs past `timeout`."""
    try:
        return encoder.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError('ffmpeg still running after %g s' % timeout) from None
