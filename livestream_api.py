"""Livestream API: a small control plane beside an RTMP ingest server.

The App Server creates channels and user limits over HTTP; the ingest server
(nginx-rtmp) asks this service, through its notify hooks, whether a stream may
go live and keeps it informed while it is. One module, one SQLite file.

Reading map, top to bottom, each section and its one job:

  Configuration        the ini file and environment, checked, as one dict
  Store                every SQL statement; only reads and writes
  Envelope and errors  the JSON answer, success or failure, and its `ec`
  Authentication       who is calling (HTTP Basic, the throttle, admin routes)
  Validation           request bodies and query strings to clean values, or 4xx;
                       list pages and their cursors
  Presentation         rows to API objects
  Ingest nodes         one adapter per ingest kind (nginx-rtmp, SRS, MediaMTX):
                       hook to IngestEvent, stats, drop, config; then each node's
                       stats poller and kicker, and the HLS viewer log (nginx's
                       syslog access log)
  Background work      the Purger: what force deletes marked, old samples, old
                       sessions
  The application      Service: what every route shares (store, clock, workers)
  Clients ... Stats    the routes, by resource, in API.md's order; then the
                       ingest nodes' routes and the dashboard's page
  Ingest hooks         the decisions (plain functions), then the events acting
                       on them, and the POST /v1/hooks/<kind> route
  Webhooks             signing, the retry schedule, the Deliverer (posts the
                       events the Store wrote with each change), and the
                       /v1/webhook and /v1/events routes
  OpenAPI description  the document of ROUTES
  Building the app     ROUTES (with admin and sweeps) and create_app()
  Serving              logs, listeners and serve()
  nginx-rtmp ports     warnings for the nginx-conf command
  Backups and replication  online backup, restore, the Litestream config
  Command line         main()
"""

import argparse
import base64
import binascii
import collections
import contextlib
import functools
import gc
import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import os
import queue
import re
import resource
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from configparser import ConfigParser, Error as ConfigParserError
from pathlib import Path

import bottle
import waitress.adjustments
import waitress.channel
import waitress.server
import waitress.task

__version__ = '0.1.0'

#: The logger for what this service says (the access log is written apart: AccessLog).
log = logging.getLogger('livestream')


class LivestreamError(Exception):
    """The base of every error this module raises on purpose (as bottle's
    BottleException): ConfigError, DatabaseGone, NotAccepting, ApiError, HookDenied,
    CannotListen."""


###############################################################################
# Configuration ################################################################
###############################################################################

class ConfigError(LivestreamError):
    """A configuration file, key or value that cannot be used."""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError('must be at least 1')
    return value


def _limit(text):
    """A user limit: a non-negative integer, or empty / "none" for unlimited."""
    if text.strip().lower() in ('', 'none', 'unlimited'):
        return None
    value = int(text)
    if not 0 <= value <= MAX_LIMIT:
        raise ValueError('must be between 0 and %d' % MAX_LIMIT)
    return value


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError('must be a port number (0-65535)')
    return value


def _optional_port(text):
    """A port number, or empty for none (the feature it serves is off)."""
    return None if not text.strip() else _port(text)


def _days_or_forever(text):
    """A number of days, or empty / "none" for forever."""
    return None if text.strip().lower() in ('', 'none') else _positive_int(text)


def _listen_address(text):
    """'host:port' (IPv6 in brackets) as (host, port); empty: None, no listener;
    'auto': decided by hook_address()."""
    text = text.strip()
    if text in ('', 'auto'):
        return text or None
    host, colon, port = text.rpartition(':')
    host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    if not colon or not host:
        raise ValueError('must be host:port, such as 127.0.0.1:8081, or empty')
    return host, _port(port)


def _networks(text):
    """Comma-separated addresses or CIDRs, as a tuple of ip_network."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False)
                 for item in text.split(',') if item.strip())


def _boolean(text):
    """true or false."""
    if text.strip().lower() not in ('true', 'false'):
        raise ValueError('must be true or false')
    return text.strip().lower() == 'true'


def _log_format(text):
    if text.strip() not in ('text', 'json'):
        raise ValueError('must be text or json')
    return text.strip()
def _hook_secret(text):
    """Empty (one is generated), or characters that a URL, a form field and an
    nginx.conf all carry as they are, and too many to guess."""
    if text and not re.match(r'^[A-Za-z0-9_-]{16,128}\Z', text):
        raise ValueError('must be 16-128 characters of A-Z a-z 0-9 _ -, or empty to '
                         'generate one')
    return text


def _ingest_kind(text):
    text = text.strip()
    if text not in INGEST_KINDS:
        raise ValueError('must be one of %s' % ', '.join(sorted(INGEST_KINDS)))
    return text


def _url(text):
    text = text.strip()
    if text and not re.match(r'^[a-z][a-z0-9+.-]*://[^\s/]+', text):
        raise ValueError('must be an absolute URL such as http://127.0.0.1:8088/stat')
    return text.rstrip('/')


#: The longest reconnect window, in seconds ([ingest] reconnect_window, a channel's).
MAX_RECONNECT_WINDOW = 1800


def _reconnect_window(text):
    value = int(text)
    if not 0 <= value <= MAX_RECONNECT_WINDOW:
        raise ValueError('must be 0 (off) to %d seconds' % MAX_RECONNECT_WINDOW)
    return value


#: Largest value a user limit may take (fits SQLite's integer and any client's).
MAX_LIMIT = 2 ** 31 - 1

#: Every configuration key: section -> key -> (parser, default as text).
CONFIG_KEYS = {
    'server': {
        'host': (str, '127.0.0.1'),
        'port': (_port, '8080'),
        'threads': (_positive_int, '8'),
        'max_body_bytes': (_positive_int, str(1024 * 1024)),
        'hook_listen': (_listen_address, 'auto'),
        'connection_limit': (_positive_int, '2000'),
        'channel_timeout': (_positive_int, '30'),
        'trusted_proxies': (_networks, ''),
        'log_format': (_log_format, 'text'),
    },
    'database': {
        'path': (str, 'livestream.db'),
        'replicated': (_boolean, 'false'),
    },
    'ingest': {
        'kind': (_ingest_kind, 'nginx-rtmp'),
        'rtmp_url': (_url, 'rtmp://127.0.0.1:1935/live'),
        'hls_url': (_url, 'http://127.0.0.1:8088/hls'),
        'stat_url': (_url, 'http://127.0.0.1:8088/stat'),
        'control_url': (_url, 'http://127.0.0.1:8088/control'),
        'api_url': (_url, ''),
        'hook_secret': (_hook_secret, ''),
        'update_interval': (_positive_int, '10'),
        'sample_interval': (_positive_int, '30'),
        'sample_retention_days': (_positive_int, '30'),
        'history_days': (_days_or_forever, '365'),
        'viewer_log_port': (_optional_port, '5140'),
        'viewer_window': (_positive_int, '30'),
        'reconnect_window': (_reconnect_window, '0'),
    },
    'limits': {
        'max_channels': (_limit, '100'),
        'max_live_channels': (_limit, '1'),
        'max_bitrate_kbps': (_limit, '12000'),
        'max_session_seconds': (_limit, '43200'),
    },
    'auth': {
        'throttle_failures': (_positive_int, '10'),
        'throttle_seconds': (_positive_int, '60'),
    },
    'webhooks': {
        'enabled': (_boolean, 'true'),
        'retention_days': (_positive_int, '7'),
        'timeout_seconds': (_positive_int, '5'),
        'max_in_flight': (_positive_int, '10'),
    },
}


#: The keys of an [ingest.NAME] section, a node beside [ingest]'s `default`: key ->
#: (parser, default as text). rtmp_url and hls_url are required; `kind` is an
#: INGEST_KINDS name; `accepting` false: no channel is placed there (as a drain).
NODE_KEYS = {
    'kind': (str.strip, 'nginx-rtmp'),
    'rtmp_url': (_url, ''),
    'hls_url': (_url, ''),
    'stat_url': (_url, ''),
    'control_url': (_url, ''),
    'api_url': (_url, ''),
    'accepting': (_boolean, 'true'),
}

#: An ingest node's name ([ingest.NAME], `&node=NAME` in its hook URLs, `ingest` in the API).
NODE_NAME = re.compile(r'^[a-z0-9-]{1,32}\Z')

#: The node [ingest] configures.
DEFAULT_NODE = 'default'

#: LIVESTREAM_ variables that are not settings (the tests' and the tools'); any
#: other LIVESTREAM_<SECTION>_<KEY> must name a setting, so a misspelling stops start-up.
NON_CONFIG_VARIABLES = frozenset({'LIVESTREAM_E2E', 'LIVESTREAM_SRS_SOURCE',
                                  'LIVESTREAM_SRS_BINARY'})


def load_config(path=None, environ=None, overrides=None):
    """Defaults, then the file at `path`, then LIVESTREAM_<SECTION>_<KEY> from
    `environ`, then `overrides` ({section: {key: text}}); validated."""
    raw = {section: {key: default for key, (_, default) in keys.items()}
           for section, keys in CONFIG_KEYS.items()}
    nodes = {}  # node name -> {key: text} of its [ingest.NAME] section
    variables = {}  # (section, key) -> the environment variable that set it

    def put(section, key, value, origin):
        if section.startswith('ingest.'):
            put_node(section, key, value, origin)
            return
        if section not in CONFIG_KEYS:
            raise ConfigError('%s: unknown section [%s] (sections: %s)'
                              % (origin, section, ', '.join(CONFIG_KEYS)))
        if key not in CONFIG_KEYS[section]:
            raise ConfigError('%s: unknown key %r in [%s]' % (origin, key, section))
        raw[section][key] = str(value)
        variables.pop((section, key), None)

    def put_node(section, key, value, origin):
        name = section[len('ingest.'):]
        if not NODE_NAME.match(name) or name == DEFAULT_NODE:
            raise ConfigError('%s: [%s]: an ingest node name must be 1-32 characters of '
                              'a-z 0-9 - (and not "default", which is [ingest])'
                              % (origin, section))
        if key not in NODE_KEYS:
            raise ConfigError('%s: unknown key %r in [%s] (keys: %s)'
                              % (origin, key, section, ', '.join(NODE_KEYS)))
        nodes.setdefault(name, {})[key] = str(value)

    if path is not None:
        parser = ConfigParser(interpolation=None)
        try:
            with open(path, encoding='utf-8') as config_file:
                parser.read_file(config_file)
        except OSError as error:
            raise ConfigError('cannot read config file %s: %s' % (path, error.strerror))
        except (ConfigParserError, UnicodeDecodeError) as error:
            raise ConfigError('config file %s: %s' % (path, error))
        for section in parser.sections():
            for key, value in parser.items(section):
                put(section, key, value, path)
    for name, value in (os.environ if environ is None else environ).items():
        if name.startswith('LIVESTREAM_') and name not in NON_CONFIG_VARIABLES:
            section, _, key = name[len('LIVESTREAM_'):].lower().partition('_')
            put(section, key, value, name)
            variables[section, key] = name
    for section, keys in (overrides or {}).items():
        for key, value in keys.items():
            put(section, key, value, 'override')

    config = {}
    for section, keys in CONFIG_KEYS.items():
        config[section] = {}
        for key, (parse, _) in keys.items():
            try:
                config[section][key] = parse(raw[section][key])
            except ValueError as error:
                value = '(not shown)' if key.endswith('secret') else repr(raw[section][key])
                raise ConfigError('%s = %s: %s' % (
                    variables.get((section, key), '[%s] %s' % (section, key)), value, error))
    config['ingest_nodes'] = _node_settings(config['ingest'], nodes)
    return config


def _node_settings(ingest, sections):
    """{name: node settings}: `default` from [ingest], then one per [ingest.NAME]
    section (`sections`: name -> {key: text}), in the file's order."""
    nodes = {DEFAULT_NODE: {'name': DEFAULT_NODE, 'accepting': True, **{key: ingest[key] for key in (
        'kind', 'rtmp_url', 'hls_url', 'stat_url', 'control_url', 'api_url')}}}
    for name, given in sections.items():
        node = {'name': name}
        for key, (parse, default) in NODE_KEYS.items():
            try:
                node[key] = parse(given.get(key, default))
            except ValueError as error:
                raise ConfigError('[ingest.%s] %s = %r: %s' % (name, key, given[key], error))
        for key in ('rtmp_url', 'hls_url'):
            if not node[key]:
                raise ConfigError('[ingest.%s] %s is required' % (name, key))
        if node['kind'] not in INGEST_KINDS:
            raise ConfigError('[ingest.%s] kind = %r: must be one of %s'
                              % (name, node['kind'], ', '.join(INGEST_KINDS)))
        nodes[name] = node
    for name, node in nodes.items():
        if INGEST_KINDS[node['kind']].polled and not node['api_url']:
            raise ConfigError('[%s] kind = %s needs api_url: the API polls its streams and '
                              'kicks its publishers there' % (
                                  'ingest' if name == DEFAULT_NODE else 'ingest.' + name,
                                  node['kind']))
    return nodes


###############################################################################
# Store: every SQL statement lives here #######################################
###############################################################################

