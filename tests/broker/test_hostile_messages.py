"""Hostile messages on a replica queue (issue 8): whatever comes to the queue, the worker stays up,
the message ends as a dead letter with its reason, and the messages behind it are applied.

Real ``celery worker -c 2`` processes on the embedded filesystem broker (the content and shape of a
message matter here, not the broker).
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
import zlib
from pathlib import Path

import pytest
import yaml

from cqrs_celery.constants import TASK_NAME
from tests.broker.compare import describe, in_step
from tests.broker.conftest import require_postgres
from tests.broker.harness import manage, wait_until
from tests.master_app.models import Item
from tests.replica_app.models import ReplicaAuthor

UPDATED = '2026-01-01T00:00:00+00:00'
NO_EMBED = {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}
#: max_nesting_depth and max_message_size by default (docs/settings.md)
DEFAULT_DEPTH = 100


@pytest.fixture
def broker_url(tmp_path, monkeypatch):
    """kombu's filesystem transport in a folder of this test, shared by every service."""
    require_postgres()
    monkeypatch.setenv('CQRS_TEST_FS_DIR', str(tmp_path / 'broker'))
    return 'filesystem://'


def author(pk: int, meta=None, **changes) -> dict:
    """An envelope for ReplicaAuthor ``pk`` (authors are not created on the master in these tests)."""
    return {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'author', 'instance_pk': pk,
            'instance_data': {'id': pk, 'name': f'author {pk}', 'email': '', 'cqrs_revision': 0,
                              'cqrs_updated': UPDATED},
            'previous_data': None, 'meta': meta, 'correlation_id': None, 'queue': None, 'expires': None,
            'retries': 0, **changes}


def call(*args, kwargs=None, embed=None) -> bytes:
    """A protocol 2 task body."""
    return json.dumps([list(args), kwargs or {}, NO_EMBED if embed is None else embed]).encode()


def publish(app, queue: str, body: bytes, *, content_type='application/json', content_encoding='utf-8',
            headers=None, **header_changes) -> None:
    """Put a raw message on the replica queue, as anyone who can publish to the broker could."""
    base, properties, _, _ = app.amqp.as_task_v2(str(uuid.uuid4()), TASK_NAME, args=[{}])
    headers = {**base, **header_changes} if headers is None else headers
    with app.connection_for_write() as connection:
        connection.Producer().publish(body, exchange='cqrs.direct', routing_key=queue, content_type=content_type,
                                      content_encoding=content_encoding, headers=headers, delivery_mode=2,
                                      **properties)


def dead_letters(services, queue: str, database: str) -> list[dict]:
    output = manage(services.replica_env(queue, database), 'cqrs_dead_letters', 'dump')
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def wait_for_letters(services, queue, database, count, timeout=90):
    return wait_until(lambda: (found := dead_letters(services, queue, database)) and len(found) >= count and found,
                      timeout=timeout, message=f'{count} dead letters')


def good_messages_behind(count: int = 20) -> None:
    """Saves on the master after the hostile messages: the replica must apply them all."""
    for i in range(count):
        Item.objects.create(sku=f'after-{i:03d}', name=f'behind the hostile messages {i}', quantity=i)
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, message=lambda: describe('replica_a', 'item'))


