"""The dashboard in a real browser: Debian's chromium, driven by Selenium, against
the API under `serve`, nginx-rtmp and two ffmpeg publishers. They skip where
chromium, its driver or the end-to-end programs are missing, and fail instead
when LIVESTREAM_E2E=1. Each view's screenshot is written under the test's
temporary directory, for a reviewer to look at."""

import shutil
import time
from datetime import datetime
from types import SimpleNamespace

import pytest

from e2e_support import Api, skip_or_fail_if_missing, wait_for
from test_e2e_nginx import publish, running_stack, wait_live

pytestmark = pytest.mark.e2e

#: The issue's bound from signing in to the live channel showing, bitrate and all.
LIVE_SHOWN_SECONDS = 6
#: Streaming this long gives a chart of at least CHART_POINTS points (a sample per
#: update interval of 2 s: about 10).
STREAMED_SECONDS = 20
CHART_POINTS = 5
#: Generous for a busy 2-core machine: a view's refresh is every 5 s.
VIEW_SECONDS = 15
XSS_NAME = '<img src=x onerror=alert(1)>'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def browser_missing():
    """What the browser tests need and this machine lacks."""
    missing = []
    try:
        import selenium  # noqa: F401 (only whether it is there)
    except ImportError:
        missing.append('selenium (the test extra)')
    for program, package in (('chromium', 'chromium'), ('chromedriver', 'chromium-driver')):
        if shutil.which(program) is None:
            missing.append('%s (Debian package %s)' % (program, package))
    return missing


@pytest.fixture(scope='module')
def browser():
    """Headless chromium through chromedriver, both Debian's (nothing downloaded)."""
    skip_or_fail_if_missing(browser_missing(), 'the dashboard browser tests')
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = shutil.which('chromium')
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                     '--disable-gpu', '--window-size=1280,860'):
        options.add_argument(argument)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which('chromedriver')),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope='module')
def stack(browser):
    yield from running_stack()


def app_client(stack, name):
    """A new app client: its credentials and an Api signed in as it."""
    made = stack.api.ok('POST', '/v1/clients', {'name': name, 'role': 'app'}, status=201)
    return SimpleNamespace(token_id=made['tokenId'], secret=made['tokenSecret'],
                           api=Api(stack.api.base_url, made['tokenId'], made['tokenSecret']))


@pytest.fixture(scope='module')
def world(stack):
    """Two app clients with a live channel each; the first also has an idle channel
    named like an HTML injection, and its user is at its limits."""
    studio, other = app_client(stack, 'studio'), app_client(stack, 'other studio')
    studio.api.ok('PUT', '/v1/users/alice', {'limits': {'maxChannels': 2, 'maxLiveChannels': 1}},
                  status=201)
    live = studio.api.ok('POST', '/v1/channels', {'userId': 'alice', 'name': 'Cooking with Alice'},
                         status=201)
    xss = studio.api.ok('POST', '/v1/channels', {'userId': 'alice', 'name': XSS_NAME}, status=201)
    others = other.api.ok('POST', '/v1/channels', {'userId': 'bob', 'name': "Bob's garage"},
                          status=201)
    encoders = [(channel, publish(stack, channel, seconds=180)) for channel in (live, others)]
    for channel, encoder in encoders:
        wait_live(stack, channel, encoder)

    def measured():
        current = stack.api.ok('GET', '/v1/channels/%s/stats' % live['id'])['current']
        return current and current['bitrateKbps']
    wait_for(measured, 30, 'a measured bitrate on the live channel')
    try:
        yield SimpleNamespace(studio=studio, other=other, live=live, xss=xss, others=others)
    finally:
        stack.stop_encoders()


def sign_in(browser, stack, token_id, secret):
    """Open / (a fresh tab state) and submit the sign-in form."""
    browser.get(stack.api.base_url + '/')
    browser.execute_script('sessionStorage.clear()')
    browser.get(stack.api.base_url + '/')
    assert browser.current_url == stack.api.base_url + '/dashboard'
    from selenium.webdriver.common.by import By
    browser.find_element(By.ID, 'token-id').send_keys(token_id)
    browser.find_element(By.ID, 'token-secret').send_keys(secret)
    browser.find_element(By.ID, 'sign-in').click()