def _data_path(name):
    """A data file (schema.sql, nginx.conf.template) beside this file (a checkout),
    else where the wheel put it."""
    for candidate in (Path(__file__).with_name(name),
                      Path(sys.prefix) / 'share' / 'livestream-api' / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError('%s not found beside %s or under %s/share/livestream-api'
                            % (name, __file__, sys.prefix))


def _schema_path():
    return _data_path('schema.sql')


def _migrations():
    """[(version, sql)] from the `-- migration: N` blocks of schema.sql, by number
    (blocks written by different hands may land in the file out of order, and
    migrate() skips any block numbered below the database's version)."""
    blocks = re.split(r'^-- migration: (\d+)\s*$', _schema_path().read_text(), flags=re.M)
    return sorted((int(version), sql) for version, sql in zip(blocks[1::2], blocks[2::2]))


def write_private(path, text):
    """Write text to path readable by its owner only (0600), whatever the umask and
    whatever mode an earlier copy of the file had: it holds secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def _create_private_database(path):
    """Create an empty database file 0600 if there is none. SQLite gives the -wal
    and -shm files the database file's mode, and the database holds the hook
    secret and every stream key in clear."""
    if path in ('', ':memory:'):
        return
    # Exists already, or cannot be made: sqlite3.connect then opens it or raises
    # the sqlite3.Error the callers handle (health answers 503 to it).
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _warn_if_readable_by_others(path):
    """Log a warning for each existing database file that group or others can read."""
    for name in (path, path + '-wal', path + '-shm'):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                log.warning('%s is readable by other users (mode %o) but holds secrets: '
                            'chmod 600 it', name, os.stat(name).st_mode & 0o777)


class DatabaseGone(sqlite3.DatabaseError, LivestreamError):
    """The database file was deleted or replaced under the running service."""


class NotAccepting(LivestreamError):
    """The ingest node asked for (or, for None, every node) takes no new channels."""


#: How long a cached read may miss a change made outside livestream-api (by hand).
READ_CACHE_SECONDS = 1.0

#: The most rows the read cache holds, and the most bytes of memory they (and their
#: keys) take.
READ_CACHE_ROWS, READ_CACHE_BYTES = 1024, 8 * 1024 * 1024


def _iso_sql(column):
    """SQL for iso(): ISO 8601 UTC with a Z of a unix time, or NULL."""
    return "strftime('%Y-%m-%dT%H:%M:%SZ', CAST(" + column + " AS INTEGER), 'unixepoch')"


def _node_url(column, node):
    """SQL for a URL of the ingest node named by the expression `node`, from each
    connection's temp.node_urls table; the default node's for a node no longer
    configured (its channels are then served there)."""
    return ("(SELECT %s FROM temp.node_urls WHERE name IN (%s, 'default') "
            "ORDER BY name = 'default' LIMIT 1)" % (column, node))


def _channel_object(admin):
    """SQL for a channel's API object (README "Objects") from a Store._CHANNEL_ROWS
    row: streamUrl is its node's, playback the node's it is live on, if another."""
    playing = 'coalesce(live_ingest, ingest)'
    return (
        "json_object('id', public_id, 'userId', user_id, 'name', name, "
        "'description', description, 'metadata', json(metadata), "
        "'enabled', json(CASE WHEN enabled THEN 'true' ELSE 'false' END), 'status', status, "
        "'ingest', ingest, 'streamUrl', " + _node_url('rtmp_url', 'ingest') + ", "
        "'streamId', public_id || '?key=' || stream_key, "
        "'playback', json_object("
        "'hls', " + _node_url('hls_url', playing) + " || '/' || public_id || '.m3u8', "
        "'rtmp', " + _node_url('rtmp_url', playing) + " || '/' || public_id), "
        "'reconnectWindowSeconds', reconnect_window, "
        "'liveSince', " + _iso_sql('live_since') + ", 'createdAt', " + _iso_sql('created_at')
        + ", 'updatedAt', " + _iso_sql('updated_at')
        + (", 'clientId', client_public_id)" if admin else ")"))


#: Joins a channel `c` to its user `u` and client `cl`, unless either was deleted
#: (Store.delete_client, delete_user): what a force delete leaves is never seen.
_LIVE_OWNERS = ('JOIN users u ON u.id = c.user_pk AND u.deleted_at IS NULL '
                'JOIN clients cl ON cl.id = c.client_id AND cl.deleted_at IS NULL ')

#: The channel object, built by SQLite (for an admin, with clientId): a page of
#: channels is then one value in one row, not 21 rows to fetch (each fetch is a GIL
#: hand-off under load) and render in Python.
CHANNEL_OBJECT, ADMIN_CHANNEL_OBJECT = _channel_object(False), _channel_object(True)


#: What is held of a session's heartbeats until they are written (Store.heartbeat):
#: when it was last heard from, its latest figures (_beat_figures) or None, and the
#: peaks of the figures held.
Beat = collections.namedtuple('Beat', 'seen figures peak_bitrate peak_viewers')


def _beat_figures(metrics, now):
    """A stream's measured figures as a heartbeat holds them: (measured at, bytes in,
    bitrate, RTMP viewers, HLS viewers, all viewers, video JSON, audio JSON)."""
    hls = metrics.get('viewersHls', 0)
    return (metrics.get('measuredAt', now), metrics['bytesIn'], metrics['bitrateKbps'],
            metrics['viewers'], hls,
            None if metrics['viewers'] is None else metrics['viewers'] + hls,
            json.dumps(metrics['video']) if metrics['video'] else None,
            json.dumps(metrics['audio']) if metrics['audio'] else None)


def _merged(held, beat):
    """A session's heartbeat held (or None) and another as one: the later last-seen
    time, the figures measured later, the peaks of both."""
    if held is None:
        return beat
    figures = held.figures if beat.figures is None or (
        held.figures and held.figures[0] > beat.figures[0]) else beat.figures
    return Beat(max(held.seen, beat.seen), figures, _max(held.peak_bitrate, beat.peak_bitrate),
                _max(held.peak_viewers, beat.peak_viewers))


def _max(a, b):
    """The larger of two figures, either of which may be None (not measured)."""
    return b if a is None else a if b is None else max(a, b)


class Store:
    """The SQLite database: one connection per thread, kept open; writes are
    serialized by a lock in this process and BEGIN IMMEDIATE across processes."""

    def __init__(self, path, nodes, replicated=False, sample_interval=0):
        self.path = str(path)
        #: Litestream replicates the WAL ([database] replicated): it owns checkpoints.
        self.replicated = replicated
        # (name, position, rtmp_url, hls_url, accepting as configured) of each ingest
        # node, for channel objects (CHANNEL_OBJECT) and placement (temp.node_urls).
        self._nodes = [(node['name'], position, node['rtmp_url'], node['hls_url'],
                        node['accepting']) for position, node in enumerate(nodes.values())]
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        #: Bumped by every write transaction: what was read before is stale...
        self.generation = 0
        #: ...and by every one that can change a channel object (not heartbeats).
        self.channels_generation = 0
        #: Bumped when a commit by another process is noticed (every cache is void).
        self.foreign_generation = 0
        self._generation_lock = threading.Lock()  # the three counters move under it
        #: The highest commit number (the `commits` setting) this process has
        #: accounted for: written itself, or voided its caches for.
        self._commits_seen = 0
        #: The number of this process's commit in progress: another thread's
        #: catch_up() may read it between its COMMIT and its _account_commits().
        self._committing = None
        self._rows = {}  # (sql, args) -> (row, generation read at, valid until)
        self._rows_bytes = 0
        #: Heartbeats heard but not yet written: session pk -> Beat (heartbeat()).
        self._beats = {}
        self._beats_lock = threading.Lock()
        #: Seconds between a session's rows in session_samples ([ingest] sample_interval).
        self.sample_interval = sample_interval
        _warn_if_readable_by_others(self.path)
        self._file = None  # (st_dev, st_ino) of the database file, once opened
        #: Why the database can no longer be used (see check_file()), or None.
        self.gone = None

    @property
    def db(self):
        """This thread's connection, opened and configured on first use."""
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _connect(self):
        """A configured connection to the database file. Only the first may create
        it: a later one never puts a new empty database where the file was deleted."""
        self.check_file()
        if self._file is None:
            _create_private_database(self.path)
        conn = sqlite3.connect('file:%s?mode=%s' % (urllib.parse.quote(self.path),
                                                    'rw' if self._file else 'rwc'),
                               uri=True, isolation_level=None, check_same_thread=False,
                               timeout=10)
        try:
            if self._file is None:
                stat = os.stat(self.path)
                self._file = (stat.st_dev, stat.st_ino)
            self.check_file()  # the file may have changed between the check and the open
            conn.row_factory = sqlite3.Row
            # FULL: a commit is on disk before the client hears 2xx, power loss included
            # (transaction(durable=False) relaxes it for ingest heartbeats).
            conn.executescript('PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;'
                               'PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;')
            conn.execute('CREATE TEMP TABLE node_urls (name TEXT PRIMARY KEY, position INTEGER, '
                         'rtmp_url TEXT, hls_url TEXT, accepting INTEGER)')
            conn.executemany('INSERT INTO temp.node_urls VALUES (?, ?, ?, ?, ?)', self._nodes)
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_connection(self, conn):
        """Close this thread's connection; its next use opens a new one."""
        self._local.conn = self._local.data_version = None
        with self._connections_lock:
            self._connections.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def check_file(self):
        """Raise DatabaseGone once the path no longer names the file this store
        opened (deleted, or replaced by another): from then on, for good."""
        if self.gone is None and self._file is not None:
            try:
                stat = os.stat(self.path)
                now_names = 'a different file (device %d, inode %d)' % (stat.st_dev, stat.st_ino)
                same = (stat.st_dev, stat.st_ino) == self._file
            except (FileNotFoundError, NotADirectoryError):
                now_names, same = 'nothing', False
            if not same:
                self.gone = ('the database file %s was deleted or replaced while in use '
                             '(opened as device %d, inode %d; the path now names %s): writes '
                             'are refused with 503 and nothing more is written to it; put '
                             'the file back and restart' % ((self.path,) + self._file
                                                            + (now_names,)))
                log.error(self.gone)
        if self.gone:
            raise DatabaseGone(self.gone)

    def _account_commits(self, number, own=False):
        """Commits up to `number` were made; any this process did not make voids
        every cache, remembered logins included (own: `number` is this process's)."""
        with self._generation_lock:
            if number - (own or number == self._committing) > self._commits_seen:
                self.generation += 1
                self.channels_generation += 1
                self.foreign_generation += 1
            self._commits_seen = max(self._commits_seen, number)

    def catch_up(self):
        """At a request's start: void every cache if another process committed since
        this one last looked. PRAGMA data_version moves at every commit by another
        connection; only then is the commit number read, to tell whose it was."""
        db = self.db
        version = db.execute('PRAGMA data_version').fetchone()[0]
        if version == getattr(self._local, 'data_version', None):
            return
        row = db.execute("SELECT value FROM settings WHERE name = 'commits'").fetchone()
        if row and int(row[0]) > self._commits_seen:
            self._account_commits(int(row[0]))
        self._local.data_version = version  # last: a request that skips finds caches void

    @contextlib.contextmanager
    def transaction(self, durable=True, channels=True):
        """A write transaction: committed on success, rolled back and re-raised on error.
        durable=False skips the fsync at commit (synchronous=NORMAL): for figures the
        ingest re-sends every update, which a crash cannot lose but power loss may.
        channels=False: it changes no channel object (cached reads of them stand)."""
        db = self.db
        with self._write_lock:
            number, reopen = None, False
            try:
                self.check_file()
                # Inside the try: a BEGIN that fails must still restore FULL below.
                if not durable:
                    db.execute('PRAGMA synchronous = NORMAL')
                db.execute('BEGIN IMMEDIATE')
                changes = db.total_changes
                yield db
                # One that changed rows numbers itself, for other processes' caches.
                numbered = db.total_changes != changes and db.execute(
                    "INSERT INTO settings (name, value) VALUES ('commits', 1) "
                    'ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value'
                ).fetchall()
                self._committing = int(numbered[0][0]) if numbered else None
                db.execute('COMMIT')
                number = self._committing
                # A commit into a file deleted meanwhile is lost: never acknowledge it.
                self.check_file()
            except BaseException as error:
                if db.in_transaction:
                    db.execute('ROLLBACK')
                if isinstance(error, sqlite3.Error):
                    # A connection opened while the file was read-only (permissions, a
                    # remount) stays read-only: the next request opens a new one.
                    reopen = (getattr(error, 'sqlite_errorcode', 0) & 0xff
                              == sqlite3.SQLITE_READONLY)
                    self.check_file()  # SQLite fails a write to a deleted file as read-only
                raise
            finally:
                with self._generation_lock:
                    self.generation += 1
                    if channels:
                        self.channels_generation += 1
                if number is not None:
                    self._account_commits(number, own=True)
                self._committing = None
                if not durable:
                    db.execute('PRAGMA synchronous = FULL')
                if reopen:
                    self._drop_connection(db)

    @contextlib.contextmanager
    def snapshot(self):
        """Reads that must agree with each other (a page and its total, a row and
        what hangs off it): one read transaction, so one WAL snapshot."""
        db = self.db
        db.execute('BEGIN')
        try:
            yield db
        finally:
            db.execute('COMMIT')

    def close(self):
        """Checkpoint the WAL into the database file (unless Litestream owns checkpoints:
        its read lock would hold shutdown for busy_timeout) and close every connection."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                if not self.replicated:
                    conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def migrate(self):
        """Bring the schema up to date, one migration block per transaction."""
        for version, sql in _migrations():
            with self.transaction() as db:
                if db.execute('PRAGMA user_version').fetchone()[0] >= version:
                    continue
                for statement in _split_sql(sql):
                    db.execute(statement)
                db.execute('PRAGMA user_version = %d' % version)

    def check(self):
        """Raise sqlite3.Error unless the database can be read (DatabaseGone if its
        file was deleted or replaced)."""
        self.check_file()
        self.db.execute('SELECT count(*) FROM settings').fetchone()

    def size_bytes(self):
        row = self.db.execute('SELECT page_count * page_size FROM pragma_page_count(), '
                              'pragma_page_size()').fetchone()
        return row[0]

    # Backups -----------------------------------------------------------------

    def backup(self, dest, now, pages=1024):
        """Copy the database to `dest` while it is in use: SQLite's backup API, `pages`
        a step, from one read snapshot (so no writer's commit restarts it, and WAL
        writers never wait for it), into a temp file checked and renamed into place.
        Records the time in the settings; returns {table: rows} of the copy."""
        dest = os.path.abspath(dest)
        temp = '%s.tmp-%d' % (dest, os.getpid())
        _create_private_database(temp)
        copy = sqlite3.connect(temp, isolation_level=None)
        db = self.db
        try:
            with self.snapshot():
                tables = [row[0] for row in db.execute(  # not the search index's own
                    "SELECT name FROM pragma_table_list WHERE schema = 'main' "
                    "AND type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
                counts = {table: db.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
                          for table in tables}
                db.backup(copy, pages=pages)
            copy.execute('PRAGMA journal_mode = DELETE')  # one self-contained file
            problems = [row[0] for row in copy.execute('PRAGMA integrity_check')]
            if problems != ['ok']:
                raise sqlite3.DatabaseError('the copy fails integrity_check: %s'
                                            % '; '.join(problems[:5]))
            copied = {table: copy.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
                      for table in tables}
            if copied != counts:
                raise sqlite3.DatabaseError('the copy holds %r rows, the database %r'
                                            % (copied, counts))
            copy.close()
            os.replace(temp, dest)
        except BaseException:
            copy.close()
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        with self.transaction(channels=False) as tx:
            tx.execute("INSERT INTO settings (name, value) VALUES ('last_backup_at', ?) "
                       'ON CONFLICT (name) DO UPDATE SET value = excluded.value', (now,))
        return counts

    def last_backup_at(self):
        """When `backup` last completed (epoch seconds), or None."""
        row = self.db.execute("SELECT value FROM settings WHERE name = 'last_backup_at'"
                              ).fetchone()
        return float(row[0]) if row else None

    # Settings ----------------------------------------------------------------

    def setting(self, name, make_default):
        """The stored value of `name`, storing make_default() the first time."""
        row = self.db.execute('SELECT value FROM settings WHERE name = ?', (name,)).fetchone()
        if row:
            return row[0]
        with self.transaction() as db:
            db.execute('INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)',
                       (name, make_default()))
            return db.execute('SELECT value FROM settings WHERE name = ?', (name,)).fetchone()[0]

    # Clients -----------------------------------------------------------------

    def client_by_token(self, token_id):
        return self.db.execute('SELECT * FROM clients WHERE token_id = ? AND deleted_at IS NULL',
                               (token_id,)).fetchone()

    def client_for_login(self, token_id):
        """The client with this token id, else (the caller tells by its token_id)
        another client's row, read at the same cost: so an unknown id takes as long
        to refuse as a wrong secret. Both lookups run whichever one finds a row."""
        return self.db.execute(
            'SELECT * FROM clients WHERE id = (SELECT coalesce(known.id, first.id) FROM '
            '(SELECT min(id) AS id FROM clients) first '
            'LEFT JOIN clients known ON known.token_id = ?)', (token_id,)).fetchone()

    def client_by_public_id(self, public_id):
        return self.db.execute('SELECT * FROM clients WHERE public_id = ? '
                               'AND deleted_at IS NULL', (public_id,)).fetchone()

    def client_by_either_id(self, name):
        """A client by its id, else by its token id: paths and the CLI take either."""
        return self.client_by_public_id(name) or self.client_by_token(name)

    def count_clients(self):
        return self.db.execute('SELECT count(*) FROM clients WHERE deleted_at IS NULL'
                               ).fetchone()[0]

    def create_client(self, name, role, token_id, secret_hash, now, from_env=False):
        with self.transaction() as db:
            db.execute('INSERT INTO clients (public_id, name, role, token_id, secret_hash, '
                       'from_env, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
                       (new_public_id(), name, role, token_id, secret_hash, int(from_env), now))
        return self.client_by_token(token_id)

    def put_env_client(self, token_id, secret_hash, now):
        """Make the environment's admin token exist with exactly this secret. A
        token the environment named before becomes an ordinary admin (deletable)."""
        with self.transaction() as db:
            db.execute('UPDATE clients SET from_env = 0 WHERE from_env = 1 AND token_id != ?',
                       (token_id,))
            db.execute('INSERT INTO clients (public_id, name, role, token_id, secret_hash, '
                       "from_env, created_at) VALUES (?, 'environment admin', 'admin', ?, ?, 1, ?) "
                       "ON CONFLICT (token_id) DO UPDATE SET secret_hash = excluded.secret_hash, "
                       "role = 'admin', from_env = 1",
                       (new_public_id(), token_id, secret_hash, now))

    def release_env_client(self):
        """The environment names no admin: the token ids it named become ordinary
        admin clients (rotatable, deletable). Returns those token ids."""
        with self.transaction() as db:
            return [row[0] for row in db.execute(
                'UPDATE clients SET from_env = 0 WHERE from_env = 1 RETURNING token_id')]

    def list_clients(self, after, limit):
        with self.snapshot() as db:
            rows = db.execute('SELECT * FROM clients WHERE id < ? AND deleted_at IS NULL '
                              'ORDER BY id DESC LIMIT ?', (after, limit + 1)).fetchall()
            return rows, self.count_clients()

    def set_client_secret(self, client_pk, secret_hash):
        """Whether the client was still there to change."""
        with self.transaction() as db:
            return db.execute('UPDATE clients SET secret_hash = ? WHERE id = ? '
                              'AND deleted_at IS NULL', (secret_hash, client_pk)).rowcount > 0

    def delete_client(self, client_pk, now, force):
        """Delete a client; with `force`, also its users and channels, their live
        sessions ended first. (Users it still owns if refused, else 0; the sessions
        ended, as _end_live_sessions returns them.) The check is in the
        delete's own transaction, so a user created meanwhile is never lost. A client
        that owned anything is only marked and hidden here: the Purger deletes the rest."""
        with self.transaction() as db:
            users = db.execute('SELECT users FROM clients WHERE id = ? AND deleted_at IS NULL',
                               (client_pk,)).fetchone()
            if users is None:
                return 0, []  # deleted meanwhile
            if users[0] and not force:
                return users[0], []
            ended = self._end_live_sessions(db, 'live_session_id IS NOT NULL AND +client_id = ?',
                                            (client_pk,), 'channel_deleted', now)
            if not db.execute('DELETE FROM clients WHERE id = ? AND NOT EXISTS '
                              '(SELECT 1 FROM users WHERE client_id = ?)',
                              (client_pk, client_pk)).rowcount:
                # ':' cannot be in a token id that logs in (Basic splits at it), and the
                # environment's admin can be made afresh under its old token id.
                db.execute("UPDATE clients SET deleted_at = ?, token_id = 'deleted:' || id "
                           'WHERE id = ?', (now, client_pk))
        return 0, ended

    # Users -------------------------------------------------------------------

    _USER_LIMITS = ('max_channels', 'max_live_channels', 'max_bitrate_kbps',
                    'max_session_seconds')
    _USER_SELECT = ('SELECT u.*, cl.public_id AS client_public_id FROM users u '
                    'JOIN clients cl ON cl.id = u.client_id ')

    def user(self, client_pk, user_id):  # a deleted user is renamed out of reach
        return self.db.execute(self._USER_SELECT + 'WHERE u.client_id = ? AND u.user_id = ?',
                               (client_pk, user_id)).fetchone()

    def list_users(self, client_pk, after, limit):
        """A page of users, newest first; client_pk None means every client's."""
        where, args = ('u.client_id = ? AND ', [client_pk]) if client_pk else ('', [])
        with self.snapshot() as db:
            rows = db.execute(self._USER_SELECT + 'WHERE %s u.id < ? AND u.deleted_at IS NULL '
                              'AND cl.deleted_at IS NULL ORDER BY u.id DESC LIMIT ?'
                              % where, args + [after, limit + 1]).fetchall()
            # coalesce: a client deleted since the request began has no users left.
            total = db.execute('SELECT coalesce(sum(users), 0) FROM clients WHERE %s'
                               'deleted_at IS NULL' % ('id = ? AND ' if client_pk else ''),
                               args).fetchone()[0]
        return rows, total

    def _ensure_user(self, db, client_pk, user_id, defaults, now, create=True):
        """(The user's row id, whether it is new), created with `defaults` limits if new;
        (None, False) if new and not `create`, or if the client was deleted meanwhile."""
        row = db.execute('SELECT u.id FROM users u JOIN clients cl ON cl.id = u.client_id '
                         'WHERE u.client_id = ? AND u.user_id = ? AND cl.deleted_at IS NULL',
                         (client_pk, user_id)).fetchone()
        if row or not create:
            return (row[0] if row else None), False
        cursor = db.execute(
            'INSERT INTO users (client_id, user_id, max_channels, max_live_channels, '
            'max_bitrate_kbps, max_session_seconds, created_at, updated_at) '
            'SELECT id, ?, ?, ?, ?, ?, ?, ? FROM clients WHERE id = ? AND deleted_at IS NULL',
            (user_id,) + tuple(defaults[name] for name in self._USER_LIMITS)
            + (now, now, client_pk))
        return (cursor.lastrowid, True) if cursor.rowcount else (None, False)

    def put_user(self, client_pk, user_id, limits, defaults, now, replace):
        """(The user as written, whether new): PUT (`replace`) resets unnamed limits to
        `defaults`; PATCH changes the named ones of a user that exists, else (None, False)."""
        with self.transaction() as db:
            user_pk, created = self._ensure_user(db, client_pk, user_id, defaults, now,
                                                 create=replace)
            if user_pk is None:
                return None, False
            values = dict(defaults) if replace else {}
            values.update(limits)
            if values:
                db.execute('UPDATE users SET %s, updated_at = ? WHERE id = ?'
                           % ', '.join('%s = ?' % name for name in values),
                           tuple(values.values()) + (now, user_pk))
            return self.user(client_pk, user_id), created  # this thread's db: sees the write

    def delete_user(self, user_pk, now, force):
        """Delete a user; with `force`, also its channels, their live sessions ended
        first. (Its channels if refused, else 0; the sessions ended, as
        _end_live_sessions returns them.) The check is in the delete's own transaction. A user
        with channels is only marked, renamed and hidden here: the Purger deletes the rest."""
        with self.transaction() as db:
            user = db.execute('SELECT client_id, channels FROM users WHERE id = ? '
                              'AND deleted_at IS NULL', (user_pk,)).fetchone()
            if user is None:
                return 0, []  # deleted meanwhile
            if user['channels'] and not force:
                return user['channels'], []
            ended = self._end_live_sessions(db, 'live_session_id IS NOT NULL AND +user_pk = ?',
                                            (user_pk,), 'channel_deleted', now)
            if not user['channels']:
                db.execute('DELETE FROM users WHERE id = ?', (user_pk,))
                return 0, ended
            # Its share of the client's counters goes now (the triggers skip it later).
            db.execute(
                'UPDATE clients SET users = clients.users - 1, channels = clients.channels - s.n, '
                'sessions = clients.sessions - s.n_sessions, '
                'live_seconds = clients.live_seconds - s.seconds, '
                'bytes_in = clients.bytes_in - s.bytes FROM (SELECT count(*) AS n, '
                'coalesce(sum(sessions), 0) AS n_sessions, total(live_seconds) AS seconds, '
                'coalesce(sum(bytes_in), 0) AS bytes FROM channels WHERE user_pk = ?) s '
                'WHERE clients.id = ?', (user_pk, user['client_id']))
            # '~' is not in a userId: the name is free for a new user at once.
            db.execute("UPDATE users SET deleted_at = ?, user_id = '~' || id WHERE id = ?",
                       (now, user_pk))
        return 0, ended

    # Channels ----------------------------------------------------------------

    #: A channel row: the channel's columns, its user's id, its client's public id,
    #: when it went live and its status.
    _CHANNEL_ROWS = (
        'SELECT c.*, u.user_id, cl.public_id AS client_public_id, s.started_at AS live_since, '
        's.ingest AS live_ingest, '
        "CASE WHEN NOT c.enabled THEN 'disabled' WHEN c.live_session_id IS NOT NULL "
        "THEN 'live' ELSE 'idle' END AS status "
        'FROM channels c ' + _LIVE_OWNERS + 'LEFT JOIN sessions s ON s.id = c.live_session_id ')

    def _cached_row(self, sql, args, channels=False):
        """One row, served from memory until the next write in this process or
        another (catch_up()), as a SQLite call costs a GIL hand-off under load; for
        READ_CACHE_SECONDS at most, for changes made by hand.
        channels=True: the row holds only channel objects and what they are made
        of, so only a write that can change one voids it."""
        now = time.monotonic()
        entry = self._rows.get((sql, args))
        current = self.channels_generation if channels else self.generation
        if entry and entry[1] == current and entry[2] > now:
            return entry[0]
        generation = current  # read first: a write during the query voids the entry
        row = self.db.execute(sql, args).fetchone()
        # Bytes in memory, not characters: one astral character takes 4.
        size = sum(map(sys.getsizeof, (sql, row) + args + tuple(row or ())))
        if len(self._rows) >= READ_CACHE_ROWS or self._rows_bytes + size > READ_CACHE_BYTES:
            self._rows.clear()
            self._rows_bytes = 0
        self._rows[(sql, args)] = (row, generation, now + READ_CACHE_SECONDS)
        self._rows_bytes += size
        return row

    def channel(self, client_pk, public_id):
        """A channel row by public id, within one client (or any client for None),
        with its API object as JSON text: `json`, and `admin_json` with clientId."""
        row = self._cached_row('SELECT *, %s AS json, %s AS admin_json FROM (%sWHERE '
                               'c.public_id = ?)' % (CHANNEL_OBJECT, ADMIN_CHANNEL_OBJECT,
                                                     self._CHANNEL_ROWS), (public_id,),
                               channels=True)
        return row if row and client_pk in (None, row['client_id']) else None

    def list_channels(self, client_pk, user_id, status, q, after, limit, admin):
        """A page of channels, newest first, as one cached row: (the channel objects
        as a JSON array, whether more follow, the next page's `after`, the total)."""
        where, args = [], []
        # `+` keeps the planner off channels_by_client where a sharper index exists
        # (the user's channels, the live ones, the disabled ones, the name index; each
        # filter is an IN or = the planner drives from), so no filter walks a client's
        # channels.
        sharper = user_id is not None or status in ('live', 'disabled') or q
        if client_pk:
            where.append('+c.client_id = ?' if sharper else 'c.client_id = ?')
            args.append(client_pk)
        if user_id is not None:
            where.append('c.user_pk IN (SELECT id FROM users WHERE user_id = ?%s)'
                         % (' AND client_id = ?' if client_pk else ''))
            args += [user_id, client_pk] if client_pk else [user_id]
        if status == 'live':
            where.append('c.id IN (SELECT id FROM channels WHERE live_session_id > 0)')
        elif status == 'idle':
            where.append('c.live_session_id IS NULL AND c.enabled = 1')
        elif status == 'disabled':
            where.append('c.id IN (SELECT id FROM channels WHERE enabled = 0%s)'
                         % (' AND client_id = ?' if client_pk else ''))
            args += [client_pk] if client_pk else []
        if q:  # the trigram index finds candidates (q has 3+ characters: list_channels()),
            # then instr() applies LIKE's case rule (A-Z only), without LIKE's re-prepare
            where.append('c.id IN (SELECT rowid FROM channel_names WHERE channel_names MATCH ?) '
                         'AND instr(lower(c.name), lower(?))')
            args += ['"%s"' % q.replace('"', '""'), q]
        filters = ' AND '.join(where) or '1'
        owner = ' WHERE deleted_at IS NULL' + (' AND id = ?' if client_pk else '')
        if user_id is None and status in (None, 'idle') and not q:
            # From the counters the triggers keep; a disabled channel is never live,
            # so the idle ones are the rest, less the disabled (channels_disabled).
            total_sql = '(SELECT coalesce(sum(channels), 0) FROM clients%s)' % owner
            total_args = args[:1]
            if status == 'idle':
                total_sql = ('(SELECT coalesce(sum(channels - live_channels), 0) FROM clients%s)'
                             ' - (SELECT count(*) FROM channels c %sWHERE c.enabled = 0%s)'
                             % (owner, _LIVE_OWNERS, ' AND c.client_id = ?' if client_pk else ''))
                total_args = args[:1] * 2
        else:
            total_sql = '(SELECT count(*) FROM channels c %sWHERE %s)' % (_LIVE_OWNERS, filters)
            total_args = args
        # One more row than the page tells whether more follow; it is then dropped
        # from the array, and the cursor points just above it (ids below it + 1).
        # The rows come in id order from the index and LIMIT stops the scan.
        sql = ('SELECT CASE WHEN n > ? THEN json_remove(items, \'$[#-1]\') ELSE items END, '
               'n > ?, last + 1, %s FROM (SELECT json_group_array(%s) AS items, '
               'count(*) AS n, min(id) AS last FROM (%sWHERE %s AND c.id < ? '
               'ORDER BY c.id DESC LIMIT ?))'
               % (total_sql, ADMIN_CHANNEL_OBJECT if admin else CHANNEL_OBJECT,
                  self._CHANNEL_ROWS, filters))
        return tuple(self._cached_row(sql, tuple([limit, limit] + total_args + args
                                                 + [after, limit + 1]), channels=True))

    def create_channel(self, client_pk, user_id, fields, defaults, now):
        """Insert a channel for the user (created with `defaults` if new), on the node
        fields['ingest'] names, else on the one place() picks. (channel, None); (None,
        (limit name, value)) past maxChannels; (None, None) if the client was deleted
        meanwhile; NotAccepting if the node (or every node) takes no new channels."""
        public_id = new_public_id()
        with self.transaction() as db:
            ingest = self._place(db, fields.get('ingest'))
            user_pk, _ = self._ensure_user(db, client_pk, user_id, defaults, now)
            if user_pk is None:
                return None, None
            # The limit check and the insert are one statement: no row past the limit.
            inserted = db.execute(
                'INSERT INTO channels (public_id, client_id, user_pk, name, description, '
                'metadata, enabled, stream_key, reconnect_window, created_at, updated_at, '
                'ingest) SELECT ?, ?, id, ?, ?, ?, 1, ?, ?, ?, ?, ? FROM users '
                'WHERE id = ? AND (max_channels IS NULL OR channels < max_channels)',
                (public_id, client_pk, fields['name'], fields.get('description', ''),
                 json.dumps(fields.get('metadata', {})), new_stream_key(),
                 fields.get('reconnect_window'), now, now, ingest, user_pk)).rowcount
            if not inserted:
                limit = ('maxChannels', db.execute(
                    'SELECT max_channels FROM users WHERE id = ?', (user_pk,)).fetchone()[0])
                self._event(db, 'limit.exceeded', now, client_pk=client_pk, data={
                    'channelId': None, 'userId': user_id, 'limit': limit[0],
                    'value': limit[1]})
                return None, limit
            self._event(db, 'channel.created', now, channel_pk=db.execute(
                'SELECT id FROM channels WHERE public_id = ?', (public_id,)).fetchone()[0])
        return self.channel(client_pk, public_id), None

    def _place(self, db, wanted=None):
        """The node a new channel goes on: `wanted` if it is accepting, else the
        accepting node with the fewest live streams, then the fewest channels, then
        the first configured. Read in the inserting transaction, so two creations
        at once count each other."""
        row = db.execute(
            'SELECT n.name FROM temp.node_urls n LEFT JOIN ingest_nodes i ON i.name = n.name '
            'WHERE coalesce(i.accepting, n.accepting) AND coalesce(n.name = ?, 1) ORDER BY '
            '(SELECT count(*) FROM sessions WHERE ended_at IS NULL AND ingest = n.name), '
            'coalesce(i.channels, 0), n.position LIMIT 1', (wanted,)).fetchone()
        if row is None:
            raise NotAccepting(wanted)
        return row[0]

    def set_accepting(self, name, accepting):
        """Persist whether the node takes new channels (PATCH /v1/ingest/{name})."""
        with self.transaction(channels=False) as db:
            db.execute('INSERT INTO ingest_nodes (name, accepting) VALUES (?, ?) '
                       'ON CONFLICT (name) DO UPDATE SET accepting = excluded.accepting',
                       (name, accepting))

    def ingest_nodes(self):
        """Each configured node's name and whether it takes new channels (as PATCHed,
        else as configured), and its open sessions: (nodes, [(ingest, channel public
        id, bitrate_kbps, RTMP viewers)]), read in one snapshot."""
        with self.snapshot() as db:
            nodes = db.execute(
                'SELECT n.name, coalesce(i.accepting, n.accepting) AS accepting '
                'FROM temp.node_urls n LEFT JOIN ingest_nodes i ON i.name = n.name '
                'ORDER BY n.position').fetchall()
            live = db.execute(
                'SELECT s.ingest, c.public_id, s.bitrate_kbps, s.viewers FROM sessions s '
                'JOIN channels c ON c.live_session_id = s.id WHERE s.ended_at IS NULL'
            ).fetchall()
        return nodes, live

    def update_channel(self, channel_pk, fields, now, reason=None):
        """Change a channel's fields (stream_key among them); its live session, if
        any, is ended for `reason` if given (decide_edit). Returns the sessions ended
        (_end_live_sessions)."""
        columns = dict(fields)
        if 'metadata' in columns:
            columns['metadata'] = json.dumps(columns['metadata'])
        ended = []
        with self.transaction() as db:
            enabled = db.execute('SELECT enabled FROM channels WHERE id = ?',
                                 (channel_pk,)).fetchone()
            db.execute('UPDATE channels SET %s updated_at = ? WHERE id = ?'
                       % ''.join('%s = ?, ' % name for name in columns),
                       tuple(columns.values()) + (now, channel_pk))
            if reason:
                ended = self._end_live_sessions(db, 'id = ?', (channel_pk,), reason, now)
            if enabled is not None:
                self._event(db, edit_event(fields, bool(enabled[0])), now, channel_pk=channel_pk)
        return ended

    def delete_channel(self, channel_pk, now):
        """Delete a channel, ending its live session; returns it ended (_end_live_sessions)."""
        with self.transaction() as db:
            ended = self._end_live_sessions(db, 'id = ?', (channel_pk,), 'channel_deleted', now)
            self._event(db, 'channel.deleted', now, channel_pk=channel_pk)
            db.execute('DELETE FROM channels WHERE id = ?', (channel_pk,))
        return ended

    # Sessions (a broadcast: one publish from go-live to end) -----------------

    #: Ends a session at ? (not before it began) for the reason ?; nginx reports a stream
    #: no more once it ends, so the bytes since its last sample are extrapolated at its
    #: last measured rate (? and ? are the end again). See README "Statistics".
    #: A session whose publisher left (the reconnect window) ends when it left.
    _ENDING = ('ended_at = max(coalesce(left_at, ?), started_at), end_reason = ?, '
               'bytes_in = bytes_in + CAST(coalesce(bitrate_kbps, 0) * 125 * '
               'max(0, coalesce(left_at, ?) - coalesce(sampled_at, ?)) AS INTEGER)')

    def _end_live_sessions(self, db, channel_filter, args, reason, now):
        """End the open sessions of the channels matching `channel_filter`. Returns them
        as rows (channel_id, session_id, connection: public ids and the ingest's
        connection), so that their publishers can be kicked (Service.kick)."""
        ended = db.execute(
            'SELECT c.public_id AS channel_id, s.public_id AS session_id, '
            's.ingest_client AS connection, s.ingest, c.id AS channel_pk, s.id AS session_pk '
            'FROM (SELECT id, public_id, live_session_id '
            'FROM channels WHERE live_session_id IS NOT NULL AND %s) c '
            'JOIN sessions s ON s.id = c.live_session_id' % channel_filter, args).fetchall()
        self._write_beats_of(db, [session['session_pk'] for session in ended])
        db.execute('UPDATE sessions SET %s WHERE ended_at IS NULL AND channel_id IN '
                   '(SELECT id FROM channels WHERE %s)' % (self._ENDING, channel_filter),
                   (now, reason, now, now) + tuple(args))
        db.execute('UPDATE channels SET live_session_id = NULL WHERE live_session_id IS NOT NULL '
                   'AND %s' % channel_filter, args)
        for session in ended:
            self._event(db, 'channel.idle', now, channel_pk=session['channel_pk'],
                        session_pk=session['session_pk'])
        return ended

    def end_session(self, session_pk, reason, ended_at, limit=None):
        """End an open session; `limit` (name, value), when it passed a user's limit,
        goes in a limit.exceeded event before its channel.idle."""
        with self.transaction() as db:
            if limit:
                channel = db.execute(
                    'SELECT c.public_id, c.client_id, u.user_id FROM sessions s JOIN channels c '
                    'ON c.id = s.channel_id JOIN users u ON u.id = c.user_pk WHERE s.id = ? '
                    'AND s.ended_at IS NULL', (session_pk,)).fetchone()
                if channel:
                    self._event(db, 'limit.exceeded', ended_at, client_pk=channel['client_id'],
                                channel_id=channel['public_id'], data={
                                    'channelId': channel['public_id'],
                                    'userId': channel['user_id'], 'limit': limit[0],
                                    'value': limit[1]})
            self._end_session(db, session_pk, reason, ended_at)

    def disconnect(self, session_pk, now, window, stale_after):
        """Its publisher left, but may come back within `window` seconds: the session
        stays open (and live), its bytes counted up to now. Its last-seen time is set
        so that it goes stale exactly as the window ends: every stale check
        (end_stale_sessions, a publish) then ends it, as of when the publisher left."""
        with self.transaction() as db:
            self._write_beats_of(db, [session_pk])
            if db.execute(
                    'UPDATE sessions SET left_at = ?, last_seen_at = ?, bytes_in = bytes_in + '
                    'CAST(coalesce(bitrate_kbps, 0) * 125 * max(0, ? - coalesce(sampled_at, ?)) '
                    'AS INTEGER), sampled_at = ?, bitrate_kbps = 0 '
                    'WHERE id = ? AND ended_at IS NULL AND left_at IS NULL',
                    (now, now + window - stale_after, now, now, now, session_pk)).rowcount:
                self._event(db, 'channel.disconnected', now, session_pk=session_pk)

    def left_after_stale(self, session_pk):
        """Record that the publisher of a session ended as stale has since left."""
        with self.transaction(channels=False) as db:
            db.execute("UPDATE sessions SET end_reason = 'publisher_left' WHERE id = ? "
                       "AND end_reason = 'stale'", (session_pk,))

    def _end_session(self, db, session_pk, reason, ended_at):
        self._write_beats_of(db, [session_pk])
        if db.execute('UPDATE sessions SET %s WHERE id = ? AND ended_at IS NULL' % self._ENDING,
                      (ended_at, reason, ended_at, ended_at, session_pk)).rowcount:
            db.execute('UPDATE channels SET live_session_id = NULL WHERE live_session_id = ?',
                       (session_pk,))
            self._event(db, 'channel.idle', ended_at, session_pk=session_pk)

    def oldest_open_session(self):
        """The earliest last-seen time of the open sessions, or None."""
        return self.db.execute('SELECT min(last_seen_at) FROM sessions '
                               'WHERE ended_at IS NULL').fetchone()[0]

    def end_stale_sessions(self, cutoff):
        """End every open session not heard from since `cutoff`, as of its last sign of life."""
        with self.transaction() as db:
            return self._end_stale(db, cutoff)

    def _end_stale(self, db, cutoff, user_pk=None):
        """End the stale sessions (of one user's channels, if given); how many. Found
        through the sessions_open index (stale ones are few), whoever owns them."""
        where, args = ('AND (SELECT user_pk FROM channels WHERE id = o.channel_id) = ?',
                       (cutoff, user_pk)) if user_pk else ('', (cutoff,))
        query = ('SELECT o.id, o.last_seen_at, o.left_at FROM sessions o '
                 'WHERE o.ended_at IS NULL AND o.last_seen_at < ? ' + where)
        stale = db.execute(query, args).fetchall()
        # Heard from since, in a heartbeat not yet written: not stale after all.
        if self._write_beats_of(db, [session['id'] for session in stale]):
            stale = db.execute(query, args).fetchall()
        for session in stale:
            if session['left_at'] is not None:  # its reconnect window has passed
                self._end_session(db, session['id'], 'publisher_left', session['left_at'])
            else:
                self._end_session(db, session['id'], 'stale', session['last_seen_at'])
        return len(stale)

    def ingest_channel(self, public_id):
        """What the hooks need to know of a stream, in one read: the channel, its
        user's limits and its open session (the session columns NULL when idle)."""
        return self._cached_row(
            'SELECT c.id, c.enabled, c.live_session_id, c.reconnect_window, u.max_bitrate_kbps, '
            'u.max_session_seconds, s.public_id AS session_id, s.ingest_client AS connection, '
            's.started_at, s.last_seen_at, s.bytes_in, s.sampled_at, s.left_at, '
            's.bytes_base, s.paused_seconds FROM channels c '
            + _LIVE_OWNERS + 'LEFT JOIN sessions s ON s.id = c.live_session_id '
            'WHERE c.public_id = ?', (public_id,))

    def session(self, session_pk):
        return self.db.execute('SELECT s.*, c.public_id AS channel_public_id FROM sessions s '
                               'JOIN channels c ON c.id = s.channel_id WHERE s.id = ?',
                               (session_pk,)).fetchone()

    def last_session_of(self, channel_pk, connection):
        return self.db.execute('SELECT * FROM sessions WHERE channel_id = ? AND ingest_client = ? '
                               'ORDER BY id DESC LIMIT 1', (channel_pk, connection)).fetchone()

    def start_session(self, public_id, decide, connection, addr, now, stale_cutoff,
                      ingest=DEFAULT_NODE):
        """Open a session on node `ingest` for a publish if decide(row) (decide_publish
        over this read) allows it, in one BEGIN IMMEDIATE transaction, so two publishes
        (on any nodes, in any processes) cannot both pass a limit.
        Returns (the session's public id, None) or (None, why not)."""
        with self.transaction() as db:
            channel = db.execute(
                'SELECT c.id, c.user_pk, c.client_id, u.user_id, c.enabled, c.stream_key, '
                'c.live_session_id, '
                'u.live_channels, u.max_live_channels, s.ingest_client AS connection, '
                's.last_seen_at, s.left_at, s.public_id AS session_id, '
                '(SELECT count(*) FROM sessions o WHERE o.ended_at IS NULL AND o.last_seen_at < ? '
                ' AND (SELECT user_pk FROM channels WHERE id = o.channel_id) = c.user_pk) '
                'AS stale_live FROM channels c ' + _LIVE_OWNERS +
                'LEFT JOIN sessions s ON s.id = c.live_session_id WHERE c.public_id = ?',
                (stale_cutoff, public_id)).fetchone()
            decision = decide(channel)
            if decision.why:
                if decision.refusal:
                    self._event(db, 'publish.refused', now, client_pk=channel['client_id'],
                                channel_id=public_id, data={
                                    'channelId': public_id, 'userId': channel['user_id'],
                                    'reason': decision.refusal})
                return None, decision.why
            if decision.end_stale:
                self._end_stale(db, stale_cutoff, channel['user_pk'])
            if decision.resume:
                # The gap is not live time; the new connection's byte count starts at 0.
                db.execute('UPDATE sessions SET paused_seconds = paused_seconds + '
                           'max(0, ? - left_at), left_at = NULL, ingest_client = ?, addr = ?, '
                           'last_seen_at = ?, sampled_at = ?, bytes_base = bytes_in '
                           'WHERE id = ?', (now, connection, addr, now, now,
                                            channel['live_session_id']))
                self._event(db, 'channel.reconnected', now,
                            session_pk=channel['live_session_id'])
                return channel['session_id'], None
            if decision.take_over:
                self._end_session(db, channel['live_session_id'], 'stale', channel['last_seen_at'])
            session_id = new_public_id()
            session_pk = db.execute(
                'INSERT INTO sessions (public_id, channel_id, ingest_client, addr, started_at, '
                'last_seen_at, ingest) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (session_id, channel['id'], connection, addr, now, now, ingest)).lastrowid
            db.execute('UPDATE channels SET live_session_id = ? WHERE id = ?',
                       (session_pk, channel['id']))
            self._event(db, 'channel.live', now, session_pk=session_pk)
        return session_id, None

    # Heartbeats: held in memory, written once a second in one transaction ---------

    def heartbeat(self, session_pk, now, metrics=None):
        """An open session was heard from at `now`, with its figures if its node's
        stats list it (as of metrics['measuredAt'], the reading's time, else now).
        Held in memory until flush_heartbeats() writes every session's in one
        transaction, or a transaction that ends or pauses this session writes it
        first (_write_beats_of): a crash loses at most the heartbeats of the last
        flush interval, never a session's start or end. Figures older than those
        held are ignored; the peaks of figures not yet written are kept."""
        row = None if metrics is None else _beat_figures(metrics, now)
        with self._beats_lock:
            self._beats[session_pk] = _merged(self._beats.get(session_pk),
                                              Beat(now, row, row and row[2], row and row[5]))

    def beat_measured_at(self, session_pk):
        """When the figures held for a session (not yet written) were measured, or None."""
        beat = self._beats.get(session_pk)
        return beat and beat.figures and beat.figures[0]

    def flush_heartbeats(self):
        """Write every heartbeat held, in one transaction; how many. On failure (the
        database locked, a full disk) they are held again, under any newer ones."""
        with self._beats_lock:
            beats, self._beats = self._beats, {}
        if not beats:
            return 0
        try:
            with self.transaction(durable=False, channels=False) as db:
                self._write_beats(db, beats)
        except BaseException:
            with self._beats_lock:
                for session_pk, beat in beats.items():
                    self._beats[session_pk] = _merged(self._beats.get(session_pk), beat)
            raise
        return len(beats)

    def _write_beats_of(self, db, session_pks):
        """Inside a transaction that is about to end or pause these sessions: write
        what is held of them first, so that their ends take their latest figures."""
        with self._beats_lock:
            beats = {pk: self._beats.pop(pk) for pk in session_pks if pk in self._beats}
        if beats:
            self._write_beats(db, beats)
        return len(beats)

    def _write_beats(self, db, beats):
        """Each open, connected session's last-seen time (never moved back) and its
        latest figures (never older ones over newer), and a row in session_samples
        for a session with none in the last sample_interval seconds."""
        db.executemany('UPDATE sessions SET last_seen_at = max(last_seen_at, ?) '
                       'WHERE id = ? AND ended_at IS NULL AND left_at IS NULL',
                       [(beat.seen, pk) for pk, beat in beats.items()])
        measured = [(pk, beat) for pk, beat in beats.items() if beat.figures]
        # measured_at, bytes_in, bitrate, viewers (RTMP), viewers_hls, viewers (all), video, audio
        db.executemany(
            'INSERT INTO session_samples (session_id, at, bytes_in, bitrate_kbps, '
            'viewers_hls, viewers) SELECT :pk, :at, :bytes, :bitrate, :hls, :viewers '
            'WHERE EXISTS (SELECT 1 FROM sessions WHERE id = :pk AND ended_at IS NULL '
            'AND left_at IS NULL AND coalesce(sampled_at, 0) <= :at) AND NOT EXISTS '
            '(SELECT 1 FROM session_samples WHERE session_id = :pk AND at > :at - :every)',
            [{'pk': pk, 'at': beat.figures[0], 'bytes': beat.figures[1],
              'bitrate': beat.figures[2], 'hls': beat.figures[4], 'viewers': beat.figures[5],
              'every': self.sample_interval} for pk, beat in measured])
        # sessions.viewers is RTMP's (play hooks move it); the peak counts HLS too.
        db.executemany(
            'UPDATE sessions SET sampled_at = ?, bytes_in = max(bytes_in, ?), bitrate_kbps = ?, '
            'peak_bitrate_kbps = max(coalesce(peak_bitrate_kbps, 0), ?), viewers = ?, '
            'peak_viewers = max(peak_viewers, coalesce(?, 0)), video = coalesce(?, video), '
            'audio = coalesce(?, audio) WHERE id = ? AND ended_at IS NULL AND left_at IS NULL '
            'AND coalesce(sampled_at, 0) <= ?',
            [beat.figures[:3] + (beat.peak_bitrate, beat.figures[3], beat.peak_viewers)
             + beat.figures[6:] + (pk, beat.figures[0]) for pk, beat in measured])

    def add_viewer(self, public_id, delta):
        with self.transaction(channels=False) as db:
            db.execute('UPDATE sessions SET viewers = max(0, viewers + ?), '
                       'peak_viewers = max(peak_viewers, viewers + ?) '
                       'WHERE id = (SELECT live_session_id FROM channels WHERE public_id = ?)',
                       (delta, delta, public_id))

    def list_sessions(self, channel_pk, after, limit):
        """A page of a channel's sessions and their total; None if the channel
        has been deleted since the caller found it."""
        with self.snapshot() as db:
            channel = db.execute('SELECT sessions - sessions_forgotten FROM channels '
                                 'WHERE id = ?', (channel_pk,)).fetchone()
            if channel is None:
                return None
            rows = db.execute('SELECT s.*, c.public_id AS channel_public_id FROM sessions s '
                              'JOIN channels c ON c.id = s.channel_id WHERE s.channel_id = ? '
                              'AND s.id < ? ORDER BY s.id DESC LIMIT ?',
                              (channel_pk, after, limit + 1)).fetchall()
        return rows, channel[0]

    # Purging what force deletes marked, old samples and old sessions --------

    #: Rows per purge transaction: each stays well under 100 ms at the bench's seed
    #: (100k channels, 1M sessions), so no writer waits long behind one.
    PURGE_CHANNELS, PURGE_SESSIONS, PURGE_USERS = 100, 1000, 200

    def purge_step(self):
        """Delete the next small batch of what a force delete marked (sessions with
        their channels, then users, then the client or user itself), in one short
        transaction; False when nothing marked is left."""
        marked = self.db.execute(
            "SELECT 'client_id', 'clients', id FROM clients WHERE deleted_at IS NOT NULL "
            "UNION ALL SELECT 'user_pk', 'users', id FROM (SELECT id FROM users "
            'WHERE deleted_at IS NOT NULL LIMIT 1) LIMIT 1').fetchone()
        if marked is None:
            return False
        column, table, pk = marked
        # What it deletes is already hidden from every read: no cached read changes.
        with self.transaction(channels=False) as db:
            channels = db.execute('SELECT id, sessions FROM channels WHERE %s = ? LIMIT ?'
                                  % column, (pk, self.PURGE_CHANNELS)).fetchall()
            batch, sessions = [], 0
            for channel in channels:
                if batch and sessions + channel['sessions'] > self.PURGE_SESSIONS:
                    break
                batch.append(channel['id'])
                sessions += channel['sessions']
            if len(batch) == 1 and sessions > self.PURGE_SESSIONS:  # a channel's sessions
                if db.execute('DELETE FROM sessions WHERE id IN (SELECT id FROM sessions '
                              'WHERE channel_id = ? LIMIT ?)',
                              (batch[0], self.PURGE_SESSIONS)).rowcount == self.PURGE_SESSIONS:
                    return True  # more of them next time
            if batch:
                marks = ', '.join('?' * len(batch))
                db.execute('DELETE FROM sessions WHERE channel_id IN (%s)' % marks, batch)
                db.execute('DELETE FROM channels WHERE id IN (%s)' % marks, batch)
                return True
            if table == 'clients' and db.execute(
                    'DELETE FROM users WHERE id IN (SELECT id FROM users WHERE client_id = ? '
                    'LIMIT ?)', (pk, self.PURGE_USERS)).rowcount:
                return True
            db.execute('DELETE FROM %s WHERE id = ?' % table, (pk,))
        return True

    def compact_samples(self, cutoff, after, sessions=100):
        """Average the samples of the next ended session after id `after` not yet
        compacted that ended before `cutoff` down to one per minute, in one transaction.
        The id to go on from, or None when the pass is over (sessions are numbered as
        they start, so none past `cutoff` can be due)."""
        rows = self.db.execute(
            'SELECT id, started_at, ended_at FROM sessions WHERE samples_compacted = 0 '
            'AND ended_at IS NOT NULL AND id > ? ORDER BY id LIMIT ?',
            (after, sessions)).fetchall()
        for row in rows:
            if row['started_at'] >= cutoff:
                return None
            if row['ended_at'] < cutoff:
                with self.transaction(durable=False, channels=False) as db:
                    minutes = db.execute(
                        'SELECT min(at), avg(bitrate_kbps), max(bytes_in), '
                        'CAST(round(avg(viewers)) AS INTEGER), '
                        'CAST(round(avg(viewers_hls)) AS INTEGER) FROM session_samples '
                        'WHERE session_id = ? GROUP BY CAST(at / 60 AS INTEGER)',
                        (row['id'],)).fetchall()
                    db.execute('DELETE FROM session_samples WHERE session_id = ?', (row['id'],))
                    db.executemany('INSERT INTO session_samples (session_id, at, bitrate_kbps, '
                                   'bytes_in, viewers, viewers_hls) VALUES (?, ?, ?, ?, ?, ?)',
                                   [(row['id'],) + tuple(minute) for minute in minutes])
                    db.execute('UPDATE sessions SET samples_compacted = 1 WHERE id = ?',
                               (row['id'],))
                return row['id']
        return None if len(rows) < sessions else rows[-1]['id']

    def expire_sessions(self, cutoff, after, rows=1000, batch=50):
        """Delete, with their samples, up to `batch` of the next `rows` sessions after id
        `after` that ended before `cutoff`. The id to go on from, or None when the pass
        is over: sessions are numbered as they start, so none past `cutoff` can expire."""
        sessions = self.db.execute(
            'SELECT id, channel_id, started_at, ended_at FROM sessions WHERE id > ? '
            'ORDER BY id LIMIT ?', (after, rows)).fetchall()
        expired = [row for row in sessions
                   if row['ended_at'] is not None and row['ended_at'] < cutoff][:batch]
        if expired:
            ids = [row['id'] for row in expired]
            marks = ', '.join('?' * len(ids))
            with self.transaction(channels=False) as db:
                db.execute('DELETE FROM session_samples WHERE session_id IN (%s)' % marks, ids)
                db.execute('DELETE FROM sessions WHERE id IN (%s)' % marks, ids)
                # Totals keep them (sessions, liveSeconds); the list no longer counts them.
                for channel_pk, count in collections.Counter(
                        row['channel_id'] for row in expired).items():
                    db.execute('UPDATE channels SET sessions_forgotten = sessions_forgotten + ? '
                               'WHERE id = ?', (count, channel_pk))
            if len(expired) == batch:
                return ids[-1]
        if len(sessions) < rows or sessions[-1]['started_at'] >= cutoff:
            return None
        return sessions[-1]['id']

    def channel_session(self, channel_pk, public_id):
        """One of the channel's sessions by its public id, or None."""
        return self.db.execute('SELECT s.*, c.public_id AS channel_public_id FROM sessions s '
                               'JOIN channels c ON c.id = s.channel_id '
                               'WHERE s.public_id = ? AND s.channel_id = ?',
                               (public_id, channel_pk)).fetchone()

    def session_samples(self, session_pk, start, end, points):
        """The session's samples averaged into `points` equal slices of [start, end],
        oldest first, one per slice that has samples: the slice's start time, the mean
        bitrate and viewers (RTMP, HLS), and the last (largest) byte count."""
        # One index range per slice, aggregated where it is read, costs a third of a
        # GROUP BY over every sample (which sorts them all): 100k samples in ~15 ms.
        # Samples outside [start, end] (clock skew) fall into the first or last slice.
        span = max(end - start, 1.0)
        slices = self.db.execute(
            'WITH RECURSIVE slices(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM slices '
            'WHERE i + 1 < :points) SELECT :start + i * :span / :points, (SELECT '
            'json_array(count(*), avg(bitrate_kbps), max(bytes_in), '
            'avg(viewers - coalesce(viewers_hls, 0)), avg(coalesce(viewers_hls, 0))) '
            'FROM session_samples WHERE session_id = :session '
            'AND at >= CASE i WHEN 0 THEN -9e999 ELSE :start + i * :span / :points END '
            'AND at < CASE i WHEN :points - 1 THEN 9e999 '
            'ELSE :start + (i + 1) * :span / :points END) FROM slices',
            {'start': start, 'span': span, 'points': points, 'session': session_pk})
        fields = ('at', 'count', 'bitrate_kbps', 'bytes_in', 'viewers_rtmp', 'viewers_hls')
        return [sample for sample in (dict(zip(fields, [at] + json.loads(means)))
                                      for at, means in slices) if sample['count']]

    # Events and webhooks (the outbox) ----------------------------------------

    def _event(self, db, kind, now, channel_pk=None, session_pk=None, client_pk=None,
               channel_id=None, data=None, to_admins=True):
        """Record an event in the write transaction `db`, with a pending delivery to
        each endpoint it is for (its client's; with `to_admins`, every admin's) whose
        filter takes it. With a session, its data is {channel, session}; with a
        channel, {channel} (as its owner sees it, as of now); else `data`."""
        if session_pk is not None:
            session = db.execute('SELECT s.*, c.public_id AS channel_public_id FROM sessions s '
                                 'JOIN channels c ON c.id = s.channel_id WHERE s.id = ?',
                                 (session_pk,)).fetchone()
            channel_pk = session['channel_id']
        if channel_pk is not None:
            channel = db.execute('SELECT client_id, public_id, %s AS json FROM (%sWHERE c.id = ?)'
                                 % (CHANNEL_OBJECT, self._CHANNEL_ROWS), (channel_pk,)).fetchone()
            if channel is None:  # its user or client is being deleted: nobody to tell
                return
            client_pk, channel_id = channel['client_id'], channel['public_id']
            data = {'channel': json.loads(channel['json'])}
            if session_pk is not None:
                data['session'] = session_json(session, now)
        event_pk = db.execute(
            'INSERT INTO events (public_id, client_id, channel_id, type, created_at, data) '
            'VALUES (?, ?, ?, ?, ?, ?)', (new_public_id(), client_pk, channel_id, kind, now,
                                          json.dumps(data, separators=(',', ':')))).lastrowid
        db.execute(
            "INSERT INTO deliveries (event_id, client_id, status, queued_at, next_attempt_at) "
            "SELECT ?, w.client_id, 'pending', ?, ? FROM webhooks w JOIN clients cl "
            'ON cl.id = w.client_id AND cl.deleted_at IS NULL '
            "WHERE (w.client_id = ? OR (? AND cl.role = 'admin')) AND (w.events IS NULL "
            'OR EXISTS (SELECT 1 FROM json_each(w.events) WHERE value = ?))',
            (event_pk, now, now, client_pk, to_admins, kind))
        return event_pk

    def webhook(self, client_pk):
        return self.db.execute('SELECT * FROM webhooks WHERE client_id = ?',
                               (client_pk,)).fetchone()

    def put_webhook(self, client_pk, url, events, secret, now):
        """Create or replace the client's endpoint (`secret` signs a new one; a replaced
        one keeps its own). (The webhook, whether it is new.)"""
        events = None if events is None else json.dumps(events)
        with self.transaction(channels=False) as db:
            created = db.execute(
                'INSERT INTO webhooks (client_id, url, events, secret, created_at, updated_at) '
                'SELECT id, ?, ?, ?, ?, ? FROM clients WHERE id = ? AND deleted_at IS NULL '
                'ON CONFLICT (client_id) DO NOTHING',
                (url, events, secret, now, now, client_pk)).rowcount
            if not created:
                db.execute('UPDATE webhooks SET url = ?, events = ?, updated_at = ? '
                           'WHERE client_id = ?', (url, events, now, client_pk))
        return self.webhook(client_pk), bool(created)

    def delete_webhook(self, client_pk, now):
        """Delete the client's endpoint; its pending deliveries fail. Whether it had one."""
        with self.transaction(channels=False) as db:
            if not db.execute('DELETE FROM webhooks WHERE client_id = ?', (client_pk,)).rowcount:
                return False
            db.execute("UPDATE deliveries SET status = 'failed', last_error = 'webhook deleted', "
                       "next_attempt_at = NULL WHERE client_id = ? AND status = 'pending'",
                       (client_pk,))
        return True

    def rotate_webhook_secret(self, client_pk, secret, old_until, now):
        """A new signing secret; the old one signs too until `old_until`. Whether the
        client has an endpoint."""
        with self.transaction(channels=False) as db:
            return db.execute('UPDATE webhooks SET old_secret = secret, old_secret_until = ?, '
                              'secret = ?, updated_at = ? WHERE client_id = ?',
                              (old_until, secret, now, client_pk)).rowcount > 0

    def test_event(self, client_pk, now):
        """Queue a webhook.test event to the client's own endpoint; its row id."""
        with self.transaction(channels=False) as db:
            return self._event(db, 'webhook.test', now, client_pk=client_pk, data={},
                               to_admins=False)

    #: An event with the delivery state of endpoint ? (the caller's) and its owner's id.
    _EVENT_ROWS = ('SELECT e.*, cl.public_id AS client_public_id, d.status, d.attempts, '
                   'd.last_status, d.last_error, d.next_attempt_at, d.delivered_at '
                   'FROM events e LEFT JOIN clients cl ON cl.id = e.client_id '
                   'LEFT JOIN deliveries d ON d.event_id = e.id AND d.client_id = ? ')

    def list_events(self, client_pk, recipient_pk, kind, channel_id, status, after, limit):
        """A page of events, newest first, and their total: one client's (None: every
        client's), with the delivery state of recipient_pk's endpoint."""
        where, args = ['1'], []
        if client_pk is not None:
            where.append('e.client_id = ?')
            args.append(client_pk)
        for column, value in (('e.type', kind), ('e.channel_id', channel_id),
                              ("coalesce(d.status, 'none')", status)):
            if value is not None:
                where.append('%s = ?' % column)
                args.append(value)
        filters = ' AND '.join(where)
        with self.snapshot() as db:
            rows = db.execute(self._EVENT_ROWS + 'WHERE %s AND e.id < ? ORDER BY e.id DESC '
                              'LIMIT ?' % filters,
                              [recipient_pk] + args + [after, limit + 1]).fetchall()
            total = db.execute('SELECT count(*) FROM events e LEFT JOIN deliveries d ON '
                               'd.event_id = e.id AND d.client_id = ? WHERE ' + filters,
                               [recipient_pk] + args).fetchone()[0]
        return rows, total

    def event(self, client_pk, recipient_pk, public_id):
        """One event by public id, within one client (None: any), with recipient_pk's
        delivery state; None if there is none."""
        row = self.db.execute(self._EVENT_ROWS + 'WHERE e.public_id = ?',
                              (recipient_pk, public_id)).fetchone()
        return row if row and client_pk in (None, row['client_id']) else None

    def redeliver(self, event_pk, recipient_pk, now):
        """Queue the event again to the endpoint, attempts from 0. Whether there is one."""
        with self.transaction(channels=False) as db:
            if not db.execute('SELECT 1 FROM webhooks WHERE client_id = ?',
                              (recipient_pk,)).fetchone():
                return False
            db.execute("INSERT INTO deliveries (event_id, client_id, status, queued_at, "
                       "next_attempt_at) VALUES (?, ?, 'pending', ?, ?) ON CONFLICT "
                       "(event_id, client_id) DO UPDATE SET status = 'pending', attempts = 0, "
                       'last_status = NULL, last_error = NULL, queued_at = excluded.queued_at, '
                       'next_attempt_at = excluded.next_attempt_at, delivered_at = NULL',
                       (event_pk, recipient_pk, now, now))
        return True

    def due_deliveries(self, now, busy, limit):
        """[(event pk, endpoint's client pk)]: the oldest due delivery of each endpoint
        not in `busy`, up to `limit`: one endpoint's backlog never hides another's."""
        rows = self.db.execute(
            "SELECT min(event_id), client_id FROM deliveries WHERE status = 'pending' "
            'AND next_attempt_at <= ? GROUP BY client_id', (now,)).fetchall()
        return [tuple(row) for row in rows if row[1] not in busy][:limit]

    def claim_delivery(self, event_pk, recipient_pk, now, until):
        """Take a due delivery for an attempt: it is not due again before `until` (so
        another process serving this database does not send it too, and one cut short
        by a crash is retried after that). Whether it was still due."""
        with self.transaction(durable=False, channels=False) as db:
            return db.execute("UPDATE deliveries SET next_attempt_at = ? WHERE event_id = ? "
                              "AND client_id = ? AND status = 'pending' AND next_attempt_at <= ?",
                              (until, event_pk, recipient_pk, now)).rowcount > 0

    def delivery_job(self, event_pk, recipient_pk):
        """What an attempt needs: the event, its pending delivery, the endpoint (url,
        secrets) and whether it is an admin's; None unless still pending."""
        return self.db.execute(
            "SELECT e.*, own.public_id AS client_public_id, d.attempts, d.queued_at, w.url, "
            "w.secret, w.old_secret, w.old_secret_until, cl.role = 'admin' AS admin "
            'FROM deliveries d JOIN events e ON e.id = d.event_id '
            'LEFT JOIN clients own ON own.id = e.client_id '
            'LEFT JOIN clients cl ON cl.id = d.client_id '
            # A deleted client's endpoint is as good as deleted (the purge removes it).
            'LEFT JOIN webhooks w ON w.client_id = d.client_id AND cl.deleted_at IS NULL '
            "WHERE d.event_id = ? AND d.client_id = ? AND d.status = 'pending'",
            (event_pk, recipient_pk)).fetchone()

    def record_attempt(self, event_pk, recipient_pk, status, attempts, last_status,
                       last_error, next_attempt_at, delivered_at):
        # Not fsynced: a delivery lost to a power cut is sent again (at least once).
        with self.transaction(durable=False, channels=False) as db:
            db.execute("UPDATE deliveries SET status = ?, attempts = ?, last_status = ?, "
                       "last_error = ?, next_attempt_at = ?, delivered_at = ? "
                       "WHERE event_id = ? AND client_id = ? AND status = 'pending'",
                       (status, attempts, last_status, last_error, next_attempt_at,
                        delivered_at, event_pk, recipient_pk))

    def prune_events(self, cutoff, batch):
        """Delete up to `batch` of the oldest events made before `cutoff` (their
        deliveries with them); how many."""
        with self.transaction(durable=False, channels=False) as db:
            return db.execute('DELETE FROM events WHERE id IN (SELECT id FROM events '
                              'WHERE created_at < ? ORDER BY created_at LIMIT ?)',
                              (cutoff, batch)).rowcount

    # Statistics --------------------------------------------------------------

    def totals(self, client_pk, now):
        """Counters of one client, or summed over all clients for None, plus the
        running figures of its live sessions as of `now` (the service's clock)."""
        where, args = ('AND id = ?', (client_pk,)) if client_pk else ('', ())
        totals = self.db.execute(
            'SELECT coalesce(sum(users), 0) AS users, coalesce(sum(channels), 0) AS channels, '
            'coalesce(sum(live_channels), 0) AS live_channels, '
            'coalesce(sum(sessions), 0) AS sessions, coalesce(sum(live_seconds), 0) AS live_seconds, '
            'coalesce(sum(bytes_in), 0) AS bytes_in FROM clients WHERE deleted_at IS NULL '
            + where, args).fetchone()
        # `+` keeps the planner on channels_live rather than walking every channel.
        where = 'AND +c.client_id = ?' if client_pk else ''
        live = self.db.execute(
            'SELECT coalesce(sum(s.bitrate_kbps), 0) AS bitrate_kbps, '
            'coalesce(sum(coalesce(s.left_at, ?) - s.started_at - s.paused_seconds), 0) '
            'AS seconds, '
            'coalesce(sum(s.bytes_in), 0) AS bytes_in, coalesce(sum(s.viewers), 0) AS viewers, '
            "coalesce(group_concat(c.public_id), '') AS public_ids FROM channels c "
            'JOIN sessions s ON s.id = c.live_session_id WHERE c.live_session_id IS NOT NULL '
            + where, (now,) + args).fetchone()
        return totals, live


def _split_sql(script):
    """Statements of a script, keeping trigger bodies (which contain ';') whole."""
    statements, current = [], ''
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith('--') and not current:
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ''
    if current.strip():
        statements.append(current.strip())
    return statements


def new_public_id():
    """An unguessable id that is also a safe RTMP stream name and file name."""
    return base64.b32encode(secrets.token_bytes(10)).decode('ascii').lower()


def new_stream_key():
    return secrets.token_hex(20)


def new_token():
    """A token id and its 256-bit secret."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def hash_secret(secret):
    return hashlib.sha256(secret.encode('utf-8')).digest()


###############################################################################
# Envelope and errors ##########################################################
###############################################################################

#: ec values, one per kind of failure (documented in the README).
EC_OK, EC_BAD_REQUEST, EC_VALIDATION, EC_UNAUTHORIZED, EC_FORBIDDEN, EC_LIMIT, \
    EC_NOT_FOUND, EC_METHOD, EC_TOO_LARGE, EC_THROTTLED, EC_CONFLICT = range(11)
EC_INTERNAL = 99

#: The ec for an error status raised by bottle itself rather than by us.
EC_BY_STATUS = {400: EC_BAD_REQUEST, 401: EC_UNAUTHORIZED, 403: EC_FORBIDDEN,
                404: EC_NOT_FOUND, 405: EC_METHOD, 413: EC_TOO_LARGE, 422: EC_VALIDATION,
                429: EC_THROTTLED, 409: EC_CONFLICT}


class ApiError(bottle.HTTPError, LivestreamError):
    """Every failure the API answers: raised anywhere, rendered by error_body()."""

    def __init__(self, status, ec, msg, data=None, **headers):
        super().__init__(status, msg, **headers)
        self.ec, self.msg, self.data = ec, msg, data


def not_found(what):
    return ApiError(404, EC_NOT_FOUND, '%s not found' % what)


def bad_request(msg):
    return ApiError(400, EC_BAD_REQUEST, msg)


def invalid(fields):
    """422 naming each bad field: {"field": "why"}."""
    return ApiError(422, EC_VALIDATION, 'invalid fields: %s' % ', '.join(sorted(fields)),
                    {'fields': fields})


class RawJSON(str):
    """JSON text made elsewhere (channel objects, by SQLite), answered as it is."""


def envelope(data, status=200):
    """The success answer: {"ec": 0, "data": ...} as JSON with `status`."""
    bottle.response.status = status
    bottle.response.content_type = 'application/json'
    if isinstance(data, RawJSON):
        return '{"ec":%d,"data":%s}' % (EC_OK, data)
    return json.dumps({'ec': EC_OK, 'data': data}, separators=(',', ':'))


def error_body(error):
    """Render any HTTPError (ours or bottle's own) as an envelope."""
    response = bottle.response
    response.content_type = 'application/json'
    if isinstance(error, ApiError):
        ec, msg, data = error.ec, error.msg, error.data
    elif isinstance(error.exception, DatabaseGone):  # check_file() logged what happened
        response.status = 503
        ec, msg, data = EC_INTERNAL, 'database unavailable; the server log says why', None
    elif error.status_code >= 500:
        if error.exception is not None:
            log.error('unhandled error on %s %s\n%s', bottle.request.method,
                      bottle.request.path, error.traceback)
        ec, msg, data = EC_INTERNAL, 'internal error; it was logged on the server', None
    elif error.status_code == 405:
        ec, data = EC_METHOD, {'allowed': response.headers.get('Allow', '').split(',')}
        msg = 'method %s is not allowed here; use %s' % (
            bottle.request.method, response.headers.get('Allow', ''))
    elif error.status_code == 404:
        ec, msg, data = EC_NOT_FOUND, 'no such endpoint: %s' % bottle.request.path, None
    else:
        ec = EC_BY_STATUS.get(error.status_code, EC_BAD_REQUEST)
        msg, data = str(error.body or error.status_line), None
    return error_json(ec, msg, data)


def error_json(ec, msg, data=None):
    """An error envelope's JSON text."""
    return json.dumps({'ec': ec, 'msg': msg, 'data': data}, separators=(',', ':'))


###############################################################################
# Authentication ###############################################################
###############################################################################

class Throttle:
    """Failed logins per source address; an address with too many recent
    failures is put on hold. Bounded: the oldest addresses are forgotten first."""

    def __init__(self, failures, seconds, capacity=10000):
        self.failures, self.seconds, self.capacity = failures, seconds, capacity
        self._addresses = OrderedDict()  # addr -> [failure times] or hold-until float
        self._lock = threading.Lock()

    def held_for(self, addr, now):
        """Seconds left on this address's hold, or 0. A lone read needs no lock;
        an expired hold is replaced by the address's next failure, or evicted."""
        entry = self._addresses.get(addr)
        return entry - now if isinstance(entry, float) and entry > now else 0

    def failed(self, addr, now):
        """Count a failed login. Returns the seconds left on a hold the address was
        already under, else 0: the caller then answers 429 for a login that raced the
        one that set the hold, so no more than `failures` are ever answered 401, and
        the hold keeps its end whatever arrives during it."""
        with self._lock:
            entry = self._addresses.pop(addr, None)
            if isinstance(entry, float) and entry > now:
                self._addresses[addr] = entry
                return entry - now
            recent = [t for t in entry or () if t > now - self.seconds] \
                if not isinstance(entry, float) else []
            recent.append(now)
            self._addresses[addr] = (now + self.seconds if len(recent) >= self.failures
                                     else recent)
            while len(self._addresses) > self.capacity:
                self._addresses.popitem(last=False)
            return 0

    def __len__(self):
        return len(self._addresses)


def _basic_credentials(header):
    """(token id, secret) from a Basic Authorization header, or None."""
    scheme, _, encoded = header.partition(' ')
    if scheme.lower() != 'basic':
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode('utf-8')
    except (binascii.Error, ValueError):
        return None
    token_id, colon, secret = decoded.partition(':')
    return (token_id, secret) if colon and token_id else None


#: A hash compared when the token id is unknown, so both failures cost the same.
_NO_SUCH_SECRET = hash_secret(secrets.token_hex(32))

#: Longer Authorization headers are refused (400) before any work: a Basic header
#: for our token ids and secrets is under 200 bytes.
MAX_AUTHORIZATION_BYTES = 4096

#: Paths that need no API token (the hooks carry their own secret; the dashboard's
#: page and files hold no data: it calls the API with the token typed into it).
PUBLIC_PATHS = re.compile(r'^/v1/(health|openapi\.json|hooks/.*)$|^/(dashboard(/[^/]*)?)?$')


def client_addr(environ, trusted_proxies):
    """The caller's address: the peer's, or, when the peer is one of
    `trusted_proxies`, the rightmost X-Forwarded-For address that is not."""
    addr = environ.get('REMOTE_ADDR') or '-'
    if not trusted_proxies or 'HTTP_X_FORWARDED_FOR' not in environ:
        return addr
    for hop in [addr] + environ['HTTP_X_FORWARDED_FOR'].split(',')[::-1]:
        try:
            ip = ipaddress.ip_address(hop.strip())
        except ValueError:
            return addr   # a malformed hop: the last proxy that passed it on
        addr = hop.strip()
        if not any(ip in network for network in trusted_proxies):
            return addr
    return addr
def on_hold(wait):
    """The 429 for an address on hold for `wait` more seconds."""
    return ApiError(429, EC_THROTTLED, 'too many failed logins from this address; retry in '
                    '%d s' % (wait + 1), {'retryAfter': int(wait) + 1},
                    Retry_After=str(int(wait) + 1))


def authenticate(app):
    """The before-request hook: who is calling. It runs before routing, so an
    unauthenticated caller learns nothing, not even which methods a path allows."""
    request = bottle.request
    svc = app.livestream
    if request.path != '/v1/health':  # it reads no cache, and answers a broken database
        svc.store.catch_up()  # every other request, hooks too, sees other processes' commits
    if PUBLIC_PATHS.match(request.path):
        return
    store, throttle = svc.store, svc.throttle
    header = request.environ.get('HTTP_AUTHORIZATION')
    if header is not None and len(header) > MAX_AUTHORIZATION_BYTES:
        raise bad_request('the Authorization header is over %d bytes' % MAX_AUTHORIZATION_BYTES)
    addr = client_addr(request.environ, svc.config['server']['trusted_proxies'])
    now = svc.clock()
    if header is not None:
        wait = throttle.held_for(addr, now)
        if wait:
            raise on_hold(wait)
    key = header and hashlib.sha256(header.encode('utf-8', 'surrogateescape')).digest()
    client = key and svc.remembered_login(key, now)
    if client:
        secret_ok = True
    else:
        stamp = svc.login_stamp()
        credentials = header is not None and _basic_credentials(header)
        # An unknown id reads another client's row and compares its hash (which cannot
        # let it in: `known` is false), so it costs what a wrong secret costs.
        row = credentials and store.client_for_login(credentials[0])
        known = row and hmac.compare_digest(row['token_id'].encode(), credentials[0].encode())
        secret_ok = hmac.compare_digest(hash_secret(credentials[1] if credentials else ''),
                                        row['secret_hash'] if row else _NO_SUCH_SECRET)
        client = row if known else None
        if secret_ok and client:
            svc.remember_login(key, client, now, stamp)
    if not (secret_ok and client):  # secret_ok first: both failures stop at it alike
        wait = header is not None and throttle.failed(addr, now)
        if wait:
            raise on_hold(wait)
        if header is not None and throttle.held_for(addr, now):  # this failure began a hold
            log.warning('address %s put on hold for %d s after %d failed logins', addr,
                        throttle.seconds, throttle.failures)
        raise ApiError(401, EC_UNAUTHORIZED,
                       'authentication failed: send HTTP Basic credentials '
                       '(token id and secret)' if header else 'authentication required: send '
                       'HTTP Basic credentials (token id and secret)',
                       WWW_Authenticate='Basic realm="livestream"')
    request.environ['livestream.client'] = client
    request.environ['livestream.token_id'] = client['token_id']
    if client['role'] != 'admin' and admin_only(svc, request.environ):
        raise ApiError(403, EC_FORBIDDEN, 'this endpoint needs an admin token')


def admin_only(svc, environ):
    """Whether the path is an admin route's (ROUTES), by any method: an app client
    learns neither which methods it allows nor which ids exist."""
    try:
        svc.admin_paths.match(environ)
    except bottle.HTTPError:  # no admin route has this path
        return False
    return True


def caller():
    """The authenticated client of this request."""
    return bottle.request.environ['livestream.client']


def is_admin(client):
    return client['role'] == 'admin'


###############################################################################
# Validation ###################################################################
###############################################################################

#: `\Z`, not `$`, which would also match before a trailing newline ("alice\n").
USER_ID = re.compile(r'^[A-Za-z0-9_.-]{1,64}\Z')
PUBLIC_ID = re.compile(r'^[a-z2-7]{16}\Z')
CONTROL_CHARS = re.compile(r'[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


def _reject_constant(name):
    raise ValueError('%s is not valid JSON' % name)


def _finite_float(text):
    """A JSON number as a float, refusing ones too large to be finite (1e400)."""
    value = float(text)
    if value in (float('inf'), float('-inf')):
        raise ValueError('number %s is out of range' % text[:20])
    return value


def read_json(max_bytes):
    """The request body as a JSON object, or a 400/413 that says what is wrong."""
    request = bottle.request
    length = request.content_length
    # Without a Content-Length (chunked), read one byte past the limit to tell.
    raw = b'' if length > max_bytes else \
        request.environ['wsgi.input'].read(length if length >= 0 else max_bytes + 1)
    if length > max_bytes or len(raw) > max_bytes:
        raise ApiError(413, EC_TOO_LARGE, 'request body is over %d bytes' % max_bytes,
                       {'maxBytes': max_bytes})
    if not raw.strip():
        raise bad_request('request body is empty; send a JSON object')
    content_type = request.content_type.split(';')[0].strip().lower()
    if content_type != 'application/json':
        raise bad_request('Content-Type must be application/json, not %r' % (content_type or ''))
    try:
        body = json.loads(raw.decode('utf-8'), parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except UnicodeDecodeError:
        raise bad_request('request body is not valid UTF-8')
    except RecursionError:
        raise bad_request('request body is nested too deeply')
    except ValueError as error:
        raise bad_request('request body is not valid JSON: %s' % error)
    if not isinstance(body, dict):
        raise bad_request('request body must be a JSON object, not %s' % type(body).__name__)
    return body


def check_text(value, longest, shortest=0, strip=False):
    """A string of bounded length with no control characters; the reason otherwise."""
    if not isinstance(value, str):
        return None, 'must be a string'
    # The longest length and the control characters apply to what was sent: stripping
    # removes surrounding spaces, not an over-long or control-laden value.
    clean = value.strip() if strip else value
    if not (shortest <= len(clean) and len(value) <= longest):
        return None, 'must be %d to %d characters' % (shortest, longest)
    if CONTROL_CHARS.search(value):
        return None, 'must not contain control characters'
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        return None, 'must be valid Unicode text (a lone surrogate \\uD800-\\uDFFF is not)'
    return clean, None


def check_channel_field(name, value):
    """(clean value, None) or (None, why) for one channel field."""
    if name == 'name':
        return check_text(value, 200, 1, strip=True)
    if name == 'description':
        return check_text(value, 2000)
    if name == 'enabled':
        return (value, None) if isinstance(value, bool) else (None, 'must be true or false')
    if name == 'metadata':
        if not isinstance(value, dict):
            return None, 'must be a JSON object'
        if len(json.dumps(value, separators=(',', ':')).encode('utf-8')) > 4096:
            return None, 'must be at most 4096 bytes as JSON'
        return value, None
    if name == 'reconnectWindowSeconds':
        if type(value) is float and value.is_integer():
            value = int(value)  # JSON has one kind of number: 60.0 is the integer 60
        if value is None or (type(value) is int and 0 <= value <= MAX_RECONNECT_WINDOW):
            return value, None
        return None, 'must be null ([ingest] reconnect_window) or 0-%d' % MAX_RECONNECT_WINDOW
    if name == 'userId':
        return (value, None) if isinstance(value, str) and USER_ID.match(value) else (
            None, 'must be 1-64 characters of A-Z a-z 0-9 _ . -')
    if name == 'ingest':
        return (value, None) if isinstance(value, str) and NODE_NAME.match(value) else (
            None, 'must be the name of an ingest node')
    return None, 'unknown field'


def check_channel_fields(body, allowed, required=()):
    """Validate a body against `allowed` field names; 422 naming every bad one."""
    clean, errors = {}, {}
    for name in required:
        if name not in body:
            errors[name] = 'is required'
    for name, value in body.items():
        if name not in allowed:
            errors[name] = 'unknown field'
            continue
        clean[name], why = check_channel_field(name, value)
        if why:
            errors[name] = why
    if errors:
        raise invalid(errors)
    return clean


#: API limit names and the store's columns for them.
LIMIT_COLUMNS = {'maxChannels': 'max_channels', 'maxLiveChannels': 'max_live_channels',
                 'maxBitrateKbps': 'max_bitrate_kbps', 'maxSessionSeconds': 'max_session_seconds'}


def check_limits(body):
    """{"limits": {...}} -> {column: value}; 422 naming every bad limit."""
    errors = {name: 'unknown field' for name in body if name != 'limits'}
    limits = body.get('limits', {})
    if not isinstance(limits, dict):
        raise invalid({'limits': 'must be a JSON object'})
    clean = {}
    for name, value in limits.items():
        if type(value) is float and value.is_integer():
            value = int(value)  # JSON has one kind of number: 5.0 is the integer 5
        if name not in LIMIT_COLUMNS:
            errors['limits.' + name] = 'unknown limit'
        elif value is not None and (type(value) is not int or not 0 <= value <= MAX_LIMIT):
            errors['limits.' + name] = 'must be null (unlimited) or an integer 0-%d' % MAX_LIMIT
        else:
            clean[LIMIT_COLUMNS[name]] = value
    if errors:
        raise invalid(errors)
    return clean


def query(allowed):
    """The query parameters, refusing any not in `allowed` or given twice."""
    params = bottle.request.query
    for name in params:
        if name not in allowed:
            raise bad_request('unknown query parameter %r; allowed: %s'
                              % (name, ', '.join(sorted(allowed)) or 'none'))
        if len(params.getall(name)) > 1:
            raise bad_request('query parameter %r given more than once' % name)
    return params


def text_param(params, name):
    """A query parameter as text, or None when absent; 400 unless its bytes are UTF-8
    (bottle would silently turn the value into None, as if it had not been sent)."""
    value = params.get(name)
    try:
        return None if value is None else value.encode('latin-1').decode('utf-8')
    except UnicodeError:
        raise bad_request('%s is not valid UTF-8: percent-encode the UTF-8 bytes of the text'
                          % name)


def page_params(extra=()):
    """(query, after, limit) for a list: `limit` 1-100, an opaque `cursor`."""
    params = query({'limit', 'cursor'} | set(extra))
    limit = params.get('limit', '20')
    if not re.match(r'^[0-9]{1,3}\Z', limit) or not 1 <= int(limit) <= 100:
        raise bad_request('limit must be an integer from 1 to 100')
    after = 2 ** 63 - 1
    if 'cursor' in params:
        try:
            after = int(json.loads(base64.urlsafe_b64decode(params['cursor'] + '==').decode())['a'])
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError, binascii.Error):
            raise bad_request('cursor is not one this API returned; start again without it')
        if not 0 < after < 2 ** 63:
            raise bad_request('cursor is not one this API returned; start again without it')
    return params, after, int(limit)


def page(items, total, after):
    """Every list answer: {items, total, nextCursor}. `items` a list, or a JSON array
    as RawJSON (channels, made by SQLite); `after` the next page's (None: the last)."""
    cursor = None if after is None else next_cursor(after)
    if isinstance(items, RawJSON):
        return RawJSON('{"items":%s,"total":%d,"nextCursor":%s}'
                       % (items, total, json.dumps(cursor)))
    return {'items': items, 'total': total, 'nextCursor': cursor}


def window(rows, limit):
    """(The page's rows, the next page's `after` or None) from up to limit + 1 rows."""
    return rows[:limit], (rows[limit - 1]['id'] if len(rows) > limit else None)


def next_cursor(after):
    """The opaque cursor page_params() reads back: the next page has ids below `after`."""
    return base64.urlsafe_b64encode(json.dumps({'a': after}).encode()).decode().rstrip('=')


def force_param(params):
    value = params.get('force', 'false')
    if value not in ('true', 'false'):
        raise bad_request('force must be true or false')
    return value == 'true'


###############################################################################
# Presentation: rows to API objects ############################################
###############################################################################

def iso(timestamp):
    """ISO 8601 UTC with a Z, or None."""
    return None if timestamp is None else _iso_second(int(timestamp))


@functools.lru_cache(maxsize=4096)
def _iso_second(second):
    return '%04d-%02d-%02dT%02d:%02d:%02dZ' % time.gmtime(second)[:6]


def client_json(row):
    return {'id': row['public_id'], 'name': row['name'], 'role': row['role'],
            'tokenId': row['token_id'], 'fromEnvironment': bool(row['from_env']),
            'createdAt': iso(row['created_at'])}


def user_json(row, admin):
    user = {'userId': row['user_id'],
            'limits': {name: row[column] for name, column in LIMIT_COLUMNS.items()},
            'usage': {'channels': row['channels'], 'liveChannels': row['live_channels']},
            'createdAt': iso(row['created_at']), 'updatedAt': iso(row['updated_at'])}
    if admin:
        user['clientId'] = row['client_public_id']
    return user


def session_json(row, now):
    # While its publisher is away (the reconnect window), a session's time stands still.
    end = row['ended_at'] if row['ended_at'] is not None else row['left_at'] or now
    duration = max(0.0, end - row['started_at'] - row['paused_seconds'])
    average = round(row['bytes_in'] * 8 / 1000 / duration, 1) if duration else 0
    peak = row['peak_bitrate_kbps']
    return {
        'id': row['public_id'], 'channelId': row['channel_public_id'], 'ingest': row['ingest'],
        'startedAt': iso(row['started_at']), 'endedAt': iso(row['ended_at']),
        'durationSeconds': round(duration), 'bytesIn': row['bytes_in'],
        'avgBitrateKbps': average,
        # nginx's bw_in is smoothed: it can stay below what the bytes say was sent.
        'peakBitrateKbps': peak if peak is None else max(peak, average),
        'peakViewers': row['peak_viewers'],
        'video': json.loads(row['video']) if row['video'] else None,
        'audio': json.loads(row['audio']) if row['audio'] else None,
        'endReason': row['end_reason']}


def sample_json(row):
    """A point of a session's chart (Store.session_samples: means over a slice)."""
    rtmp, hls = row['viewers_rtmp'], round(row['viewers_hls'])
    rtmp = None if rtmp is None else round(rtmp)
    return {'at': iso(row['at']),
            'bitrateKbps': None if row['bitrate_kbps'] is None else round(row['bitrate_kbps'], 1),
            'bytesIn': row['bytes_in'], 'viewers': None if rtmp is None else rtmp + hls,
            'viewersRtmp': rtmp, 'viewersHls': None if rtmp is None else hls}


###############################################################################
# Ingest nodes: one adapter per kind ###########################################
###############################################################################
# An ingest kind (nginx-rtmp today) is one small class: it turns its hook request
# into a neutral IngestEvent, parses its stats into {stream name: metrics}, drops a
# publisher, and writes its config. Sessions, limits and viewers see only events.
# An ingest node (a server: [ingest] or [ingest.NAME]) is an instance of its kind's
# class, with a StatsPoller and a Kicker of its own; nothing else is per kind.

#: A hook call in the API's words. `what`: publish, update, done, play or stop (None:
#: a call the node makes that is acknowledged and ignored); `said`: the node's own
#: name for the call (for logs); `connection`: the stream's connection at the node,
#: unique among its publishers; `addr`: the encoder's address; `name`: the stream
#: name (a channel id); `key`: the stream key it gave; `node`: the node that called
#: (set by the hook route from its URL's `node=`).
IngestEvent = collections.namedtuple('IngestEvent', 'what said connection addr name key node',
                                     defaults=(DEFAULT_NODE,))

#: Every ingest kind by name: each is served its hook at POST /v1/hooks/<kind>.
INGEST_KINDS = {}


def ingest_kind(cls):
    """Class decorator: make an IngestNode subclass a kind of ingest."""
    INGEST_KINDS[cls.kind] = cls
    return cls


class IngestNode:
    """One kind of ingest server, as the API sees it; a subclass per kind says how.
    An instance is one node: config['ingest_nodes'][name] are its settings."""

    kind = None
    #: Whether the node never re-asks the API while a stream is live: then a poll of
    #: its HTTP API ([ingest] api_url) keeps its sessions fresh (Service.observe),
    #: and its publishers are kicked there.
    polled = False
    #: Hooks it calls besides POST /v1/hooks/<kind>: {name: method reading its request},
    #: each served at POST /v1/hooks/<kind>/<name>.
    extra_hooks = {}

    def __init__(self, config, name=DEFAULT_NODE):
        self.config, self.name = config, name
        self.settings = config['ingest_nodes'][name]

    def event(self, request):
        """The IngestEvent a hook request carries; ApiError (400) when it is none."""
        raise NotImplementedError

    def answer(self, data):
        """The body of a hook answer that allows (or acknowledges) the call."""
        return envelope(data)

    def refusal(self, error):
        """What a hook call refused with `error` (an ApiError) answers the node."""
        return error

    @property
    def hook_node(self):
        """The node its hook URLs name: none for `default`, so existing configs stay right."""
        return None if self.name == DEFAULT_NODE else self.name

    @property
    def stats_url(self):
        """Where its statistics are read: stat_url, or a polled kind's api_url."""
        return self.settings['api_url' if self.polled else 'stat_url']

    @property
    def control_url(self):
        """Where its publishers are dropped: control_url, or a polled kind's api_url."""
        return self.settings['api_url' if self.polled else 'control_url']

    def parse_stats(self, answer):
        """{stream name: metrics} from its stats URL's answer, a binary file read
        as it arrives (so a large answer costs bounded memory)."""
        raise NotImplementedError

    def stats(self, url, timeout, deadline):
        """{stream name: metrics} as the node at `url` answers now, read by `deadline`
        (time.monotonic()); raises on any failure. Metrics may name the stream's
        `connection` as its hooks do (Service.observe)."""
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return self.parse_stats(_BoundedAnswer(answer, deadline, MAX_STATS_BYTES,
                                                   STATS_PAUSE_SECONDS))

    def drop(self, url, session, timeout):
        """Have the node whose control is at `url` drop this session's publisher (a
        row of channel_id, session_id, connection); returns what the node said."""
        raise NotImplementedError

    def conf(self, hook_secret, rtmp_port, http_port, prefix, http_host='127.0.0.1'):
        """The node's config file text, its hooks calling this API."""
        raise NotImplementedError


def read_url(url, timeout, method='GET', limit=8 * 1024 * 1024):
    """The body `url` answers (at most `limit` bytes, within 10 timeouts in all);
    raises on any failure, an HTTP error status included."""
    deadline = time.monotonic() + 10 * timeout
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body = b''
        while len(body) < limit:
            chunk = answer.read(64 * 1024)
            if not chunk:
                break
            body += chunk
            if time.monotonic() > deadline:
                raise TimeoutError('the answer took over %g s' % (10 * timeout))
    return body


def hook_url(config, kind, hook_secret, node=None, hook=None):
    """The URL a node of `kind` calls this API's hooks at: on the hook listener, else
    on the API's port; `node` is its [ingest.NAME] name, `hook` an extra hook."""
    server = config['server']
    host, port = hook_address(server) or (server['host'], server['port'])
    host = '127.0.0.1' if host in ('0.0.0.0', '::', '') else host
    query = {'secret': hook_secret}
    if node:
        query['node'] = node
    return 'http://%s/v1/hooks/%s%s?%s' % (_host_port(host, port), kind, '/' + hook if hook
                                          else '', urllib.parse.urlencode(query))


def _number(element, path, kind=int):
    text = element.findtext(path)
    try:
        return kind(text) if text not in (None, '') else None
    except ValueError:
        return None


def parse_rtmp_stat(source):
    """{stream name: metrics} from `rtmp_stat all` XML (a binary file, or a path),
    parsed as it is read: each <stream> is dropped from the tree once read, so
    memory holds one stream's elements, not thousands."""
    streams = {}
    parents = []
    for event, element in ElementTree.iterparse(source, events=('start', 'end')):
        if event == 'start':
            parents.append(element)
            continue
        parents.pop()
        if element.tag != 'stream':
            continue
        stream = element
        if parents:
            parents[-1].remove(stream)
        name = stream.findtext('name')
        if not name:
            continue
        video = stream.find('meta/video')
        audio = stream.find('meta/audio')
        clients = stream.findall('client')
        streams[name] = {
            'bytesIn': _number(stream, 'bytes_in') or 0,
            'bitrateKbps': round((_number(stream, 'bw_in') or 0) / 1000, 1),
            'viewers': sum(1 for client in clients if client.find('publishing') is None),
            'video': video is not None and {
                'codec': video.findtext('codec'), 'width': _number(video, 'width'),
                'height': _number(video, 'height'),
                'fps': _number(video, 'frame_rate', float)} or None,
            'audio': audio is not None and {
                'codec': audio.findtext('codec'), 'sampleRate': _number(audio, 'sample_rate'),
                'channels': _number(audio, 'channels')} or None,
        }
    return streams



def rtmp_app(rtmp_url):
    """The RTMP application streams are published to: the last segment of rtmp_url."""
    return rtmp_url.rsplit('/', 1)[-1] or 'live'


def _form_fields(body):
    """A form body as {name: first value}. nginx appends the stream's own query
    string after its fields, so a publisher can repeat `name` or `call`: only the
    first value is nginx's. (Cheaper than parse_qsl: most values need no decoding.)"""
    form = {}
    for pair in body.split('&'):
        name, _, value = pair.partition('=')
        if '%' in name or '+' in name:
            name = urllib.parse.unquote_plus(name, errors='strict')
        if name and name not in form:
            form[name] = urllib.parse.unquote_plus(value, errors='strict') \
                if '%' in value or '+' in value else value
    return form


#: Where Debian's libnginx-mod-rtmp puts the module.
NGINX_RTMP_MODULE = '/usr/lib/nginx/modules/ngx_rtmp_module.so'


@ingest_kind
class NginxRtmp(IngestNode):
    """nginx-rtmp: notify calls as form posts, `rtmp_stat all` XML, `rtmp_control all`
    to drop, and nginx.conf from nginx.conf.template."""

    kind = 'nginx-rtmp'
    #: The notify calls acted on, and the event each is.
    CALLS = {'publish': 'publish', 'update_publish': 'update', 'publish_done': 'done',
             'play': 'play', 'play_done': 'stop'}
    #: Its other notify calls: acknowledged (200) and ignored; any other is a 400.
    OTHER_CALLS = ('connect', 'disconnect', 'done', 'record_done', 'update_play')

    def event(self, request):
        content_type = request.content_type.split(';')[0].strip().lower()
        if content_type != 'application/x-www-form-urlencoded':
            raise bad_request('hook body must be form data (application/x-www-form-urlencoded), '
                              'not %r' % content_type)
        try:
            form = _form_fields(request.body.read().decode('utf-8'))
        except ValueError:
            raise bad_request('hook body is not UTF-8 form data')
        call = form.get('call', '')
        if not call:
            raise bad_request('hook body has no call field')
        if call not in self.CALLS and call not in self.OTHER_CALLS:
            raise bad_request('unknown hook call %r' % call[:40])
        return IngestEvent(self.CALLS.get(call), call, '%s/%s' % (
            request.environ.get('REMOTE_ADDR'), form.get('clientid', '')),
            form.get('addr', ''), form.get('name', ''), form.get('key', ''))

    def parse_stats(self, answer):
        return parse_rtmp_stat(answer)

    def drop(self, url, session, timeout):
        query = {'app': rtmp_app(self.settings['rtmp_url']), 'name': session['channel_id']}
        clientid = session['connection'].rpartition('/')[2]
        if clientid:  # that connection only: not the encoder reconnecting with a new key
            query['clientid'] = clientid
        with urllib.request.urlopen('%s/drop/publisher?%s' % (
                url, urllib.parse.urlencode(query)), timeout=timeout) as answer:
            return '%s dropped' % answer.read(64).decode('ascii', 'replace').strip()

    def conf(self, hook_secret, rtmp_port, http_port, prefix, http_host='127.0.0.1'):
        """A complete nginx.conf whose rtmp application calls this API's hooks (on the
        hook listener, else on the API's port), naming this node in them."""
        hook = hook_url(self.config, self.kind, hook_secret, self.hook_node)
        return _data_path('nginx.conf.template').read_text().format(
            prefix=os.path.abspath(prefix), module=NGINX_RTMP_MODULE, rtmp_port=rtmp_port,
            http_port=http_port, http_host=http_host,
            app=rtmp_app(self.settings['rtmp_url']), hook=hook,
            update_interval=self.config['ingest']['update_interval'],
            hls_access_log=self._hls_access_log())

    def _hls_access_log(self):
        """The /hls location's access log: each request to the API's viewer log port
        (the file names carry only channel ids, never a key), or none."""
        port = self.config['ingest']['viewer_log_port']
        if port is None:
            return 'access_log off;'
        return ('access_log syslog:server=127.0.0.1:%d,tag=livestream,nohostname hlsview;'
                % port)


def _json_hook_body(request):
    """A hook's JSON object body; 400 when it is not one."""
    content_type = request.content_type.split(';')[0].strip().lower()
    if content_type != 'application/json':
        raise bad_request('hook body must be JSON (application/json), not %r' % content_type)
    try:
        body = json.loads(request.body.read().decode('utf-8'))
    except ValueError:
        raise bad_request('hook body is not UTF-8 JSON')
    if not isinstance(body, dict):
        raise bad_request('hook body must be a JSON object')
    return body


def _text_field(body, name, nullable=False):
    """A hook body's text field ('' when absent); 400 when it is not text."""
    value = body.get(name, '')
    if value is None and nullable:
        return ''
    if not isinstance(value, str):
        raise bad_request('hook field %s must be a string' % name)
    return value


def _query_key(query):
    """The `key` argument of a stream's query string (without its `?`), or ''."""
    for name, value in urllib.parse.parse_qsl(query.lstrip('?'), keep_blank_values=True):
        if name == 'key':
            return value
    return ''


def _json_answer(url, timeout, method='GET'):
    """The JSON object an ingest's HTTP API answers; raises on any failure."""
    answer = json.loads(read_url(url, timeout, method).decode('utf-8'))
    if not isinstance(answer, dict):
        raise ValueError('the answer is not a JSON object')
    return answer


@ingest_kind
class Srs(IngestNode):
    """SRS 5/6: http_hooks posting JSON and answered {"code": 0}, its HTTP API's
    /api/v1/streams/ polled and DELETE /api/v1/clients/<cid> to kick, and srs.conf
    from srs.conf.template."""

    kind = 'srs'
    polled = True
    #: The http_hooks actions acted on, and the event each is.
    ACTIONS = {'on_publish': 'publish', 'on_unpublish': 'done', 'on_play': 'play',
               'on_stop': 'stop'}
    #: Its other actions: acknowledged and ignored; any other is a 400.
    OTHER_ACTIONS = ('on_connect', 'on_close', 'on_dvr', 'on_hls', 'on_hls_notify')
    #: Streams asked for per page: SRS answers at most this many (and at least 10).
    PAGE = 1000
    #: SRS's code for a client it does not have (ERROR_RTMP_CLIENT_NOT_FOUND).
    GONE = 2049

    def event(self, request):
        body = _json_hook_body(request)
        action = _text_field(body, 'action')
        if not action:
            raise bad_request('hook body has no action field')
        if action not in self.ACTIONS and action not in self.OTHER_ACTIONS:
            raise bad_request('unknown hook action %r' % action[:40])
        what, name = self.ACTIONS.get(action), _text_field(body, 'stream')
        if what in ('play', 'stop') and name.endswith('.m3u8'):
            # A playlist fetched from SRS's HTTP server (one call per HLS session):
            # a viewer of the stream the playlist is named after.
            name = name[:-len('.m3u8')]
        return IngestEvent(what, action, self.connection(_text_field(body, 'server_id'),
                                                         _text_field(body, 'client_id')),
                           _text_field(body, 'ip'), name,
                           _query_key(_text_field(body, 'param')))

    @staticmethod
    def connection(server_id, client_id):
        """A publisher's connection, the same from a hook and from the streams API."""
        return '%s/%s' % (server_id, client_id)

    def answer(self, data):
        # SRS allows only on 200 with a body of 0 or a JSON object whose code is 0.
        bottle.response.content_type = 'application/json'
        return json.dumps({'code': 0, 'ec': EC_OK, 'data': data}, separators=(',', ':'))

    def refusal(self, error):
        # SRS reads any status but 200, or a code other than 0, as a refusal.
        return bottle.HTTPResponse(json.dumps(
            {'code': error.status_code, 'ec': error.ec, 'msg': error.msg, 'data': error.data},
            separators=(',', ':')), error.status_code, {'Content-Type': 'application/json'})

    def parse_stats(self, body):
        answer = json.loads(body) if isinstance(body, (bytes, str)) else body
        if answer.get('code') != 0:  # SRS answers its own errors as 200 with a code
            raise ValueError('SRS answered code %r' % answer.get('code'))
        streams = {}
        for stream in answer.get('streams') or ():
            publish = stream.get('publish') or {}
            if not publish.get('active') or not stream.get('name'):
                continue  # SRS lists a stream for a while after its publisher left
            video, audio = stream.get('video'), stream.get('audio')
            streams[stream['name']] = {
                'connection': self.connection(answer.get('server', ''), publish.get('cid', '')),
                'bytesIn': stream.get('recv_bytes') or 0,
                'bitrateKbps': float((stream.get('kbps') or {}).get('recv_30s') or 0),
                # clients counts the publisher, and SRS's HLS sessions beside its players.
                'viewers': max(0, (stream.get('clients') or 0) - 1),
                'video': video and {'codec': video.get('codec'), 'width': video.get('width'),
                                    'height': video.get('height'), 'fps': None} or None,
                'audio': audio and {'codec': audio.get('codec'),
                                    'sampleRate': audio.get('sample_rate'),
                                    'channels': audio.get('channel')} or None,
            }
        return streams

    def stats(self, url, timeout, deadline=None):
        streams, start = {}, 0
        while True:
            # The trailing slash: without it SRS answers a redirect.
            answer = _json_answer('%s/api/v1/streams/?start=%d&count=%d' % (
                url, start, self.PAGE), timeout)
            streams.update(self.parse_stats(answer))
            listed = len(answer.get('streams') or ())
            if listed < self.PAGE:
                return streams
            start += listed

    def drop(self, url, session, timeout):
        client_id = session['connection'].rpartition('/')[2]
        answer = _json_answer('%s/api/v1/clients/%s' % (url, urllib.parse.quote(client_id)),
                              timeout, 'DELETE')
        if answer.get('code') == self.GONE:
            return 'already gone'
        if answer.get('code') != 0:
            raise ValueError('SRS answered code %r' % answer.get('code'))
        return 'kicked'

    def conf(self, hook_secret, rtmp_port=1935, http_port=8080, prefix='/var/lib/livestream-srs',
             api_port=1985):
        """A complete srs.conf whose hooks call this API (secret and node in the URL)."""
        return _data_path('srs.conf.template').read_text().format(
            prefix=os.path.abspath(prefix), rtmp_port=rtmp_port, http_port=http_port,
            api_port=api_port,
            hook=hook_url(self.config, self.kind, hook_secret, self.hook_node))


@ingest_kind
class MediaMtx(IngestNode):
    """MediaMTX: its HTTP auth (authMethod: http) posting JSON, runOnUnavailable
    posting a form to POST /v1/hooks/mediamtx/unavailable, /v3/paths/list polled,
    POST /v3/<kind of connection>/kick/<id> to kick, and mediamtx.yml from
    mediamtx.yml.template. Any 2xx allows, anything else refuses."""

    kind = 'mediamtx'
    polled = True
    extra_hooks = {'unavailable': 'unavailable'}
    #: The auth actions acted on, and the event each is; api, metrics and pprof are
    #: refused (the generated config excludes the API's own calls from auth).
    ACTIONS = {'publish': 'publish', 'read': 'read', 'playback': 'read'}
    REFUSED_ACTIONS = ('api', 'metrics', 'pprof')
    #: Where a publisher of each protocol is kicked: /v3/<this>/kick/<id> (then the
    #: RTMPS / RTSPS list, where the same protocol's encrypted connections are).
    KICK_PATHS = {'rtmp': ('rtmpconns', 'rtmpsconns'), 'rtsp': ('rtspsessions', 'rtspssessions'),
                  'srt': ('srtconns',), 'webrtc': ('webrtcsessions',)}
    #: A path's source type (the paths list, $MTX_SOURCE_TYPE) -> the auth protocol.
    SOURCE_PROTOCOLS = {'rtmpConn': 'rtmp', 'rtmpsConn': 'rtmp', 'rtspSession': 'rtsp',
                        'rtspsSession': 'rtsp', 'srtConn': 'srt', 'webRTCSession': 'webrtc'}
    #: Paths asked for per page of /v3/paths/list.
    PAGE = 1000
    #: Its codec names that have another name in the API's statistics.
    CODECS = {'MPEG-4 Audio': 'AAC'}
    VIDEO_CODECS = ('AV1', 'VP9', 'VP8', 'H265', 'H264', 'MPEG-4 Video', 'MPEG-1/2 Video',
                    'M-JPEG')

    def _stream_name(self, path):
        """The channel id a path `<app>/<id>` names ('' for any other path)."""
        app, _, name = path.lstrip('/').partition('/')
        return name if app == rtmp_app(self.settings['rtmp_url']) else ''

    def event(self, request):
        body = _json_hook_body(request)
        action = _text_field(body, 'action')
        if action in self.REFUSED_ACTIONS:
            raise ApiError(403, EC_FORBIDDEN, 'action %s is not allowed through this hook; '
                           'exclude it from auth (authHTTPExclude)' % action)
        if action not in self.ACTIONS:
            raise bad_request('unknown auth action %r' % action[:40])
        protocol = _text_field(body, 'protocol')
        if action == 'publish' and protocol not in self.KICK_PATHS:
            raise ApiError(403, EC_FORBIDDEN, 'publishing over %r is not supported'
                           % protocol[:40])
        # The key: the query's (RTMP, RTSP, SRT's streamid, a WHIP URL), else a WHIP
        # bearer token.
        key = _query_key(_text_field(body, 'query')) or _text_field(body, 'token')
        return IngestEvent(self.ACTIONS[action], action,
                           '%s/%s' % (protocol, _text_field(body, 'id', nullable=True)),
                           _text_field(body, 'ip'), self._stream_name(_text_field(body, 'path')),
                           key)

    def unavailable(self, request):
        """runOnUnavailable's call: a path's stream ended (form: path, source_type,
        source_id)."""
        content_type = request.content_type.split(';')[0].strip().lower()
        if content_type != 'application/x-www-form-urlencoded':
            raise bad_request('hook body must be form data, not %r' % content_type)
        try:
            form = _form_fields(request.body.read().decode('utf-8'))
        except ValueError:
            raise bad_request('hook body is not UTF-8 form data')
        protocol = self.SOURCE_PROTOCOLS.get(form.get('source_type', ''), '')
        return IngestEvent('done', 'unavailable', '%s/%s' % (protocol, form.get('source_id', '')),
                           '', self._stream_name(form.get('path', '')), '')

    def parse_stats(self, body):
        answer = json.loads(body) if isinstance(body, (bytes, str)) else body
        streams = {}
        for path in answer.get('items') or ():
            name = self._stream_name(path.get('name') or '')
            source = path.get('source') or {}
            if not name or not path.get('available', path.get('ready')):
                continue
            video, audio = self._tracks(path)
            streams[name] = {
                'connection': '%s/%s' % (self.SOURCE_PROTOCOLS.get(source.get('type'), ''),
                                         source.get('id', '')),
                'bytesIn': path.get('inboundBytes', path.get('bytesReceived')) or 0,
                'bitrateKbps': 0.0,  # none given: measured_bitrate takes the bytes' growth
                'viewers': len(path.get('readers') or ()),
                'video': video, 'audio': audio,
            }
        return streams

    def _tracks(self, path):
        """(video, audio) from tracks2 ({codec, codecProps}), or the older tracks (names)."""
        tracks = path.get('tracks2')
        if tracks is None:
            tracks = [{'codec': codec} for codec in path.get('tracks') or ()]
        video = audio = None
        for track in tracks:
            codec, props = track.get('codec'), track.get('codecProps') or {}
            if codec in self.VIDEO_CODECS and video is None:
                video = {'codec': codec, 'width': props.get('width'),
                         'height': props.get('height'), 'fps': None}
            elif codec not in self.VIDEO_CODECS and audio is None:
                audio = {'codec': self.CODECS.get(codec, codec),
                         'sampleRate': props.get('sampleRate'),
                         'channels': props.get('channelCount')}
        return video, audio

    def stats(self, url, timeout, deadline=None):
        streams, page = {}, 0
        while True:
            answer = _json_answer('%s/v3/paths/list?itemsPerPage=%d&page=%d' % (
                url, self.PAGE, page), timeout)
            streams.update(self.parse_stats(answer))
            page += 1
            if page >= (answer.get('pageCount') or 0):
                return streams

    def drop(self, url, session, timeout):
        protocol, _, conn_id = session['connection'].rpartition('/')
        protocol = protocol.rpartition('/')[2]
        if protocol not in self.KICK_PATHS:
            raise ValueError('no kick for protocol %r' % protocol)
        for kind in self.KICK_PATHS[protocol]:
            try:
                read_url('%s/v3/%s/kick/%s' % (url, kind, urllib.parse.quote(conn_id)),
                         timeout, 'POST')
                return 'kicked from %s' % kind
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
        return 'already gone'

    def conf(self, hook_secret, rtmp_port=1935, api_port=9997):
        """A mediamtx.yml whose auth and runOnUnavailable call this API (secret and
        node in the URLs), its API on loopback."""
        return _data_path('mediamtx.yml.template').read_text().format(
            rtmp_port=rtmp_port, api_port=api_port, app=rtmp_app(self.settings['rtmp_url']),
            hook=hook_url(self.config, self.kind, hook_secret, self.hook_node),
            unavailable=hook_url(self.config, self.kind, hook_secret, self.hook_node,
                                 'unavailable'))


# Polling stats and kicking publishers, for a node of any kind #################

#: The most bytes a stats answer may have (2,000 nginx-rtmp streams are ~3 MiB).
MAX_STATS_BYTES = 64 * 1024 * 1024


#: Seconds a stats reading pauses between the chunks it parses (16 KiB, about 16
#: nginx-rtmp streams, 0.5 ms of parsing): a 1,000-stream /stat is 30 ms of pure
#: Python, and without pauses the hook listener's thread, which needs the
#: interpreter lock back after each of its socket calls, waits up to 5 ms for it
#: each time: at 20,000 live streams every reading stalled the hooks by 30-50 ms
#: (bench/capacity.py, README "Capacity").
STATS_PAUSE_SECONDS = 0.001


class _BoundedAnswer:
    """A stats answer read as a binary file that fails once it is over `max_bytes` or
    past `deadline` (time.monotonic()): a socket timeout alone does not bound an
    answer that trickles. Each read after the first pauses `pause` seconds, so that
    the parsing between reads leaves the interpreter to other threads."""

    def __init__(self, answer, deadline, max_bytes, pause=0.0):
        self.answer, self.deadline, self.left = answer, deadline, max_bytes
        self.pause, self.reads = pause, 0

    def read(self, size=-1):
        if self.reads and self.pause:
            time.sleep(self.pause)
        self.reads += 1
        if time.monotonic() > self.deadline:
            raise TimeoutError('the answer took too long')
        chunk = self.answer.read1(size if size > 0 else 64 * 1024)
        self.left -= len(chunk)
        if self.left < 0:
            raise ValueError('the answer is too large')
        return chunk


class StatsPoller:
    """One node's statistics: its stats URL read every `interval` seconds by a daemon
    thread (start/stop), or by poll_once(). Hooks and reads take `snapshot`, the
    latest reading, and never wait for the node. A node that never re-asks the API
    (a polled kind) has each reading handed to `observe` (Service.observe), which
    keeps its sessions fresh and cuts what may no longer be on air."""

    def __init__(self, node, interval, clock, timeout=2.0, observe=None, phase=0.0):
        self.node, self.url = node, node.stats_url
        self.interval, self.clock, self.timeout = interval, clock, timeout
        #: Seconds its thread waits before its first reading: the nodes' readings are
        #: spread over the interval, so that their parsing never lands all at once.
        self.phase = phase
        self.observe = observe if node.polled else None
        #: {url, reachable, streams: {name: metrics}, at: the service clock's time it
        #: was taken (None: not yet), took: seconds the reading took}.
        self.snapshot = {'url': self.url or None, 'reachable': False, 'streams': {},
                         'at': None, 'took': None}
        self._stopping = threading.Event()
        self._thread = None

    def poll_once(self):
        """Read and parse the stats URL now (within `interval`, at most 10 timeouts);
        the new snapshot, unreachable on any failure."""
        if not self.url:
            return self.snapshot
        started = time.monotonic()
        try:
            streams, reachable = self.node.stats(
                self.url, self.timeout, started + min(self.interval, 10 * self.timeout)), True
        except Exception as error:  # a background reading: any failure means unreachable
            if self.snapshot['reachable'] or self.snapshot['at'] is None:
                log.warning('ingest node %s unreachable: no statistics from %s: %s',
                            self.node.name, self.url, error)
            streams, reachable = {}, False
        snapshot = {'url': self.url, 'reachable': reachable, 'streams': streams,
                    'at': self.clock(), 'took': time.monotonic() - started}
        if self.observe:
            # The rates measured where the node gives none (MediaMTX), or none yet
            # (SRS's first 30 s), so that the node's statistics show them too.
            rates = self.observe(self.node.name, snapshot, snapshot['at'])
            snapshot['streams'] = {name: dict(metrics, bitrateKbps=rates.get(
                name, metrics['bitrateKbps'])) for name, metrics in streams.items()}
        self.snapshot = snapshot
        return snapshot

    def start(self):
        if self.url and self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='%s-poller' % self.node.name)
            self._thread.start()

    def stop(self, timeout=5.0):
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout)
            self._thread = None

    def _run(self):
        self._stopping.wait(self.phase)
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # observing it failed (the database, say): the next poll tries
                log.exception('ingest node %s: observing a reading failed', self.node.name)
            self._stopping.wait(max(0.0, began + self.interval - time.monotonic()))


class Kicker:
    """Drops publishers at one ingest node, off the request's path: kick() queues
    the sessions the API just ended, and a daemon thread (start/stop), or
    run_once(), has the node's adapter drop each at its control `url`."""

    def __init__(self, node, url, timeout=1.0):
        self.node, self.url, self.timeout = node, url, timeout
        self._queue = queue.Queue(maxsize=10000)
        self._thread = None

    def kick(self, ended):
        """Queue the publishers of `ended` (rows of channel_id, session_id, connection)."""
        for session in ended:
            try:
                self._queue.put_nowait(session)
            except queue.Full:
                self._failed(session, 'too many kicks queued')

    def run_once(self):
        """Send every kick queued so far, here and now; how many were sent."""
        sent = 0
        while True:
            try:
                session = self._queue.get_nowait()
            except queue.Empty:
                return sent
            if session is not None:
                self._send(session)
                sent += 1

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='%s-kicker' % self.node.name,
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout=5.0):
        """Send what is queued (within `timeout` if a thread sends), then stop."""
        if self._thread is None:
            self.run_once()
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self):
        while True:
            session = self._queue.get()
            if session is None:
                return
            self._send(session)

    def _send(self, session):
        try:
            outcome = self.node.drop(self.url, session, self.timeout)
        except Exception as error:  # logged and left: see _failed
            self._failed(session, error)
        else:
            log.info('kicked the publisher of channel %s (session %s) at %s: %s',
                     session['channel_id'], session['session_id'], self.url, outcome)

    def _failed(self, session, error):
        # Not fatal: the session is over in the database, so the node's next update
        # hook for the stream is refused and the node drops it then.
        log.warning('could not kick the publisher of channel %s (session %s) at %s: %s; '
                    'it is dropped at its next update hook', session['channel_id'],
                    session['session_id'], self.url, error)