def letter_for(letters: list[dict], body: bytes) -> dict:
    """The dead letter that kept ``body`` as its raw text."""
    text = body.decode()
    found = [letter for letter in letters if letter['raw'] == text]
    assert len(found) == 1, (text[:200], [letter['raw'] for letter in letters])
    return found[0]


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def nested(levels: int) -> dict:
    """An object ``levels`` deep."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {'a': value}
    return value


# --- 1. mis-shaped task messages ---------------------------------------------------------------

CALLBACK = {'task': 'celery.backend_cleanup', 'args': [], 'kwargs': {}, 'options': {}, 'subtask_type': None,
            'immutable': False}

#: (case, body, header changes, reason, fragment of the error message)
MISSHAPED = [
    ('list-of-two', b'[[], {}]', {}, 'invalid message', '[args, kwargs, embed]'),
    ('null', b'null', {}, 'invalid message', 'None'),
    ('an-object', b'{"not": "a task"}', {}, 'invalid message', "{'not': 'a task'}"),
    ('a-string', b'"envelope"', {}, 'invalid message', 'envelope'),
    ('no-arguments', call(), {}, 'invalid message', 'exactly one positional argument'),
    ('args-not-a-list', b'[{"v": 1}, {}, {}]', {}, 'invalid message', 'exactly one positional argument'),
    ('embed-a-list', b'[[{"v": 1}], {}, []]', {}, 'invalid message', 'embed'),
    ('a-callback', call(author(900001), embed={**NO_EMBED, 'callbacks': [CALLBACK]}), {}, 'invalid message',
     'callbacks'),
    ('a-chain-in-the-headers', call(author(900002)), {'chain': [CALLBACK]}, 'invalid message', 'chain'),
    ('id-a-list', call(author(900003)), {'id': ['x']}, 'invalid message', 'header id'),
    ('no-id', call(author(900004)), {'id': None}, 'invalid message', 'header id'),
    ('timelimit-a-string', call(author(900005)), {'timelimit': 'x'}, 'invalid message', 'timelimit'),
    ('timelimit-tiny', call(author(900006)), {'timelimit': [0.001, 0.001]}, 'invalid message', 'timelimit'),
    ('eta-not-a-date', call(author(900007)), {'eta': 'tomorrow'}, 'invalid message', 'eta'),
    ('eta-a-number', call(author(900008)), {'eta': 12}, 'invalid message', 'eta'),
    ('eta-in-the-year-9999', call(author(900015)), {'eta': '9999-12-31T00:00:00+00:00'}, 'invalid message',
     'one retry hop'),
    ('celery-expiry-passed', call(author(900009)), {'expires': '2000-01-01T00:00:00+00:00'}, 'invalid message',
     'expires'),
    ('retries-a-string', call(author(900010)), {'retries': 'x'}, 'invalid message', 'retries'),
    ('another-task', call(author(900011)), {'task': 'celery.backend_cleanup'}, 'invalid message',
     'does not belong on a replica queue'),
    ('no-task-header', call(author(900012)), {'task': None}, 'invalid message', 'no task header'),
    ('a-kombu-type-marker', call({'__type__': 'nope', '__value__': 1}), {}, 'undecodable', 'kombu type marker'),
    ('nan', call(author(900013)).replace(b'"meta": null', b'"meta": {"x": NaN}'), {}, 'undecodable', 'nan'),
    ('a-lone-surrogate', call(author(900014)).replace(b'"author 900014"', b'"\\ud800"'), {}, 'undecodable',
     'surrogate'),
    ('broken-json', b'[[{"v": 1}], {}, {', {}, 'undecodable', 'not JSON'),
]


def test_misshaped_task_messages_are_dead_lettered_and_the_worker_keeps_applying(services, replica_db,
                                                                                 master_app):
    queue = services.queue('replica_a')
    worker = services.worker(queue, replica_db('replica_a')).start()
    for _, body, changes, _, _ in MISSHAPED:
        publish(master_app, queue, body, **changes)

    good_messages_behind()

    letters = wait_for_letters(services, queue, replica_db('replica_a'), len(MISSHAPED))
    assert len(letters) == len(MISSHAPED)
    for case, body, _, reason, fragment in MISSHAPED:
        letter = letter_for(letters, body)
        assert (letter['error']['reason'], letter['envelope']) == (reason, None), case
        assert fragment in letter['error']['message'], (case, letter['error']['message'])
    assert not ReplicaAuthor.objects.using('replica_a').exists()
    assert worker.alive()
    assert 'Unrecoverable error' not in worker.log_tail(10_000)


# --- 4. any call other than one positional envelope ------------------------------------------


def test_any_call_other_than_one_positional_envelope_is_dead_lettered(services, replica_db, master_app):
    queue = services.queue('replica_a')
    worker = services.worker(queue, replica_db('replica_a')).start()
    calls = [
        ([author(910001)], {'self': 1}),
        ([author(910002)], {'raw': author(910002)}),
        ([], {'raw': author(910003)}),
        ([author(910004), author(910004)], {}),
    ]
    for args, kwargs in calls:
        master_app.send_task(TASK_NAME, args=args, kwargs=kwargs, exchange='cqrs.direct', routing_key=queue,
                             serializer='json')

    good_messages_behind()

    letters = wait_for_letters(services, queue, replica_db('replica_a'), len(calls))
    assert len(letters) == len(calls)
    assert {letter['error']['reason'] for letter in letters} == {'invalid message'}
    for pk in (910001, 910002, 910003, 910004):
        [letter] = [letter for letter in letters if str(pk) in letter['raw']]
        assert 'one positional argument' in letter['error']['message'] or \
            'no keyword arguments' in letter['error']['message']
    assert not ReplicaAuthor.objects.using('replica_a').exists()
    assert worker.alive()


# --- 2. nothing but JSON, whatever the Celery app accepts ------------------------------------


class WritesAFile:
    """Unpickling this creates ``path``: proof that a pickle body was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), 'w'))


