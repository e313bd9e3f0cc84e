"""The envelope: what the master encodes is exactly what a replica decodes, and bad input is refused
with a typed error that keeps the raw body (tier i, no broker)."""

import dataclasses
import datetime

import pytest
import ujson

from cqrs_celery import EnvelopeError, SignalType, UnsupportedVersionError
from cqrs_celery.constants import ENVELOPE_VERSION
from cqrs_celery.envelope import Envelope, decode, decode_message, dumps, encode_batch

UTC = datetime.timezone.utc

#: The keys DESIGN.md §4 documents, and nothing else.
WIRE_KEYS = {'v', 'signal_type', 'cqrs_id', 'instance_pk', 'instance_data', 'previous_data', 'meta',
             'correlation_id', 'queue', 'expires', 'retries'}

FULL = Envelope(
    signal_type=SignalType.SYNC,
    cqrs_id='book',
    instance_pk='7f9c1d9e-2c1a-4c55-9a57-3a7c1f0b7e11',
    instance_data={'id': '7f9c1d9e-2c1a-4c55-9a57-3a7c1f0b7e11', 'title': 'Dune', 'price': '12.5000',
                   'tags': ['sf', 'classic'], 'cqrs_revision': 4, 'cqrs_updated': '2024-05-01T10:00:00.123456+00:00'},
    previous_data={'title': 'Dune (draft)', 'price': '11.0000'},
    meta={'tenant': 'acme', 'nested': {'depth': 2}},
    correlation_id='req-42',
    queue='replica_a',
    expires=datetime.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    retries=3,
)
MINIMAL = Envelope(signal_type=SignalType.SAVE, cqrs_id='author', instance_pk=1,
                   instance_data={'id': 1, 'cqrs_revision': 0})
DELETE = Envelope(signal_type=SignalType.DELETE, cqrs_id='item', instance_pk='SKU-1',
                  instance_data={'sku': 'SKU-1', 'cqrs_revision': 9})


MISSING = object()


def wire(**changes):
    """A valid wire dict with ``changes`` applied; a change to ``MISSING`` removes the key."""
    body = MINIMAL.to_wire()
    for key, value in changes.items():
        if value is MISSING:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize('envelope', [FULL, MINIMAL, DELETE], ids=['full', 'minimal', 'delete'])
def test_an_envelope_sent_as_json_text_decodes_to_an_equal_envelope(envelope):
    text = ujson.dumps(envelope.to_wire())

    assert decode(ujson.loads(text)) == envelope
    assert decode(text) == envelope
    assert decode(text.encode()) == envelope


@pytest.mark.parametrize('envelope', [FULL, MINIMAL, DELETE], ids=['full', 'minimal', 'delete'])
def test_dumps_gives_json_text_that_decodes_to_an_equal_envelope(envelope):
    assert decode(dumps(envelope)) == envelope


def test_the_wire_dict_has_exactly_the_documented_keys_and_plain_json_values():
    body = FULL.to_wire()

    assert set(body) == WIRE_KEYS
    assert body['v'] == ENVELOPE_VERSION
    assert body['signal_type'] == 'SYNC'
    assert body['expires'] == '2030-01-02T03:04:05.678901+00:00'
    assert ujson.loads(ujson.dumps(body)) == body


def test_an_envelope_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.cqrs_id = 'other'  # type: ignore[misc]


@pytest.mark.parametrize('envelope', [FULL, MINIMAL, DELETE], ids=['full', 'minimal', 'delete'])
def test_the_publishers_fast_constructor_gives_the_constructors_envelope(envelope):
    given = {field.name: getattr(envelope, field.name) for field in dataclasses.fields(Envelope)
             if getattr(envelope, field.name) != field.default}

    built = Envelope.fast(**given)

    assert built == envelope
    assert vars(built) == vars(envelope)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.cqrs_id = 'other'  # type: ignore[misc]


def test_the_revision_is_read_from_instance_data():
    assert FULL.revision == 4
    assert MINIMAL.revision == 0


def test_a_naive_expiry_on_the_wire_is_read_as_utc():
    envelope = decode(wire(expires='2030-01-01T00:00:00'))

    assert envelope.expires == datetime.datetime(2030, 1, 1, tzinfo=UTC)
    assert envelope.expires.utcoffset() == datetime.timedelta(0)


def test_an_expiry_with_an_offset_keeps_its_instant():
    envelope = decode(wire(expires='2030-01-01T02:00:00+02:00'))

    assert envelope.expires == datetime.datetime(2030, 1, 1, tzinfo=UTC)


def test_retries_default_to_zero_when_the_key_is_absent():
    assert decode(wire(retries=MISSING)).retries == 0


