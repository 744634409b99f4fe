"""A real SRS for the end-to-end tests: built once from its source tarball into a
cache outside the clone (reused by every later run), or the user's own binary, and
run on the config `livestream-api srs-conf` prints.

LIVESTREAM_SRS_BINARY: an SRS 5/6 `objs/srs` to use as it is.
LIVESTREAM_SRS_SOURCE: the source tarball (default: ../shared/vendor/srs-6.0.157.tar.gz
beside the clone, else /work/shared/vendor/srs-6.0.157.tar.gz), built with
./configure --rtc=off --srt=off ... && make into
~/.cache/livestream-api/<tarball name>-<sha256 prefix>/ (about 100 s on 2 cores, no
network; Debian packages build-essential automake tcl cmake pkg-config libssl-dev
unzip patch)."""

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from e2e_support import ROOT, Stack, free_port, kill_group, port_open, tail, wait_for

TARBALL = 'srs-6.0.157.tar.gz'
#: Where the tarball is looked for when LIVESTREAM_SRS_SOURCE is not set.
DEFAULT_SOURCES = (ROOT.parent / 'shared' / 'vendor' / TARBALL,
                   Path('/work/shared/vendor') / TARBALL)
CACHE = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'livestream-api'
#: The configure options known to build here without network (no WebRTC, SRT, GB28181,
#: FFmpeg: RTMP, HLS, the HTTP API and hooks are all the tests use).
CONFIGURE = ['./configure', '--rtc=off', '--srt=off', '--gb28181=off', '--ffmpeg-fit=off',
             '--sys-ssl=on', '--sanitizer=off', '--jobs=2']


def srs_source():
    """The SRS source tarball to build, or None."""
    given = os.environ.get('LIVESTREAM_SRS_SOURCE')
    if given:
        return Path(given)
    return next((path for path in DEFAULT_SOURCES if path.is_file()), None)


def srs_binary():
    """(path of an SRS binary, None), building it if need be; or (None, why there is none)."""
    given = os.environ.get('LIVESTREAM_SRS_BINARY')
    if given:
        if not os.access(given, os.X_OK):
            return None, 'LIVESTREAM_SRS_BINARY=%s is not an executable' % given
        return Path(given), None
    source = srs_source()
    if source is None or not source.is_file():
        return None, ('an SRS binary (LIVESTREAM_SRS_BINARY) or its source tarball '
                      '(LIVESTREAM_SRS_SOURCE, or %s)' % ' or '.join(map(str, DEFAULT_SOURCES)))
    return build(source), None


def build(source):
    """The SRS binary built from `source` into the cache, building it only once (a lock
    keeps two test runs from building it at the same time)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    name = source.name[:-len('.tar.gz')] if source.name.endswith('.tar.gz') else source.stem
    home = CACHE / ('%s-%s' % (name, digest[:12]))
    binary = home / 'trunk' / 'objs' / 'srs'
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ('%s.lock' % home.name), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        work = Path(tempfile.mkdtemp(prefix='build-', dir=CACHE))
        try:
            subprocess.run(['tar', 'xzf', str(source), '-C', str(work)], check=True)
            tree = next(work.iterdir())
            log = work / 'build.log'
            with open(log, 'wb') as out:
                for command in (CONFIGURE, ['make', '-j2']):
                    done = subprocess.run(command, cwd=str(tree / 'trunk'), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          timeout=1800)
                    if done.returncode != 0:
                        raise AssertionError('building SRS failed (%s):\n%s'
                                             % (' '.join(command), tail(log, 4000)))
            tree.rename(home)  # complete or not there at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return binary


class SrsStack(Stack):
    """The API (kind srs, polling SRS's API every update interval) and a real SRS on
    free ports, on the srs.conf that `livestream-api srs-conf` prints. It stands in
    for Stack's nginx: start_nginx, kill_nginx and nginx_running act on SRS."""

    def __init__(self, binary, update_interval):
        super().__init__(update_interval)
        self.binary = binary
        self.api_port_srs = free_port()
        self.srs_prefix = self.workdir / 'srs'
        self.srs_prefix.mkdir()
        self.srs_log = self.srs_prefix / 'srs.log'
        self.srs_out = self.workdir / 'srs.out'
        self.hls_dir = self.srs_prefix / 'html' / 'live'
        self.env = {name: value for name, value in self.env.items()
                    if not name.startswith('SRS_')}  # SRS reads SRS_* over its config
        self.env.update({
            'LIVESTREAM_INGEST_KIND': 'srs',
            'LIVESTREAM_INGEST_API_URL': 'http://127.0.0.1:%d' % self.api_port_srs,
            'LIVESTREAM_INGEST_HLS_URL': 'http://127.0.0.1:%d/live' % self.http_port,
        })

    def write_nginx_conf(self):
        (self.srs_prefix / 'srs.conf').write_text(self.generate(
            'srs-conf', '--rtmp-port', str(self.rtmp_port),
            '--http-port', str(self.http_port), '--api-port', str(self.api_port_srs),
            '--prefix', str(self.srs_prefix)))

    def start_nginx(self):
        with open(self.srs_out, 'ab') as out:
            self.nginx = subprocess.Popen(
                [str(self.binary), '-c', str(self.srs_prefix / 'srs.conf')],
                cwd=str(self.srs_prefix), env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

        def listening():
            if self.nginx.poll() is not None:
                raise AssertionError('SRS exited with %s:\n%s\n%s' % (
                    self.nginx.returncode, tail(self.srs_out), tail(self.srs_log)))
            return all(port_open(port) for port in (self.rtmp_port, self.http_port,
                                                    self.api_port_srs))
        wait_for(listening, 20, 'SRS to listen on its RTMP, HTTP and API ports')

    def kill_nginx(self, sig=None):
        if self.nginx is not None:
            kill_group(self.nginx, *(() if sig is None else (sig,)))
            self.nginx = None