def test_a_pickle_or_yaml_body_is_dead_lettered_unread_even_when_the_app_accepts_them(
        services, replica_db, master_app, tmp_path):
    queue = services.queue('replica_a')
    # C_FORCE_ROOT: Celery refuses to run a pickle-accepting worker as root (CI runs as root).
    worker = services.worker(queue, replica_db('replica_a'), DJANGO_SETTINGS_MODULE='tests.settings_hostile',
                             CQRS_TEST_ACCEPT_CONTENT='json,pickle,yaml', C_FORCE_ROOT='1').start()
    proof = tmp_path / 'pickle-was-loaded'
    pickled = pickle.dumps(WritesAFile(proof))
    yaml_body = yaml.safe_dump([[author(920001)], {}, NO_EMBED]).encode()
    publish(master_app, queue, pickled, content_type='application/x-python-serialize', content_encoding='binary')
    master_app.send_task(TASK_NAME, args=[WritesAFile(proof)], exchange='cqrs.direct', routing_key=queue,
                         serializer='pickle')
    publish(master_app, queue, yaml_body, content_type='application/x-yaml')
    # kombu inflates a compressed body as it receives it; the replica queue still refuses it
    publish(master_app, queue, zlib.compress(call(author(920002))), content_type='application/json',
            content_encoding='utf-8', compression='application/x-gzip')

    good_messages_behind()

    letters = wait_for_letters(services, queue, replica_db('replica_a'), 4)
    time.sleep(1)
    assert not proof.exists(), 'a pickle body was loaded'
    assert len(letters) == 4
    assert {letter['error']['reason'] for letter in letters} == {'not json'}
    raws = [letter['raw'] for letter in letters]
    assert {'content_type': 'application/x-python-serialize', 'base64': base64.b64encode(pickled).decode()} in raws
    assert {'content_type': 'application/x-yaml', 'text': yaml_body.decode()} in raws
    assert not ReplicaAuthor.objects.using('replica_a').exists()
    assert worker.alive()


# --- 3. nesting depth and size limits ----------------------------------------------------------


def test_nesting_up_to_the_limit_applies_and_deeper_is_dead_lettered(services, replica_db, master_app):
    queue = services.queue('replica_a')
    worker = services.worker(queue, replica_db('replica_a')).start()
    at_limit = [[author(930001, meta=nested(DEFAULT_DEPTH - 3))], {}, NO_EMBED]
    over_limit = [[author(930002, meta=nested(DEFAULT_DEPTH - 2))], {}, NO_EMBED]
    the_issue = [[author(930003, meta=nested(600))], {}, NO_EMBED]
    assert (depth(at_limit), depth(over_limit)) == (DEFAULT_DEPTH, DEFAULT_DEPTH + 1)
    bodies = [json.dumps(body).encode() for body in (at_limit, over_limit, the_issue)]
    for body in bodies:
        publish(master_app, queue, body)

    good_messages_behind()

    letters = wait_for_letters(services, queue, replica_db('replica_a'), 2)
    assert len(letters) == 2
    for body in bodies[1:]:
        letter = letter_for(letters, body)
        assert letter['error']['reason'] == 'too deeply nested'
        assert f'max_nesting_depth ({DEFAULT_DEPTH})' in letter['error']['message']
    wait_until(lambda: ReplicaAuthor.objects.using('replica_a').filter(pk=930001).exists(),
               message='the envelope at the nesting limit applied')
    assert set(ReplicaAuthor.objects.using('replica_a').values_list('pk', flat=True)) == {930001}
    assert worker.alive()


def sized(pk: int, size: int) -> bytes:
    """A good task body of exactly ``size`` bytes (padding in meta)."""
    empty = call(author(pk, meta={'pad': ''}))
    body = call(author(pk, meta={'pad': 'x' * (size - len(empty))}))
    assert len(body) == size
    return body


def test_a_body_up_to_max_message_size_applies_and_a_larger_one_is_dead_lettered(services, replica_db, master_app):
    limit = 64 * 1024
    queue = services.queue('replica_a')
    worker = services.worker(queue, replica_db('replica_a'), DJANGO_SETTINGS_MODULE='tests.settings_hostile',
                             CQRS_TEST_MAX_MESSAGE_SIZE=str(limit)).start()
    at_limit, over_limit = sized(940001, limit), sized(940002, limit + 1)
    publish(master_app, queue, at_limit)
    publish(master_app, queue, over_limit)

    good_messages_behind()

    [letter] = wait_for_letters(services, queue, replica_db('replica_a'), 1)
    assert letter['error']['reason'] == 'too large'
    assert f'{limit + 1} bytes, more than max_message_size ({limit})' in letter['error']['message']
    assert letter['raw']['size'] == limit + 1 and letter['raw']['truncated'] is True
    assert base64.b64decode(letter['raw']['base64']) == over_limit[:limit]
    wait_until(lambda: ReplicaAuthor.objects.using('replica_a').filter(pk=940001).exists(),
               message='the envelope at the size limit applied')
    assert not ReplicaAuthor.objects.using('replica_a').filter(pk=940002).exists()
    assert worker.alive()
