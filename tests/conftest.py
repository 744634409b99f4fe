"""Fixtures: every test gets its own app on its own database file."""

import base64
import shutil

import pytest
import webtest

import livestream_api
from ingest_support import StatServer
from webhook_support import Receiver

ADMIN = ('admin-token', 'admin-secret-for-tests')


class Clock:
    """A clock the test moves by hand, for sessions that go stale."""

    def __init__(self, start=1_800_000_000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def basic(token_id, secret):
    return 'Basic ' + base64.b64encode(('%s:%s' % (token_id, secret)).encode()).decode()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(scope='session')
def migrated_database(tmp_path_factory):
    """A database with every migration applied, closed and checkpointed. Each test
    starts from a copy: migrating anew costs a few fsyncs per test, which were
    most of the fast subset's time on a disk-backed /tmp."""
    path = tmp_path_factory.mktemp('migrated') / 'live.db'
    livestream_api.create_app(livestream_api.load_config(environ={}, overrides={
        'database': {'path': str(path)}})).livestream.store.close()
    return path


@pytest.fixture
def make_app(tmp_path, clock, migrated_database):
    """make_app(**sections) -> (webtest.TestApp, bottle app) on a fresh database."""
    def make(**sections):
        if not (tmp_path / 'live.db').exists():
            shutil.copy2(migrated_database, tmp_path / 'live.db')
        overrides = {'database': {'path': str(tmp_path / 'live.db')},
                     'ingest': {'stat_url': '', 'control_url': ''}}
        for section, keys in sections.items():
            overrides.setdefault(section, {}).update(keys)
        config = livestream_api.load_config(environ={}, overrides=overrides)
        app = livestream_api.create_app(config, clock=clock)
        app.catchall = False
        livestream_api.bootstrap_admin(app, {'LIVE_TOKEN_ID': ADMIN[0],
                                             'LIVE_TOKEN_SECRET': ADMIN[1]})
        return webtest.TestApp(app), app
    return make


@pytest.fixture
def app(make_app):
    return make_app()[1]


@pytest.fixture
def admin(app):
    """A TestApp authenticated as the environment's admin."""
    test_app = webtest.TestApp(app)
    test_app.authorization = ('Basic', ADMIN)
    return test_app


@pytest.fixture
def new_client(app, admin):
    """new_client(role='app') -> a TestApp authenticated as a new client."""
    def make(role='app', name='app server'):
        created = admin.post_json('/v1/clients', {'name': name, 'role': role}).json['data']
        test_app = webtest.TestApp(app)
        test_app.authorization = ('Basic', (created['tokenId'], created['tokenSecret']))
        test_app.client = created
        return test_app
    return make


@pytest.fixture
def hook(app):
    """hook(call, name, **fields) posts an nginx-rtmp notify call as nginx does."""
    test_app = webtest.TestApp(app)

    def post(call, name, status='*', **fields):
        form = {'app': 'live', 'flashver': 'FMLE/3.0 (compatible; Lavf59.27', 'swfurl': '',
                'tcurl': 'rtmp://127.0.0.1:1935/live', 'pageurl': '', 'addr': '127.0.0.1',
                'clientid': '1', 'call': call, 'name': name}
        form.update(fields)
        return test_app.post('/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
                             form, status=status, expect_errors=True)
    return post


@pytest.fixture
def stat_server():
    server = StatServer()
    yield server
    server.close()


@pytest.fixture
def receiver():
    """A real webhook receiver on a loopback port (webhook_support.Receiver)."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def interval(app):
    return app.livestream.config['ingest']['update_interval']