def signed_in_as(browser, stack, client):
    """Signed in as the app client `client`, whatever test ran before (if any)."""
    who = page(browser, "return (document.getElementById('who') || {}).textContent")
    if who != client.token_id + ' (app)':
        sign_in(browser, stack, client.token_id, client.secret)
        wait_page(browser, "return document.getElementById('who').textContent === %r"
                  % (client.token_id + ' (app)'), VIEW_SECONDS, 'the sign-in')


def page(browser, script):
    """What a script reads from the page now (plain values: nothing goes stale)."""
    return browser.execute_script(script)


def wait_page(browser, script, timeout, what):
    """The first true value the script reads from the page within timeout."""
    return wait_for(lambda: page(browser, script), timeout, what)


def live_rows(browser):
    return page(browser, """return [...document.querySelectorAll('#live-table tbody tr')]
        .map(tr => [tr.dataset.channelId || null, tr.innerText,
                    (tr.querySelector('.bitrate') || {}).textContent || null]);""")


def no_dialog(browser):
    from selenium.common.exceptions import NoAlertPresentException
    try:
        text = browser.switch_to.alert.text
    except NoAlertPresentException:
        return True
    raise AssertionError('a dialog opened: %r' % text)


def screenshot(browser, path):
    """Write the view's screenshot and check it is a PNG with something in it."""
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, path


def policy_violations(browser):
    return [entry['message'] for entry in browser.get_log('browser')
            if 'Content Security Policy' in entry['message']]


def show(browser, stack, view):
    browser.get(stack.api.base_url + '/dashboard#' + view)


def test_a_wrong_secret_says_so(browser, stack, world, tmp_path):
    sign_in(browser, stack, world.studio.token_id, 'not-the-secret')
    message = wait_page(browser, "return document.getElementById('signin-error').textContent",
                        VIEW_SECONDS, 'the sign-in error')
    assert message == 'Sign-in failed: wrong token id or secret.'
    assert page(browser, "return document.getElementById('view-signin').hidden") is False
    assert page(browser, "return sessionStorage.getItem('livestream.auth')") is None
    assert no_dialog(browser)  # no browser login prompt either
    screenshot(browser, tmp_path / 'signin.png')


def test_live_now_shows_the_clients_live_channel_and_no_other(browser, stack, world, tmp_path):
    sign_in(browser, stack, world.studio.token_id, world.studio.secret)
    signed_in = time.monotonic()

    def shown():
        return [row for row in live_rows(browser) if row[0] == world.live['id']
                and row[2] and row[2] != '–' and not row[2].startswith('0 ')]
    row, = wait_for(shown, LIVE_SHOWN_SECONDS, 'the live channel with its bitrate')
    assert time.monotonic() - signed_in <= LIVE_SHOWN_SECONDS
    assert 'Cooking with Alice' in row[1] and 'alice' in row[1]
    assert [row[0] for row in live_rows(browser)] == [world.live['id']]  # not the other's
    assert "Bob's garage" not in page(browser, 'return document.body.innerText')
    assert page(browser, "return document.getElementById('total-live').textContent") == '1'
    assert page(browser, "return document.getElementById('who').textContent") == \
        world.studio.token_id + ' (app)'
    screenshot(browser, tmp_path / 'live.png')


def test_the_channel_chart_has_a_point_per_measurement(browser, stack, world, tmp_path):
    started = world.studio.api.ok('GET', '/v1/channels/%s/stats' % world.live['id'])[
        'current']['startedAt']
    streamed = time.time() - datetime.fromisoformat(started.replace('Z', '+00:00')).timestamp()
    time.sleep(max(0.0, STREAMED_SECONDS - streamed))  # real streaming: samples come with it
    signed_in_as(browser, stack, world.studio)
    show(browser, stack, 'channel/' + world.live['id'])
    points = wait_page(browser, """const chart = document.getElementById('session-chart');
        const n = chart ? chart.querySelectorAll('circle.bitrate').length : 0;
        return n >= %d ? n : 0;""" % CHART_POINTS, VIEW_SECONDS, '%d chart points' % CHART_POINTS)
    assert points >= CHART_POINTS
    key = world.live['streamId'].split('?key=', 1)[1]
    assert key not in page(browser, 'return document.body.innerText')  # until asked for
    screenshot(browser, tmp_path / 'channel.png')
    page(browser, "document.getElementById('show-key').click()")
    assert page(browser, "return document.getElementById('stream-key').textContent") == \
        world.live['streamId']


