"""Every error is a JSON envelope with the status and ec of API.md, never HTML."""

import logging
import sqlite3

import pytest
import webtest

from conftest import ADMIN, basic


def assert_envelope(response, status, ec):
    assert response.status_int == status
    assert response.content_type == 'application/json'
    body = response.json
    assert body['ec'] == ec
    assert isinstance(body['msg'], str) and body['msg']
    assert 'data' in body
    assert '<html' not in response.text.lower()
    return body


def test_unknown_route_is_404_ec_6(admin):
    body = assert_envelope(admin.get('/v1/nothing-here', status=404), 404, 6)
    assert '/v1/nothing-here' in body['msg']


def test_unknown_route_outside_v1_is_404_ec_6(admin):
    assert_envelope(admin.get('/favicon.ico', status=404), 404, 6)


def test_wrong_method_is_405_ec_7_with_allow(admin):
    response = admin.put_json('/v1/clients', {'name': 'x'}, status=405)
    body = assert_envelope(response, 405, 7)
    allowed = set(response.headers['Allow'].split(','))
    assert allowed == {'GET', 'POST'}
    assert set(body['data']['allowed']) == {'GET', 'POST'}


def test_wrong_method_on_item_route_lists_its_methods(admin):
    response = admin.get('/v1/clients/abc/rotate', status=405)
    assert_envelope(response, 405, 7)
    assert response.headers['Allow'] == 'POST'


def test_invalid_json_is_400_ec_1(admin):
    response = admin.post('/v1/clients', '{"name": ', content_type='application/json',
                          status=400)
    assert 'not valid JSON' in assert_envelope(response, 400, 1)['msg']


@pytest.mark.parametrize('raw', ['[]', '"text"', '42', 'null', '[{"name": "x"}]'])
def test_json_that_is_not_an_object_is_400_ec_1(admin, raw):
    response = admin.post('/v1/clients', raw, content_type='application/json', status=400)
    assert 'JSON object' in assert_envelope(response, 400, 1)['msg']


def test_nan_is_not_json_400_ec_1(admin):
    response = admin.post('/v1/clients', '{"name": NaN}', content_type='application/json',
                          status=400)
    assert_envelope(response, 400, 1)


def test_invalid_utf8_is_400_ec_1(admin):
    response = admin.post('/v1/clients', b'{"name": "\xff"}', content_type='application/json',
                          status=400)
    assert_envelope(response, 400, 1)


@pytest.mark.parametrize('content_type', ['text/plain', 'application/x-www-form-urlencoded',
                                          'application/jsonx'])
def test_wrong_content_type_is_400_ec_1(admin, content_type):
    response = admin.post('/v1/clients', '{"name": "x"}', content_type=content_type,
                          status=400)
    assert 'Content-Type' in assert_envelope(response, 400, 1)['msg']


def test_json_with_charset_parameter_is_accepted(admin):
    admin.post('/v1/clients', '{"name": "x"}', content_type='application/json; charset=utf-8',
               status=201)


def test_empty_body_is_400_ec_1(admin):
    response = admin.post('/v1/clients', '', content_type='application/json', status=400)
    assert 'empty' in assert_envelope(response, 400, 1)['msg']


def test_body_over_max_body_bytes_is_413_ec_8(make_app):
    test_app, _ = make_app(server={'max_body_bytes': '1000'})
    test_app.authorization = ('Basic', ADMIN)
    response = test_app.post_json('/v1/clients', {'name': 'x' * 1000}, status=413)
    body = assert_envelope(response, 413, 8)
    assert body['data'] == {'maxBytes': 1000}


def test_body_at_max_body_bytes_is_accepted(make_app):
    test_app, _ = make_app(server={'max_body_bytes': '1000'})
    test_app.authorization = ('Basic', ADMIN)
    raw = '{"name": "x"}'
    test_app.post('/v1/clients', raw + ' ' * (1000 - len(raw)), content_type='application/json',
                  status=201)


def test_body_over_limit_without_content_length_is_413(make_app):
    test_app, _ = make_app(server={'max_body_bytes': '1000'})
    chunked = webtest.TestRequest.blank('/v1/clients', method='POST',
                                        body=b'{"name": "%s"}' % (b'x' * 2000))
    chunked.headers['Content-Type'] = 'application/json'
    chunked.headers['Authorization'] = basic(*ADMIN)
    del chunked.headers['Content-Length']
    chunked.environ['wsgi.input_terminated'] = True
    response = test_app.do_request(chunked, status=413)
    assert_envelope(response, 413, 8)


@pytest.fixture
def catchall_app(make_app, tmp_path):
    """An app that answers unexpected exceptions (as under waitress), on a
    database whose users table was dropped behind its back."""
    test_app, app = make_app()
    app.catchall = True
    test_app.authorization = ('Basic', ADMIN)
    raw = sqlite3.connect(str(tmp_path / 'live.db'))
    raw.execute('DROP TABLE users')
    raw.commit()
    raw.close()
    return test_app

# expect_errors: bottle also writes the traceback to wsgi.errors (the server's
# stderr), which WebTest would otherwise turn into an exception.


def test_unexpected_exception_is_500_ec_99_without_traceback(catchall_app, caplog):
    with caplog.at_level(logging.ERROR, logger='livestream'):
        response = catchall_app.get('/v1/users', expect_errors=True)
    body = assert_envelope(response, 500, 99)
    assert body['data'] is None
    assert 'Traceback' not in response.text
    assert 'no such table' not in response.text
    assert 'sqlite' not in response.text.lower()


def test_unexpected_exception_is_logged_with_traceback(catchall_app, caplog):
    with caplog.at_level(logging.ERROR, logger='livestream'):
        catchall_app.get('/v1/users', expect_errors=True)
    logged = '\n'.join(record.getMessage() for record in caplog.records
                       if record.levelno >= logging.ERROR)
    assert 'GET /v1/users' in logged
    assert 'Traceback (most recent call last)' in logged
    assert 'no such table: users' in logged


def test_other_routes_still_work_after_a_500(catchall_app):
    assert catchall_app.get('/v1/users', expect_errors=True).status_int == 500
    assert catchall_app.get('/v1/clients').json['ec'] == 0


def test_every_error_the_module_defines_has_one_base():
    import livestream_api
    errors = [value for value in vars(livestream_api).values() if isinstance(value, type)
              and issubclass(value, Exception) and value.__module__ == 'livestream_api']
    assert len(errors) >= 6
    assert all(issubclass(error, livestream_api.LivestreamError) for error in errors), errors
