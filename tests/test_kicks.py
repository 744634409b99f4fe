"""Cuts are immediate: when the API ends a live session (disable, re-key, delete, a
limit), it has the ingest drop that publisher at once through nginx-rtmp's
control module, off the request's path, rather than at nginx's next update
call. Driven against a real local HTTP server that records the drop calls; the
kicker's queue is sent by run_once(), as its thread would."""

import logging
import socket
import time
import urllib.parse

import pytest

import livestream_api
from ingest_support import ControlServer, get, make_channel, publish, sessions, update


@pytest.fixture
def control():
    server = ControlServer()
    yield server
    server.close()


@pytest.fixture
def app(request, make_app, control):
    """The app kicking at the recording server; or (parametrized indirectly) at a
    control URL that fails: 'refused' (nothing listens), 'hangs' (never answers)."""
    url = control.url
    failure = getattr(request, 'param', None)
    if failure == 'refused':
        dead = socket.socket()
        request.addfinalizer(dead.close)
        dead.bind(('127.0.0.1', 0))  # kept bound so no one else takes the port
        url = 'http://127.0.0.1:%d/control' % dead.getsockname()[1]
    control.hang = failure == 'hangs'
    return make_app(ingest={'control_url': url})[1]


@pytest.fixture
def kicker(app):
    return app.livestream.kickers['default']


def drop_call(channel, clientid):
    """The request nginx-rtmp's control module gets to drop that publisher."""
    return '/control/drop/publisher?' + urllib.parse.urlencode(
        {'app': 'live', 'name': channel['id'], 'clientid': clientid})


def assert_refused(answer):
    assert answer.status_int == 403, answer.text
    assert answer.json['ec'] == 4


CUTS = {
    'disable': lambda admin, owner, path: owner.patch_json(path, {'enabled': False}),
    'replace, disabled': lambda admin, owner, path: owner.put_json(
        path, {'name': 'renamed', 'enabled': False}),
    'rotate key': lambda admin, owner, path: owner.post(path + '/rotate-key'),
    'delete channel': lambda admin, owner, path: owner.delete(path),
    'force-delete user': lambda admin, owner, path: owner.delete(
        '/v1/users/streamer?force=true'),
    'force-delete client': lambda admin, owner, path: admin.delete(
        '/v1/clients/%s?force=true' % owner.client['tokenId']),
}


@pytest.mark.parametrize('cut', list(CUTS))
def test_a_cut_drops_that_publisher_at_once(admin, new_client, hook, kicker, control, cut):
    owner, bystander = new_client(name='owner'), new_client(name='bystander')
    channel, other = make_channel(owner), make_channel(bystander)
    assert publish(hook, channel, clientid='7').status_int == 200
    assert publish(hook, other, clientid='8').status_int == 200
    answer = CUTS[cut](admin, owner, '/v1/channels/' + channel['id'])
    assert answer.status_int in (200, 204)
    assert control.calls == []  # queued: the answer did not wait for the ingest
    assert kicker.run_once() == 1
    assert control.calls == [drop_call(channel, '7')]
    assert get(bystander, other)['status'] == 'live'


@pytest.mark.parametrize('edit', ['rename a live channel', 'disable an idle channel',
                                  'delete an idle channel'])
def test_what_ends_no_session_kicks_nothing(admin, hook, kicker, control, edit):
    channel = make_channel(admin)
    path = '/v1/channels/' + channel['id']
    if edit == 'rename a live channel':
        assert publish(hook, channel).status_int == 200
        admin.patch_json(path, {'name': 'new name'})
    elif edit == 'disable an idle channel':
        admin.patch_json(path, {'enabled': False})
    else:
        admin.delete(path)
    assert kicker.run_once() == 0
    assert control.calls == []


def test_a_limit_cut_kicks_too(admin, hook, clock, interval, kicker, control):
    channel = make_channel(admin, maxSessionSeconds=interval)
    assert publish(hook, channel, clientid='3').status_int == 200
    clock.advance(interval + 1)
    assert_refused(update(hook, channel, clientid='3'))
    assert kicker.run_once() == 1
    assert control.calls == [drop_call(channel, '3')]


def test_the_kicker_thread_sends_what_is_queued_before_it_stops(admin, hook, kicker,
                                                                 control):
    channel = make_channel(admin)
    assert publish(hook, channel, clientid='5').status_int == 200
    kicker.start()
    try:
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    finally:
        kicker.stop()
    assert control.calls == [drop_call(channel, '5')]
    assert kicker.run_once() == 0


@pytest.mark.parametrize('app', ['refused', 'hangs'], indirect=True)
def test_a_failed_kick_is_logged_and_the_next_update_still_refuses(admin, hook, kicker,
                                                                   caplog):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    began = time.monotonic()
    admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    assert time.monotonic() - began < 1  # the kick is not on the request's path
    with caplog.at_level(logging.WARNING, logger='livestream'):
        began = time.monotonic()
        assert kicker.run_once() == 1
        assert time.monotonic() - began < 5  # a hung node costs its timeout (1 s), no more
    assert 'could not kick the publisher of channel %s' % channel['id'] in caplog.text
    assert_refused(update(hook, channel))
    assert sessions(admin, channel)['items'][0]['endReason'] == 'channel_disabled'


def test_the_cli_kicks_the_publishers_of_a_client_it_deletes(app, admin, new_client, hook,
                                                             control):
    owner = new_client()
    channel = make_channel(owner)
    assert publish(hook, channel, clientid='9').status_int == 200
    status = livestream_api.main(
        ['client', 'delete', owner.client['tokenId'], '--force', '--db',
         app.livestream.config['database']['path']],
        environ={'LIVESTREAM_INGEST_CONTROL_URL': control.url,
                 'LIVESTREAM_INGEST_STAT_URL': ''})
    assert status == 0
    assert control.calls == [drop_call(channel, '9')]


def test_an_empty_control_url_turns_kicks_off(make_app):
    assert make_app(ingest={'control_url': ''})[1].livestream.kickers == {}


def test_nginx_conf_serves_the_control_module_on_loopback_only():
    config = livestream_api.load_config(environ={})
    conf = livestream_api.NginxRtmp(config).conf('secret', 1935, 8088, '/tmp/prefix')
    block = conf.split('location /control {', 1)[1].split('}', 1)[0]
    assert 'rtmp_control all;' in block
    assert 'allow 127.0.0.1;' in block and 'deny all;' in block
    assert config['ingest']['control_url'] == 'http://127.0.0.1:8088/control'
