"""A delete without ?force=true races a create: the "owns nothing" check and the
delete are one transaction, so the delete either refuses (409) or comes first
(and the create then makes a new user, or finds no client): no 201 is lost."""

import threading

import webtest

ROUNDS = 200


def both_at_once(first, second):
    """Run first() and second() in two real threads released together; their answers."""
    barrier = threading.Barrier(2)
    answers = [None, None]

    def run(slot, work):
        barrier.wait(timeout=10)
        answers[slot] = work()

    threads = [threading.Thread(target=run, args=(slot, work), daemon=True)
               for slot, work in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), 'a racing request hung'
    return answers


def test_create_racing_delete_user_loses_no_channel(admin, new_client):
    client = new_client()
    deleting = webtest.TestApp(client.app)
    deleting.authorization = client.authorization
    for round_ in range(ROUNDS):
        user_id = 'racer%d' % round_
        client.put_json('/v1/users/' + user_id, {}, status=201)
        created, deleted = both_at_once(
            lambda: client.post_json('/v1/channels', {'userId': user_id, 'name': 'x'},
                                     expect_errors=True),
            lambda: deleting.delete('/v1/users/' + user_id, expect_errors=True))
        assert created.status_int == 201, created.text
        assert deleted.status_int in (204, 409), deleted.text
        # Whichever came first, the channel acknowledged with 201 is there.
        client.get('/v1/channels/' + created.json['data']['id'], status=200)
        assert client.get('/v1/users/' + user_id).json['data']['usage']['channels'] == 1
    assert admin.get('/v1/channels').json['data']['total'] == ROUNDS


def test_first_create_racing_delete_client_loses_no_channel(admin, new_client):
    for round_ in range(ROUNDS):
        client = new_client(name='racer %d' % round_)
        # When the delete wins, this create's credentials fail (401): from an address of
        # its own, so that the failed-login throttle never holds the admin's.
        client.extra_environ = {'REMOTE_ADDR': '10.0.%d.%d' % divmod(round_, 256)}
        created, deleted = both_at_once(
            lambda: client.post_json('/v1/channels', {'userId': 'first', 'name': 'x'},
                                     expect_errors=True),
            lambda: admin.delete('/v1/clients/' + client.client['tokenId'],
                                 expect_errors=True))
        assert deleted.status_int in (204, 409), deleted.text
        if deleted.status_int == 409:  # the create came first, and its channel stays
            assert created.status_int == 201, created.text
            admin.get('/v1/channels/' + created.json['data']['id'], status=200)
        else:  # the delete came first: the create finds no client (or no credentials)
            assert created.status_int in (401, 404), created.text