###############################################################################
# Background work: finishing force deletes, expiring samples ###################
###############################################################################

# HLS viewers, from nginx's syslog access log ####################################

#: A datagram of nginx's `access_log syslog:...,tag=livestream,nohostname hlsview`:
#: `<PRI>Mon dd hh:mm:ss livestream: $msec|$remote_addr|$http_user_agent|$uri|$status`.
_SYSLOG_LINE = re.compile(r'^<[0-9]{1,3}>[A-Z][a-z]{2} [ 0-9][0-9] [0-9:]{8} livestream: (.*)\Z',
                          re.DOTALL)
#: The HLS files of a channel, flat (`<id>.m3u8`, `<id>-<n>.ts`) or hls_nested (`<id>/...`).
_HLS_URI = re.compile(r'^/hls/([a-z2-7]{16})(?:\.m3u8|-[0-9]+\.ts|/[^/]+\.(?:m3u8|ts))\Z')


def parse_hls_view(datagram):
    """(channel id, address, User-Agent) of a served HLS playlist or segment; None for
    any other request. ValueError if the datagram is not an `hlsview` line (or was cut)."""
    match = _SYSLOG_LINE.match(datagram.decode('utf-8', 'replace'))
    if not match:
        raise ValueError('not a syslog line of tag livestream')
    msec, addr, rest = (match.group(1).split('|', 2) + ['', ''])[:3]
    user_agent, uri, status = (['', ''] + rest.rsplit('|', 2))[-3:]
    if not re.match(r'^[0-9]+\.[0-9]{3}\Z', msec) or not addr \
            or not re.match(r'^[1-5][0-9]{2}\Z', status):
        raise ValueError('not an hlsview line')
    hls = _HLS_URI.match(uri)
    if not hls or not status.startswith('2'):
        return None
    return hls.group(1), addr, user_agent


