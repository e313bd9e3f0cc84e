"""Dead letters on a real kombu transport (DESIGN §8, §10): the dead-letter queue, dump, retry and
purge, and the ``cqrs_dead_letters`` command.

Tier ii: a Celery app on kombu's ``memory://`` transport, whose state is global to the process, so
every test uses queue names of its own and deletes them afterwards.
"""

import dataclasses
import datetime
import io
import json
import logging
import uuid

import pytest
from celery import Celery
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from kombu import Connection, Queue

from cqrs_celery import SignalType
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.exceptions import ConfigurationError
from cqrs_celery.replica import dead_letters, queues

UPDATED_AT = '2024-05-06T07:08:09.123456+00:00'


@dataclasses.dataclass
class Service:
    """A replica service on the memory broker: its app, queue and dead-letter queue names."""

    app: Celery
    connection: Connection
    queue: str
    dead_letter_queue: str

    @property
    def channel(self):
        return self.connection.default_channel

    def size(self, name):
        return self.channel.queue_declare(name).message_count

    def declare_replica_queue(self):
        """What a replica worker does when it starts: its queue, bound to cqrs.direct and the models."""
        queues.replica_queue(self.app)(self.channel).declare()

    def replica_messages(self):
        """(headers, delivery_info, body) of every message in the replica queue, taken off it."""
        bound = Queue(self.queue)(self.channel)
        taken = []
        while (message := bound.get(no_ack=True, accept=['json'])) is not None:
            taken.append((message.headers, message.delivery_info, message.decode()))
        return taken


def delete_queue(channel, name):
    for exchange, routing_key, _ in list(channel.state.queue_bindings(name)):
        channel.queue_unbind(name, exchange, routing_key)
    channel.queue_purge(name)
    channel.queue_delete(name)


@pytest.fixture
def service():
    app = Celery('dead_letters_memory', broker='memory://', set_as_current=False)
    queue = f'memq_{uuid.uuid4().hex[:12]}'
    with override_settings(CQRS={**settings.CQRS, 'app': app, 'queue': queue}), \
            app.connection_for_write() as connection:
        svc = Service(app, connection, queue, f'dead_letter_{queue}')
        try:
            yield svc
        finally:
            for name in (svc.queue, svc.dead_letter_queue):
                delete_queue(connection.default_channel, name)
    app.close()


def item_envelope(revision, sku='A', retries=0):
    data = {'sku': sku, 'name': f'item {sku}', 'quantity': 1, 'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT}
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk=sku, instance_data=data,
                    retries=retries)


def envelope_letter(revision, sku='A', retries=3, died=None):
    letter = dead_letters.record(error=RuntimeError(f'boom {sku}@{revision}'), reason=f'failed after {retries} retries',
                                 attempts=retries + 1, envelope=item_envelope(revision, sku, retries))
    if died is not None:
        letter['error']['time'] = died.isoformat()
    return letter


def raw_letter(body='garbage'):
    return dead_letters.record(error=ValueError('envelope is not JSON'), reason='bad input', attempts=0, raw=body)


def ago(**kwargs):
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(**kwargs)


def command(*args):
    out = io.StringIO()
    call_command('cqrs_dead_letters', *args, stdout=out)
    return out.getvalue().splitlines()


# --- the dead-letter queue -------------------------------------------------------------------


def test_a_dead_letter_is_published_to_the_services_dead_letter_queue(service):
    dead_letters.send(envelope_letter(1))

    assert service.size(service.dead_letter_queue) == 1
    assert service.size(service.queue) == 0


def test_a_dead_letter_is_logged_with_the_envelopes_fields_and_the_error(service, caplog):
    letter = envelope_letter(4, sku='B', retries=2)

    with caplog.at_level(logging.ERROR, logger='cqrs_celery.replica.dead_letters'):
        dead_letters.send(letter)

    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.replica.dead_letters']
    text = record.getMessage()
    assert 'cqrs_id=item pk=B revision=4 correlation_id=None' in text
    assert f'queue={service.queue} reason=failed after 2 retries error=RuntimeError: boom B@4 attempts=3' in text


def test_a_configured_dead_letter_queue_name_is_used(service):
    graveyard = f'graveyard_{uuid.uuid4().hex[:12]}'
    try:
        with override_settings(CQRS={**settings.CQRS, 'app': service.app, 'queue': service.queue,
                                     'replica': {**settings.CQRS['replica'], 'dead_letter_queue': graveyard}}):
            dead_letters.send(envelope_letter(1))
            assert [letter['error']['message'] for letter in dead_letters.letters(service.app)] == ['boom A@1']

        assert service.size(graveyard) == 1
        assert service.size(service.dead_letter_queue) == 0
    finally:
        delete_queue(service.channel, graveyard)