def test_a_name_made_of_html_shows_as_text(browser, stack, world, tmp_path):
    signed_in_as(browser, stack, world.studio)
    show(browser, stack, 'channels')
    link = wait_page(browser, """const link = document.querySelector(
        '#channels-table tr[data-channel-id="%s"] a');
        return link && [link.textContent, document.querySelectorAll('img').length];"""
                     % world.xss['id'], VIEW_SECONDS, 'the channel list')
    assert link == [XSS_NAME, 0]
    screenshot(browser, tmp_path / 'channels.png')
    show(browser, stack, 'channel/' + world.xss['id'])
    wait_page(browser, "return document.getElementById('channel-name').textContent === %r"
              % XSS_NAME, VIEW_SECONDS, 'the channel view')
    assert page(browser, "return document.querySelectorAll('img').length") == 0
    assert no_dialog(browser)
    assert policy_violations(browser) == []


def test_users_and_events_views(browser, stack, world, tmp_path):
    signed_in_as(browser, stack, world.studio)
    show(browser, stack, 'users')
    state = wait_page(browser, """const row = document.querySelector(
        '#users-table tr[data-user-id="alice"]'); return row && row.innerText;""",
                      VIEW_SECONDS, 'alice among the users at a limit')
    assert 'at a limit' in state and '2 / 2' in state and '1 / 1' in state
    screenshot(browser, tmp_path / 'users.png')
    show(browser, stack, 'events')
    # The server's own event log, as this client's: its channels made and gone live,
    # none of the other client's (nothing was registered to deliver them: "none").
    events = wait_page(browser, """return document.getElementById('events-note').textContent
        && [...document.querySelectorAll('#events-table tbody tr')].map(tr =>
           [tr.cells[1].textContent, tr.cells[2].textContent, tr.cells[3].textContent]);""",
                       VIEW_SECONDS, 'the events view')
    assert ['channel.live', 'Cooking with Alice', 'none'] in events, events
    assert ['channel.created', XSS_NAME, 'none'] in events, events
    assert not [row for row in events if "Bob's garage" in row], events
    screenshot(browser, tmp_path / 'events.png')


def test_an_admin_sees_every_client_nodes_and_clients(browser, stack, world, tmp_path):
    sign_in(browser, stack, stack.token_id, stack.token_secret)
    both = {world.live['id'], world.others['id']}
    wait_for(lambda: {row[0] for row in live_rows(browser)} == both, VIEW_SECONDS,
             "both clients' live channels")
    screenshot(browser, tmp_path / 'admin-live.png')
    show(browser, stack, 'nodes')
    nodes = wait_page(browser, """const rows = document.querySelectorAll('#nodes-table tbody tr');
        return rows.length && document.getElementById('nodes-note').textContent && rows.length;""",
                      VIEW_SECONDS, 'the nodes view')
    assert nodes >= 1
    assert 'yes' in page(browser, "return document.getElementById('nodes-table').innerText")
    screenshot(browser, tmp_path / 'nodes.png')
    show(browser, stack, 'clients')
    clients = wait_page(browser, "return document.getElementById('clients-note').textContent "
                        "&& document.getElementById('clients-table').innerText",
                        VIEW_SECONDS, 'the clients view')
    assert world.studio.token_id in clients and world.other.token_id in clients
    screenshot(browser, tmp_path / 'clients.png')
    assert policy_violations(browser) == []


# States a live test server does not reach in seconds (a node draining or down, a
# delivery failed after a day of retries), shown from answers shaped as GET /v1/ingest
# and GET /v1/events give them, by a stand-in in front of the app ------------------