class ViewerCounter:
    """Distinct (address, User-Agent) pairs per channel seen in the last `window`
    seconds; kept only as a hash salted per process, at most `limit` pairs (the
    oldest seen goes first)."""

    def __init__(self, window, limit=1000000):
        self.window, self.limit = window, limit
        self._salt = secrets.token_bytes(16)
        self._seen = OrderedDict()  # (channel id, digest) -> last seen, oldest first
        self._counts = collections.Counter()  # channel id -> pairs in _seen
        self._lock = threading.Lock()

    def add(self, channel_id, addr, user_agent, now):
        digest = hmac.new(self._salt, ('%s\n%s' % (addr, user_agent)).encode('utf-8',
                          'replace'), hashlib.sha256).digest()[:16]
        key = (channel_id, digest)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
            else:
                self._counts[channel_id] += 1
            self._seen[key] = now
            while len(self._seen) > self.limit:
                self._forget()
            self._expire(now)

    def count(self, channel_id, now):
        with self._lock:
            self._expire(now)
            return self._counts.get(channel_id, 0)

    def _expire(self, now):
        while self._seen and next(iter(self._seen.values())) <= now - self.window:
            self._forget()

    def _forget(self):
        (channel_id, _), _ = self._seen.popitem(last=False)
        self._counts[channel_id] -= 1
        if not self._counts[channel_id]:
            del self._counts[channel_id]