# --- bad input -------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param('this is not json', id='text-that-is-not-json'),
    pytest.param(b'\xff\xfe{', id='bytes-that-are-not-json'),
    pytest.param('', id='empty-text'),
    pytest.param([MINIMAL.to_wire()], id='a-list'),
    pytest.param('[1, 2]', id='json-text-of-a-list'),
    pytest.param('null', id='json-null'),
    pytest.param(42, id='a-number'),
    pytest.param(None, id='none'),
    *[pytest.param(wire(**{key: MISSING}), id=f'missing-{key}')
      for key in ('v', 'signal_type', 'cqrs_id', 'instance_pk', 'instance_data')],
    pytest.param(wire(signal_type='UPSERT'), id='unknown-signal_type'),
    pytest.param(wire(signal_type='save'), id='lower-case-signal_type'),
    pytest.param(wire(signal_type=['SAVE']), id='signal_type-a-list'),
    pytest.param(wire(cqrs_id=5), id='cqrs_id-an-int'),
    pytest.param(wire(cqrs_id=None), id='cqrs_id-null'),
    pytest.param(wire(cqrs_id=''), id='cqrs_id-empty'),
    pytest.param(wire(instance_data=[['id', 1]]), id='instance_data-a-list'),
    pytest.param(wire(instance_data='{"id": 1}'), id='instance_data-a-string'),
    pytest.param(wire(instance_data=None), id='instance_data-null'),
    pytest.param(wire(instance_data={'id': 1}), id='cqrs_revision-missing'),
    pytest.param(wire(instance_data={'id': 1, 'cqrs_revision': '3'}), id='cqrs_revision-a-string'),
    pytest.param(wire(instance_data={'id': 1, 'cqrs_revision': 3.0}), id='cqrs_revision-a-float'),
    pytest.param(wire(instance_data={'id': 1, 'cqrs_revision': True}), id='cqrs_revision-a-bool'),
    pytest.param(wire(instance_data={'id': 1, 'cqrs_revision': None}), id='cqrs_revision-null'),
    pytest.param(wire(previous_data=['title']), id='previous_data-a-list'),
    pytest.param(wire(previous_data='title'), id='previous_data-a-string'),
    pytest.param(wire(meta=[1]), id='meta-a-list'),
    pytest.param(wire(queue=7), id='queue-an-int'),
    pytest.param(wire(retries=-1), id='retries-negative'),
    pytest.param(wire(retries='1'), id='retries-a-string'),
    pytest.param(wire(retries=1.5), id='retries-a-float'),
    pytest.param(wire(retries=True), id='retries-a-bool'),
    pytest.param(wire(expires='tomorrow'), id='expires-not-a-datetime'),
    pytest.param(wire(expires='2030-13-01T00:00:00'), id='expires-month-13'),
    pytest.param(wire(expires=1893456000), id='expires-a-timestamp'),
    pytest.param(wire(expires={'at': 'noon'}), id='expires-an-object'),
    pytest.param(wire(instance_pk=None), id='instance_pk-null'),
    pytest.param(wire(instance_pk=True), id='instance_pk-a-bool'),
    pytest.param(wire(instance_pk=[1]), id='instance_pk-a-list'),
    pytest.param(wire(instance_pk={'id': 1}), id='instance_pk-an-object'),
    pytest.param(wire(instance_pk=float('nan')), id='instance_pk-nan'),
    pytest.param(wire(instance_pk='lone \ud800'), id='instance_pk-a-lone-surrogate'),
]


@pytest.mark.parametrize('raw', BAD_INPUTS)
def test_bad_input_raises_envelope_error_keeping_the_raw_body(raw):
    with pytest.raises(EnvelopeError) as excinfo:
        decode(raw)

    assert excinfo.value.raw is raw
    assert str(excinfo.value)


@pytest.mark.parametrize('version', [0, 3, 99, '1', 1.0, True, None, [1], {'major': 1}],
                         ids=repr)
def test_an_unknown_version_raises_unsupported_version_error_keeping_the_raw_body(version):
    raw = wire(v=version)

    with pytest.raises(UnsupportedVersionError) as excinfo:
        decode(raw)

    assert excinfo.value.raw is raw
    assert 'version' in str(excinfo.value)
    assert isinstance(excinfo.value, EnvelopeError)


def test_an_unknown_version_in_json_text_keeps_the_text():
    raw = ujson.dumps(wire(v=99))

    with pytest.raises(UnsupportedVersionError) as excinfo:
        decode(raw)

    assert excinfo.value.raw == raw


def test_the_error_says_which_keys_are_missing():
    with pytest.raises(EnvelopeError, match='cqrs_id, instance_pk'):
        decode(wire(cqrs_id=MISSING, instance_pk=MISSING))


