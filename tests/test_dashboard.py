"""The operator's page: GET / and /dashboard serve it and its two files, public,
with headers that keep them from running anything but this server's own files.
(tests/test_dashboard_browser.py drives it in a real browser.)"""

import re

import pytest
import webtest

import livestream_api

#: The issue's budget for the page and its files together.
MOST_BYTES = 60 * 1024


@pytest.fixture
def client(app):
    """A TestApp with no credentials, as a browser opening the page."""
    return webtest.TestApp(app)


def test_root_redirects_to_the_dashboard(client):
    answer = client.get('/', status=302)
    assert answer.headers['Location'].endswith('dashboard')
    assert answer.follow().status_int == 200


def test_dashboard_is_public_html_with_its_files(client):
    page = client.get('/dashboard', status=200)
    assert page.content_type == 'text/html'
    assert page.charset == 'utf-8'
    assert '<script src="dashboard/dashboard.js" defer></script>' in page.text
    assert '<link rel="stylesheet" href="dashboard/dashboard.css">' in page.text
    assert client.get('/dashboard/dashboard.js', status=200).content_type == 'text/javascript'
    assert client.get('/dashboard/dashboard.css', status=200).content_type == 'text/css'
    assert client.get('/dashboard/dashboard.svg', status=200).content_type == 'image/svg+xml'


@pytest.mark.parametrize('path', ['/dashboard', '/dashboard/dashboard.js',
                                  '/dashboard/dashboard.css', '/dashboard/dashboard.svg'])
def test_page_and_files_forbid_inline_code_framing_and_caching(client, path):
    headers = client.get(path, status=200).headers
    assert headers['Content-Security-Policy'].startswith("default-src 'self';")
    assert 'unsafe' not in headers['Content-Security-Policy']
    assert headers['X-Frame-Options'] == 'DENY'
    assert headers['Cache-Control'] == 'no-store'
    assert headers['X-Content-Type-Options'] == 'nosniff'


def test_page_has_no_inline_script_or_style():
    """The policy would block them anyway: the page would break, not be unsafe."""
    html = livestream_api._data_path('dashboard.html').read_text()
    assert re.findall(r'<script(?![^>]*\ssrc=)', html) == []
    assert re.findall(r'<style|\sstyle=|\son\w+=', html, flags=re.I) == []
    javascript = livestream_api._data_path('dashboard.js').read_text()
    # Values from the API are inserted as text, never parsed as HTML.
    assert not re.search(r'innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(',
                         javascript)


def test_page_and_files_fit_the_size_budget():
    sizes = {name: livestream_api._data_path(name).stat().st_size
             for name in livestream_api.DASHBOARD_FILES}
    assert sum(sizes.values()) < MOST_BYTES, sizes


@pytest.mark.parametrize('path', [
    '/dashboard/nothing.js', '/dashboard/schema.sql', '/dashboard/livestream_api.py',
    '/dashboard/..%2Fschema.sql', '/dashboard/%2E%2E%2Fschema.sql', '/dashboard/.',
    '/dashboard/dashboard.js%00.html'])
def test_only_the_dashboards_own_files_are_served(client, path):
    answer = client.get(path, expect_errors=True)
    assert answer.status_int in (401, 404), answer.status
    assert answer.content_type == 'application/json'
    assert answer.json['ec'] in (livestream_api.EC_NOT_FOUND, livestream_api.EC_UNAUTHORIZED)
    assert b'migration' not in answer.body and b'import' not in answer.body


def test_an_unknown_dashboard_file_is_a_404_envelope(client):
    answer = client.get('/dashboard/nothing.js', status=404)
    assert answer.json == {'ec': livestream_api.EC_NOT_FOUND,
                           'msg': 'dashboard file not found', 'data': None}


@pytest.mark.parametrize('path', ['/?x=1', '/dashboard?token=x', '/dashboard/dashboard.js?v=2'])
def test_the_dashboard_takes_no_query_parameters_as_every_route(client, path):
    assert client.get(path, status=400).json['ec'] == livestream_api.EC_BAD_REQUEST


def test_the_dashboard_takes_no_writes(client):
    answer = client.post('/dashboard', status=405)
    assert answer.json['ec'] == livestream_api.EC_METHOD


def test_other_paths_outside_v1_still_need_a_token(client):
    assert client.get('/dashboardx', status=401).json['ec'] == livestream_api.EC_UNAUTHORIZED
    assert client.get('/dashboard/a/b', status=401).json['ec'] == livestream_api.EC_UNAUTHORIZED


def test_the_api_description_leaves_the_html_page_out(client):
    """The OpenAPI document describes the JSON API; the page is not part of it."""
    paths = client.get('/v1/openapi.json').json['paths']
    assert [path for path in paths if not path.startswith('/v1/')] == []
