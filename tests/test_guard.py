"""The replica queue's gate (issue 8.1-8.4, DESIGN §8) on generated message shapes: a message the gate
lets through is one Celery builds a request from and runs without raising, so only the gate or the
task decides; the gate's refusals say why. The broker tests publish the same kinds of message to real
workers; these cases are many more, in this process.

Tier i: kombu messages built here; the request is Celery's own (``GuardedRequest``), executed in
this process with dead letters and retries captured.
"""

import json
import random
import uuid

import pytest
from celery.exceptions import InvalidTaskError
from django.conf import settings
from kombu import Message
from kombu.serialization import loads

from cqrs_celery.constants import RECONCILE_TASK, TASK_NAME
from cqrs_celery.replica import consumer, guard
from cqrs_celery.replica.guard import GuardedRequest
from tests.celery_app import app

pytestmark = pytest.mark.django_db(transaction=True)

UPDATED = '2026-01-01T00:00:00+00:00'
NO_EMBED = {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}

#: Values for any header, argument or key.
ANY = [None, True, 0, -1, 2 ** 64, 1.5, '', 'x', '2000-01-01T00:00:00+00:00', '9999-12-31T00:00:00+00:00',
       'tomorrow', [], [None, None], [0.001, 0.001], ['x'], {}, {'task': 'celery.backend_cleanup'},
       str(uuid.uuid4()), TASK_NAME, RECONCILE_TASK, 'celery.backend_cleanup']

#: Headers Celery reads (protocol 2).
HEADERS = ['id', 'task', 'lang', 'root_id', 'parent_id', 'group', 'group_index', 'retries', 'timelimit', 'eta',
           'expires', 'shadow', 'origin', 'argsrepr', 'kwargsrepr', 'ignore_result', 'stamped_headers', 'stamps',
           'replaced_task_nesting', 'link', 'link_error', 'chain', 'callbacks', 'errbacks', 'chord',
           'compression', 'x-delivery-count']


def envelope(pk):
    return {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'author', 'instance_pk': pk,
            'instance_data': {'id': pk, 'name': f'author {pk}', 'email': '', 'cqrs_revision': 0,
                              'cqrs_updated': UPDATED},
            'previous_data': None, 'meta': None, 'correlation_id': None, 'queue': None, 'expires': None,
            'retries': 0}


def generated_message(rng, pk):
    """A protocol 2 task message for the replica queue with a few of its parts made hostile."""
    args, kwargs, embed = [envelope(pk)], {}, dict(NO_EMBED)
    headers = {'lang': 'py', 'task': TASK_NAME, 'id': str(uuid.uuid4()), 'shadow': None, 'eta': None,
               'expires': None, 'group': None, 'group_index': None, 'retries': 0, 'timelimit': [None, None],
               'root_id': None, 'parent_id': None, 'argsrepr': '', 'kwargsrepr': '', 'origin': 'gen',
               'ignore_result': False}
    content_type, encoding = 'application/json', 'utf-8'
    for _ in range(rng.choice([1, 1, 2, 3])):
        part = rng.random()
        if part < 0.45:
            key = rng.choice(HEADERS)
            if rng.random() < 0.2:
                headers.pop(key, None)
            else:
                headers[key] = rng.choice(ANY)
        elif part < 0.6:
            args = rng.choice([[], [envelope(pk), 1], [rng.choice(ANY)], rng.choice(ANY)])
        elif part < 0.7:
            kwargs = rng.choice([{'self': 1}, {'raw': envelope(pk)}, rng.choice(ANY)])
        elif part < 0.8:
            embed = rng.choice([{**NO_EMBED, rng.choice(sorted(NO_EMBED)): [rng.choice(ANY)]}, rng.choice(ANY)])
        elif part < 0.9:
            content_type, encoding = rng.choice([('application/x-python-serialize', 'binary'),
                                                 ('application/x-yaml', 'utf-8'), ('application/json', 'latin-1'),
                                                 ('application/json', None), ('text/plain', 'utf-8')])
        else:
            args = [{**envelope(pk), rng.choice(['v', 'cqrs_id', 'instance_data', 'meta', 'retries']):
                     rng.choice(ANY)}]
    body = json.dumps([args, kwargs, embed]) if rng.random() < 0.95 else rng.choice(['[[], {}]', 'null', '{"a": 1}'])
    return Message(body=body.encode(), content_type=content_type, content_encoding=encoding, headers=headers,
                   delivery_info={'exchange': 'cqrs.direct', 'routing_key': settings.CQRS['queue']}, channel=None)


