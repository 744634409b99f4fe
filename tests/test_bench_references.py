"""The benchmark's references (bench/ceiling.py --work) do the one SQLite operation
each is named for: the README compares endpoints with them."""

import pathlib
import sqlite3
import sys
import threading

import pytest
import webtest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'bench'))
import ceiling  # noqa: E402


def rows(path):
    with sqlite3.connect(path) as conn:
        return conn.execute('SELECT count(*) FROM items').fetchone()[0]


@pytest.fixture
def reference(tmp_path):
    def make(work):
        path = str(tmp_path / 'reference.db')
        ceiling.create_db(path)
        return webtest.TestApp(ceiling.make_app(work, path)), path
    return make


@pytest.mark.parametrize('work', ['insert', 'insert-unlocked', 'insert-polled'])
def test_an_insert_reference_writes_one_row_per_request(reference, work):
    app, path = reference(work)
    before = rows(path)
    for _ in range(3):
        assert app.post('/v1/channels', '{}').json == {'ec': 0, 'data': {'status': 'ok'}}
    assert rows(path) == before + 3


def test_the_polled_insert_waits_out_a_write_lock_held_elsewhere(reference):
    app, path = reference('insert-polled')
    holder = ceiling.open_db(path)
    holder.execute('BEGIN IMMEDIATE')
    answers = []
    writer = threading.Thread(target=lambda: answers.append(app.post('/v1/channels', '{}')))
    writer.start()
    writer.join(0.1)
    assert writer.is_alive()  # still trying: neither failed nor written past the lock
    holder.execute('COMMIT')
    writer.join(5)
    assert answers[0].json['ec'] == 0
    assert rows(path) == ceiling.ROWS + 1


def test_reference_connections_are_set_up_like_the_stores(reference):
    _, path = reference('insert')
    conn = ceiling.open_db(path)  # how every reference opens its connections
    assert conn.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    assert conn.execute('PRAGMA synchronous').fetchone()[0] == 2  # FULL


@pytest.mark.parametrize('work', ['none', 'read'])
def test_the_ceiling_and_the_read_reference_write_nothing(reference, work):
    app, path = reference(work)
    before = rows(path)
    assert app.get('/v1/channels/x').json['ec'] == 0
    assert rows(path) == before == ceiling.ROWS