NODES = [{'name': 'edge-1', 'kind': 'nginx-rtmp', 'rtmpUrl': 'rtmp://edge-1:1935/live',
          'hlsUrl': 'http://edge-1/hls', 'accepting': False, 'reachable': True,
          'liveStreams': 3, 'bitrateKbpsIn': 9000.5, 'viewers': 42},
         {'name': XSS_NAME, 'kind': 'srs', 'rtmpUrl': 'rtmp://edge-2:1935/live',
          'hlsUrl': 'http://edge-2/hls', 'accepting': True, 'reachable': False,
          'liveStreams': 0, 'bitrateKbpsIn': 0, 'viewers': 0}]


def event(event_id, status, lastError=None):
    return {'id': event_id, 'type': 'channel.live', 'createdAt': '2026-12-01T00:00:00Z',
            'data': {'channel': {'id': 'chan1', 'name': XSS_NAME}, 'session': {}},
            'delivery': {'status': status, 'attempts': 3, 'lastStatus': 500,
                         'lastError': lastError, 'nextAttemptAt': None, 'deliveredAt': None}}


EVENTS = [event('ev-delivered', 'delivered'), event('ev-failed', 'failed', 'HTTP 500')]


class DocumentedEndpoints:
    """The app, with GET /v1/ingest, GET /v1/events and POST .../redeliver answered
    as documented (authenticated by the app first); `redelivered` records the POSTs."""

    def __init__(self, app):
        self.app, self.redelivered = app, []

    def __call__(self, environ, start_response):
        import json
        path, query = environ['PATH_INFO'], environ.get('QUERY_STRING', '')
        if path == '/v1/ingest':
            data = NODES
        elif path == '/v1/events':
            items = [item for item in EVENTS if 'status=failed' not in query
                     or item['delivery']['status'] == 'failed']
            data = {'items': items, 'total': len(items), 'nextCursor': None}
        elif path.startswith('/v1/events/') and path.endswith('/redeliver'):
            self.redelivered.append((environ['REQUEST_METHOD'], path))
            data = None
        else:
            return self.app(environ, start_response)
        body = json.dumps({'ec': 0, 'data': data}).encode()
        start_response('202 Accepted' if data is None else '200 OK',
                       [('Content-Type', 'application/json')])
        return [body]


def test_nodes_and_events_views_read_the_documented_shapes(browser, make_app, tmp_path):
    from conftest import ADMIN
    from server_support import serving
    endpoints = DocumentedEndpoints(make_app()[1])
    with serving(endpoints) as port:
        base = SimpleNamespace(api=SimpleNamespace(base_url='http://127.0.0.1:%s' % port))
        sign_in(browser, base, *ADMIN)
        show(browser, base, 'nodes')
        nodes = wait_page(browser, """return document.getElementById('nodes-note').textContent
            && [...document.querySelectorAll('#nodes-table tbody tr')].map(tr =>
               [...tr.cells].map(td => td.textContent));""", VIEW_SECONDS, 'the nodes')
        assert nodes == [['edge-1', 'nginx-rtmp', 'yes', 'draining', '3', '9.00 Mb/s', '42',
                          'rtmp://edge-1:1935/live'],
                         [XSS_NAME, 'srs', 'no', 'accepting', '0', '0 kb/s', '0',
                          'rtmp://edge-2:1935/live']]
        screenshot(browser, tmp_path / 'nodes.png')
        show(browser, base, 'events')
        events = wait_page(browser, """return document.getElementById('events-note').textContent
            && [...document.querySelectorAll('#events-table tbody tr')].map(tr =>
               [tr.dataset.eventId, tr.cells[2].textContent, tr.cells[3].textContent]);""",
                           VIEW_SECONDS, 'the events')
        assert events == [['ev-failed', XSS_NAME, 'failed'],  # failed first
                          ['ev-delivered', XSS_NAME, 'delivered']]
        screenshot(browser, tmp_path / 'events.png')
        page(browser, """document.querySelector('tr[data-event-id="ev-failed"] button.redeliver')
            .click();""")
        wait_page(browser, """return document.querySelector(
            'tr[data-event-id="ev-failed"] button.redeliver').textContent === 'Queued'""",
                  VIEW_SECONDS, 'the redelivery to be queued')
        assert endpoints.redelivered == [('POST', '/v1/events/ev-failed/redeliver')]
        assert page(browser, "return document.querySelectorAll('img').length") == 0
        assert policy_violations(browser) == []