class ViewerLog:
    """The worker that receives nginx's HLS access log on UDP 127.0.0.1:`port` and
    counts each viewer in `counter`. serve() runs it in a thread; tests call run_once()."""

    #: Seconds between two log lines about malformed datagrams (never one per datagram).
    MALFORMED_LOG_SECONDS = 60.0

    def __init__(self, counter, port, clock):
        self.counter, self.port, self.clock = counter, port, clock
        self.malformed = 0  # since the last log line about them
        self._malformed_logged = float('-inf')
        self._sock, self._thread = None, None
        self._stopping = threading.Event()

    def run_once(self, datagram, now):
        try:
            view = parse_hls_view(datagram)
        except ValueError:
            self.malformed += 1
            if now - self._malformed_logged >= self.MALFORMED_LOG_SECONDS:
                log.warning('viewer log: %d malformed datagram(s) ignored (is the nginx '
                            'log_format hlsview?)', self.malformed)
                self.malformed, self._malformed_logged = 0, now
            return
        if view:
            self.counter.add(*view, now)

    def start(self):
        """Listen, or warn and go on without HLS viewer counts if the port is taken."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(('127.0.0.1', self.port))
        except OSError as error:
            sock.close()
            log.warning('cannot listen for the HLS viewer log on udp 127.0.0.1:%d (%s): '
                        'serving without HLS viewer counts ([ingest] viewer_log_port)',
                        self.port, error.strerror or error)
            return
        sock.settimeout(0.5)  # to see stop() in time
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name='viewer-log', daemon=True)
        self._thread.start()

    def stop(self):
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock:
            self._sock.close()

    def _run(self):
        while not self._stopping.is_set():
            try:
                datagram = self._sock.recv(4096)
            except (socket.timeout, InterruptedError):
                continue
            except OSError as error:
                log.error('viewer log: %s', error)
                return
            self.run_once(datagram, self.clock())


#: How often the heartbeats the hooks hold are written (HeartbeatWriter): staleness
#: is judged in update intervals, so a second's delay costs nothing, and a hook
#: call writes nothing (a write transaction per call would cap a process at a few
#: hundred calls a second: README "Capacity").
HEARTBEAT_SECONDS = 1.0


class HeartbeatWriter:
    """Writes the heartbeats the hooks hold (Store.heartbeat) every HEARTBEAT_SECONDS,
    every session's in one transaction. serve() runs it in a thread, and its stop
    writes what is left; while it runs, hooks write nothing (Service.heard). Tests
    call run_once()."""

    def __init__(self, store, interval=HEARTBEAT_SECONDS):
        self.store, self.interval = store, interval
        self._stopping = threading.Event()
        self._thread = None

    @property
    def running(self):
        return self._thread is not None

    def run_once(self):
        """Write the heartbeats held now; how many sessions' were written."""
        return self.store.flush_heartbeats()

    def start(self):
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name='heartbeats', daemon=True)
        self._thread.start()

    def stop(self):
        """Stop, and write what is held (hooks then write their own)."""
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout=30)
        self._thread = None
        self._flush()

    def _run(self):
        while not self._stopping.wait(self.interval):
            self._flush()

    def _flush(self):
        try:
            self.run_once()
        except Exception as error:  # held again (Store.flush_heartbeats): the next pass
            log.error('heartbeat writer: %s; the heartbeats are held for its next pass', error)


class Purger:
    """The worker that deletes, in small transactions, what force deletes marked
    (Store.purge_step) and the samples of sessions that ended more than [ingest]
    sample_retention_days ago, averaged to one a minute (Store.compact_samples), then
    the sessions that ended
    more than [ingest] history_days ago (Store.expire_sessions). serve() runs it in a thread;
    tests and the CLI call run_once() themselves."""

    #: Seconds between passes over the samples; a force delete wakes it at once.
    IDLE_SECONDS = 300.0
    #: A pause between batches, so that other writers take the write lock in turn.
    PAUSE_SECONDS = 0.005
    #: After a failed batch (the database locked by another process, a full disk).
    RETRY_SECONDS = 5.0

    def __init__(self, store, clock, retention_days, history_days=None):
        self.store, self.clock = store, clock
        self.retention_seconds = retention_days * 86400
        self.history_seconds = None if history_days is None else history_days * 86400
        self._samples_after = 0  # where the pass over the samples goes on from
        self._sessions_after = 0  # and the pass over the sessions
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = None

    def run_once(self, now=None):
        """One small transaction's worth of work (as of `now`, default the service's
        clock); False when there is none left."""
        if self.store.purge_step():
            return True
        now = self.clock() if now is None else now
        after = self.store.compact_samples(now - self.retention_seconds, self._samples_after)
        self._samples_after = after or 0
        if after is not None or self.history_seconds is None:
            return after is not None
        after = self.store.expire_sessions(now - self.history_seconds, self._sessions_after)
        self._sessions_after = after or 0
        return after is not None

    def wake(self):
        """Start now (a force delete has left work), not at the next pass."""
        self._wake.set()

    def start(self):
        self._thread = threading.Thread(target=self._run, name='purger', daemon=True)
        self._thread.start()

    def stop(self):
        """Finish the batch in progress and stop (a purge goes on at the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self):
        while not self._stopping.is_set():
            try:
                busy = self.run_once()
            except sqlite3.Error as error:  # say, locked by another process: again soon
                log.error('purge worker: %s; retrying in %g s', error, self.RETRY_SECONDS)
                self._stopping.wait(self.RETRY_SECONDS)
                continue
            if busy:
                self._stopping.wait(self.PAUSE_SECONDS)
            else:
                self._wake.wait(self.IDLE_SECONDS)
                self._wake.clear()


###############################################################################
# The application ##############################################################
###############################################################################

#: How long a verified login is trusted without a look at the database: the most
#: a change made outside livestream-api (by hand, with sqlite3) waits. Changes made
#: through it, in any process, void every remembered login at once.
LOGIN_SECONDS = 2.0

#: The most logins remembered (each keyed by a hash of its header: bounded bytes).
LOGIN_CACHE_ENTRIES = 1024


class Service:
    """What every route shares: configuration, store, clock and helpers."""

    def __init__(self, config, clock):
        self.config, self.clock = config, clock
        self.store = Store(config['database']['path'], config['ingest_nodes'],
                           config['database']['replicated'], config['ingest']['sample_interval'])
        #: Writes the heartbeats the hooks hold, once a second (HeartbeatWriter).
        self.heartbeat_writer = HeartbeatWriter(self.store)
        self.throttle = Throttle(config['auth']['throttle_failures'],
                                 config['auth']['throttle_seconds'])
        #: An adapter of each ingest kind, reading the hook calls to /v1/hooks/<kind>.
        self.kinds = {kind: adapter(config) for kind, adapter in INGEST_KINDS.items()}
        #: Each ingest node by name (`default`: [ingest]; then [ingest.NAME]'s).
        self.nodes = {name: INGEST_KINDS[node['kind']](config, name)
                      for name, node in config['ingest_nodes'].items()}
        interval = config['ingest']['update_interval']
        #: Each node's statistics, read in the background (StatsPoller); a polled
        #: kind's readings are observed (Service.observe), since it never re-asks.
        self.pollers = {name: StatsPoller(node, interval, clock, min(2.0, interval),
                                          self.observe, interval * index / len(self.nodes))
                        for index, (name, node) in enumerate(self.nodes.items())}
        #: Drop the publisher of a session the API ends, at its node (a node whose
        #: control URL is empty has none).
        self.kickers = {name: Kicker(node, node.control_url)
                        for name, node in self.nodes.items() if node.control_url}
        self.purger = Purger(self.store, clock, config['ingest']['sample_retention_days'],
                             config['ingest']['history_days'])
        self.viewers = ViewerCounter(config['ingest']['viewer_window'])
        port = config['ingest']['viewer_log_port']
        #: Counts HLS viewers from nginx's access log (None: [ingest] viewer_log_port empty).
        self.viewer_log = None if port is None else ViewerLog(self.viewers, port, clock)
        #: Posts events to webhooks, and ends stale sessions and reconnect windows
        #: with no request to do it.
        self.deliverer = Deliverer(self.store, clock, config['webhooks'],
                                   sweep=self.end_stale_sessions)
        self.started = time.monotonic()
        self.hook_secret = None
        #: The paths of the admin routes, by any method (create_app; admin_only()).
        self.admin_paths = bottle.Router()
        self._next_stale_check = float('-inf')
        #: sha256(Authorization header) -> (client row, valid until, login_stamp()
        #: when read): a verified login is trusted for LOGIN_SECONDS, so most requests
        #: skip the SQL and the hash, unless a client changed since it was read.
        self.logins = {}
        self._forgets = itertools.count()
        self._forgotten = next(self._forgets)

    def login_stamp(self):
        """Taken before a client row is read: a login remembered under an older
        stamp is not trusted (a client changed here, or in another process)."""
        return self._forgotten, self.store.foreign_generation

    def remembered_login(self, key, now):
        """The client row remembered for this header's key, or None."""
        entry = self.logins.get(key)
        if entry and entry[1] > now and entry[2] == self.login_stamp():
            return entry[0]
        return None

    def remember_login(self, key, client, now, stamp):
        if len(self.logins) >= LOGIN_CACHE_ENTRIES:
            self.logins.clear()
        self.logins[key] = (client, now + LOGIN_SECONDS, stamp)

    def forget_logins(self):
        """After a client changes in this process, every login is checked afresh,
        including one being verified right now (its stamp is older)."""
        self._forgotten = next(self._forgets)
        self.logins.clear()

    def kick(self, ended):
        """Have each session's node drop the publishers of sessions just ended (after
        their commit): at once, where it has a kicker, not at their next update."""
        for session in ended:
            kicker = self.kickers.get(session['ingest'])
            if kicker:
                kicker.kick([session])

    def heard(self, session_pk, now, metrics=None):
        """A live session's heartbeat (and figures): held for the heartbeat writer to
        write within HEARTBEAT_SECONDS; with no writer running (an app embedded
        without background work), written at once."""
        self.store.heartbeat(session_pk, now, metrics)
        if not self.heartbeat_writer.running:
            self.store.flush_heartbeats()

    def start(self):
        """Start the background workers (serve owns their lifetimes)."""
        self.heartbeat_writer.start()
        self.purger.start()
        self.deliverer.start()
        for worker in list(self.kickers.values()) + list(self.pollers.values()):
            worker.start()
        if self.viewer_log:
            self.viewer_log.start()

    def stop(self):
        """Finish what the background workers have queued, and stop them."""
        for worker in self.pollers.values():  # first: a poll may queue kicks
            worker.stop()
        self.heartbeat_writer.stop()  # and hold heartbeats
        self.purger.stop()
        self.deliverer.stop()
        for worker in self.kickers.values():
            worker.stop()
        if self.viewer_log:
            self.viewer_log.stop()

    def observe(self, node, snapshot, now):
        """A fresh poll of ingest node `node` (its name): refresh the live sessions it
        lists, and end and kick those that may no longer be on air, as an update hook
        does on a node that asks. An unreachable node refreshes none: they go stale.
        Returns {stream name: its measured bitrate} for the sessions refreshed."""
        if not snapshot['reachable']:
            return {}
        bitrates = {}
        for name, metrics in snapshot['streams'].items():
            if PUBLIC_ID.match(name):
                bitrate = self._observe_stream(node, name, metrics, now)
                if bitrate is not None:
                    bitrates[name] = bitrate
        return bitrates

    def _observe_stream(self, node, name, metrics, now):
        live = self.store.ingest_channel(name)
        # A node that does not name its publishers (nginx-rtmp): the open session is its.
        connection = node_connection(node, metrics.get('connection')) or \
            (live and live['connection']) or ''
        action, why = decide_update(live, connection)
        session_id = live and live['session_id']
        if action == 'orphan':
            last = self.store.last_session_of(live['id'], connection)
            why, session_id = decide_unasked(last), last and last['public_id']
            if why is None:
                return None
        if action != 'keep':
            log.warning('%s: kicking the publisher of channel %s: %s', node, name, why)
            self.kick([{'channel_id': name, 'session_id': session_id or '-',
                        'connection': connection, 'ingest': node}])
            return None
        figures = measured(self, name, metrics, live, now, now)
        self.heard(live['live_session_id'], now, figures)
        over = decide_limits(live, now, figures['bitrateKbps'])
        if over:
            limit = LIMIT_PASSED[over]
            self.store.end_session(live['live_session_id'], over, now,
                                   limit=(limit, live[LIMIT_COLUMNS[limit]]))
            log.warning('%s: channel %s passed %s: kicking its publisher', node, name, over)
            self.kick([{'channel_id': name, 'session_id': session_id,
                        'connection': connection, 'ingest': node}])
        return figures['bitrateKbps']

    @property
    def default_limits(self):
        return {column: self.config['limits'][column] for column in LIMIT_COLUMNS.values()}

    @property
    def stale_after(self):
        """Seconds without a hook call after which a live session is over."""
        return 3 * self.config['ingest']['update_interval']

    def check_stale_by(self, when):
        """A session may end at `when` (a reconnect window shorter than stale_after
        moves its last-seen time back): the next stale check must not wait longer."""
        self._next_stale_check = min(self._next_stale_check, when)

    def end_stale_sessions(self):
        """End sessions whose ingest went quiet, so no read shows a dead stream live.
        Cheap on most calls: nothing can go stale before `_next_stale_check`, since
        sessions only ever open, or move their last-seen time, forward (but for a
        reconnect window, which moves the check itself: check_stale_by()).
        Also ends the sessions whose reconnect window has passed (Store.disconnect)."""
        now = self.clock()
        if now < self._next_stale_check:
            return
        oldest = self.store.oldest_open_session()
        if oldest is not None and oldest < now - self.stale_after:
            self.store.end_stale_sessions(now - self.stale_after)
            oldest = self.store.oldest_open_session()
        self._next_stale_check = (now if oldest is None else oldest) + self.stale_after


def service():
    return bottle.request.app.livestream


def max_body():
    return service().config['server']['max_body_bytes']


# Clients ######################################################################

def create_client():
    """POST /v1/clients: a new API client; its secret is shown this once."""
    query(())
    body = read_json(max_body())
    errors = {name: 'unknown field' for name in body if name not in ('name', 'role')}
    name, why = check_text(body.get('name'), 200, 1, strip=True)
    if why:
        errors['name'] = why
    role = body.get('role', 'app')
    if role not in ('app', 'admin'):
        errors['role'] = 'must be "app" or "admin"'
    if errors:
        raise invalid(errors)
    svc = service()
    token_id, secret = new_token()
    client = svc.store.create_client(name, role, token_id, hash_secret(secret), svc.clock())
    return envelope(dict(client_json(client), tokenSecret=secret), 201)


def list_clients():
    """GET /v1/clients: every client, newest first, without secrets."""
    _, after, limit = page_params()
    rows, total = service().store.list_clients(after, limit)
    rows, after = window(rows, limit)
    return envelope(page([client_json(row) for row in rows], total, after))


def _client(client_id):
    client = service().store.client_by_either_id(client_id)
    if client is None:
        raise not_found('client')
    return client


def _deleted_live(svc, ended):
    """After a delete: its live encoders are dropped, and the purge worker finishes
    it off the request's path."""
    svc.kick(ended)
    svc.purger.wake()
    for session in ended:
        log.info('channel %s is idle (session %s ended: its owner was deleted)',
                 session['channel_id'], session['session_id'])


def _refuse_env_client(client, verb):
    if client['from_env']:
        raise ApiError(409, EC_CONFLICT, 'this client is defined by LIVE_TOKEN_ID / '
                       'LIVE_TOKEN_SECRET; %s it there and restart' % verb)


def rotate_client(client_id):
    """POST /v1/clients/{clientId}/rotate: a new secret; the old one stops working."""
    client = _client(client_id)
    query(())
    _refuse_env_client(client, 'change')
    secret = new_token()[1]
    if not service().store.set_client_secret(client['id'], hash_secret(secret)):
        raise not_found('client')  # deleted since _client found it
    service().forget_logins()
    return envelope(dict(client_json(client), tokenSecret=secret))


def delete_client(client_id):
    """DELETE /v1/clients/{clientId}: refused while it owns users, unless ?force=true."""
    client = _client(client_id)
    force = force_param(query({'force'}))
    _refuse_env_client(client, 'remove')
    svc = service()
    users, ended = svc.store.delete_client(client['id'], svc.clock(), force)
    if users:
        raise ApiError(409, EC_CONFLICT, 'client still owns %d users; delete them first or '
                       'pass ?force=true' % users, {'users': users})
    svc.forget_logins()
    _deleted_live(svc, ended)
    return envelope(None, 204)


# Users ########################################################################

def owner(for_list=False):
    """The client pk whose users and channels this request means: the caller's
    own, or for an admin the one named by ?clientId (every client's in a list).
    Read before the query is validated, since a 404 comes before a 400."""
    client = caller()
    public_id = bottle.request.query.get('clientId')
    if public_id is None:
        return None if for_list and is_admin(client) else client['id']
    if is_admin(client):
        named = service().store.client_by_public_id(public_id)
        if named is None:
            raise not_found('client')
        return named['id']
    if public_id != client['public_id']:
        raise not_found('client')
    return client['id']


def _existing_user(user_id):
    user = USER_ID.match(user_id) and service().store.user(owner(), user_id)
    if not user:
        raise not_found('user')
    return user


def put_user(user_id):
    """PUT /v1/users/{userId}: create or replace a user's limits."""
    client_pk = owner()
    query({'clientId'})
    body = read_json(max_body())
    if not USER_ID.match(user_id):
        raise invalid({'userId': 'must be 1-64 characters of A-Z a-z 0-9 _ . -'})
    limits = check_limits(body)
    svc = service()
    user, created = svc.store.put_user(client_pk, user_id, limits, svc.default_limits,
                                       svc.clock(), replace=True)
    if user is None:  # its client was deleted since the request began
        raise not_found('client')
    return envelope(user_json(user, is_admin(caller())), 201 if created else 200)


def patch_user(user_id):
    """PATCH /v1/users/{userId}: change only the limits named."""
    user = _existing_user(user_id)
    query({'clientId'})
    limits = check_limits(read_json(max_body()))
    svc = service()
    user, _ = svc.store.put_user(user['client_id'], user_id, limits, svc.default_limits,
                                 svc.clock(), replace=False)
    if user is None:  # deleted since _existing_user found it
        raise not_found('user')
    return envelope(user_json(user, is_admin(caller())))


def get_user(user_id):
    """GET /v1/users/{userId}."""
    user = _existing_user(user_id)
    query({'clientId'})
    return envelope(user_json(user, is_admin(caller())))


def list_users():
    """GET /v1/users: newest first."""
    client_pk = owner(for_list=True)
    _, after, limit = page_params({'clientId'})
    svc = service()
    rows, total = svc.store.list_users(client_pk, after, limit)
    admin = is_admin(caller())
    rows, after = window(rows, limit)
    return envelope(page([user_json(row, admin) for row in rows], total, after))


def delete_user(user_id):
    """DELETE /v1/users/{userId}: refused while it has channels, unless ?force=true."""
    user = _existing_user(user_id)
    force = force_param(query({'clientId', 'force'}))
    svc = service()
    channels, ended = svc.store.delete_user(user['id'], svc.clock(), force)
    if channels:
        raise ApiError(409, EC_CONFLICT, 'user still has %d channels; delete them first or '
                       'pass ?force=true' % channels, {'channels': channels})
    _deleted_live(svc, ended)
    return envelope(None, 204)


# Channels #####################################################################

def _channel(channel_id):
    """The channel if the caller may see it; 404 otherwise, whoever owns it."""
    client = caller()
    svc = service()
    channel = PUBLIC_ID.match(channel_id) and svc.store.channel(
        None if is_admin(client) else client['id'], channel_id)
    if not channel:
        raise not_found('channel')
    return channel


def _render_channel(row):
    """The channel object for this request's caller (built by SQLite: CHANNEL_OBJECT)."""
    return RawJSON(row['admin_json'] if is_admin(caller()) else row['json'])


def create_channel():
    """POST /v1/channels: a new channel for a user (created with default limits if new)."""
    client_pk = owner()
    query({'clientId'})
    fields = check_channel_fields(read_json(max_body()),
                                  ('userId', 'name', 'description', 'metadata', 'ingest',
                                   'reconnectWindowSeconds'), required=('userId', 'name'))
    if 'reconnectWindowSeconds' in fields:
        fields['reconnect_window'] = fields.pop('reconnectWindowSeconds')
    svc = service()
    if fields.get('ingest', DEFAULT_NODE) not in svc.nodes:
        raise invalid({'ingest': 'no such ingest node (nodes: %s)' % ', '.join(svc.nodes)})
    try:
        channel, limit = svc.store.create_channel(client_pk, fields.pop('userId'), fields,
                                                  svc.default_limits, svc.clock())
    except NotAccepting as refused:
        raise ApiError(409, EC_CONFLICT, 'ingest node %s is not accepting new channels'
                       % refused.args[0] if refused.args[0] else
                       'no ingest node is accepting new channels')
    if limit:
        raise ApiError(403, EC_LIMIT, 'user is at its %s limit (%d)' % limit,
                       {'limit': limit[0], 'value': limit[1]})
    if channel is None:  # its client was deleted since the request began
        raise not_found('client')
    return envelope(_render_channel(channel), 201)


#: The shortest name search (the name index is of trigrams).
MIN_Q = 3


def list_channels():
    """GET /v1/channels: newest first, filtered by userId, status and q."""
    client_pk = owner(for_list=True)
    params, after, limit = page_params({'userId', 'status', 'q', 'clientId'})
    status = params.get('status')
    if status not in (None, 'idle', 'live', 'disabled'):
        raise bad_request('status must be idle, live or disabled')
    q = text_param(params, 'q')
    if q is not None and (not MIN_Q <= len(q) <= 200 or CONTROL_CHARS.search(q)):
        # Under 3 characters the trigram index cannot help: every name would be read.
        raise bad_request('q must be %d to 200 characters, with no control characters'
                          % MIN_Q)
    user_id = params.get('userId')
    if user_id is not None and not USER_ID.match(user_id):
        raise bad_request('userId must be 1-64 characters of A-Z a-z 0-9 _ . -')
    svc = service()
    items, more, after, total = svc.store.list_channels(
        client_pk, user_id, status, q, after, limit, is_admin(caller()))
    return envelope(page(RawJSON(items), total, after if more else None))


def get_channel(channel_id):
    """GET /v1/channels/{id}."""
    channel = _channel(channel_id)
    query(())
    return envelope(_render_channel(channel))


def _update_channel(channel_id, replace):
    channel = _channel(channel_id)
    query(())
    allowed = ('name', 'description', 'metadata', 'enabled', 'reconnectWindowSeconds')
    fields = check_channel_fields(read_json(max_body()), allowed,
                                  required=('name',) if replace else ())
    if replace:
        fields = dict({'description': '', 'metadata': {}, 'enabled': True,
                       'reconnectWindowSeconds': None}, **fields)
    if 'reconnectWindowSeconds' in fields:
        fields['reconnect_window'] = fields.pop('reconnectWindowSeconds')
    svc = service()
    if fields:
        svc.kick(svc.store.update_channel(channel['id'], fields, svc.clock(),
                                          decide_edit(fields)))
    return envelope(_render_channel(_channel(channel_id)))


def put_channel(channel_id):
    """PUT /v1/channels/{id}: replace name, description, metadata and enabled."""
    return _update_channel(channel_id, replace=True)


def patch_channel(channel_id):
    """PATCH /v1/channels/{id}: change only the fields given."""
    return _update_channel(channel_id, replace=False)


def delete_channel(channel_id):
    """DELETE /v1/channels/{id}: a live stream on it is ended."""
    channel = _channel(channel_id)
    query(())
    svc = service()
    svc.kick(svc.store.delete_channel(channel['id'], svc.clock()))
    return envelope(None, 204)


def rotate_key(channel_id):
    """POST /v1/channels/{id}/rotate-key: a new streamId; the old key stops working."""
    channel = _channel(channel_id)
    query(())
    svc = service()
    fields = {'stream_key': new_stream_key()}
    svc.kick(svc.store.update_channel(channel['id'], fields, svc.clock(), decide_edit(fields)))
    return envelope(_render_channel(_channel(channel_id)))


def channel_stats(channel_id):
    """GET /v1/channels/{id}/stats: live figures and totals over every session."""
    channel = _channel(channel_id)
    query(())
    svc = service()
    now = svc.clock()
    current = None
    totals = {'sessions': channel['sessions'], 'liveSeconds': round(channel['live_seconds']),
              'bytesIn': channel['bytes_in']}
    if channel['live_session_id'] is not None:
        session = svc.store.session(channel['live_session_id'])
        if session is None:  # gone with its channel, deleted since _channel read it
            raise not_found('channel')
        # A session that ended since counts up to its end, as its channel's totals will.
        duration = max(0.0, (session['ended_at'] or session['left_at'] or now)
                       - session['started_at'] - session['paused_seconds'])
        current = {'sessionId': session['public_id'], 'startedAt': iso(session['started_at']),
                   'connected': session['left_at'] is None and session['ended_at'] is None,
                   'durationSeconds': round(duration), 'bitrateKbps': session['bitrate_kbps'],
                   'bytesIn': session['bytes_in'],
                   'video': json.loads(session['video']) if session['video'] else None,
                   'audio': json.loads(session['audio']) if session['audio'] else None}
        hls = svc.viewers.count(channel['public_id'], now)
        current.update(viewers=session['viewers'] + hls, viewersRtmp=session['viewers'],
                       viewersHls=hls)
        totals['liveSeconds'] = round(channel['live_seconds'] + duration)
        totals['bytesIn'] += session['bytes_in']
    return envelope({'status': channel['status'], 'current': current, 'totals': totals})


def list_sessions(channel_id):
    """GET /v1/channels/{id}/sessions: its broadcasts, newest first."""
    channel = _channel(channel_id)
    _, after, limit = page_params()
    svc = service()
    found = svc.store.list_sessions(channel['id'], after, limit)
    if found is None:  # deleted since _channel found it
        raise not_found('channel')
    rows, total = found
    now = svc.clock()
    rows, after = window(rows, limit)
    return envelope(page([session_json(row, now) for row in rows], total, after))


#: GET /v1/channels/{id}/sessions/{sessionId}: how many points of samples by default,
#: and at most.
DEFAULT_POINTS, MAX_POINTS = 300, 1000


def get_session(channel_id, session_id):
    """GET /v1/channels/{id}/sessions/{sessionId}: one broadcast with its samples,
    averaged down to at most ?points evenly spaced points, for a chart in one call."""
    channel = _channel(channel_id)
    svc = service()
    session = PUBLIC_ID.match(session_id) and svc.store.channel_session(channel['id'],
                                                                        session_id)
    if not session:
        raise not_found('session')
    points = query({'points'}).get('points', str(DEFAULT_POINTS))
    if not re.match(r'^[0-9]{1,4}\Z', points) or not 1 <= int(points) <= MAX_POINTS:
        raise bad_request('points must be an integer from 1 to %d' % MAX_POINTS)
    now = svc.clock()
    samples = svc.store.session_samples(session['id'], session['started_at'],
                                        session['ended_at'] or now, int(points))
    return envelope(dict(session_json(session, now),
                         samples=[sample_json(sample) for sample in samples]))


# Statistics and health ########################################################