@pytest.mark.parametrize('seed', range(4))
def test_a_message_the_gate_lets_through_becomes_a_request_that_runs_without_raising(letters, retries, seed):
    rng = random.Random(f'gate-{seed}')
    passed = refused = 0
    for case in range(150):
        message = generated_message(rng, pk=seed * 1000 + case)
        shown = f'case {seed}/{case}: {message.headers!r} {message.content_type} {message.body[:400]!r}'

        refusal = guard.check(message)

        if refusal is not None:
            assert refusal.reason and refusal.message, shown
            refused += 1
            continue
        passed += 1
        try:
            request = GuardedRequest(message, app=app)
        except InvalidTaskError as exc:  # the consumer step dead-letters these; the gate should have said so
            raise AssertionError(f'the gate let through what Celery refuses ({exc}): {shown}') from exc
        assert request.eta is None or request.eta.year < 9999, shown
        result = request.execute()
        assert result is None or isinstance(result, str), shown
    assert passed and refused


@pytest.mark.parametrize('seed', range(2))
def test_an_admitted_body_is_what_kombu_decodes_and_celery_reads_it_without_decoding_again(seed):
    rng = random.Random(f'admit-{seed}')
    admitted = 0
    for case in range(150):
        message = generated_message(rng, pk=seed * 1000 + case)
        if guard.check(message) is not None:
            continue  # refused: dead-lettered by the consumer step (tested elsewhere)
        admitted += 1

        body = consumer.admitted(message)

        assert message._decoded_cache is body
        assert message.payload == body == loads(message.body, 'application/json', 'utf-8')
    assert admitted


def raw_message(text):
    """A cqrs task message whose body is the JSON ``text`` exactly as given."""
    headers = {'lang': 'py', 'task': TASK_NAME, 'id': str(uuid.uuid4()), 'retries': 0, 'timelimit': [None, None]}
    return Message(body=text.encode(), content_type='application/json', content_encoding='utf-8', headers=headers,
                   delivery_info={'exchange': 'cqrs.direct', 'routing_key': settings.CQRS['queue']}, channel=None)


def call_text(name_json):
    """The JSON text of a call whose envelope's author name is the JSON value ``name_json``, as written."""
    text = json.dumps([[envelope(1)], {}, NO_EMBED])
    return text.replace('"author 1"', name_json)


def nested(depth):
    return '[' * depth + ']' * depth


@pytest.mark.parametrize('value, words', [
    ('NaN', 'nan is not a JSON number'),
    ('-Infinity', '-inf is not a JSON number'),
    ('1e400', 'inf is not a JSON number'),
    ('[1, -2.5e999]', '-inf is not a JSON number'),
    (r'"\ud800"', 'lone surrogate'),
    (r'"a\uDC01b"', 'lone surrogate'),
    (r'{"\udbff": 1}', 'lone surrogate'),
    ('{"__type__": "datetime", "__value__": "2020-01-01"}', 'kombu type marker'),
    (r'{"\u005f_type__": "datetime", "__value_\u005f": "2020-01-01"}', 'kombu type marker'),
    (r'{"\u005F\u005Ftype\u005F\u005F": "datetime", "\u005f\u005fvalue__": 1}', 'kombu type marker'),
    (nested(200), 'nest deeper than max_nesting_depth'),
])
def test_the_gate_refuses_what_strict_json_does_not_carry_however_the_bytes_spell_it(value, words):
    refusal = guard.check(raw_message(call_text(value)))

    assert refusal is not None and words in refusal.message, refusal
    assert refusal.reason in {'undecodable', 'too deeply nested'}


@pytest.mark.parametrize('value', [
    r'"\ud83d\ude00 and \u00e9"', '"\U0001f600 and é"', '1.5e300', '-0.0', r'"__type__ \u005f"',
    '{"__type__": "datetime"}', r'"C:\\u005c"',
])
def test_the_gate_admits_strict_json_however_it_is_escaped(value):
    assert guard.check(raw_message(call_text(value))) is None


def test_the_gate_measures_depth_without_escapes_as_with_them():
    limit = django_settings_depth()
    # the envelope puts the name 5 levels deep: [[{"instance_data": {"name": …}}]] inside the body list
    fits, too_deep = nested(limit - 4), nested(limit - 3)
    for escape in ('', r'"\u005f", '):
        assert guard.check(raw_message(call_text(fits.replace('[', '[' + escape, 1)))) is None
        refusal = guard.check(raw_message(call_text(too_deep.replace('[', '[' + escape, 1))))
        assert refusal is not None and refusal.reason == 'too deeply nested'


def django_settings_depth():
    from cqrs_celery.conf import get_settings

    return get_settings().replica.max_nesting_depth
