"""maxChannels holds under concurrent creates: a file database, real threads."""

import http.client
import json
import sqlite3
import threading

import pytest
import webtest

from conftest import ADMIN, basic
from server_support import serving

pytestmark = pytest.mark.slow

THREADS, CREATES_EACH, LIMIT = 16, 3, 5


def setup_client(app):
    """An app client with user `racer` limited to LIMIT channels."""
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    created = admin.post_json('/v1/clients', {'name': 'racer app', 'role': 'app'}).json['data']
    client = webtest.TestApp(app)
    client.authorization = ('Basic', (created['tokenId'], created['tokenSecret']))
    client.put_json('/v1/users/racer', {'limits': {'maxChannels': LIMIT}}, status=201)
    return client, created


def race(work):
    """Run work(thread number) in THREADS threads released at once; their results."""
    barrier = threading.Barrier(THREADS)
    results, errors = [[] for _ in range(THREADS)], []

    def run(number):
        try:
            barrier.wait(timeout=30)
            for attempt in range(CREATES_EACH):
                results[number].append(work(number, attempt))
        except Exception as error:  # reported below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), 'a creating thread hung'
    assert not errors, errors
    return [result for per_thread in results for result in per_thread]


def assert_exactly_limit_created(app, client_info, results):
    statuses = [status for status, _ in results]
    assert len(statuses) == THREADS * CREATES_EACH
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses.count(201) == LIMIT, statuses
    assert statuses.count(403) == THREADS * CREATES_EACH - LIMIT, statuses
    for status, body in results:
        assert body['ec'] == (0 if status == 201 else 5), body
        if status == 403:
            assert body['data'] == {'limit': 'maxChannels', 'value': LIMIT}
    created_ids = {body['data']['id'] for status, body in results if status == 201}
    assert len(created_ids) == LIMIT
    # The database itself, read from outside the service.
    db = sqlite3.connect(app.livestream.config['database']['path'])
    try:
        count, counter = db.execute(
            'SELECT (SELECT count(*) FROM channels c WHERE c.user_pk = u.id), u.channels '
            'FROM users u JOIN clients cl ON cl.id = u.client_id '
            'WHERE u.user_id = ? AND cl.token_id = ?',
            ('racer', client_info['tokenId'])).fetchone()
        stored = {row[0] for row in db.execute('SELECT public_id FROM channels')}
    finally:
        db.close()
    assert count == LIMIT and counter == LIMIT
    assert stored == created_ids


def test_max_channels_is_atomic_over_a_real_server(app):
    client, info = setup_client(app)
    auth = basic(info['tokenId'], info['tokenSecret'])

    def create(number, attempt):
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
        try:
            connection.request('POST', '/v1/channels', json.dumps(
                {'userId': 'racer', 'name': 'thread %d try %d' % (number, attempt)}),
                {'Content-Type': 'application/json', 'Authorization': auth})
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    with serving(app) as port:
        results = race(create)
    assert_exactly_limit_created(app, info, results)
    user = client.get('/v1/users/racer').json['data']
    assert user['usage']['channels'] == LIMIT


def test_max_channels_is_atomic_across_threads_in_process(app):
    client, info = setup_client(app)

    def create(number, attempt):
        own = webtest.TestApp(app)
        own.authorization = ('Basic', (info['tokenId'], info['tokenSecret']))
        answer = own.post_json('/v1/channels', {'userId': 'racer', 'name': 'n%d-%d'
                                                % (number, attempt)}, expect_errors=True)
        return answer.status_int, answer.json

    assert_exactly_limit_created(app, info, race(create))
    assert client.get('/v1/channels?userId=racer').json['data']['total'] == LIMIT