def system_stats():
    """GET /v1/stats: the caller's totals; for an admin, every client's and the system's."""
    query(())
    client = caller()
    svc = service()
    admin = is_admin(client)
    now = svc.clock()
    totals, live = svc.store.totals(None if admin else client['id'], now)
    stats = {'users': totals['users'], 'channels': totals['channels'],
             'liveChannels': totals['live_channels'],
             'bitrateKbpsIn': round(live['bitrate_kbps'], 1), 'sessions': totals['sessions'],
             'liveSeconds': round(totals['live_seconds'] + live['seconds']),
             'bytesIn': totals['bytes_in'] + live['bytes_in'],
             'viewers': live['viewers'] + sum(svc.viewers.count(public_id, now) for public_id
                                              in live['public_ids'].split(',') if public_id)}
    if admin:
        stats['system'] = {
            'version': __version__, 'uptimeSeconds': round(time.monotonic() - svc.started),
            'dbBytes': svc.store.size_bytes(),
            'ingest': [dict(name=name, kind=svc.nodes[name].kind, **_polled(poller.snapshot))
                       for name, poller in svc.pollers.items()]}
        last_backup = svc.store.last_backup_at()
        if last_backup is not None:
            stats['system']['lastBackupAt'] = iso(last_backup)
    return envelope(stats)


def _polled(snapshot):
    """What a node's latest stats reading says, as /v1/stats shows it."""
    return {'url': snapshot['url'], 'reachable': snapshot['reachable'],
            'streams': len(snapshot['streams']),
            'bitrateKbpsIn': round(sum(stream['bitrateKbps'] for stream
                                       in snapshot['streams'].values()), 1)}


def health():
    """GET /v1/health: 200 while the database answers, 503 when it does not."""
    query(())
    try:
        service().store.check()
    except sqlite3.Error as error:
        log.error('health check: database unavailable: %s', error)
        raise ApiError(503, EC_INTERNAL, 'database unavailable',
                       {'status': 'unavailable', 'version': __version__, 'db': 'error'})
    return envelope({'status': 'ok', 'version': __version__, 'db': 'ok'})


# Ingest nodes #################################################################

def _ingest_nodes(svc):
    """{name: the node's object} for GET /v1/ingest: its live streams, their bitrate
    and viewers come from the sessions (a node whose stats are unreachable keeps
    its last figures)."""
    now = svc.clock()
    nodes, live = svc.store.ingest_nodes()
    items = collections.OrderedDict((node['name'], {
        'name': node['name'], 'kind': svc.nodes[node['name']].kind,
        'rtmpUrl': svc.nodes[node['name']].settings['rtmp_url'],
        'hlsUrl': svc.nodes[node['name']].settings['hls_url'],
        'accepting': bool(node['accepting']),
        'reachable': svc.pollers[node['name']].snapshot['reachable'],
        'liveStreams': 0, 'bitrateKbpsIn': 0.0, 'viewers': 0}) for node in nodes)
    for ingest, channel_id, bitrate_kbps, viewers in live:
        item = items.get(ingest)
        if item:
            item['liveStreams'] += 1
            item['bitrateKbpsIn'] += bitrate_kbps or 0
            item['viewers'] += viewers + svc.viewers.count(channel_id, now)
    for item in items.values():
        item['bitrateKbpsIn'] = round(item['bitrateKbpsIn'], 1)
    return items


def list_ingest():
    """GET /v1/ingest: every ingest node, in the configuration's order."""
    query(())
    return envelope(list(_ingest_nodes(service()).values()))


def patch_ingest(name):
    """PATCH /v1/ingest/{name} {"accepting": false}: drain the node (no new channels
    are placed there; its live streams go on), or open it again; kept in the database."""
    svc = service()
    if name not in svc.nodes:
        raise not_found('ingest node')
    query(())
    body = read_json(max_body())
    errors = {field: 'unknown field' for field in body if field != 'accepting'}
    if not isinstance(body.get('accepting'), bool):
        errors['accepting'] = 'is required, true or false' if 'accepting' not in body \
            else 'must be true or false'
    if errors:
        raise invalid(errors)
    svc.store.set_accepting(name, body['accepting'])
    log.info('ingest node %s %s new channels', name,
             'accepts' if body['accepting'] else 'accepts no more (draining)')
    return envelope(_ingest_nodes(svc)[name])


# Dashboard: the operator's page ###############################################

#: The page's files (package data beside schema.sql), by name, with their types.
DASHBOARD_FILES = {'dashboard.html': 'text/html; charset=utf-8',
                   'dashboard.css': 'text/css; charset=utf-8',
                   'dashboard.js': 'text/javascript; charset=utf-8',
                   'dashboard.svg': 'image/svg+xml'}  # its icon (else /favicon.ico: a 401)

#: On the page and its files: only this server's own files run (no inline script
#: or style: a value shown as HTML could not run), in no one's frame, and no cache
#: keeps them (the page is where a token secret is typed).
DASHBOARD_HEADERS = {'Content-Security-Policy': "default-src 'self'; frame-ancestors 'none'; "
                                                "form-action 'none'; base-uri 'none'",
                     'X-Frame-Options': 'DENY', 'Cache-Control': 'no-store',
                     'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer'}


@functools.lru_cache(maxsize=None)
def _dashboard_file(name):
    return _data_path(name).read_bytes()


def to_dashboard():
    """GET /: the operator's page (relative, so it also works under a proxy's prefix)."""
    query(())
    raise bottle.HTTPResponse(status=302, Location='dashboard')


def dashboard(name='dashboard.html'):
    """GET /dashboard and GET /dashboard/<name>: the page and its files, by name
    from DASHBOARD_FILES only (anything else is a 404, never a path on disk)."""
    query(())
    if name not in DASHBOARD_FILES:
        raise not_found('dashboard file')
    for header, value in DASHBOARD_HEADERS.items():
        bottle.response.set_header(header, value)
    bottle.response.content_type = DASHBOARD_FILES[name]
    return _dashboard_file(name)


###############################################################################
# Ingest hooks #################################################################
###############################################################################

# Decisions: who may go live, and for how long ################################
# Plain functions, each over one read (a row in, a decision out); the Store reads
# and writes, and the hooks below carry the decisions out.

#: Every reason a session ends with (its endReason).
END_REASONS = ('publisher_left', 'channel_disabled', 'key_rotated', 'channel_deleted',
               'max_session_seconds', 'max_bitrate', 'stale')
#: The end a stream's own connection may resume from: staleness says only that the
#: API stopped hearing from it (restarted, or reaped it), never that the stream ended.
RESUMABLE_ENDS = ('stale',)

#: A publish's decision: why it is refused (None: it opens a session) and the
#: refusal's reason in a publish.refused event (None: no event, as for a channel that
#: does not exist); whether the user's stale sessions end first; whether this
#: channel's open session is taken over, or resumed (its publisher left within the
#: reconnect window).
Publish = collections.namedtuple('Publish', 'why end_stale take_over resume refusal',
                                 defaults=(False, None))


def decide_publish(channel, key, connection, stale_cutoff):
    """May a publish open a session? `channel` is start_session's read: the channel,
    its open session, its user's live count and limit, and the user's stale sessions."""
    if channel is None:
        return Publish('no such channel', False, False)
    if not hmac.compare_digest(key.encode(), channel['stream_key'].encode()):
        return Publish('wrong stream key', False, False, refusal='wrong_key')
    if not channel['enabled']:
        return Publish('channel is disabled', False, False, refusal='channel_disabled')
    fresh = channel['live_session_id'] is not None and channel['last_seen_at'] >= stale_cutoff
    # A session whose publisher left is fresh until its reconnect window ends (Store.
    # disconnect): any connection with the key resumes it, as an encoder reconnects.
    resume = fresh and channel['left_at'] is not None
    if fresh and not resume and channel['connection'] != connection:
        return Publish('channel is already live from another connection', False, False,
                       refusal='already_live')
    # Stale sessions count as ended, since they end as this one opens; so does this
    # channel's fresh one when its own connection publishes again (a takeover) or
    # its encoder comes back (a resume: the slot stays its own).
    live_channels = channel['live_channels'] - channel['stale_live'] - fresh
    limit = channel['max_live_channels']
    if limit is not None and live_channels >= limit:
        return Publish('user is at maxLiveChannels (%d)' % limit, False, False,
                       refusal='max_live_channels')
    return Publish(None, channel['stale_live'] > 0, fresh and not resume, resume)


def decide_update(live, connection):
    """What an update_publish does, from ingest_channel's read: 'refuse' (with why),
    'keep' its connection's open session, or 'orphan': it has none (decide_resume)."""
    if live is None:
        return 'refuse', 'channel was deleted'
    if live['live_session_id'] is not None and live['connection'] == connection:
        if live['left_at'] is not None:  # its publisher left: a late word from it
            return 'refuse', 'publisher left'
        return 'keep', None
    return 'orphan', None


def decide_resume(last):
    """Why a stream with no open session may not open one again (None: it may, under the
    publish rules), from its connection's latest session on the channel, if any."""
    if last is not None and last['end_reason'] not in RESUMABLE_ENDS:
        return 'session was ended: %s' % last['end_reason']
    return None


def decide_left(last):
    """Whether publish_done, finding no open session of its connection, must record
    that the one the API ended as stale (its latest) was in fact left: nginx says
    the stream is over, so no late update_publish may resume it."""
    return last is not None and last['end_reason'] in RESUMABLE_ENDS


def decide_drop(live, default_window):
    """How long a session whose publisher just left stays open for it to come back
    (its channel's reconnect window, else [ingest] reconnect_window): 0 ends it now."""
    window = live['reconnect_window']
    return default_window if window is None else window


def decide_unasked(last):
    """Why a stream that a poll sees at its node, with no open session of its
    connection, is kicked (None: left alone, its publish may be under way), from
    that connection's latest session on the channel. Ended for any reason, stale
    included: a poll carries no key to resume it by; the encoder reconnects and asks."""
    if last is not None:
        return 'session was ended: %s' % last['end_reason']
    return None


def measured_bitrate(metrics, live, now):
    """A stream's bitrate in kbit/s: nginx's bw_in; while that is still 0 (its first
    ~10 s), the growth of bytes_in since the session's last sample, or since it began."""
    if metrics['bitrateKbps']:
        return metrics['bitrateKbps']
    since, before = (live['started_at'], 0) if live['sampled_at'] is None else \
        (live['sampled_at'], live['bytes_in'])
    if now <= since:
        return metrics['bitrateKbps']
    return round(max(0, metrics['bytesIn'] - before) * 8 / 1000 / (now - since), 1)


#: The user limit behind each end reason a limit gives (limit.exceeded names it).
LIMIT_PASSED = {'max_session_seconds': 'maxSessionSeconds', 'max_bitrate': 'maxBitrateKbps'}


def decide_limits(live, now, bitrate_kbps):
    """The limit an open session has passed (its end reason), or None."""
    if live['max_session_seconds'] is not None and \
            now - live['started_at'] - (live['paused_seconds'] or 0) > live['max_session_seconds']:
        return 'max_session_seconds'
    if live['max_bitrate_kbps'] is not None and bitrate_kbps is not None and \
            bitrate_kbps > live['max_bitrate_kbps']:
        return 'max_bitrate'
    return None


def decide_edit(fields):
    """The end a change of a channel's fields brings its live session (the encoder
    may no longer be on air), or None."""
    if 'stream_key' in fields:
        return 'key_rotated'
    if fields.get('enabled') is False:
        return 'channel_disabled'
    return None


def edit_event(fields, was_enabled):
    """The event a change of a channel's fields makes (one per change)."""
    if 'stream_key' in fields:
        return 'channel.key_rotated'
    if fields.get('enabled', was_enabled) != was_enabled:
        return 'channel.enabled' if fields['enabled'] else 'channel.disabled'
    return 'channel.updated'


# The hooks ####################################################################

class HookDenied(LivestreamError):
    """The ingest must refuse (or drop) this stream; the message says why."""


def _check_hook_secret(svc):
    # The first value; a repeated one is then refused by query() like any other.
    given = (bottle.request.query.getall('secret') or [''])[0]
    if not hmac.compare_digest(given.encode('latin-1', 'replace'), svc.hook_secret.encode()):
        log.warning('hook refused: missing or wrong hook secret from %s',
                    bottle.request.environ.get('REMOTE_ADDR'))
        raise ApiError(403, EC_FORBIDDEN, 'missing or wrong hook secret')


def ingest_publish(svc, event):
    """A publisher asks to go live on channel `event.name` with `event.key`."""
    name, key, connection, addr = event.name, event.key, event.connection, event.addr
    now = svc.clock()
    cutoff = now - svc.stale_after
    session_id, why = svc.store.start_session(
        name, lambda channel: decide_publish(channel, key, connection, cutoff),
        connection, addr, now, cutoff, event.node)
    if why:
        raise HookDenied(why)
    log.info('channel %s is live on %s (session %s, from %s)', name, event.node, session_id,
             addr)
    return {'allowed': True}


def _figures(svc, event, live, now):
    """The stream's metrics from its node's latest stats reading, with its measured
    bitrate, as of that reading (measuredAt); None where that does not list it, or
    is no newer than the session's last sample."""
    snapshot = svc.pollers[event.node].snapshot
    sampled = max(live['sampled_at'] or 0,
                  svc.store.beat_measured_at(live['live_session_id']) or 0)
    if snapshot['at'] is None or sampled >= snapshot['at']:
        return None
    metrics = snapshot['streams'].get(event.name)
    return metrics and measured(svc, event.name, metrics, live, snapshot['at'], now)


def measured(svc, name, metrics, live, at, now):
    """A stream's metrics as its node listed them at `at`, with its measured bitrate
    and (as of `now`) HLS viewers. After a reconnect the node counts the new
    connection's bytes from 0: the session's bytes before it are its base."""
    metrics = dict(metrics, bytesIn=metrics['bytesIn'] + (live['bytes_base'] or 0))
    return dict(metrics, measuredAt=at, bitrateKbps=measured_bitrate(metrics, live, at),
                viewersHls=svc.viewers.count(name, now))


def ingest_update(svc, event):
    """The ingest's periodic word on a live stream: refresh its figures, or deny
    (which drops the encoder) once the stream may no longer be on air."""
    name, connection = event.name, event.connection
    now = svc.clock()
    live = svc.store.ingest_channel(name)
    action, why = decide_update(live, connection)
    if action == 'refuse':
        raise HookDenied(why)
    if action == 'orphan':
        why = decide_resume(svc.store.last_session_of(live['id'], connection))
        if why:
            raise HookDenied(why)
        ingest_publish(svc, event)
        live = svc.store.ingest_channel(name)
        if decide_update(live, connection)[0] != 'keep':
            raise HookDenied('session was ended as it resumed')  # deleted, disabled, re-keyed
    metrics = _figures(svc, event, live, now)
    svc.heard(live['live_session_id'], now, metrics)
    over = decide_limits(live, now, metrics and metrics['bitrateKbps'])
    if over:
        limit = LIMIT_PASSED[over]
        svc.store.end_session(live['live_session_id'], over, now,
                              limit=(limit, live[LIMIT_COLUMNS[limit]]))
        svc.kick([{'channel_id': name, 'session_id': live['session_id'],
                   'connection': connection, 'ingest': event.node}])  # 403 or not
        raise HookDenied('session passed %s' % over)
    return {'allowed': True}


def ingest_publish_done(svc, event):
    """The publisher left: end its connection's open session, with its last figures."""
    name, connection = event.name, event.connection
    live = svc.store.ingest_channel(name)
    action = decide_update(live, connection)[0]
    if action == 'keep':
        now = svc.clock()
        # The latest reading, if newer than the last sample and still listing the
        # stream: else end_session extrapolates from the last sample.
        metrics = _figures(svc, event, live, now)
        if metrics:
            svc.heard(live['live_session_id'], now, metrics)
        window = decide_drop(live, svc.config['ingest']['reconnect_window'])
        if window:
            svc.store.disconnect(live['live_session_id'], now, window, svc.stale_after)
            svc.check_stale_by(now + window)
            log.info('channel %s: publisher left; session %s stays open %d s for it to '
                     'come back', name, live['session_id'], window)
        else:
            svc.store.end_session(live['live_session_id'], 'publisher_left', now)
            log.info('channel %s is idle (session %s ended: publisher_left)', name,
                     live['session_id'])
    elif action == 'orphan':
        last = svc.store.last_session_of(live['id'], connection)
        if decide_left(last):
            svc.store.left_after_stale(last['id'])
    return {'ended': action == 'keep'}


def ingest_play(svc, event):
    """A viewer comes (play) or goes (stop)."""
    if svc.store.ingest_channel(event.name) is None:
        raise HookDenied('no such channel')
    svc.store.add_viewer(event.name, 1 if event.what == 'play' else -1)
    return {'allowed': True}


def ingest_read(svc, event):
    """A reader asks to watch, with no word when it leaves (the poll counts readers):
    allowed on an enabled channel, as playback is public."""
    channel = svc.store.ingest_channel(event.name)
    if channel is None:
        raise HookDenied('no such channel')
    if not channel['enabled']:
        raise HookDenied('channel is disabled')
    return {'allowed': True}


#: What each event does.
ON_EVENT = {'publish': ingest_publish, 'update': ingest_update, 'done': ingest_publish_done,
            'play': ingest_play, 'stop': ingest_play, 'read': ingest_read}


def ingest_hook(kind, hook=None):
    """POST /v1/hooks/<kind>[/<hook>]?node=NAME: an ingest node's hook calls, as its
    kind's adapter reads them. 2xx allows, 403 refuses (or, for an update, drops the
    stream); each in the form the node understands (its adapter's answer and refusal)."""
    adapter = service().kinds[kind]
    try:
        return adapter.answer(_ingest_call(kind, hook))
    except ApiError as error:
        raise adapter.refusal(error)


def node_connection(node, connection):
    """A publisher's connection as the API keeps it: connections are numbered per
    node (nginx counts its own), so another node's are told apart by its name; the
    default node's keep the form they always had."""
    if not connection or node == DEFAULT_NODE:
        return connection
    return '%s/%s' % (node, connection)


def _ingest_call(kind, hook):
    svc = service()
    _check_hook_secret(svc)
    node = query({'secret', 'node'}).get('node', DEFAULT_NODE)
    if node not in svc.nodes:
        log.warning('%s hook refused: unknown ingest node %r from %s', kind, node[:40],
                    bottle.request.environ.get('REMOTE_ADDR'))
        raise ApiError(403, EC_FORBIDDEN, 'unknown ingest node')
    if bottle.request.content_length > max_body():
        raise ApiError(413, EC_TOO_LARGE, 'hook body too large')
    # The node's own adapter where it is of this kind: its settings (its RTMP app).
    adapter = svc.nodes[node] if svc.nodes[node].kind == kind else svc.kinds[kind]
    event = (getattr(adapter, adapter.extra_hooks[hook]) if hook else adapter.event)(
        bottle.request)
    event = event._replace(node=node, connection=node_connection(node, event.connection))
    if event.what is None:
        return {'ignored': event.said}
    if not PUBLIC_ID.match(event.name):
        log.warning('%s %s refused: stream name is not a channel id', kind, event.said)
        if event.what in ('publish', 'play', 'read'):
            raise ApiError(403, EC_FORBIDDEN, 'stream name is not a channel id')
        raise bad_request('stream name is not a channel id')
    try:
        return ON_EVENT[event.what](svc, event)
    except HookDenied as denied:
        log.warning('%s %s on channel %s refused: %s', kind, event.said, event.name,
                    denied)
        raise ApiError(403, EC_FORBIDDEN, str(denied))


###############################################################################
# Webhooks #####################################################################
###############################################################################
# Events are written by the Store in the transaction of their change (the outbox);
# the Deliverer posts them from its own threads, never on a request's path.

#: Every event type (API.md "Webhooks to the App Server").
EVENT_TYPES = ('channel.created', 'channel.updated', 'channel.deleted', 'channel.disabled',
               'channel.enabled', 'channel.key_rotated', 'channel.live', 'channel.idle',
               'channel.disconnected', 'channel.reconnected', 'publish.refused',
               'limit.exceeded', 'webhook.test')
#: Delivery states of an event for one endpoint (`none`: there was no endpoint).
DELIVERY_STATUSES = ('pending', 'delivered', 'failed', 'none')
#: Seconds before the 2nd, 3rd, ... attempt, before jitter; hourly after the last.
RETRY_SCHEDULE = (10, 30, 120, 600, 1800)
#: How long after it was queued a delivery is retried before it is `failed`; how long
#: a rotated-out secret still signs.
DELIVERY_DEADLINE = SECRET_OVERLAP = 86400


#: An endpoint: http or https, a host name or address (IPv6 in brackets), a port of
#: 0-65535, then printable ASCII; no user:password@ (it would fail the host).
WEBHOOK_URL = re.compile(
    r'^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:(6553[0-5]|655[0-2][0-9]|'
    r'65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?#][!-~]*)?\Z')


def new_webhook_secret():
    return 'whsec_' + base64.b64encode(secrets.token_bytes(32)).decode('ascii')


def check_webhook(body):
    """{"url", "events"?} -> (url, [types] or None for all); 422 naming every bad field."""
    errors = {name: 'unknown field' for name in body if name not in ('url', 'events')}
    url = body.get('url')
    if isinstance(url, str) and re.match(r'^https?://[^/?#]*@', url):
        errors['url'] = 'must not carry a user:password part'
    elif not (isinstance(url, str) and len(url) <= 2048 and WEBHOOK_URL.match(url)):
        errors['url'] = ('must be an http or https URL of at most 2048 printable ASCII '
                         'characters (percent-encode others)')
    events = body.get('events')
    if 'events' in body:  # null too is refused: leave it out for every type
        if not isinstance(events, list) or not events or \
                not all(isinstance(kind, str) for kind in events):
            errors['events'] = 'must be a non-empty array of event types'
        elif set(events) - set(EVENT_TYPES):
            errors['events'] = 'unknown event type %s; known: %s' % (
                ', '.join(sorted(set(events) - set(EVENT_TYPES))), ', '.join(EVENT_TYPES))
        else:
            events = sorted(set(events), key=EVENT_TYPES.index)
    if errors:
        raise invalid(errors)
    return url, events


def webhook_json(row):
    return {'url': row['url'], 'events': json.loads(row['events']) if row['events']
            else list(EVENT_TYPES), 'createdAt': iso(row['created_at']),
            'updatedAt': iso(row['updated_at'])}


def event_body(row, admin):
    """What is posted: {id, type, createdAt, data}; for an admin the channel object
    carries clientId, as admins see channels."""
    data = json.loads(row['data'])
    if admin and 'channel' in data and row['client_public_id']:
        data['channel']['clientId'] = row['client_public_id']
    return {'id': row['public_id'], 'type': row['type'], 'createdAt': iso(row['created_at']),
            'data': data}


def event_json(row, admin):
    """An event as GET /v1/events shows it: the body and the caller's delivery state."""
    pending = row['status'] == 'pending'
    return dict(event_body(row, admin), delivery={
        'status': row['status'] or 'none', 'attempts': row['attempts'] or 0,
        'lastStatus': row['last_status'], 'lastError': row['last_error'],
        'nextAttemptAt': iso(row['next_attempt_at']) if pending else None,
        'deliveredAt': iso(row['delivered_at'])})


def signature(secrets_in_use, timestamp, body):
    """X-Livestream-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>"> per secret."""
    signed = b'%d.' % timestamp + body
    return 't=%d' % timestamp + ''.join(
        ',v1=' + hmac.new(secret.encode('utf-8'), signed, hashlib.sha256).hexdigest()
        for secret in secrets_in_use)


def retry_delay(attempts, rand):
    """Seconds to wait after `attempts` failed attempts: RETRY_SCHEDULE, then hourly,
    each +-20% (rand() in [0, 1)) so that endpoints that failed together spread out."""
    base = RETRY_SCHEDULE[attempts - 1] if attempts <= len(RETRY_SCHEDULE) else 3600
    return base * (0.8 + 0.4 * rand())


def next_attempt(queued_at, attempts, now, rand):
    """When to try again after `attempts` failed ones, or None: past the deadline."""
    at = now + retry_delay(attempts, rand)
    return None if at > queued_at + DELIVERY_DEADLINE else at


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is a failed attempt: following it could post a signed event elsewhere."""

    def redirect_request(self, *args, **kwargs):
        return None


#: No redirects, and no proxy from the environment (an endpoint is called directly).
_WEBHOOK_OPENER = urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


def post_event(url, body, headers, timeout):
    """POST one delivery: (HTTP status or None, why it failed or None)."""
    request = urllib.request.Request(url, data=body, headers=headers, method='POST')
    try:
        with _WEBHOOK_OPENER.open(request, timeout=timeout) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        error.close()
        return error.code, 'HTTP %d' % error.code
    except (OSError, http.client.HTTPException, ValueError) as error:
        return None, (str(error) or type(error).__name__)[:200]


class Deliverer:
    """Posts pending deliveries: a dispatcher (run_once, tests call it) hands the
    oldest due delivery of each endpoint to a pool of max_in_flight senders, one
    delivery per endpoint at a time, so a slow endpoint holds up only its own.
    Each pass also ends stale sessions and windows (`sweep`) and prunes old events."""

    #: Seconds between passes: the most an event waits before its first attempt. An
    #: attempt's end starts a pass at once, so an endpoint's next event need not wait.
    IDLE_SECONDS = 0.2
    #: Old events are pruned this often, this many a transaction.
    PRUNE_SECONDS, PRUNE_BATCH = 60.0, 500
    #: A delivery being attempted is not due again for its timeout and this long.
    LEASE_SECONDS = 10.0

    def __init__(self, store, clock, config, sweep=None, rand=None):
        self.store, self.clock, self.sweep = store, clock, sweep
        #: [webhooks] enabled = false: events are logged and stay pending, unsent.
        self.enabled = config['enabled']
        self.timeout = config['timeout_seconds']
        self.max_in_flight = config['max_in_flight']
        self.retention_seconds = config['retention_days'] * 86400
        self.rand = rand or secrets.SystemRandom().random
        self._busy = set()  # endpoints (client pks) with a delivery in flight
        self._lock = threading.Lock()
        self._jobs = queue.Queue()
        self._senders = []
        self._next_prune = float('-inf')
        self._stopping = threading.Event()
        self._attempted = threading.Event()  # an endpoint is free again: dispatch now
        self._thread = None

    def run_once(self, now=None):
        """One pass: sweep, dispatch what is due, prune if it is time."""
        now = self.clock() if now is None else now
        if self.sweep:
            self.sweep()
        if self.enabled:
            self.deliver_due(now)
        if now >= self._next_prune:
            if self.store.prune_events(now - self.retention_seconds, self.PRUNE_BATCH) \
                    < self.PRUNE_BATCH:
                self._next_prune = now + self.PRUNE_SECONDS

    def deliver_due(self, now=None):
        """Hand each idle endpoint's oldest due delivery to a sender; how many."""
        now = self.clock() if now is None else now
        with self._lock:
            room = self.max_in_flight - len(self._busy)
            due = self.store.due_deliveries(now, self._busy, room) if room > 0 else []
            due = [(event_pk, recipient) for event_pk, recipient in due
                   if self.store.claim_delivery(event_pk, recipient, now,
                                                now + self.timeout + self.LEASE_SECONDS)]
            self._busy.update(recipient for _, recipient in due)
        while len(self._senders) < min(self.max_in_flight, len(self._busy)):
            sender = threading.Thread(target=self._send_jobs, name='webhook-sender',
                                      daemon=True)
            sender.start()
            self._senders.append(sender)
        for job in due:
            self._jobs.put(job)
        return len(due)

    def settle(self):
        """Wait until every delivery handed out has been attempted (for tests)."""
        self._jobs.join()

    def attempt(self, event_pk, recipient_pk):
        """One attempt at one delivery, its outcome recorded."""
        job = self.store.delivery_job(event_pk, recipient_pk)
        if job is None:  # delivered, failed or pruned meanwhile
            return
        attempts = job['attempts'] + 1
        if job['url'] is None:  # deleted as the attempt began
            self.store.record_attempt(event_pk, recipient_pk, 'failed', job['attempts'], None,
                                      'webhook deleted', None, None)
            return
        body = json.dumps(event_body(job, job['admin']), separators=(',', ':')).encode()
        now = self.clock()
        in_use = [job['secret']]
        if job['old_secret'] and job['old_secret_until'] > now:
            in_use.append(job['old_secret'])
        status, error = post_event(job['url'], body, {
            'Content-Type': 'application/json', 'User-Agent': 'livestream-api/' + __version__,
            'X-Livestream-Event-Id': job['public_id'],
            'X-Livestream-Signature': signature(in_use, int(now), body)}, self.timeout)
        now = self.clock()
        if status is not None and 200 <= status < 300:
            self.store.record_attempt(event_pk, recipient_pk, 'delivered', attempts, status,
                                      None, None, now)
            return
        retry = next_attempt(job['queued_at'], attempts, now, self.rand)
        self.store.record_attempt(event_pk, recipient_pk, 'pending' if retry else 'failed',
                                  attempts, status, error, retry, None)
        log.warning('webhook delivery of event %s to %s failed (attempt %d): %s; %s',
                    job['public_id'], urllib.parse.urlsplit(job['url']).hostname, attempts,
                    error, 'retrying at %s' % iso(retry) if retry else 'giving up')

    def _send_jobs(self):
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self.attempt(*job)
            except Exception:  # a database error: the delivery stays pending, tried again
                log.exception('webhook delivery of event row %s failed', job[0])
            finally:
                if job is not None:
                    with self._lock:
                        self._busy.discard(job[1])
                    self._attempted.set()
                self._jobs.task_done()

    def start(self):
        self._thread = threading.Thread(target=self._run, name='webhooks', daemon=True)
        self._thread.start()

    def stop(self):
        """Stop dispatching; wait for attempts in flight (at most their timeout): one
        cut short is sent again at the next start, as it is still pending."""
        self._stopping.set()
        self._attempted.set()
        if self._thread:
            self._thread.join(timeout=30)
        for _ in self._senders:
            self._jobs.put(None)
        deadline = time.monotonic() + self.timeout + 1
        for sender in self._senders:
            sender.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self):
        while not self._stopping.is_set():
            try:
                self.run_once()
            except sqlite3.Error as error:  # locked by another process, a full disk
                log.error('webhook worker: %s', error)
                self._stopping.wait(self.IDLE_SECONDS)
            self._attempted.wait(self.IDLE_SECONDS)
            self._attempted.clear()


# Routes: the endpoint and the event log ######################################

def _webhook(svc):
    row = svc.store.webhook(caller()['id'])
    if row is None:
        raise not_found('webhook')
    return row


def put_webhook():
    """PUT /v1/webhook: register or replace the caller's endpoint (secret shown once)."""
    query(())
    url, events = check_webhook(read_json(max_body()))
    svc = service()
    secret = new_webhook_secret()
    row, created = svc.store.put_webhook(caller()['id'], url, events, secret, svc.clock())
    if row is None:  # its client was deleted since the request began
        raise not_found('client')
    answer = webhook_json(row)
    if created:
        answer['secret'] = secret
    return envelope(answer, 201 if created else 200)


def get_webhook():
    """GET /v1/webhook: the caller's endpoint, without its secret."""
    row = _webhook(service())
    query(())
    return envelope(webhook_json(row))


def delete_webhook():
    """DELETE /v1/webhook: its pending deliveries fail ("webhook deleted")."""
    svc = service()
    _webhook(svc)
    query(())
    if not svc.store.delete_webhook(caller()['id'], svc.clock()):
        raise not_found('webhook')
    return envelope(None, 204)


def rotate_webhook_secret():
    """POST /v1/webhook/rotate-secret: a new secret; for 24 h both sign."""
    svc = service()
    _webhook(svc)
    query(())
    secret, now = new_webhook_secret(), svc.clock()
    if not svc.store.rotate_webhook_secret(caller()['id'], secret, now + SECRET_OVERLAP, now):
        raise not_found('webhook')
    return envelope(dict(webhook_json(_webhook(svc)), secret=secret))


def _event_answer(svc, public_id):
    client = caller()
    row = svc.store.event(None if is_admin(client) else client['id'], client['id'],
                          public_id)
    if row is None:
        raise not_found('event')
    return row


def send_test_event():
    """POST /v1/webhook/test: queue a webhook.test event to the caller's endpoint."""
    svc = service()
    _webhook(svc)
    query(())
    event_pk = svc.store.test_event(caller()['id'], svc.clock())
    row = svc.store.db.execute('SELECT public_id FROM events WHERE id = ?',
                               (event_pk,)).fetchone()
    return envelope(event_json(_event_answer(svc, row[0]), is_admin(caller())), 202)


def list_events():
    """GET /v1/events: the caller's events (an admin's: every client's), newest first,
    with the delivery state of the caller's endpoint."""
    params, after, limit = page_params({'type', 'channelId', 'status'})
    kind, channel_id, status = params.get('type'), params.get('channelId'), params.get('status')
    if kind is not None and kind not in EVENT_TYPES:
        raise bad_request('type must be one of %s' % ', '.join(EVENT_TYPES))
    if channel_id is not None and not PUBLIC_ID.match(channel_id):
        raise bad_request('channelId is not a channel id')
    if status is not None and status not in DELIVERY_STATUSES:
        raise bad_request('status must be one of %s' % ', '.join(DELIVERY_STATUSES))
    client = caller()
    admin = is_admin(client)
    rows, total = service().store.list_events(None if admin else client['id'], client['id'],
                                              kind, channel_id, status, after, limit)
    rows, after = window(rows, limit)
    return envelope(page([event_json(row, admin) for row in rows], total, after))


