"""An ingest kind is one adapter class: a fourth kind, registered in this file and
nowhere else, gets its own hook route, and its events drive the same sessions."""

import json

import pytest
import webtest

import livestream_api
from ingest_support import get, make_channel, sessions, stream_args


class JsonIngest(livestream_api.IngestNode):
    """A made-up ingest that posts JSON: {"on": "start"|"stop"|..., "conn", "path", "token"}."""

    kind = 'json-ingest'
    EVENTS = {'start': 'publish', 'tick': 'update', 'end': 'done'}

    def event(self, request):
        body = json.loads(request.body.read())
        return livestream_api.IngestEvent(
            self.EVENTS.get(body['on']), body['on'], 'json/%s' % body['conn'],
            body.get('ip', ''), body['path'], body.get('token', ''))


@pytest.fixture
def app(make_app, monkeypatch):
    monkeypatch.setattr(livestream_api, 'INGEST_KINDS', dict(livestream_api.INGEST_KINDS))
    livestream_api.ingest_kind(JsonIngest)
    return make_app()[1]


@pytest.fixture
def post(app):
    test_app = webtest.TestApp(app)

    def post(on, channel, conn='7', key=None):
        name, right_key = stream_args(channel)
        return test_app.post_json(
            '/v1/hooks/json-ingest?secret=' + app.livestream.hook_secret,
            {'on': on, 'conn': conn, 'path': name, 'token': right_key if key is None else key},
            expect_errors=True)
    return post


def test_a_new_kind_publishes_updates_and_ends_a_session(admin, post):
    channel = make_channel(admin)
    assert post('start', channel).json == {'ec': 0, 'data': {'allowed': True}}
    assert get(admin, channel)['status'] == 'live'
    assert post('tick', channel).status_int == 200
    assert post('end', channel).json['data'] == {'ended': True}
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['items'][0]['endReason'] == 'publisher_left'


def test_a_new_kind_is_refused_by_the_same_rules(admin, post):
    channel = make_channel(admin)
    wrong = post('start', channel, key='wrong')
    assert (wrong.status_int, wrong.json['ec']) == (403, 4)
    assert post('start', channel, conn='1').status_int == 200
    taken = post('start', channel, conn='2')
    assert (taken.status_int, taken.json['ec']) == (403, 4)
    assert 'another connection' in taken.json['msg']


def test_a_new_kind_may_ignore_calls_and_keeps_the_hook_secret(app, admin, post):
    channel = make_channel(admin)
    assert post('hello', channel).json['data'] == {'ignored': 'hello'}
    wrong = webtest.TestApp(app).post_json('/v1/hooks/json-ingest?secret=wrong', {},
                                           expect_errors=True)
    assert wrong.status_int == 403
    assert get(admin, channel)['status'] == 'idle'


def test_the_nginx_rtmp_kind_is_still_served_beside_it(app):
    paths = {route.rule for route in app.routes if '/hooks/' in route.rule}
    assert paths == {'/v1/hooks/nginx-rtmp', '/v1/hooks/srs', '/v1/hooks/mediamtx',
                     '/v1/hooks/mediamtx/unavailable', '/v1/hooks/json-ingest'}
