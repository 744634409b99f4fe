"""GET /v1/openapi.json: one document for every route, and the app keeps to it.

`python -m pytest -m schemathesis` runs the schemathesis suite alone.
"""

import base64
import json
import random
import re
import secrets

import pytest
import schemathesis
import webtest
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

import livestream_api
from conftest import ADMIN, basic


def _shape(path):
    """A path with its parameters blanked: bottle's <x> and OpenAPI's {x} alike."""
    return re.sub(r'<[^>]*>|\{[^}]*\}', '{}', path)


def test_document_is_public_json_openapi_3_1(app):
    response = webtest.TestApp(app).get('/v1/openapi.json', status=200)
    assert response.content_type == 'application/json'
    assert response.json['openapi'] == '3.1.0'
    assert response.json['security'] == [{'basic': []}]
    schemathesis.openapi.from_wsgi('/v1/openapi.json', app).validate()  # the 3.1 meta-schema


def test_document_describes_exactly_the_routes(app):
    """Every route of the JSON API (under /v1; the dashboard's HTML page is not)."""
    document = webtest.TestApp(app).get('/v1/openapi.json').json
    served = [(route.method, _shape(route.rule)) for route in app.routes
              if route.rule.startswith('/v1/')]
    documented = [(method.upper(), _shape(path))
                  for path, operations in document['paths'].items() for method in operations]
    assert len(set(served)) == len(served)
    assert sorted(served) == sorted(documented)


def test_document_declares_every_path_parameter(app):
    document = webtest.TestApp(app).get('/v1/openapi.json').json
    for path, operations in document['paths'].items():
        for method, operation in operations.items():
            declared = {parameter['name'] for parameter in operation.get('parameters', ())
                        if parameter['in'] == 'path'}
            assert declared == set(re.findall(r'\{([^}]*)\}', path)), (method, path)


def test_public_routes_and_admin_routes_say_so(app):
    document = webtest.TestApp(app).get('/v1/openapi.json').json
    for path, operations in document['paths'].items():
        for operation in operations.values():
            public = re.match(r'^/v1/(health|openapi\.json|hooks/)', path) is not None
            assert ('security' in operation) == public, path
            assert ('401' in operation['responses']) != public, path
            if path.startswith('/v1/clients'):
                assert 'Admin role only' in operation['description']
                assert '403' in operation['responses']


@pytest.mark.parametrize('method, path, body, status', [
    # Python's `$` also matches before a final newline; the document's (ECMA) `$` does not.
    ('PUT', '/v1/users/alice%0A', {}, 422),
    ('GET', '/v1/channels?limit=5%0A', None, 400),
    ('GET', '/v1/channels?userId=alice%0A', None, 400),
    ('GET', '/v1/channels?userId=not%20an%20id', None, 400),
    ('POST', '/v1/channels', {'userId': 'alice\n', 'name': 'x'}, 422),
    # Control characters and length count in what was sent, not in what stripping leaves.
    ('POST', '/v1/channels', {'userId': 'alice', 'name': '\x1cshow'}, 422),
    ('POST', '/v1/channels', {'userId': 'alice', 'name': 'show' + ' ' * 200}, 422),
    ('POST', '/v1/clients', {'name': 'app\x1f'}, 422),
    # force is checked even when there is nothing to force.
    ('DELETE', '/v1/users/alice?force=yes', None, 400),
])
def test_what_the_document_forbids_is_refused(admin, method, path, body, status):
    admin.put_json('/v1/users/alice', {})
    if body is None:
        response = admin.request(path, method=method, expect_errors=True)
    else:
        response = admin.request(path, method=method, body=json.dumps(body).encode(),
                                 content_type='application/json', expect_errors=True)
    assert response.status_int == status, response.text
    assert response.json['ec'] == {400: 1, 422: 2}[status]
    assert admin.get('/v1/users/alice').json['data']['userId'] == 'alice'


def test_what_the_document_allows_is_accepted(admin):
    # JSON has one kind of number: 5.0 is an integer to JSON Schema, and so to the API.
    user = admin.put_json('/v1/users/alice', {'limits': {'maxChannels': 5.0}}, status=201)
    assert user.json['data']['limits']['maxChannels'] == 5
    refused = admin.put_json('/v1/users/alice', {'limits': {'maxChannels': 5.5}}, status=422)
    assert list(refused.json['data']['fields']) == ['limits.maxChannels']
    channel = admin.post_json('/v1/channels', {'userId': 'alice', 'name': '  show\t'},
                              status=201)
    assert channel.json['data']['name'] == 'show'


# schemathesis ################################################################