def test_the_dead_letter_queue_is_durable_and_bound_to_the_direct_exchange(service):
    queue = dead_letters.dead_letter_queue(service.app)

    assert (queue.name, queue.durable, queue.queue_arguments) == (service.dead_letter_queue, True, None)
    assert [(b.exchange.name, b.routing_key) for b in queue.bindings] == [('cqrs.direct', service.dead_letter_queue)]


def test_on_rabbitmq_the_dead_letter_queue_drops_letters_after_dead_message_ttl(service):
    rabbit = Celery('dead_letters_rabbit', broker='amqp://guest:guest@127.0.0.1:1//', set_as_current=False)

    assert dead_letters.dead_letter_queue(rabbit).queue_arguments == {'x-message-ttl': 864000 * 1000}
    with override_settings(CQRS={**settings.CQRS, 'replica': {'dead_message_ttl': None}}):
        assert dead_letters.dead_letter_queue(rabbit).queue_arguments is None


def test_a_service_without_a_queue_has_no_dead_letter_queue(service):
    with override_settings(CQRS={**settings.CQRS, 'app': service.app, 'queue': None}), \
            pytest.raises(ConfigurationError, match=r"CQRS\['queue'\] is not set"):
        dead_letters.dead_letter_queue(service.app)


# --- letters ---------------------------------------------------------------------------------


def test_letters_returns_every_dead_letter_oldest_first_and_leaves_them_in_the_queue(service):
    sent = [envelope_letter(1, 'A'), raw_letter('not json'), envelope_letter(2, 'B')]
    for letter in sent:
        dead_letters.send(letter)

    assert dead_letters.letters(service.app) == sent
    assert dead_letters.letters(service.app) == sent
    assert service.size(service.dead_letter_queue) == 3


def test_letters_of_an_empty_dead_letter_queue_is_an_empty_list(service):
    assert dead_letters.letters(service.app) == []


def test_letters_with_a_limit_returns_the_oldest_and_keeps_the_queue_order(service):
    sent = [envelope_letter(n, sku) for n, sku in enumerate('ABCDE')]
    for letter in sent:
        dead_letters.send(letter)

    assert dead_letters.letters(service.app, limit=2) == sent[:2]
    assert dead_letters.letters(service.app) == sent


def test_a_foreign_message_in_the_dead_letter_queue_is_shown_raw(service):
    dead_letters.send(envelope_letter(1))
    with service.app.producer_or_acquire() as producer:
        producer.publish(b'\x80\x04not json', exchange='cqrs.direct', routing_key=service.dead_letter_queue,
                         content_type='application/octet-stream', content_encoding='binary')

    first, foreign = dead_letters.letters(service.app)

    assert first['error']['message'] == 'boom A@1'
    assert foreign['envelope'] is None
    assert foreign['raw']['content_type'] == 'application/octet-stream'
    assert foreign['error']['reason'] == 'undecodable dead letter'
    assert service.size(service.dead_letter_queue) == 2


# --- retry -----------------------------------------------------------------------------------


def test_retry_sends_each_dead_envelope_back_to_this_services_queue_with_attempts_reset(service):
    service.declare_replica_queue()
    for letter in (envelope_letter(1, 'A', retries=5), envelope_letter(2, 'B', retries=3)):
        dead_letters.send(letter)

    assert dead_letters.retry(service.app) == (2, 0, 0)

    messages = service.replica_messages()
    assert [headers['task'] for headers, _, _ in messages] == [TASK_NAME, TASK_NAME]
    assert [(info['exchange'], info['routing_key']) for _, info, _ in messages] == [
        ('cqrs.direct', service.queue)] * 2
    envelopes = [decode(args[0]) for _, _, (args, kwargs, _) in messages]
    assert envelopes == [item_envelope(1, 'A'), item_envelope(2, 'B')]
    assert all(envelope.retries == 0 and envelope.queue is None for envelope in envelopes)
    assert dead_letters.letters(service.app) == []