# --- expiry ----------------------------------------------------------------------------------

EXPIRES = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(('expires', 'now', 'expired'), [
    pytest.param(None, datetime.datetime(2999, 1, 1, tzinfo=UTC), False, id='no-expiry-never-expires'),
    pytest.param(EXPIRES, EXPIRES - datetime.timedelta(microseconds=1), False, id='just-before'),
    pytest.param(EXPIRES, EXPIRES, True, id='at-the-expiry-instant'),
    pytest.param(EXPIRES, EXPIRES + datetime.timedelta(seconds=1), True, id='after'),
    pytest.param(EXPIRES, datetime.datetime(2030, 1, 1, 13, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
                 False, id='before-in-another-time-zone'),
])
def test_is_expired_compares_the_expiry_with_the_given_time(expires, now, expired):
    assert MINIMAL.replace(expires=expires).is_expired(now) is expired


@pytest.mark.parametrize(('offset', 'expired'), [
    pytest.param(datetime.timedelta(minutes=-1), True, id='a-minute-ago'),
    pytest.param(datetime.timedelta(minutes=1), False, id='in-a-minute'),
])
def test_is_expired_uses_the_current_utc_time_by_default(offset, expired):
    envelope = MINIMAL.replace(expires=datetime.datetime.now(UTC) + offset)

    assert envelope.is_expired() is expired


def test_an_expiry_decoded_from_the_wire_is_honoured():
    past = decode(wire(expires='2000-01-01T00:00:00Z'))
    future = decode(wire(expires='2999-01-01T00:00:00Z'))

    assert past.is_expired()
    assert not future.is_expired()


# --- v2 batches ------------------------------------------------------------------------------

ROWS = [MINIMAL, dataclasses.replace(MINIMAL, instance_pk=2, instance_data={'id': 2, 'cqrs_revision': 5},
                                     previous_data={'name': 'old'}, meta={'who': 'ann'}),
        dataclasses.replace(MINIMAL, signal_type=SignalType.DELETE, instance_pk=3,
                            instance_data={'id': 3, 'cqrs_revision': 2})]


def test_a_batch_round_trips_row_by_row_through_json():
    body = ujson.loads(ujson.dumps(encode_batch(ROWS)))

    assert body['v'] == 2 and body['cqrs_id'] == 'author' and len(body['rows']) == 3
    assert decode_message(body) == ROWS
    assert decode_message(ujson.dumps(body)) == ROWS


def test_a_v1_envelope_decodes_as_a_message_of_one_row():
    assert decode_message(FULL.to_wire()) == [FULL]


def test_a_bad_row_of_a_batch_is_reported_alone_and_the_others_decode():
    body = encode_batch(ROWS)
    body['rows'].insert(1, {'signal_type': 'SAVE', 'instance_pk': 9, 'instance_data': {'id': 9}})
    body['rows'].append(['not', 'a', 'row'])

    decoded = decode_message(body)

    assert decoded[0] == ROWS[0] and decoded[2:4] == ROWS[1:]
    assert isinstance(decoded[1], EnvelopeError) and 'cqrs_revision' in str(decoded[1])
    assert isinstance(decoded[4], EnvelopeError) and decoded[4].raw == ['not', 'a', 'row']


@pytest.mark.parametrize('change', [{'rows': []}, {'rows': None}, {'rows': {'a': 1}}, {'cqrs_id': ''},
                                    {'retries': -1}, {'queue': 5}], ids=repr)
def test_a_batch_whose_shared_fields_are_wrong_fails_every_row_or_the_whole_message(change):
    body = {**encode_batch(ROWS), **change}

    try:
        decoded = decode_message(body)
    except EnvelopeError:
        return
    assert decoded and all(isinstance(row, EnvelopeError) for row in decoded)


def test_only_a_directed_sync_can_be_forced():
    forced = dataclasses.replace(FULL, forced=True)
    assert decode(forced.to_wire()) == forced

    for envelope in (dataclasses.replace(FULL, queue=None), dataclasses.replace(FULL, signal_type=SignalType.SAVE)):
        with pytest.raises(EnvelopeError, match='forced'):
            decode({**envelope.to_wire(), 'forced': True})


def test_a_decoded_envelope_is_a_whole_envelope_equal_frozen_and_replaceable_as_one_built_by_hand():
    not_before = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    full = dataclasses.replace(FULL, forced=True, retries=3, not_before=not_before)

    decoded = decode(ujson.loads(ujson.dumps(full.to_wire())))

    assert decoded == full
    assert {f.name: getattr(decoded, f.name) for f in dataclasses.fields(Envelope)} == dataclasses.asdict(full)
    assert decoded.replace(retries=4) == dataclasses.replace(full, retries=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.retries = 5