#: Seeded, so a failure reproduces: schemathesis derives each operation's seed from it.
CONFIG = {'seed': 20261126}


class SeededSecrets:
    """The `secrets` module with a seeded generator behind its token functions."""

    def __init__(self, seed):
        self._random = random.Random(seed)

    def token_bytes(self, nbytes):
        return self._random.randbytes(nbytes)

    def token_hex(self, nbytes):
        return self.token_bytes(nbytes).hex()

    def token_urlsafe(self, nbytes):
        return base64.urlsafe_b64encode(self.token_bytes(nbytes)).rstrip(b'=').decode()

    def __getattr__(self, name):
        return getattr(secrets, name)


@pytest.fixture(params=['admin', 'app'])
def caller(request, make_app, monkeypatch):
    """(bottle app, Authorization header) for an admin or for a new app client."""
    # schemathesis feeds values from responses (ids, tokens) back into what it generates,
    # so for a run to reproduce, the app must hand out the same ids every time.
    monkeypatch.setattr(livestream_api, 'secrets', SeededSecrets(CONFIG['seed']))
    # ignored_auth re-sends authenticated cases with wrong credentials; without a high
    # throttle the test's own address would be held after 10 of them and every later
    # case would be a 429 (the throttle itself is tested in test_auth.py).
    _, app = make_app(auth={'throttle_failures': str(10 ** 9)})
    # catchall stays off, as the fixture sets it: werkzeug's test client, which
    # schemathesis calls the WSGI app with, re-raises the exception bottle passes along
    # with a 500 either way, so an unhandled error fails the test with its traceback and
    # a curl line that reproduces it. (The JSON 500 itself is tested in test_errors.py.)
    if request.param == 'admin':
        return app, basic(*ADMIN)
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    client = admin.post_json('/v1/clients', {'name': 'app server'}).json['data']
    return app, basic(client['tokenId'], client['tokenSecret'])


@pytest.fixture
def api_schema(caller):
    return schemathesis.openapi.from_wsgi('/v1/openapi.json', caller[0],
                                          config=SchemathesisConfig.from_dict(CONFIG))


#: Every path: schemathesis leaves out the operation that served the document (GET
#: /v1/openapi.json) unless a filter names it, and nothing here is left out.
schema = schemathesis.pytest.from_fixture('api_schema').include(path_regex='^/v1/')


def _with_hook_secret(case, app):
    """The real hook secret on a hook case, so its form reaches the hook rather than
    the 403 for a wrong secret; a case that negates the query keeps its own."""
    if case.path.startswith('/v1/hooks/') and not case.meta.is_negative_at(
            ParameterLocation.QUERY):
        case.query = dict(case.query or {}, secret=app.livestream.hook_secret)


def _validate(case, response, headers, recorder=None):
    """Every default check, on a response to a request sent with `headers`."""
    # A cursor is opaque: only the nextCursor values this API issued are valid, which no
    # schema can express, so a generated "schema-valid" cursor gets the documented 400.
    # positive_data_acceptance is set aside for exactly that answer, nothing else.
    invented_cursor = ('cursor' in (case.query or {}) and response.status_code == 400
                       and response.json()['msg'].startswith('cursor is not one this API'))
    case.validate_response(
        response, headers=headers, transport_kwargs={'headers': headers}, recorder=recorder,
        excluded_checks=[schemathesis.checks.positive_data_acceptance] if invented_cursor else [])


#: For both tests: 50 examples per operation (50 scenarios, statefully); derandomized,
#: as schemathesis is seeded by CONFIG, so a failure reproduces; no deadline, as the
#: machine is shared. No health check is suppressed: none fails.
SETTINGS = settings(max_examples=50, derandomize=True, deadline=None)


@pytest.mark.schemathesis
@schema.parametrize()
@SETTINGS
def test_api_keeps_to_its_document(case, caller):
    app, authorization = caller
    headers = {'Authorization': authorization}
    _with_hook_secret(case, app)
    _validate(case, case.call(headers=headers), headers)


@pytest.mark.schemathesis
def test_api_keeps_to_its_document_across_calls(api_schema, caller):
    """Sequences that follow the document's links: create a client, user or channel,
    then read, change, rotate and delete it (so those bodies get past the 404)."""
    app, authorization = caller
    headers = {'Authorization': authorization}

    class Workflow(api_schema.as_state_machine()):
        def before_call(self, case):
            _with_hook_secret(case, app)

        def get_call_kwargs(self, case):
            return {'headers': headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            _validate(case, response, headers, recorder=self.recorder)

    Workflow.run(settings=settings(SETTINGS, stateful_step_count=10))