def get_event(event_id):
    """GET /v1/events/{id}: one event with its delivery state."""
    row = PUBLIC_ID.match(event_id) and _event_answer(service(), event_id)
    if not row:
        raise not_found('event')
    query(())
    return envelope(event_json(row, is_admin(caller())))


def redeliver_event(event_id):
    """POST /v1/events/{id}/redeliver: queue it again to the caller's endpoint."""
    svc = service()
    row = PUBLIC_ID.match(event_id) and _event_answer(svc, event_id)
    if not row:
        raise not_found('event')
    query(())
    if not svc.store.redeliver(row['id'], caller()['id'], svc.clock()):
        raise ApiError(409, EC_CONFLICT, 'no webhook is registered: PUT /v1/webhook first')
    return envelope(event_json(_event_answer(svc, event_id), is_admin(caller())), 202)


###############################################################################
# OpenAPI description ##########################################################
###############################################################################

def _ecma(regex):
    """A validation regex as an OpenAPI (ECMA-262) pattern, where `$` means Python's `\\Z`."""
    return regex.pattern.replace('\\Z', '$')


def _closed(properties, optional=()):
    """A JSON object with exactly these properties, each required unless `optional`."""
    return {'type': 'object', 'properties': properties, 'additionalProperties': False,
            'required': [name for name in properties if name not in optional]}


def _success(description, data=None):
    """A success response: the envelope around `data`; no body without `data` (204)."""
    if data is None:
        return {'description': description}
    return {'description': description, 'content': {'application/json': {
        'schema': _closed({'ec': {'const': EC_OK}, 'data': data})}}}


def _error(description, ecs, data=None, header=None):
    """An error response: {"ec", "msg", "data"}, and a header it always carries."""
    response = {'description': description, 'content': {'application/json': {'schema': _closed({
        'ec': {'enum': list(ecs)}, 'msg': {'type': 'string'}, 'data': data or {'type': 'null'}})}}}
    if header:
        response['headers'] = {header: {'required': True, 'schema': {'type': 'string'}}}
    return response


def _list_of(item):
    return _closed({'items': {'type': 'array', 'items': item},
                    'total': {'type': 'integer', 'minimum': 0},
                    'nextCursor': {'type': ['string', 'null']}})


def openapi_document(nodes=(DEFAULT_NODE,)):
    """The OpenAPI 3.1 description of ROUTES, from the same rules the handlers apply,
    for a service whose ingest nodes are named `nodes`."""
    text = '[^%s]' % CONTROL_CHARS.pattern[1:-1]  # a character any text field may hold
    name = {'type': 'string', 'minLength': 1, 'maxLength': 200,
            'pattern': '^%s*[^\\s%s]%s*$' % (text, text[2:-1], text),
            'description': '1-200 characters, not only spaces, no control characters; '
                           'stored without leading and trailing spaces'}
    description = {'type': 'string', 'maxLength': 2000, 'pattern': '^%s*$' % text}
    search = dict(description, maxLength=200)
    public_id = {'type': 'string', 'pattern': _ecma(PUBLIC_ID)}
    user_id = {'type': 'string', 'pattern': _ecma(USER_ID)}
    count = {'type': 'integer', 'minimum': 0}
    rate = {'type': 'number', 'minimum': 0}
    timestamp = {'type': 'string', 'format': 'date-time'}
    string = {'type': 'string'}
    media = {'type': ['object', 'null']}
    limit = {'type': ['integer', 'null'], 'minimum': 0, 'maximum': MAX_LIMIT}
    status = {'enum': ['idle', 'live', 'disabled']}
    window = {'type': ['integer', 'null'], 'minimum': 0, 'maximum': MAX_RECONNECT_WINDOW,
              'description': 'Seconds a broadcast stays open after its publisher leaves; '
                             'null: [ingest] reconnect_window.'}
    node_name = {'type': 'string', 'pattern': _ecma(NODE_NAME)}
    configured_node = {'enum': list(nodes), 'description': 'an ingest node configured here'}

    def ref(schema_name):
        return {'$ref': '#/components/schemas/' + schema_name}

    session = {
        'id': public_id, 'channelId': public_id, 'ingest': node_name, 'startedAt': timestamp,
        'endedAt': {'type': ['string', 'null'], 'format': 'date-time'},
        'durationSeconds': count, 'bytesIn': count, 'avgBitrateKbps': rate,
        'peakBitrateKbps': {'type': ['number', 'null'], 'minimum': 0},
        'peakViewers': count, 'video': media, 'audio': media,
        'endReason': {'enum': sorted(END_REASONS) + [None]}}
    webhook = {'url': string, 'events': {'type': 'array', 'items': {'enum': list(EVENT_TYPES)}},
               'createdAt': timestamp, 'updatedAt': timestamp}
    client = {'id': public_id, 'name': string, 'role': {'enum': ['app', 'admin']},
              'tokenId': string, 'fromEnvironment': {'type': 'boolean'}, 'createdAt': timestamp}
    schemas = {
        'Client': _closed(client),
        'ClientWithSecret': _closed(dict(client, tokenSecret=string)),
        'User': _closed({
            'userId': user_id, 'limits': _closed(dict.fromkeys(LIMIT_COLUMNS, limit)),
            'usage': _closed({'channels': count, 'liveChannels': count}),
            'createdAt': timestamp, 'updatedAt': timestamp, 'clientId': public_id},
            optional=('clientId',)),
        'Channel': _closed({
            'id': public_id, 'userId': user_id, 'name': string, 'description': string,
            'metadata': {'type': 'object'}, 'enabled': {'type': 'boolean'}, 'status': status,
            'ingest': node_name, 'streamUrl': string, 'streamId': string,
            'playback': _closed({'hls': string, 'rtmp': string}),
            'reconnectWindowSeconds': window,
            'liveSince': {'type': ['string', 'null'], 'format': 'date-time'},
            'createdAt': timestamp, 'updatedAt': timestamp, 'clientId': public_id},
            optional=('clientId',)),
        'Session': _closed(session),
        'SessionWithSamples': _closed(dict(session, samples={
            'type': 'array', 'maxItems': MAX_POINTS, 'items': _closed({
                'at': timestamp, 'bitrateKbps': {'type': ['number', 'null'], 'minimum': 0},
                'bytesIn': {'type': ['integer', 'null'], 'minimum': 0},
                **dict.fromkeys(('viewers', 'viewersRtmp', 'viewersHls'),
                                {'type': ['integer', 'null'], 'minimum': 0})})})),
        'ChannelStats': _closed({
            'status': status,
            'current': {'anyOf': [{'type': 'null'}, _closed({
                'sessionId': public_id, 'startedAt': timestamp, 'durationSeconds': count,
                'connected': {'type': 'boolean'},
                'bitrateKbps': {'type': ['number', 'null'], 'minimum': 0}, 'bytesIn': count,
                'viewers': count, 'viewersRtmp': count, 'viewersHls': count,
                'video': media, 'audio': media})]},
            'totals': _closed({'sessions': count, 'liveSeconds': count, 'bytesIn': count})}),
        'Stats': _closed({
            'users': count, 'channels': count, 'liveChannels': count, 'bitrateKbpsIn': rate,
            'sessions': count, 'liveSeconds': count, 'bytesIn': count, 'viewers': count,
            'system': _closed({
                'version': string, 'uptimeSeconds': count, 'dbBytes': count,
                'lastBackupAt': timestamp,
                'ingest': {'type': 'array', 'items': _closed({
                    'name': node_name, 'kind': {'enum': list(INGEST_KINDS)},
                    'url': {'type': ['string', 'null']}, 'reachable': {'type': 'boolean'},
                    'streams': count, 'bitrateKbpsIn': rate})}}, optional=('lastBackupAt',))},
            optional=('system',)),
        'IngestNode': _closed({
            'name': node_name, 'kind': {'enum': list(INGEST_KINDS)}, 'rtmpUrl': string,
            'hlsUrl': string, 'accepting': {'type': 'boolean'}, 'reachable': {'type': 'boolean'},
            'liveStreams': count, 'bitrateKbpsIn': rate, 'viewers': count}),
        'Health': _closed({'status': {'const': 'ok'}, 'version': string, 'db': {'const': 'ok'}}),
        'Webhook': _closed(webhook),
        'WebhookWithSecret': _closed(dict(webhook, secret=string)),
        'Event': _closed({
            'id': public_id, 'type': {'enum': list(EVENT_TYPES)}, 'createdAt': timestamp,
            'data': {'type': 'object', 'description': '{channel}, {channel, session}, '
                     '{channelId, userId, reason} or {channelId, userId, limit, value}, by type'},
            'delivery': _closed({
                'status': {'enum': list(DELIVERY_STATUSES)}, 'attempts': count,
                'lastStatus': {'type': ['integer', 'null']},
                'lastError': {'type': ['string', 'null']},
                'nextAttemptAt': {'type': ['string', 'null'], 'format': 'date-time'},
                'deliveredAt': {'type': ['string', 'null'], 'format': 'date-time'}})}),
    }
    some_data = {'type': ['object', 'null']}
    responses = {
        '400': _error('Malformed request: a body that is not a JSON object (for the hook: not '
                      'form data naming a known call), another Content-Type, an unknown, '
                      'repeated or bad query parameter, a cursor this API did not issue, or an '
                      'Authorization header over 4,096 bytes.',
                      [EC_BAD_REQUEST]),
        '401': _error('Missing or wrong credentials.', [EC_UNAUTHORIZED],
                      header='WWW-Authenticate'),
        '403': _error('Not allowed (ec 4): an admin-only route called by an app client, or a '
                      'hook call with a wrong secret or for a stream it refuses; or (ec 5) a '
                      "user's limit reached, data naming the limit.",
                      [EC_FORBIDDEN, EC_LIMIT], some_data),
        '404': _error('No such resource for this caller (another client\'s resources '
                      'included), or no such client for clientId.', [EC_NOT_FOUND]),
        '405': _error('Method not allowed on this path; Allow lists those that are.',
                      [EC_METHOD], _closed({'allowed': {'type': 'array', 'items': string}}),
                      header='Allow'),
        '409': _error('Conflict: the resource still owns others (use ?force=true), the '
                      'client is defined by the environment, no ingest node (or not the one '
                      'named) is accepting new channels, or (redeliver) no webhook is '
                      'registered.', [EC_CONFLICT], some_data),
        '413': _error('Body over [server] max_body_bytes.', [EC_TOO_LARGE], some_data),
        '422': _error('Well-formed but invalid fields; data.fields says why for each.',
                      [EC_VALIDATION], _closed({'fields': {
                          'type': 'object', 'additionalProperties': string}})),
        '429': _error('Too many failed logins from this address; retry after Retry-After '
                      'seconds.', [EC_THROTTLED], _closed({'retryAfter': count}),
                      header='Retry-After'),
        '503': _error('The database cannot be read.', [EC_INTERNAL],
                      _closed({'status': {'const': 'unavailable'}, 'version': string,
                               'db': {'const': 'error'}})),
    }

    def query_param(name, schema, about):
        return {'name': name, 'in': 'query', 'required': False, 'schema': schema,
                'description': about}

    def path_param(name, schema):
        return {'name': name, 'in': 'path', 'required': True, 'schema': schema}

    client_id = query_param('clientId', public_id, "Admin: act on that client's resources "
                            '(a list without it shows every client\'s). App: only its own id.')
    page = [query_param('limit', {'type': 'integer', 'minimum': 1, 'maximum': 100,
                                  'default': 20}, 'Items per page.'),
            query_param('cursor', {'type': 'string', 'minLength': 1},
                        'The nextCursor of the previous page (opaque).')]
    force = query_param('force', {'type': 'string', 'enum': ['true', 'false'],
                                  'default': 'false'},
                        'true: also delete what it owns, ending live streams.')
    client_path = dict(path_param('clientId', {'type': 'string', 'minLength': 1}),
                       description="The client's id; its tokenId is accepted too.")
    user = path_param('userId', user_id)
    channel = path_param('channelId', public_id)
    limits = _closed({'limits': _closed(dict.fromkeys(LIMIT_COLUMNS, limit),
                                        optional=tuple(LIMIT_COLUMNS))}, optional=('limits',))
    metadata = {'type': 'object', 'description': 'At most 4096 bytes as JSON.'}
    fields = {'name': name, 'description': description, 'metadata': metadata,
              'enabled': {'type': 'boolean'}, 'reconnectWindowSeconds': window}
    hook_form = {
        'type': 'object', 'additionalProperties': string,  # and the stream's query arguments
        'properties': {'call': {'type': 'string'}, 'name': string, 'key': string,
                       'addr': string, 'clientid': string, 'app': string},
        'anyOf': [{'required': ['call', 'name'], 'properties': {
                      'call': {'enum': list(NginxRtmp.CALLS)},
                      'name': dict(public_id, description='the stream name: a channel id')}},
                  {'required': ['call'], 'properties': {
                      'call': {'enum': list(NginxRtmp.OTHER_CALLS),
                               'description': 'acknowledged, not acted on'}}}]}
    paths = {}

    def route(method, path, handler, summary, answers, errors='', parameters=(), body=None,
              public=False, media='application/json'):
        admin = any(route.admin for route in ROUTES if route.handler is handler)
        answers = dict(answers)
        for code in sorted(errors.split() + ([] if public else ['400', '401', '429'])
                           + (['403'] if admin else [])):
            answers[code] = {'$ref': '#/components/responses/' + code}
        operation = {'operationId': getattr(handler, '__name__', handler), 'summary': summary, 'responses': answers}
        if admin:
            operation['description'] = 'Admin role only: an app client gets 403.'
        if public:
            operation['security'] = []
        if parameters:
            operation['parameters'] = list(parameters)
        if body:
            operation['requestBody'] = {'required': True, 'content': {media: {'schema': body}}}
        paths.setdefault(path, {})[method.lower()] = operation

    route('POST', '/v1/clients', create_client, 'Create an API client (secret shown once)',
          {'201': _success('The client with its tokenSecret', ref('ClientWithSecret'))},
          '413 422', body=_closed({'name': name, 'role': {'enum': ['app', 'admin'],
                                                          'default': 'app'}},
                                  optional=('role',)))
    route('GET', '/v1/clients', list_clients, 'List API clients, newest first',
          {'200': _success('A page of clients', _list_of(ref('Client')))}, parameters=page)
    route('POST', '/v1/clients/{clientId}/rotate', rotate_client, "Replace a client's secret",
          {'200': _success('The client with its new tokenSecret', ref('ClientWithSecret'))},
          '404 409', [client_path])
    route('DELETE', '/v1/clients/{clientId}', delete_client, 'Delete a client (409 while it '
          'owns users, unless force)', {'204': _success('Deleted')}, '404 409',
          [client_path, force])
    the_user = {'200': _success('The user', ref('User'))}
    route('PUT', '/v1/users/{userId}', put_user, "Create or replace a user's limits (left out: "
          'the configured defaults)', dict(the_user, **{'201': _success(
              'The user, created', ref('User'))}), '404 413 422', [user, client_id], limits)
    route('PATCH', '/v1/users/{userId}', patch_user, 'Change the limits named', the_user,
          '404 413 422', [user, client_id], limits)
    route('GET', '/v1/users/{userId}', get_user, 'A user', the_user, '404', [user, client_id])
    route('GET', '/v1/users', list_users, 'List users, newest first',
          {'200': _success('A page of users', _list_of(ref('User')))}, '404',
          page + [client_id])
    route('DELETE', '/v1/users/{userId}', delete_user, 'Delete a user (409 while it has '
          'channels, unless force)', {'204': _success('Deleted')}, '404 409',
          [user, client_id, force])
    the_channel = {'200': _success('The channel', ref('Channel'))}
    route('POST', '/v1/channels', create_channel, 'Create a channel (and its user, with the '
          'default limits, if new)', {'201': _success('The channel', ref('Channel'))},
          '403 404 409 413 422', [client_id], _closed(
              {'userId': user_id, 'name': name, 'description': description,
               'metadata': metadata, 'reconnectWindowSeconds': window,
               'ingest': dict(configured_node, description=(
                   'The ingest node to put it on (GET /v1/ingest); left out: the accepting '
                   'node with the fewest live streams, then the fewest channels.'))},
              optional=('description', 'metadata', 'reconnectWindowSeconds', 'ingest')))
    route('GET', '/v1/channels', list_channels, 'List channels, newest first',
          {'200': _success('A page of channels', _list_of(ref('Channel')))}, '404', page + [
              client_id, query_param('userId', user_id, "Only this user's channels."),
              query_param('status', status, 'Only channels in this status.'),
              query_param('q', dict(search, minLength=MIN_Q), 'Name contains this (at least '
                          '%d characters; shorter is a 400).' % MIN_Q)])
    route('GET', '/v1/channels/{channelId}', get_channel, 'A channel', the_channel, '404',
          [channel])
    route('PUT', '/v1/channels/{channelId}', put_channel, "Replace a channel's fields (left "
          'out: description "", metadata {}, enabled true)', the_channel, '404 413 422',
          [channel], _closed(fields, optional=('description', 'metadata', 'enabled')))
    route('PATCH', '/v1/channels/{channelId}', patch_channel, 'Change the fields given',
          the_channel, '404 413 422', [channel], _closed(fields, optional=tuple(fields)))
    route('DELETE', '/v1/channels/{channelId}', delete_channel, 'Delete a channel (ending '
          'its live stream)', {'204': _success('Deleted')}, '404', [channel])
    route('POST', '/v1/channels/{channelId}/rotate-key', rotate_key, 'A new stream key; the '
          'old one is refused and its live stream ended', the_channel, '404', [channel])
    route('GET', '/v1/channels/{channelId}/stats', channel_stats, "A channel's statistics",
          {'200': _success('Its statistics', ref('ChannelStats'))}, '404', [channel])
    route('GET', '/v1/channels/{channelId}/sessions', list_sessions, "A channel's "
          'broadcasts, newest first',
          {'200': _success('A page of sessions', _list_of(ref('Session')))}, '404',
          [channel] + page)
    route('GET', '/v1/channels/{channelId}/sessions/{sessionId}', get_session, 'A broadcast '
          'with its samples, oldest first, averaged down to at most ?points evenly spaced '
          'points', {'200': _success('The session and its samples', ref('SessionWithSamples'))},
          '404', [channel, path_param('sessionId', public_id), query_param(
              'points', {'type': 'integer', 'minimum': 1, 'maximum': MAX_POINTS,
                         'default': DEFAULT_POINTS}, 'At most this many points: the session '
              'is cut into this many equal slices, and each slice with samples is one point '
              '(mean bitrate and viewers, last byte count).')])
    route('GET', '/v1/stats', system_stats, "Totals of the caller's resources; for an admin, "
          "of every client's, plus system", {'200': _success('The totals', ref('Stats'))})
    the_webhook = {'200': _success('The webhook, without its secret', ref('Webhook'))}
    route('PUT', '/v1/webhook', put_webhook, "Register or replace the caller's endpoint",
          {'201': _success('Created: the webhook and its secret (shown only here)',
                           ref('WebhookWithSecret')),
           '200': _success('Replaced (the secret is unchanged, not shown)', ref('Webhook'))},
          '404 413 422', body=_closed({
              'url': {'type': 'string', 'maxLength': 2048, 'pattern': _ecma(WEBHOOK_URL),
                      'description': 'http or https, no user:password'},
              'events': {'type': 'array', 'minItems': 1,
                         'items': {'enum': list(EVENT_TYPES)},
                         'description': 'Left out: every type.'}}, optional=('events',)))
    route('GET', '/v1/webhook', get_webhook, "The caller's endpoint", the_webhook, '404')
    route('DELETE', '/v1/webhook', delete_webhook, 'Delete the endpoint (pending deliveries '
          'fail)', {'204': _success('Deleted')}, '404')
    route('POST', '/v1/webhook/rotate-secret', rotate_webhook_secret, 'A new signing secret; '
          'for 24 hours both sign', {'200': _success('The webhook with its new secret',
                                                     ref('WebhookWithSecret'))}, '404')
    route('POST', '/v1/webhook/test', send_test_event, 'Queue a webhook.test event to the '
          'endpoint', {'202': _success('The event, queued', ref('Event'))}, '404')
    event_path = path_param('eventId', public_id)
    route('GET', '/v1/events', list_events, "The caller's events (an admin's: every "
          "client's), newest first, with the delivery state of the caller's endpoint",
          {'200': _success('A page of events', _list_of(ref('Event')))}, parameters=page + [
              query_param('type', {'enum': list(EVENT_TYPES)}, 'Only this type.'),
              query_param('channelId', public_id, 'Only events of this channel.'),
              query_param('status', {'enum': list(DELIVERY_STATUSES)},
                          'Only events in this delivery state.')])
    route('GET', '/v1/events/{eventId}', get_event, 'One event with its delivery state',
          {'200': _success('The event', ref('Event'))}, '404', [event_path])
    route('POST', '/v1/events/{eventId}/redeliver', redeliver_event, 'Queue the event '
          'again (attempts start over)', {'202': _success('The event, queued', ref('Event'))},
          '404 409', [event_path])
    route('GET', '/v1/ingest', list_ingest, 'Every ingest node, with its live streams, their '
          'bitrate and viewers', {'200': _success('The nodes, in the configuration\'s order', {
              'type': 'array', 'items': ref('IngestNode')})})
    route('PATCH', '/v1/ingest/{name}', patch_ingest, 'Drain a node (accepting false: no '
          'new channels are placed there; live streams go on) or open it again',
          {'200': _success('The node', ref('IngestNode'))}, '404 413 422',
          [path_param('name', configured_node)], _closed({'accepting': {'type': 'boolean'}}))
    route('GET', '/v1/health', health, 'Whether the service and its database answer',
          {'200': _success('Healthy', ref('Health'))}, '400 503', public=True)
    route('GET', '/v1/openapi.json', openapi, 'This document (not an envelope)', {'200': {
        'description': 'An OpenAPI 3.1 document', 'content': {'application/json': {'schema': {
            'type': 'object', 'required': ['openapi', 'info', 'paths']}}}}}, '400',
          public=True)
    route('POST', '/v1/hooks/nginx-rtmp', 'nginx_rtmp_hook', 'nginx-rtmp notify calls: 2xx '
          'allows, 403 refuses (or drops the stream)', {'200': _success(
              'Allowed or acknowledged', {'anyOf': [
                  _closed({'allowed': {'const': True}}), _closed({'ended': {'type': 'boolean'}}),
                  _closed({'ignored': string})]})},
          '400 403 413', [{'name': 'secret', 'in': 'query', 'required': True,
                           'schema': {'type': 'string', 'minLength': 1},
                           'description': '[ingest] hook_secret; anything else gets 403'},
                          query_param('node', node_name, 'The ingest node calling ([ingest.'
                                      'NAME]); left out: default ([ingest]); unknown: 403')],
          hook_form, public=True, media='application/x-www-form-urlencoded')
    hook_secret = {'name': 'secret', 'in': 'query', 'required': True,
                   'schema': {'type': 'string', 'minLength': 1},
                   'description': '[ingest] hook_secret; anything else gets 403'}
    hook_node = {'name': 'node', 'in': 'query', 'schema': {'type': 'string'},
                 'description': 'the node calling, as its generated config names it'}
    hook_result = {'anyOf': [_closed({'allowed': {'const': True}}),
                             _closed({'ended': {'type': 'boolean'}}),
                             _closed({'ignored': string})]}
    srs_hook = {'type': 'object', 'properties': {
        'action': {'type': 'string'}, 'stream': string, 'param': string, 'client_id': string,
        'server_id': string, 'ip': string}, 'anyOf': [
            {'required': ['action', 'stream'], 'properties': {
                'action': {'enum': ['on_publish', 'on_unpublish']},
                'stream': {'type': 'string', 'pattern': _ecma(PUBLIC_ID),
                           'description': 'a channel id'}}},
            {'required': ['action', 'stream'], 'properties': {
                'action': {'enum': ['on_play', 'on_stop']},
                'stream': {'type': 'string', 'pattern': _ecma(PUBLIC_ID)[:-1] + '(\\.m3u8)?$',
                           'description': 'a channel id (<id>.m3u8: an HLS viewer)'}}},
            {'required': ['action'], 'properties': {'action': {
                'enum': list(Srs.OTHER_ACTIONS), 'description': 'acknowledged, not acted on'}}}]}
    channel_path = {'type': 'string', 'pattern': '^live/' + _ecma(PUBLIC_ID)[1:],
                    'description': '<app>/<channel id>'}
    mediamtx_hook = {'type': 'object', 'properties': {
        'action': {'type': 'string'}, 'path': string, 'query': string, 'token': string,
        'id': {'type': ['string', 'null']}, 'protocol': string, 'ip': string}, 'anyOf': [
            {'required': ['action', 'path', 'protocol'], 'properties': {
                'action': {'const': 'publish'}, 'path': channel_path,
                'protocol': {'enum': list(MediaMtx.KICK_PATHS)}}},
            {'required': ['action', 'path'], 'properties': {
                'action': {'enum': ['read', 'playback']}, 'path': channel_path}},
            {'required': ['action'], 'properties': {'action': {
                'enum': list(MediaMtx.REFUSED_ACTIONS), 'description': 'always refused'}}}]}
    srs_refusal = {'content': {'application/json': {'schema': _closed({
        'code': {'type': 'integer', 'minimum': 1}, 'ec': {'enum': [EC_BAD_REQUEST, EC_FORBIDDEN,
                                                               EC_TOO_LARGE]},
        'msg': {'type': 'string'}, 'data': {'type': 'null'}})}}}
    route('POST', '/v1/hooks/srs', 'srs_hook', 'SRS http_hooks (on_publish, on_unpublish, '
          'on_play, on_stop): 200 with code 0 allows, 403 with a non-zero code refuses',
          dict({'200': {'description': 'Allowed or acknowledged', 'content': {
              'application/json': {'schema': _closed({'code': {'const': 0}, 'ec': {
                  'const': EC_OK}, 'data': hook_result})}}}},
              **{code: dict(srs_refusal, description=about) for code, about in (
                  ('400', 'A body SRS does not send'), ('403', 'Refused (or a wrong secret)'),
                  ('413', 'Body too large'))}),
          parameters=[hook_secret, hook_node], body=srs_hook, public=True)
    route('POST', '/v1/hooks/mediamtx', 'mediamtx_hook', 'MediaMTX HTTP auth (authMethod: '
          'http): 2xx allows a publish, read or playback; 403 refuses',
          {'200': _success('Allowed', hook_result)}, '400 403 413',
          [hook_secret, hook_node], mediamtx_hook, public=True)
    route('POST', '/v1/hooks/mediamtx/unavailable', 'mediamtx_unavailable_hook',
          "MediaMTX runOnUnavailable: the path's stream ended", {'200': _success(
              'Acknowledged', hook_result)}, '400 403 413', [hook_secret, hook_node],
          {'type': 'object', 'required': ['path'], 'properties': {
              'path': channel_path, 'source_type': string, 'source_id': string}},
          public=True, media='application/x-www-form-urlencoded')
    for path, method, parameter, field, handlers in (
            ('/v1/clients', 'post', 'clientId', 'id', (rotate_client, delete_client)),
            ('/v1/users/{userId}', 'put', 'userId', 'userId', (get_user, patch_user, delete_user)),
            ('/v1/channels', 'post', 'channelId', 'id', (
                get_channel, put_channel, patch_channel, delete_channel, rotate_key,
                channel_stats, list_sessions))):
        paths[path][method]['responses']['201']['links'] = {
            handler.__name__: {'operationId': handler.__name__,
                               'parameters': {parameter: '$response.body#/data/' + field}}
            for handler in handlers}
    return {
        'openapi': '3.1.0',
        'info': {'title': 'Livestream API', 'version': __version__, 'description': (
            'Control plane for an RTMP ingest server. Every JSON body is an envelope: '
            '{"ec": 0, "data": ...} on success, {"ec", "msg", "data"} on error, with ec 1 bad '
            'request, 2 validation, 3 unauthorized, 4 forbidden, 5 limit exceeded, 6 not found, '
            '7 method not allowed, 8 too large, 9 throttled, 10 conflict, 99 internal. A method '
            'a path does not list answers 405 with Allow (components/responses/405). HTTP '
            'Basic with a token id and '
            'secret; role admin may do everything (routes under /v1/clients are admin only), '
            'role app sees only the users and channels it created (others answer 404). '
            'Unknown JSON fields are rejected with 422.')},
        'security': [{'basic': []}],
        'paths': paths,
        'components': {
            'securitySchemes': {'basic': {'type': 'http', 'scheme': 'basic',
                                          'description': 'token id : token secret'}},
            'schemas': schemas, 'responses': responses},
    }


@functools.lru_cache(maxsize=None)
def _openapi_json(nodes):
    return json.dumps(openapi_document(nodes), separators=(',', ':')).encode('utf-8')


def openapi():
    """GET /v1/openapi.json: the OpenAPI document (public), serialized once per process."""
    query(())
    bottle.response.content_type = 'application/json'
    return _openapi_json(tuple(service().nodes))


###############################################################################
# Building the app #############################################################
###############################################################################

#: A route, and what is done before its handler: `admin`, only an admin client may
#: call it (authenticate; an app client gets 403 whatever the method or id);
#: `sweeps`, stale sessions end first (Service.end_stale_sessions), so that what it
#: reads or limits shows no dead stream live.
Route = collections.namedtuple('Route', 'method path handler admin sweeps',
                               defaults=(False, False))

#: The whole HTTP surface: the dashboard's page, then the JSON API in API.md's order,
#: but for the ingest hooks: one POST /v1/hooks/<kind> per ingest kind (create_app).
ROUTES = [
    Route('GET', '/', to_dashboard),
    Route('GET', '/dashboard', dashboard),
    Route('GET', '/dashboard/<name>', dashboard),
    Route('POST', '/v1/clients', create_client, admin=True),
    Route('GET', '/v1/clients', list_clients, admin=True),
    Route('POST', '/v1/clients/<client_id>/rotate', rotate_client, admin=True),
    Route('DELETE', '/v1/clients/<client_id>', delete_client, admin=True),
    Route('PUT', '/v1/users/<user_id>', put_user, sweeps=True),
    Route('PATCH', '/v1/users/<user_id>', patch_user, sweeps=True),
    Route('GET', '/v1/users/<user_id>', get_user, sweeps=True),
    Route('GET', '/v1/users', list_users, sweeps=True),
    Route('DELETE', '/v1/users/<user_id>', delete_user),
    Route('POST', '/v1/channels', create_channel),
    Route('GET', '/v1/channels', list_channels, sweeps=True),
    Route('GET', '/v1/channels/<channel_id>', get_channel, sweeps=True),
    Route('PUT', '/v1/channels/<channel_id>', put_channel, sweeps=True),
    Route('PATCH', '/v1/channels/<channel_id>', patch_channel, sweeps=True),
    Route('DELETE', '/v1/channels/<channel_id>', delete_channel, sweeps=True),
    Route('POST', '/v1/channels/<channel_id>/rotate-key', rotate_key, sweeps=True),
    Route('GET', '/v1/channels/<channel_id>/stats', channel_stats, sweeps=True),
    Route('GET', '/v1/channels/<channel_id>/sessions', list_sessions, sweeps=True),
    Route('GET', '/v1/channels/<channel_id>/sessions/<session_id>', get_session, sweeps=True),
    Route('GET', '/v1/stats', system_stats, sweeps=True),
    Route('PUT', '/v1/webhook', put_webhook),
    Route('GET', '/v1/webhook', get_webhook),
    Route('DELETE', '/v1/webhook', delete_webhook),
    Route('POST', '/v1/webhook/rotate-secret', rotate_webhook_secret),
    Route('POST', '/v1/webhook/test', send_test_event),
    Route('GET', '/v1/events', list_events, sweeps=True),
    Route('GET', '/v1/events/<event_id>', get_event, sweeps=True),
    Route('POST', '/v1/events/<event_id>/redeliver', redeliver_event),
    Route('GET', '/v1/ingest', list_ingest, admin=True, sweeps=True),
    Route('PATCH', '/v1/ingest/<name>', patch_ingest, admin=True),
    Route('GET', '/v1/health', health),
    Route('GET', '/v1/openapi.json', openapi),
]



def _sweeping(handler):
    """The handler of a route that sweeps: stale sessions end before it runs."""
    @functools.wraps(handler)
    def sweeping(**args):
        service().end_stale_sessions()
        return handler(**args)
    return sweeping