def test_retry_sends_again_the_rows_of_a_message_kept_whole_after_an_internal_error(service):
    from cqrs_celery.envelope import encode_batch

    service.declare_replica_queue()
    batch = encode_batch([item_envelope(4, 'A'), item_envelope(7, 'B')])
    broken = dict(batch, rows=[*batch['rows'], 'not a row'])
    for raw in (batch, item_envelope(2, 'C').to_wire(), broken, 'not a message'):
        dead_letters.send(dead_letters.record(error=RuntimeError('unexpected'), reason=dead_letters.INTERNAL_ERROR,
                                              attempts=0, raw=raw))

    assert dead_letters.retry(service.app) == dead_letters.Retried(sent=2, without_envelope=2, other_service=0)

    sent = [body[0][0] for _, _, body in service.replica_messages()]
    assert [(row['instance_pk'], row['instance_data']['cqrs_revision'], row['retries']) for row in sent] == [
        ('A', 4, 0), ('B', 7, 0), ('C', 2, 0)]
    assert [letter['raw'] for letter in dead_letters.letters(service.app)] == [broken, 'not a message']


def test_retry_keeps_letters_without_an_envelope(service):
    service.declare_replica_queue()
    kept = [raw_letter('first'), raw_letter('second')]
    dead_letters.send(kept[0])
    dead_letters.send(envelope_letter(1))
    dead_letters.send(kept[1])

    assert dead_letters.retry(service.app) == dead_letters.Retried(sent=1, without_envelope=2, other_service=0)

    assert len(service.replica_messages()) == 1
    assert dead_letters.letters(service.app) == kept


def test_retry_with_a_limit_handles_the_oldest_letters_only(service):
    service.declare_replica_queue()
    letters = [envelope_letter(n, sku) for n, sku in enumerate('ABC')]
    for letter in letters:
        dead_letters.send(letter)

    assert dead_letters.retry(service.app, limit=2) == (2, 0, 0)

    assert [decode(args[0]).instance_pk for _, _, (args, _, _) in service.replica_messages()] == ['A', 'B']
    assert dead_letters.letters(service.app) == letters[2:]


# --- purge -----------------------------------------------------------------------------------


def test_purge_drops_every_dead_letter(service):
    for n in range(3):
        dead_letters.send(envelope_letter(n))

    assert dead_letters.purge(service.app) == 3
    assert dead_letters.letters(service.app) == []


def test_purge_of_expired_letters_drops_only_those_older_than_dead_message_ttl(service):
    old, fresh, undated = envelope_letter(1, 'A', died=ago(hours=2)), envelope_letter(2, 'B', died=ago(minutes=5)), \
        raw_letter()
    del undated['error']['time']
    for letter in (old, fresh, undated, envelope_letter(3, 'C', died=ago(days=1))):
        dead_letters.send(letter)

    with override_settings(CQRS={**settings.CQRS, 'app': service.app, 'queue': service.queue,
                                 'replica': {**settings.CQRS['replica'], 'dead_message_ttl': 3600}}):
        assert dead_letters.purge(service.app, expired_only=True) == 2

    assert dead_letters.letters(service.app) == [fresh, undated]


def test_purge_of_expired_letters_without_a_ttl_keeps_everything(service):
    letters = [envelope_letter(1, died=ago(days=365)), envelope_letter(2)]
    for letter in letters:
        dead_letters.send(letter)

    with override_settings(CQRS={**settings.CQRS, 'app': service.app, 'queue': service.queue,
                                 'replica': {**settings.CQRS['replica'], 'dead_message_ttl': None}}):
        assert dead_letters.purge(service.app, expired_only=True) == 0

    assert dead_letters.letters(service.app) == letters


# --- the cqrs_dead_letters command -----------------------------------------------------------


def test_dump_prints_one_json_line_per_letter_and_leaves_the_queue_as_it_was(service):
    sent = [envelope_letter(1, 'A'), raw_letter('not json'), envelope_letter(2, 'B')]
    for letter in sent:
        dead_letters.send(letter)

    lines = command('dump')

    assert [json.loads(line) for line in lines] == sent
    assert dead_letters.letters(service.app) == sent


def test_dump_with_a_limit_prints_the_oldest_letters(service):
    for n in range(3):
        dead_letters.send(envelope_letter(n))

    lines = command('dump', '--limit', '2')

    assert [json.loads(line)['envelope']['instance_data']['cqrs_revision'] for line in lines] == [0, 1]


def test_dump_of_an_empty_queue_prints_nothing(service):
    assert command('dump') == []