def create_app(config=None, clock=time.time, background=False):
    """A ready WSGI app on config's database (migrated, bootstrap admin in place).
    Build as many as you like: nothing is shared between them. With `background`,
    its workers (webhook delivery, purges, kicks, HLS viewers) run as under serve,
    until app.livestream.stop(); without, tests drive them by direct calls."""
    config = config or load_config(environ={})
    app = bottle.Bottle()
    app.livestream = svc = Service(config, clock)
    svc.store.migrate()
    svc.hook_secret = config['ingest']['hook_secret'] or svc.store.setting(
        'hook_secret', lambda: secrets.token_urlsafe(32))
    app.add_hook('before_request', lambda: authenticate(app))
    for route in ROUTES:
        app.route(route.path, route.method, _sweeping(route.handler) if route.sweeps
                  else route.handler)
        if route.admin:
            svc.admin_paths.add(route.path, 'ANY', route)
    for kind, adapter in svc.kinds.items():  # POST /v1/hooks/nginx-rtmp, one for each other kind
        app.route('/v1/hooks/%s' % kind, 'POST', functools.partial(ingest_hook, kind))
        for hook in adapter.extra_hooks:  # such as POST /v1/hooks/mediamtx/unavailable
            app.route('/v1/hooks/%s/%s' % (kind, hook), 'POST',
                      functools.partial(ingest_hook, kind, hook))
    app.default_error_handler = error_body
    if background:
        svc.start()
    return app


def bootstrap_admin(app, environ, out=sys.stderr):
    """Put the LIVE_TOKEN_ID / LIVE_TOKEN_SECRET admin in place. Without them, the one
    named before is released; on a first start, make an admin and show its credentials
    once (on a terminal, else in a 0600 file beside the database)."""
    svc = app.livestream
    token_id, secret = environ.get('LIVE_TOKEN_ID'), environ.get('LIVE_TOKEN_SECRET')
    if token_id or secret:
        if not (token_id and secret and ':' not in token_id):
            raise ConfigError('LIVE_TOKEN_ID and LIVE_TOKEN_SECRET must both be set, and the '
                              'id must not contain ":"')
        if len(secret) < 16:
            raise ConfigError('LIVE_TOKEN_SECRET must be at least 16 characters (make one '
                              'with: python3 -c "import secrets; print(secrets.token_urlsafe())")')
        svc.store.put_env_client(token_id, hash_secret(secret), svc.clock())
        return
    for released in svc.store.release_env_client():
        log.info('LIVE_TOKEN_ID is no longer set: client %s, the environment admin until '
                 'now, is an ordinary admin client (rotate or delete it through the API)',
                 released)
    if svc.store.count_clients() == 0:
        token_id, secret = new_token()
        svc.store.create_client('first admin', 'admin', token_id, hash_secret(secret),
                                svc.clock())
        if out.isatty():
            print('Created an admin API token (shown once; keep it):\n'
                  '  LIVE_TOKEN_ID=%s\n  LIVE_TOKEN_SECRET=%s' % (token_id, secret), file=out)
        else:
            # Not a terminal: stderr then goes to a journal or a container log, which
            # is kept and read by others, so the secret goes to a private file.
            path = os.path.abspath(svc.store.path) + '.admin-token'
            write_private(path, 'LIVE_TOKEN_ID=%s\nLIVE_TOKEN_SECRET=%s\n' % (token_id, secret))
            log.warning('created an admin API token: its id and secret are in %s (mode 0600); '
                        'keep them elsewhere and delete the file', path)


###############################################################################
# Serving ######################################################################
###############################################################################

#: What a text log line escapes: control characters, Unicode line breaks, and the
#: backslash that starts an escape (so an escape in the input cannot pass for ours).
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]')
#: The same and the space, for a field value that must stay one word.
_UNSAFE_OR_SPACE = re.compile('[\x00-\x20\x7f-\x9f\u2028\u2029\\\\]')


def _escaped(text, pattern=_UNSAFE):
    return pattern.sub(lambda match: '\\x20' if match.group() == ' '
                       else repr(match.group())[1:-1], text)


#: The request being served on this thread, for the fields of its log lines.
_current = threading.local()


class LogFormat(logging.Formatter):
    """Every log line, ours and the access log's: one line per event, UTC time,
    level, logger, message, then key=value fields; or all that as one JSON object.
    Control characters are escaped, so no input can forge or break a line."""

    def __init__(self, json_lines=False):
        super().__init__()
        self.json_lines = json_lines

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            message += '\n' + self.formatException(record.exc_info)
        environ = getattr(_current, 'environ', None)
        fields = {}
        if environ is not None:   # logged while serving a request: say whose
            fields = {'addr': environ.get('livestream.addr', '-'),
                      'client': environ.get('livestream.token_id', '-')}
        return self.line(record.created, record.levelname, record.name, message, fields)

    def line(self, when, level, name, message, fields):
        stamp = '%s.%03dZ' % (time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(when)),
                              when % 1 * 1000)
        if self.json_lines:
            return json.dumps({'time': stamp, 'level': level, 'logger': name, 'msg': message,
                               **fields})
        return '%s %s %s: %s%s' % (stamp, level, name, _escaped(message), ''.join(
            ' %s=%s' % (key, _escaped(str(value), _UNSAFE_OR_SPACE))
            for key, value in fields.items()))


class LogWriter(logging.Handler):
    """The one writer of every log line: formatted on the thread that logs it,
    written to `stream` by a thread of its own, so no request waits on the
    stream or on another request (the handler takes no lock)."""

    def __init__(self, stream, log_format):
        super().__init__()
        self.stream = stream
        self.setFormatter(log_format)
        self._lines = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name='log-writer', daemon=True)
        self._writer.start()

    def createLock(self):
        self.lock = None

    def emit(self, record):
        try:
            self.put(self.format(record))
        except Exception:
            self.handleError(record)

    def put(self, line):
        if self._writer.is_alive():
            self._lines.put(line + '\n')
        else:  # closed: whatever is logged at exit is written at once
            self.stream.write(line + '\n')
            self.stream.flush()

    def _write(self):
        while True:
            lines = [self._lines.get()]
            while not self._lines.empty():
                lines.append(self._lines.get())
            with contextlib.suppress(OSError, ValueError):   # stderr closed: nowhere to say so
                self.stream.write(''.join(line for line in lines if line))
                self.stream.flush()
            if None in lines:
                return

    def close(self):
        """Write what is queued, then stop the writer."""
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(timeout=5)
        super().close()


def log_to_stderr(log_format='text'):
    """Send every log line through one LogWriter to stderr; returns it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    writer = LogWriter(sys.stderr, LogFormat(json_lines=log_format == 'json'))
    root.addHandler(writer)
    root.setLevel(logging.INFO)
    return writer


class AccessLog:
    """WSGI middleware writing the access log: a line per request with method,
    path, status, milliseconds, address and token id. Never the query string,
    which may carry the hook secret. An ingest hook call that succeeds is logged
    at debug: its events (live, idle) have lines of their own."""

    def __init__(self, app, writer, trusted_proxies=()):
        self.app, self.writer, self.trusted_proxies = app, writer, trusted_proxies
        self.logger = logging.getLogger('access')

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        environ['livestream.addr'] = client_addr(environ, self.trusted_proxies)
        _current.environ = environ
        status = '-'

        def start(status_line, headers, exc_info=None):
            nonlocal status
            status = status_line[:3]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            _current.environ = None
            path = environ.get('PATH_INFO', '')
            self.write(logging.DEBUG if status[0] == '2' and path.startswith('/v1/hooks/')
                       else logging.INFO, environ['REQUEST_METHOD'], path, status,
                       (time.perf_counter() - started) * 1000, environ['livestream.addr'],
                       environ.get('livestream.token_id', '-'))

    def write(self, level, method, path, status, milliseconds, addr, token_id='-'):
        if self.logger.isEnabledFor(level):
            self.writer.put(self.writer.formatter.line(
                time.time(), logging.getLevelName(level), 'access', '%s %s %s %.1fms' % (
                    method, path.replace(' ', '%20'), status, milliseconds),
                {'addr': addr, 'client': token_id}))


#: The hook listener's own limits: nginx-rtmp makes a connection per notify call,
#: and its form bodies and headers are a few hundred bytes. Its calls are answered
#: in its loop's own thread (_InLoop), one at a time.
HOOK_LISTENER = {'threads': 1, 'connection_limit': 256, 'max_request_body_size': 8192,
                 'max_request_header_size': 8192, 'in_loop': True}


class CannotListen(LivestreamError):
    """A listening address that cannot be bound (in use, or not this host's)."""


def hook_address(server):
    """(host, port) of the hook listener, or None: [server] hook_listen, whose
    default is 127.0.0.1 on the port after the API's."""
    if server['hook_listen'] != 'auto':
        return server['hook_listen']
    if server['port'] == 65535:
        raise ConfigError('[server] hook_listen: the API port is 65535, so there is no next '
                          'port for the hooks; set hook_listen (or leave it empty)')
    return '127.0.0.1', server['port'] + 1 if server['port'] else 0


def _host_port(host, port):
    return '[%s]:%s' % (host, port) if ':' in host else '%s:%s' % (host, port)


def bind(host, port, what):
    """A socket bound to host:port, not yet listening; CannotListen names the
    address and why."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise CannotListen('cannot listen on %s for the %s: %s'
                           % (_host_port(host, port), what, error.strerror or error))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise CannotListen('cannot listen on %s for the %s: %s'
                           % (_host_port(host, port), what, error.strerror))
    return sock


def _fit_open_files(server, connection_limit):
    """The API's connection limit, after raising the soft RLIMIT_NOFILE so that
    every listener's connections fit; lowered, with a warning, where the hard
    limit does not allow it."""
    others = 64 + HOOK_LISTENER['connection_limit'] + \
        4 * (server['threads'] + HOOK_LISTENER['threads'])  # database files per thread
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connection_limit + others
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        connection_limit = max(1, soft - others)
        log.warning('[server] connection_limit lowered to %d: the process may open only %d '
                    'files (raise the hard limit: LimitNOFILE= in systemd, ulimit -Hn)',
                    connection_limit, soft)
    return connection_limit


class _Refusal(waitress.task.ErrorTask):
    """What waitress refuses before the app sees the request, as an envelope:
    a request line, header, chunk size or Content-Length it cannot parse (400),
    headers over its limit (431), a body over the listener's limit (413), a
    Transfer-Encoding it does not know (501). Logged to the access log here."""

    def execute(self):
        error, adj = self.request.error, self.channel.server.adj
        ec = EC_BY_STATUS.get(error.code, EC_INTERNAL if error.code == 500 else EC_BAD_REQUEST)
        msg = 'request body is over %d bytes' % adj.max_request_body_size \
            if error.code == 413 else '%s: %s' % (error.reason.lower(), error.body)
        body = error_json(ec, msg).encode()
        self.status = '%d %s' % (error.code, error.reason)
        self.response_headers.append(('Content-Type', 'application/json'))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self.channel.server.access_log.write(
            logging.INFO, getattr(self.request, 'command', None) or '-',
            getattr(self.request, 'path', None) or '-',
            str(error.code), 0.0, str(self.channel.addr[0]))


class _Connection(waitress.channel.HTTPChannel):
    """A client connection, answered by _Refusal where waitress refuses, and
    remembering when it last finished a request (for channel_timeout)."""

    error_task_class = _Refusal
    served_at = 0.0

    def service(self):
        super().service()
        self.served_at = time.time()

    def send_continue(self):
        # waitress would say "100 Continue" to a body it is about to refuse (413),
        # and the client would send it all before reading the refusal.
        if self.request.error is None:
            super().send_continue()

    def quiet_since(self):
        return max(self.creation_time, self.served_at)


class _Listener(waitress.server.TcpWSGIServer):
    """One listening socket with its own connections, limits and worker threads.
    Unlike waitress's own, it closes a connection that has not completed a
    request within channel_timeout however slowly it trickles bytes in, and at
    connection_limit it closes the quietest idle connection to accept a new one,
    so that idle sockets cannot lock the port."""

    channel_class = _Connection
    warned_at = float('-inf')
    access_log = None

    def readable(self):
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        if len(self._map) < self.adj.connection_limit:
            return True
        closing = sum(1 for channel in self.active_channels.values()
                      if channel.will_close or channel.close_when_flushed)
        # A few at a time: each turn at the limit scans every connection.
        excess = max(len(self._map) - closing - self.adj.connection_limit + 1,
                     self.adj.connection_limit // 32)
        idle = [channel for channel in self.active_channels.values()
                if not (channel.requests or channel.will_close or channel.close_when_flushed)]
        for channel in heapq.nsmallest(excess, idle, key=_Connection.quiet_since):
            channel.will_close = True
        if now > self.warned_at + 60:
            self.warned_at = now
            log.warning('%s: %d connections open, the limit: closing the quietest idle ones',
                        _host_port(self.effective_host, self.effective_port),
                        len(self.active_channels))
        return False   # accepted once those are closed, at the loop's next turn

    def maintenance(self, now):
        """Close each connection with no request in service that has had
        channel_timeout since it opened or last answered: idle or trickling."""
        cutoff = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if not channel.requests and channel.quiet_since() < cutoff:
                channel.will_close = True


def hooks_only(app):
    """The hook listener's app: the ingest hooks and /v1/health; anything else
    is a 404 envelope (the API has its own port)."""
    def serve_hooks(environ, start_response):
        path = environ.get('PATH_INFO', '')
        if path.startswith('/v1/hooks/') or path == '/v1/health':
            return app(environ, start_response)
        body = error_json(EC_NOT_FOUND, 'this port serves only the ingest hooks and '
                          '/v1/health; the API is on [server] host and port').encode()
        start_response('404 Not Found', [('Content-Type', 'application/json'),
                                         ('Content-Length', str(len(body)))])
        return [body]
    return serve_hooks


class _InLoop:
    """A listener's requests answered in its own loop thread, between polls (_run),
    not handed to worker threads: for the hook listener, whose calls take about
    0.1 ms of Python each, the two hand-offs between threads (and the interpreter
    lock passed with them) cost more than the call. Measured with wrk, a connection
    per update_publish as nginx-rtmp makes them: 2,600 calls/s at 0.47 ms of CPU
    each with 4 worker threads, 4,500 at 0.23 ms in the loop. A hook that writes
    (a publish's or publish_done's transaction, about 1 ms) holds the others that
    long: writes are one at a time in any case (Store.transaction)."""

    def __init__(self):
        self.tasks = collections.deque()

    def add_task(self, task):
        self.tasks.append(task)

    def run_pending(self):
        while self.tasks:
            task = self.tasks.popleft()
            try:
                task.service()
            except Exception:  # waitress answers the app's errors; this is its own
                log.exception('hook listener: a request failed outside the app')

    def set_thread_count(self, count):
        pass

    def shutdown(self, cancel_pending=True, timeout=5):
        return True


def _listener(access_log, sock, server, **limits):
    """A _Listener on the bound `sock`, serving `access_log` (the app inside it)."""
    adjustments = dict(threads=server['threads'], connection_limit=server['connection_limit'],
                       max_request_body_size=server['max_body_bytes'],
                       channel_timeout=server['channel_timeout'], ident='livestream-api',
                       # X-Forwarded-For is ours to judge ([server] trusted_proxies).
                       clear_untrusted_proxy_headers=False)
    in_loop = limits.pop('in_loop', False)
    adjustments.update(limits)
    adjustments['cleanup_interval'] = max(1, min(30, adjustments['channel_timeout'] // 3))
    adj = waitress.adjustments.Adjustments(sockets=[sock], **adjustments)
    listener = _Listener(access_log, {}, _sock=sock, adj=adj, bind_socket=False,
                         sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
                         dispatcher=_InLoop() if in_loop else None)
    listener.access_log = access_log
    return listener


def _run(listener, stopping, drain_seconds):
    """Run one listener's loop until `stopping` is set; then stop accepting and
    let its requests in flight finish (up to drain_seconds)."""
    socket_map, deadline = listener._map, None
    while True:
        # poll(), not select(): select() cannot watch descriptors past 1023.
        listener.asyncore.loop(timeout=0.2, map=socket_map, count=1, use_poll=True)
        if isinstance(listener.task_dispatcher, _InLoop):
            listener.task_dispatcher.run_pending()
        if not stopping.is_set():
            continue
        if deadline is None:
            deadline = time.monotonic() + drain_seconds
            # The dispatcher's close, not the server's: that one also closes the
            # trigger by which a worker wakes this loop to send its response.
            listener.asyncore.dispatcher.close(listener)
        # A connection with no request in progress (an idle keep-alive one, or one
        # whose response is written) is closed once flushed, so a client that keeps
        # sending cannot hold the drain open; one in progress finishes first.
        channels = list(listener.active_channels.values())
        for channel in channels:
            with channel.requests_lock:
                if not channel.requests:
                    channel.close_when_flushed = True
        if not channels or time.monotonic() > deadline:
            break
    listener.asyncore.close_all(socket_map)


def serve(config, environ, drain_seconds=10):
    """Serve until SIGTERM or SIGINT; then stop accepting, let requests in flight
    finish (up to drain_seconds), checkpoint the database and return. The ports
    are bound first, so a port in use stops start-up before anything is made."""
    server = dict(config['server'])
    writer = log_to_stderr(server['log_format'])
    # Under load waitress warns of its task queue depth on every request.
    logging.getLogger('waitress.queue').setLevel(logging.ERROR)
    hooks = hook_address(server)
    sockets = [bind(server['host'], server['port'], 'API')]
    try:
        if hooks:
            sockets.append(bind(hooks[0], hooks[1], 'ingest hooks ([server] hook_listen)'))
    except CannotListen:
        sockets[0].close()
        raise
    server['connection_limit'] = _fit_open_files(server, server['connection_limit'])
    try:
        app = create_app(config)
        bootstrap_admin(app, environ)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    trusted = server['trusted_proxies']
    listeners = [_listener(AccessLog(app, writer, trusted), sockets[0], server)]
    if hooks:
        listeners.append(_listener(AccessLog(hooks_only(app), writer, trusted), sockets[1],
                                   server, **HOOK_LISTENER))
    # What is built so far (modules, config, the app) lives as long as the process:
    # full collections need not walk it again and again. Without this, each took
    # 20 ms on average (37 at most) at 20,000 live streams, every thread stopped.
    gc.freeze()
    app.livestream.start()
    stopping = threading.Event()

    def stop(signum, _):
        log.info('stopping on %s: no new connections; finishing requests in flight',
                 signal.Signals(signum).name)
        stopping.set()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    for listener, what in zip(listeners, ('the API', 'the ingest hooks')):
        log.info('livestream-api %s serving %s on http://%s', __version__, what,
                 _host_port(listener.effective_host, listener.effective_port))
    hook_loops = [threading.Thread(target=_run, args=(listener, stopping, drain_seconds),
                                   name='hook-listener', daemon=True)
                  for listener in listeners[1:]]
    for loop in hook_loops:
        loop.start()
    _run(listeners[0], stopping, drain_seconds)
    for loop in hook_loops:
        loop.join()
    app.livestream.stop()
    app.livestream.store.close()
    log.info('stopped')
    writer.close()


###############################################################################
# nginx-rtmp ports ###############################################################
###############################################################################

def _url_port(url):
    """The port a URL names, or its scheme's usual one; None if it names a bad one."""
    parts = urllib.parse.urlsplit(url)
    try:
        return parts.port or {'rtmp': 1935, 'http': 80, 'https': 443}.get(parts.scheme)
    except ValueError:
        return None


def nginx_port_warnings(config, rtmp_port, http_port, node=DEFAULT_NODE):
    """A sentence for each URL of the node whose port is not the one the generated
    nginx.conf listens on (right only if something forwards between the two)."""
    warnings = []
    section = 'ingest' if node == DEFAULT_NODE else 'ingest.' + node
    for flag, port, key in (('--rtmp-port', rtmp_port, 'rtmp_url'),
                            ('--http-port', http_port, 'hls_url'),
                            ('--http-port', http_port, 'stat_url')):
        url = config['ingest_nodes'][node][key]
        if url and _url_port(url) != port:
            warnings.append('nginx will listen on %s %d, but [%s] %s = %s names port %s'
                            % (flag, port, section, key, url, _url_port(url)))
    return warnings


###############################################################################
# Backups and replication ######################################################
###############################################################################

LITESTREAM_CONF = '''\
# litestream.yml for Livestream API, made by `livestream-api litestream-conf`.
# Set [database] replicated = true (Litestream then owns the WAL's checkpoints), then
# run: litestream replicate -config litestream.yml -exec "livestream-api serve --config ..."
dbs:
  - path: {path}
    replica:
      url: {url}
'''


def litestream_conf(config, replica_url):
    """A Litestream 0.5 config replicating the configured database to replica_url."""
    parts = urllib.parse.urlsplit(replica_url)
    if not parts.scheme or (parts.scheme == 'file' and not parts.path.startswith('/')):
        raise ConfigError('--replica %r: give a URL such as file:///var/backups/livestream '
                          'or s3://bucket/path' % replica_url)
    # JSON strings are YAML's double-quoted scalars: any path or URL stays one value.
    return LITESTREAM_CONF.format(path=json.dumps(os.path.abspath(config['database']['path'])),
                                  url=json.dumps(replica_url))


class RestoreRefused(LivestreamError):
    """Restoring would harm a database in use, or would install a bad copy."""


def _lock_out_servers(path):
    """An sqlite3 connection holding `path` exclusively, or RestoreRefused while any
    other process (serve, Litestream) has it open: in WAL mode each keeps a shared
    lock for as long as it is connected. (SQLite's own locks only: a plain open and
    close of the file here would drop this process's locks on it.)"""
    conn = sqlite3.connect('file:%s?mode=rw' % urllib.parse.quote(path), uri=True,
                           isolation_level=None, timeout=1)
    try:
        conn.execute('PRAGMA locking_mode = EXCLUSIVE')
        conn.execute('BEGIN EXCLUSIVE')
    except sqlite3.OperationalError as error:
        conn.close()
        raise RestoreRefused('%s is in use (%s): stop `serve` (and Litestream) first'
                             % (path, error))
    return conn


def restore_database(source, target, force=False):
    """Put a copy of the backup `source` at `target`, checked first (integrity, a
    schema this version knows); refused while `target` is in use, or exists
    without force. Returns the copy's schema version."""
    if not os.path.isfile(source):
        raise RestoreRefused('no backup file at %s' % source)
    exists = os.path.exists(target)
    if exists and not force:
        raise RestoreRefused('%s exists: pass --force to replace it' % target)
    lock = _lock_out_servers(target) if exists else None
    temp = '%s.restore-%d' % (target, os.getpid())
    try:
        _create_private_database(temp)
        copy = sqlite3.connect(temp, isolation_level=None)
        try:
            original = sqlite3.connect('file:%s?mode=ro' % urllib.parse.quote(source),
                                       uri=True)
            try:
                original.backup(copy)
            finally:
                original.close()
            copy.execute('PRAGMA journal_mode = DELETE')
            problems = [row[0] for row in copy.execute('PRAGMA integrity_check')]
            version = copy.execute('PRAGMA user_version').fetchone()[0]
        finally:
            copy.close()
        if problems != ['ok']:
            raise RestoreRefused('%s fails integrity_check: %s'
                                 % (source, '; '.join(problems[:5])))
        latest = max(number for number, _ in _migrations())
        if not 1 <= version <= latest:
            raise RestoreRefused('%s has schema version %d; this livestream-api knows 1 to %d'
                                 % (source, version, latest))
        if lock is not None:
            # Closing it checkpoints and removes the old -wal: none is left to replay
            # into the restored file.
            lock.execute('ROLLBACK')
            lock.close()
            lock = None
        os.replace(temp, target)
        for leftover in (target + '-wal', target + '-shm'):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        return version
    except sqlite3.Error as error:
        raise RestoreRefused('cannot restore %s: %s' % (source, error))
    finally:
        if lock is not None:
            lock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp)


def run_backup(store, dest):
    """`livestream-api backup`: copy, check, and report; 0 or 1 for the exit status."""
    started = time.monotonic()
    try:
        counts = store.backup(dest, time.time())
    except (sqlite3.Error, OSError) as error:
        print('livestream-api: backup to %s failed: %s' % (dest, error), file=sys.stderr)
        return 1
    print('backup %s: %d bytes in %.2f s, integrity ok; rows: %s'
          % (dest, os.path.getsize(dest), time.monotonic() - started,
             ', '.join('%s %d' % item for item in counts.items())))
    return 0


###############################################################################
# Command line #################################################################
###############################################################################

def _cli_port(text):
    """A port for a generated config: 1-65535."""
    if not re.match(r'^[0-9]{1,5}\Z', text) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError('%r is not a port number (1-65535)' % text)
    return int(text)


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--config', metavar='FILE', help='an INI file (see config.example.ini)')
    common.add_argument('--db', metavar='PATH', help='the SQLite database file')
    parser = argparse.ArgumentParser(prog='livestream-api', description=__doc__.split('\n')[0])
    parser.add_argument('--version', action='version', version=__version__)
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    serve_command = commands.add_parser('serve', parents=[common], help='run the HTTP API')
    serve_command.add_argument('--host')
    serve_command.add_argument('--port')
    commands.add_parser('init-db', parents=[common], help='create or migrate the database')
    client = commands.add_parser('client', help='manage API clients')
    client_commands = client.add_subparsers(dest='client_command', required=True,
                                            metavar='ACTION')
    create = client_commands.add_parser('create', parents=[common],
                                        help='create a client and print its token once')
    create.add_argument('name')
    create.add_argument('--role', choices=('app', 'admin'), default='app')
    client_commands.add_parser('list', parents=[common], help='list clients')
    delete = client_commands.add_parser('delete', parents=[common], help='delete a client')
    delete.add_argument('client', metavar='ID', help='its id, or its token id')
    delete.add_argument('--force', action='store_true',
                        help='also delete its users and channels')
    written = argparse.ArgumentParser(add_help=False)  # what each config generator takes
    written.add_argument('--output', metavar='FILE',
                         help='write to FILE, mode 0600 (it holds the hook secret), not stdout')
    written.add_argument('--rtmp-port', type=_cli_port, default=1935)
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument('--node', default=DEFAULT_NODE, metavar='NAME',
                       help='the ingest node it is for: [ingest.NAME], named in its hook '
                            'URLs (default: [ingest])')
    conf = commands.add_parser('nginx-conf', parents=[common, written, named],
                               help='print an nginx.conf wired to this API')
    conf.add_argument('--http-port', type=_cli_port, default=8088)
    conf.add_argument('--prefix', default='/var/lib/livestream-nginx',
                      help='directory for nginx state, logs and HLS files')
    srs = commands.add_parser('srs-conf', parents=[common, written, named],
                              help='print an srs.conf (SRS 5/6) wired to this API')
    srs.add_argument('--http-port', type=_cli_port, default=8080,
                     help='its HTTP server, for HLS (default 8080)')
    srs.add_argument('--api-port', type=_cli_port, default=1985,
                     help='its HTTP API, on loopback: [ingest] api_url (default 1985)')
    srs.add_argument('--prefix', default='/var/lib/livestream-srs',
                     help='directory for its pid file, log and HLS files')
    mediamtx = commands.add_parser('mediamtx-conf', parents=[common, written, named],
                                   help='print a mediamtx.yml wired to this API')
    mediamtx.add_argument('--api-port', type=_cli_port, default=9997,
                          help='its control API, on loopback: [ingest] api_url (default 9997)')
    backup = commands.add_parser('backup', parents=[common],
                                 help='copy the database, consistently, while it is in use')
    backup.add_argument('dest', metavar='DEST', help='the file to write (replaced if there)')
    restore = commands.add_parser('restore', parents=[common],
                                  help='put a backup in place of the database (server stopped)')
    restore.add_argument('source', metavar='SRC', help='a file made by `backup`')
    restore.add_argument('--force', action='store_true', help='replace an existing database')
    litestream = commands.add_parser('litestream-conf', parents=[common],
                                     help='print a litestream.yml for the database')
    litestream.add_argument('--replica', metavar='URL', required=True,
                            help='where to replicate: file:///path or s3://bucket/path')
    return parser


#: Each config generator's command and the ingest kind whose config it writes.
CONF_COMMANDS = {'nginx-conf': 'nginx-rtmp', 'srs-conf': 'srs', 'mediamtx-conf': 'mediamtx'}
#: The options of the config generators, passed to their kind's conf() by name.
CONF_OPTIONS = ('rtmp_port', 'http_port', 'prefix', 'api_port')


def _print_conf(args, conf_text):
    """A generated config to --output (private: it holds the hook secret), or stdout."""
    if args.output:
        write_private(args.output, conf_text)
    else:
        print(conf_text, end='')


def main(argv=None, environ=None):
    """The livestream-api command. Exit status 2 for configuration errors."""
    environ = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    log_to_stderr()
    overrides = {}
    if args.db:
        overrides['database'] = {'path': args.db}
    if getattr(args, 'host', None):
        overrides['server'] = {'host': args.host}
    if getattr(args, 'port', None):
        overrides.setdefault('server', {})['port'] = args.port
    try:
        config = load_config(args.config, environ, overrides)
        if getattr(args, 'node', DEFAULT_NODE) not in config['ingest_nodes']:
            raise ConfigError('--node %s: no [ingest.%s] section (nodes: %s)' % (
                args.node, args.node, ', '.join(config['ingest_nodes'])))
        if args.command == 'serve':
            serve(config, environ)
            return 0
        if args.command == 'litestream-conf':
            print(litestream_conf(config, args.replica), end='')
            return 0
        if args.command == 'restore':
            try:
                version = restore_database(args.source,
                                           os.path.abspath(config['database']['path']),
                                           args.force)
            except RestoreRefused as error:
                print('livestream-api: restore refused: %s' % error, file=sys.stderr)
                return 1
            print('restored %s (schema version %d) to %s; `serve` migrates it if older'
                  % (args.source, version, config['database']['path']))
            return 0
        database = os.path.abspath(config['database']['path'])
        # Elsewhere than where it was made, a relative path names a new, empty database
        # (with a new hook secret, which nginx.conf would then carry): never make one.
        if args.command != 'init-db' and not os.path.exists(database):
            print('livestream-api: no database at %s; create it with `livestream-api init-db` '
                  '(or serve), or point --db or [database] path at the existing one'
                  % database, file=sys.stderr)
            return 1
        app = create_app(config)
    except ConfigError as error:
        print('livestream-api: configuration error: %s' % error, file=sys.stderr)
        return 2
    except CannotListen as error:
        print('livestream-api: %s' % error, file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as error:
        print('livestream-api: cannot start on database %s: %s'
              % (config['database']['path'], error), file=sys.stderr)
        return 1
    store = app.livestream.store
    try:
        if args.command == 'init-db':
            print('database ready: %s' % database)
        elif args.command == 'backup':
            return run_backup(store, args.dest)
        elif args.command in CONF_COMMANDS:
            if args.command == 'nginx-conf':
                for warning in nginx_port_warnings(config, args.rtmp_port, args.http_port,
                                                   args.node):
                    print('livestream-api: warning: %s' % warning, file=sys.stderr)
            # The writer of this kind for the node named: its URLs, its name in the hooks.
            writer = INGEST_KINDS[CONF_COMMANDS[args.command]](config, args.node)
            ports = {name: getattr(args, name) for name in CONF_OPTIONS if hasattr(args, name)}
            _print_conf(args, writer.conf(app.livestream.hook_secret, **ports))
        elif args.client_command == 'create':
            token_id, secret = new_token()
            store.create_client(args.name, args.role, token_id, hash_secret(secret), time.time())
            print('LIVE_TOKEN_ID=%s\nLIVE_TOKEN_SECRET=%s' % (token_id, secret))
        elif args.client_command == 'list':
            rows, _ = store.list_clients(2 ** 63 - 1, 10 ** 9)
            table = [('ID', 'TOKEN ID', 'ROLE', 'CREATED', 'NAME')] + [
                (row['public_id'], row['token_id'], row['role'], iso(row['created_at']),
                 row['name']) for row in rows]
            widths = [max(len(line[column]) for line in table) for column in range(4)]
            for line in table:
                print('  '.join(cell.ljust(width) for cell, width in zip(line, widths))
                      + '  ' + line[4])
        elif args.client_command == 'delete':
            client = store.client_by_either_id(args.client)
            if client is None:
                print('livestream-api: no client with id or token id %s' % args.client,
                      file=sys.stderr)
                return 1
            if client['from_env']:  # as the API answers: it would be back at the next start
                print('livestream-api: client %s is defined by LIVE_TOKEN_ID / '
                      'LIVE_TOKEN_SECRET; remove it there and restart serve, then delete it'
                      % args.client, file=sys.stderr)
                return 1
            users, ended = store.delete_client(client['id'], time.time(), args.force)
            if users:
                print('livestream-api: client owns %d users; pass --force to delete them too'
                      % users, file=sys.stderr)
                return 1
            app.livestream.kick(ended)
            app.livestream.stop()  # sends the kicks: the CLI starts no worker thread
            while store.purge_step():  # a serve on this database would, in its own time
                pass
            print('deleted %s' % args.client)
    finally:
        store.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