def test_the_retry_command_sends_envelopes_back_and_reports_kept_letters(service):
    service.declare_replica_queue()
    dead_letters.send(envelope_letter(1))
    dead_letters.send(raw_letter())

    lines = command('retry')

    assert lines == [f'1 envelopes sent back to {service.queue}', '1 letters without an envelope were kept']
    assert len(service.replica_messages()) == 1
    assert [letter['raw'] for letter in dead_letters.letters(service.app)] == ['garbage']


@pytest.mark.parametrize('action', ['retry', 'purge'])
def test_a_dry_run_only_counts_and_changes_nothing(service, action):
    service.declare_replica_queue()
    sent = [envelope_letter(1), envelope_letter(2)]
    for letter in sent:
        dead_letters.send(letter)

    lines = command(action, '--dry-run')

    assert lines == [{'retry': f'dry run: 2 envelopes would be sent back to {service.queue}',
                      'purge': f'dry run: 2 dead letters would be removed from {service.dead_letter_queue}'}[action]]
    assert dead_letters.letters(service.app) == sent
    assert service.replica_messages() == []


def test_the_purge_command_removes_every_letter(service):
    for n in range(2):
        dead_letters.send(envelope_letter(n))

    assert command('purge') == [f'2 dead letters removed from {service.dead_letter_queue}']
    assert dead_letters.letters(service.app) == []


def test_the_purge_command_with_expired_removes_only_expired_letters(service):
    fresh = envelope_letter(2, died=ago(minutes=1))
    dead_letters.send(envelope_letter(1, died=ago(days=30)))
    dead_letters.send(fresh)

    assert command('purge', '--expired') == [f'1 dead letters removed from {service.dead_letter_queue}']
    assert dead_letters.letters(service.app) == [fresh]


def test_the_command_refuses_to_run_without_a_queue(service):
    with override_settings(CQRS={**settings.CQRS, 'app': service.app, 'queue': None}), \
            pytest.raises(CommandError, match=r"CQRS\['queue'\] is not set"):
        command('dump')


def test_a_broker_failure_is_reported_as_a_command_error(service, monkeypatch):
    def unreachable(app, limit=None):
        raise ConnectionRefusedError('broker unreachable')

    monkeypatch.setattr(dead_letters, 'letters', unreachable)

    with pytest.raises(CommandError, match=f'dump failed on {service.dead_letter_queue}: broker unreachable'):
        command('dump')


def test_an_unknown_action_is_refused(service):
    with pytest.raises(CommandError, match='invalid choice'):
        command('resurrect')


# --- isolation -------------------------------------------------------------------------------


def test_the_queues_of_these_tests_are_deleted_afterwards():
    app = Celery('dead_letters_memory_check', broker='memory://', set_as_current=False)
    with app.connection_for_write() as conn:
        state = conn.default_channel.state
        leftovers = {key.queue for key in state.bindings if key.queue.startswith(('memq_', 'dead_letter_memq_'))}
        tables = [entry for name, exchange in state.exchanges.items()
                  for entry in exchange.get('table', []) if 'memq_' in entry[-1]]

    assert leftovers == set()
    assert tables == []


# --- hardening (issue 8 points 14-16, issue 9.6) ---------------------------------------------


def foreign_service_letter(revision, sku='F'):
    """A letter another replica service recorded into a dead-letter queue shared with this one."""
    letter = envelope_letter(revision, sku)
    letter['error']['queue'] = 'another_service'
    return letter


def publish_raw_letter(service, body: bytes):
    with service.app.producer_or_acquire() as producer:
        producer.publish(body, exchange='cqrs.direct', routing_key=service.dead_letter_queue,
                         content_type='application/json', content_encoding='utf-8')


def test_retry_keeps_letters_recorded_by_another_services_queue(service):
    service.declare_replica_queue()
    other = foreign_service_letter(7)
    dead_letters.send(other)
    dead_letters.send(envelope_letter(1, 'A'))

    lines = command('retry')

    assert lines == [f'1 envelopes sent back to {service.queue}',
                     "1 letters recorded by another service's queue were kept"]
    assert [decode(args[0]).instance_pk for _, _, (args, _, _) in service.replica_messages()] == ['A']
    assert dead_letters.letters(service.app) == [other]


def test_a_retry_dry_run_counts_exactly_what_the_retry_then_does(service):
    service.declare_replica_queue()
    for letter in (envelope_letter(1, 'A'), raw_letter(), foreign_service_letter(2), envelope_letter(3, 'B')):
        dead_letters.send(letter)

    dry = command('retry', '--dry-run')
    real = command('retry')

    assert dry == [f'dry run: 2 envelopes would be sent back to {service.queue}',
                   '1 letters without an envelope would be kept',
                   "1 letters recorded by another service's queue would be kept"]
    assert real == [f'2 envelopes sent back to {service.queue}', '1 letters without an envelope were kept',
                    "1 letters recorded by another service's queue were kept"]
    assert len(service.replica_messages()) == 2


def test_a_purge_dry_run_of_expired_letters_counts_only_the_expired_ones(service):
    for letter in (envelope_letter(1, died=ago(days=30)), envelope_letter(2, died=ago(minutes=1))):
        dead_letters.send(letter)

    assert command('purge', '--expired', '--dry-run') == [
        f'dry run: 1 dead letters would be removed from {service.dead_letter_queue}']
    assert len(dead_letters.letters(service.app)) == 2


@pytest.mark.django_db
def test_retry_clears_the_expiry_of_an_expired_envelope_so_it_applies(service, monkeypatch):
    from cqrs_celery.replica.tasks import apply_envelope
    from tests.replica_app.models import ReplicaItem

    service.declare_replica_queue()
    expired = item_envelope(1, 'X').replace(expires=ago(hours=1))
    dead_letters.send(dead_letters.record(error=RuntimeError('expired'), reason='expired', attempts=0,
                                          envelope=expired))
    assert expired.is_expired()

    command('retry')

    [(_, _, (args, _, _))] = service.replica_messages()
    assert decode(args[0]).expires is None
    refused = []
    monkeypatch.setattr(dead_letters, 'send', refused.append)
    assert apply_envelope.run(args[0]) == 'created'
    assert refused == [] and ReplicaItem.objects.filter(pk='X').exists()


def test_retry_with_expires_in_gives_the_envelope_that_long(service):
    service.declare_replica_queue()
    dead_letters.send(envelope_letter(1, 'A'))

    command('retry', '--expires-in', '3600')

    [(_, _, (args, _, _))] = service.replica_messages()
    expires = decode(args[0]).expires
    assert ago(seconds=-3590) < expires <= ago(seconds=-3600)


def test_dump_prints_every_letter_as_strict_json_even_a_lone_surrogate_or_nan(service):
    dead_letters.send(envelope_letter(1, 'A'))
    publish_raw_letter(service, b'{"envelope": null, "raw": "\\ud800 lone", "error": {"reason": "bad input"}}')
    publish_raw_letter(service, b'{"envelope": null, "raw": [NaN, Infinity, -Infinity], "error": {}}')
    dead_letters.send(envelope_letter(2, 'B'))

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f'{name} is not JSON'))

    lines = command('dump')

    assert len(lines) == 4
    letters = [strict(line) for line in lines]
    assert all(line.encode('utf-8') for line in lines)
    assert letters[1]['raw'] == '\ud800 lone'
    assert letters[2]['raw'] == ['NaN', 'Infinity', '-Infinity']
    assert [letters[0]['envelope']['instance_pk'], letters[3]['envelope']['instance_pk']] == ['A', 'B']


def test_dump_of_an_empty_queue_says_so_on_stderr(service):
    out, err = io.StringIO(), io.StringIO()

    call_command('cqrs_dead_letters', 'dump', stdout=out, stderr=err)

    assert out.getvalue() == ''
    assert f'no dead letters in {service.dead_letter_queue}' in err.getvalue()


@pytest.mark.parametrize('raw', [
    '{"v": 1, "cqrs_id": "item", "instance_pk": "Z", "instance_data": {"cqrs_revision": 9}}',
    {'cqrs_id': 'item', 'instance_pk': 'Z', 'instance_data': {'cqrs_revision': 9}},
    '[[{"cqrs_id": "item", "instance_pk": "Z", "instance_data": {"cqrs_revision": 9}}], {"x": 1}, {}]',
], ids=['json-text', 'decoded', 'task-body'])
def test_a_raw_letter_is_logged_with_the_cqrs_id_its_body_names(service, caplog, raw):
    with caplog.at_level(logging.ERROR, logger='cqrs_celery.replica.dead_letters'):
        dead_letters.send(dead_letters.record(error='refused', reason='invalid message', attempts=0, raw=raw))

    [record] = [r for r in caplog.records if r.name == 'cqrs_celery.replica.dead_letters']
    assert 'cqrs_id=item pk=Z revision=9 ' in record.getMessage()
