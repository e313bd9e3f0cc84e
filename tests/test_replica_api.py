"""The replica side (DESIGN §2, §7): ``apply()`` follows the revision table, whatever arrives.

Envelopes are made by hand and given to :func:`cqrs_celery.replica.apply.apply`, as the Celery task
does after decoding; no broker and no master row are involved.
"""

import decimal
import logging

import pytest

from cqrs_celery import ApplyError, DataError, SignalType, UnknownCQRSIdError
from cqrs_celery.envelope import Envelope
from cqrs_celery.models import ReplicaTombstone
from cqrs_celery.replica.apply import Outcome, apply
from tests.replica_app.models import (
    ManualNoteSink,
    NoteEvent,
    ReplicaAllFields,
    ReplicaAuthor,
    ReplicaBook,
    ReplicaItem,
    ReplicaPublisher,
)

pytestmark = pytest.mark.django_db(transaction=True)

THIS_QUEUE = 'replica_a'
UPDATED_AT = '2024-05-06T07:08:09.123456+00:00'
META = {'tenant': 'acme', 'origin': 'hand-made'}


def item_envelope(signal, revision, sku='A', name='apple', quantity=1, **kwargs):
    """A hand-made envelope for the Item model (ReplicaItem on this service)."""
    if signal == 'DELETE':
        data = {'sku': sku, 'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT}
    else:
        data = {'sku': sku, 'name': name, 'quantity': quantity, 'cqrs_revision': revision,
                'cqrs_updated': UPDATED_AT}
    return Envelope(signal_type=SignalType(signal), cqrs_id='item', instance_pk=sku, instance_data=data, **kwargs)


def save(revision, **kwargs):
    return item_envelope('SAVE', revision, **kwargs)


def sync(revision, **kwargs):
    return item_envelope('SYNC', revision, **kwargs)


def delete(revision, **kwargs):
    return item_envelope('DELETE', revision, **kwargs)


def stored(sku='A'):
    """(name, quantity, cqrs_revision) of the replica row, or None when it does not exist."""
    return ReplicaItem.objects.filter(pk=sku).values_list('name', 'quantity', 'cqrs_revision').first()


def tombstone(sku='A'):
    return ReplicaTombstone.objects.filter(cqrs_id='item', pk_value=sku).values_list('revision', flat=True).first()


# --- the revision table ------------------------------------------------------------------------


def test_a_save_of_a_missing_row_creates_it_with_every_field():
    result = apply(save(0, name='apple', quantity=3))

    assert result.outcome == Outcome.CREATED
    row = ReplicaItem.objects.get(pk='A')
    assert (row.name, row.quantity, row.cqrs_revision) == ('apple', 3, 0)
    assert row.cqrs_updated.isoformat() == UPDATED_AT
    assert result.instance.pk == 'A'


def test_a_sync_of_a_missing_row_creates_it():
    assert apply(sync(4)).outcome == Outcome.CREATED
    assert stored() == ('apple', 1, 4)


def test_a_newer_save_updates_the_row():
    apply(save(0))

    assert apply(save(1, name='pear', quantity=2)).outcome == Outcome.UPDATED
    assert stored() == ('pear', 2, 1)


def test_a_stale_save_is_skipped():
    apply(save(5, name='current'))

    assert apply(save(4, name='older')).outcome == Outcome.STALE
    assert stored() == ('current', 1, 5)


def test_a_duplicate_save_is_skipped_even_if_its_data_differs():
    apply(save(2, name='first delivery'))

    assert apply(save(2, name='same revision, other data')).outcome == Outcome.DUPLICATE
    assert stored() == ('first delivery', 1, 2)


def test_a_sync_at_the_stored_revision_re_applies_and_repairs_drift():
    apply(save(2, name='master value'))
    ReplicaItem.objects.filter(pk='A').update(name='drifted', quantity=99)

    assert apply(sync(2, name='master value')).outcome == Outcome.UPDATED
    assert stored() == ('master value', 1, 2)


def test_a_stale_sync_is_skipped():
    apply(save(3, name='current'))

    assert apply(sync(2, name='older')).outcome == Outcome.STALE
    assert stored() == ('current', 1, 3)


def test_a_revision_gap_is_applied_and_logged(caplog):
    apply(save(0))

    with caplog.at_level(logging.INFO, logger='cqrs_celery.replica.apply'):
        assert apply(save(7, name='much later')).outcome == Outcome.UPDATED

    assert stored() == ('much later', 1, 7)
    assert any('gap' in r.getMessage() and 'revision=7' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('revision', [3, 4])
def test_a_delete_at_or_above_the_stored_revision_deletes_and_records_a_tombstone(revision):
    apply(save(3))

    assert apply(delete(revision)).outcome == Outcome.DELETED
    assert stored() is None
    assert tombstone() == revision


def test_a_stale_delete_is_skipped():
    apply(save(5))

    assert apply(delete(4)).outcome == Outcome.STALE
    assert stored() == ('apple', 1, 5)


def test_a_late_save_after_a_delete_does_not_resurrect_the_row():
    apply(save(0))
    apply(delete(2))

    assert apply(save(1, name='late')).outcome == Outcome.STALE
    assert apply(sync(1, name='late')).outcome == Outcome.STALE
    assert stored() is None


def test_a_save_at_the_delete_revision_does_not_resurrect_the_row():
    apply(delete(2))

    assert apply(save(2)).outcome == Outcome.STALE
    assert stored() is None


def test_a_delete_of_a_missing_row_records_a_tombstone_so_an_older_save_is_skipped():
    assert apply(delete(3)).outcome == Outcome.TOMBSTONED
    assert tombstone() == 3

    assert apply(save(1)).outcome == Outcome.STALE
    assert stored() is None


def test_a_repeated_delete_keeps_the_highest_tombstone():
    apply(delete(5))
    apply(delete(3))

    assert tombstone() == 5
    assert stored() is None


def test_a_re_created_row_with_a_higher_revision_is_applied_and_clears_the_tombstone():
    apply(save(0))
    apply(delete(1))

    assert apply(save(2, name='second life')).outcome == Outcome.CREATED
    assert stored() == ('second life', 1, 2)
    assert tombstone() is None

    assert apply(delete(1)).outcome == Outcome.STALE
    assert stored() == ('second life', 1, 2)


def test_tombstones_are_kept_per_cqrs_id_and_pk():
    apply(delete(9, sku='A'))

    assert apply(save(0, sku='B')).outcome == Outcome.CREATED
    assert apply(Envelope(signal_type=SignalType.SAVE, cqrs_id='publisher', instance_pk='A',
                          instance_data={'id': 1, 'name': 'p', 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT})
                 ).outcome == Outcome.CREATED


# --- mapping, metadata, custom replicas ---------------------------------------------------------


def book_envelope(revision, **data):
    data = {'id': 10, 'title': 'Dune', 'price': '9.9900', 'author': 3, 'published': '1965-08-01',
            'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT, **data}
    return Envelope(signal_type=SignalType.SAVE, cqrs_id='book', instance_pk=10, instance_data=data,
                    previous_data={'title': 'Old'} if revision else None)


def test_cqrs_mapping_renames_master_fields():
    apply(book_envelope(0))

    row = ReplicaBook.objects.get(pk=10)
    assert (row.name, row.price, row.author_id, row.published.isoformat()) == (
        'Dune', decimal.Decimal('9.9900'), 3, '1965-08-01')


def test_previous_data_is_passed_to_cqrs_update_renamed_by_the_mapping():
    apply(book_envelope(0))
    apply(book_envelope(1, title='Dune Messiah'))

    row = ReplicaBook.objects.get(pk=10)
    assert (row.name, row.last_previous) == ('Dune Messiah', {'name': 'Old'})


def author_envelope(signal, revision, meta=META, **data):
    data = {'id': 7, 'name': 'Ann', 'email': 'ann@example.com', 'cqrs_revision': revision,
            'cqrs_updated': UPDATED_AT, **data}
    return Envelope(signal_type=SignalType(signal), cqrs_id='author', instance_pk=7, instance_data=data, meta=meta)


def test_a_replica_with_cqrs_meta_receives_the_metadata_on_create_and_update():
    apply(author_envelope('SAVE', 0))
    assert ReplicaAuthor.objects.get(pk=7).last_meta == META

    apply(author_envelope('SAVE', 1, meta={'tenant': 'other'}))
    assert ReplicaAuthor.objects.get(pk=7).last_meta == {'tenant': 'other'}


def test_a_replica_with_cqrs_meta_receives_the_metadata_on_delete(monkeypatch):
    apply(author_envelope('SAVE', 0))
    calls = []
    original = ReplicaAuthor.cqrs_delete.__func__

    def spy(cls, master_data, **kwargs):
        calls.append(kwargs)
        return original(cls, master_data, **kwargs)

    monkeypatch.setattr(ReplicaAuthor, 'cqrs_delete', classmethod(spy))

    assert apply(author_envelope('DELETE', 1)).outcome == Outcome.DELETED
    assert calls == [{'meta': META}]


def test_a_replica_without_cqrs_meta_is_not_given_metadata(monkeypatch):
    calls = []

    def record(name, original):
        def spy(*args, **kwargs):
            calls.append((name, kwargs))
            return original(*args, **kwargs)
        return spy

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(record('create', ReplicaItem.cqrs_create.__func__)))
    monkeypatch.setattr(ReplicaItem, 'cqrs_update', record('update', ReplicaItem.cqrs_update))
    monkeypatch.setattr(ReplicaItem, 'cqrs_delete', classmethod(record('delete', ReplicaItem.cqrs_delete.__func__)))

    apply(save(0, meta=META))
    apply(save(1, meta=META))
    apply(delete(2, meta=META))

    assert [name for name, _ in calls] == ['create', 'update', 'delete']
    assert all('meta' not in kwargs for _, kwargs in calls)


def note_envelope(signal, revision=0, queue=None):
    data = {'id': 1, 'text': 'hello', 'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT}
    return Envelope(signal_type=SignalType(signal), cqrs_id='manual_note', instance_pk=1, instance_data=data,
                    meta=META, queue=queue)


@pytest.mark.parametrize('signal', ['SAVE', 'SYNC'])
def test_a_raw_replica_receives_saves_and_syncs_with_meta(signal):
    result = apply(note_envelope(signal))

    assert result.outcome == Outcome.HANDLED
    [event] = NoteEvent.objects.all()
    assert (event.signal, event.payload['meta'], event.payload['data']['text']) == (signal, META, 'hello')


def test_a_raw_replica_receives_deletes_with_meta(monkeypatch):
    calls = []
    original = ManualNoteSink.cqrs_delete.__func__

    def spy(cls, master_data, **kwargs):
        calls.append(kwargs)
        return original(cls, master_data, **kwargs)

    monkeypatch.setattr(ManualNoteSink, 'cqrs_delete', classmethod(spy))

    assert apply(note_envelope('DELETE', 1)).outcome == Outcome.HANDLED
    assert [e.signal for e in NoteEvent.objects.all()] == ['DELETE']
    assert calls == [{'meta': META}]


def test_a_raw_replica_gets_every_envelope_without_revision_checks():
    for revision in (3, 1, 1):
        apply(note_envelope('SAVE', revision))

    assert [e.payload['data']['cqrs_revision'] for e in NoteEvent.objects.order_by('pk')] == [3, 1, 1]


def test_cqrs_save_applies_one_row_with_the_revision_rules():
    created = ReplicaItem.cqrs_save(save(1).instance_data)
    assert (created.pk, stored()) == ('A', ('apple', 1, 1))

    ReplicaItem.cqrs_save(save(0, name='older').instance_data)
    assert stored() == ('apple', 1, 1)

    ReplicaItem.cqrs_save(sync(1, name='synced').instance_data, sync=True)
    assert stored() == ('synced', 1, 1)


# --- directed syncs and queues -----------------------------------------------------------------


def test_a_sync_directed_to_another_queue_is_not_for_this_replica():
    apply(save(1, name='current'))

    assert apply(sync(2, name='synced', queue='other'), THIS_QUEUE).outcome == Outcome.NOT_FOR_ME
    assert stored() == ('current', 1, 1)


def test_a_sync_directed_to_this_queue_is_applied():
    apply(save(1, name='current'))

    assert apply(sync(2, name='synced', queue=THIS_QUEUE), THIS_QUEUE).outcome == Outcome.UPDATED
    assert stored() == ('synced', 1, 2)


def test_an_envelope_directed_to_another_queue_is_not_given_to_a_raw_replica():
    assert apply(note_envelope('SYNC', queue='other'), THIS_QUEUE).outcome == Outcome.NOT_FOR_ME
    assert not NoteEvent.objects.exists()


def publisher_envelope(signal, revision, name='Ace', queue=None):
    data = {'id': 5, 'name': name, 'cqrs_revision': revision, 'cqrs_updated': UPDATED_AT}
    return Envelope(signal_type=SignalType(signal), cqrs_id='publisher', instance_pk=5, instance_data=data,
                    queue=queue)


def test_a_replica_with_only_direct_syncs_ignores_a_broadcast_sync():
    assert apply(publisher_envelope('SYNC', 0), THIS_QUEUE).outcome == Outcome.NOT_FOR_ME
    assert not ReplicaPublisher.objects.exists()


def test_a_replica_with_only_direct_syncs_applies_a_sync_directed_to_it():
    assert apply(publisher_envelope('SYNC', 0, queue=THIS_QUEUE), THIS_QUEUE).outcome == Outcome.CREATED
    assert ReplicaPublisher.objects.get(pk=5).name == 'Ace'


def test_a_replica_with_only_direct_syncs_still_applies_saves_and_deletes():
    assert apply(publisher_envelope('SAVE', 0), THIS_QUEUE).outcome == Outcome.CREATED
    assert apply(publisher_envelope('SAVE', 1, name='Bee'), THIS_QUEUE).outcome == Outcome.UPDATED
    assert apply(publisher_envelope('DELETE', 2), THIS_QUEUE).outcome == Outcome.DELETED
    assert not ReplicaPublisher.objects.exists()


# --- errors ------------------------------------------------------------------------------------


def test_an_unknown_cqrs_id_raises_unknown_cqrs_id_error():
    envelope = Envelope(signal_type=SignalType.SAVE, cqrs_id='no_such_model', instance_pk=1,
                        instance_data={'id': 1, 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT})

    with pytest.raises(UnknownCQRSIdError, match='no_such_model'):
        apply(envelope)


WRONG_VALUES = [
    ('quantity', 'not a number'),
    ('quantity', [1, 2]),
    ('quantity', {'n': 1}),
    ('quantity', 1.5),
    ('quantity', True),
    ('name', {'a': 'dict'}),
    ('name', ['a', 'list']),
    ('cqrs_updated', 'yesterday'),
    ('cqrs_updated', 12),
]


@pytest.mark.parametrize(('field', 'value'), WRONG_VALUES)
def test_a_value_of_the_wrong_type_raises_data_error_naming_the_field(field, value):
    envelope = save(0)
    envelope.instance_data[field] = value

    with pytest.raises(DataError, match=rf'ReplicaItem\.{field}\b'):
        apply(envelope)
    assert stored() is None


ALL_FIELDS_WRONG_VALUES = [
    ('big', 'ten'),
    ('decimal', 'not a decimal'),
    ('flag', 'maybe'),
    ('day', '2024-13-45'),
    ('moment', 'not a time'),
    ('clock', '25:61'),
    ('duration', 'forever'),
    ('token', 'not-a-uuid'),
    ('blob', '***not base64***'),
    ('floating', 'NaN please'),
]


@pytest.mark.parametrize(('field', 'value'), ALL_FIELDS_WRONG_VALUES)
def test_every_field_type_rejects_a_value_it_cannot_hold(field, value):
    pk = '6f1d5a4e-2b7c-4d3a-9e8f-0a1b2c3d4e5f'
    envelope = Envelope(signal_type=SignalType.SAVE, cqrs_id='all_fields', instance_pk=pk,
                        instance_data={'id': pk, field: value, 'cqrs_revision': 0, 'cqrs_updated': UPDATED_AT})

    with pytest.raises(DataError, match=rf'ReplicaAllFields\.{field}\b'):
        apply(envelope)
    assert not ReplicaAllFields.objects.exists()


def test_a_wrong_value_in_an_update_leaves_the_row_unchanged():
    apply(save(0, name='kept'))
    envelope = save(1, name='changed')
    envelope.instance_data['quantity'] = 'many'

    with pytest.raises(DataError):
        apply(envelope)
    assert stored() == ('kept', 1, 0)


def test_a_primary_key_of_the_wrong_type_raises_data_error():
    with pytest.raises(DataError, match=r'ReplicaAuthor\.id\b'):
        apply(author_envelope('SAVE', 0, id='seven'))


def test_an_envelope_without_a_revision_raises_data_error():
    envelope = save(0)
    del envelope.instance_data['cqrs_revision']

    with pytest.raises(DataError, match='cqrs_revision'):
        apply(envelope)


@pytest.mark.parametrize('falsy', [None, False, 0])
def test_a_falsy_cqrs_create_raises_apply_error(monkeypatch, falsy):
    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(lambda cls, *args, **kwargs: falsy))

    with pytest.raises(ApplyError, match='cqrs_create'):
        apply(save(0))
    assert stored() is None


def test_a_falsy_cqrs_update_raises_apply_error_and_changes_nothing(monkeypatch):
    apply(save(0, name='kept'))

    def half_update(self, sync, mapped_data, *args, **kwargs):
        ReplicaItem.objects.filter(pk=self.pk).update(name='half done')
        return None

    monkeypatch.setattr(ReplicaItem, 'cqrs_update', half_update)

    with pytest.raises(ApplyError, match='cqrs_update'):
        apply(save(1, name='changed'))
    assert stored() == ('kept', 1, 0)


def test_a_falsy_cqrs_delete_raises_apply_error_and_keeps_the_row(monkeypatch):
    apply(save(0))
    monkeypatch.setattr(ReplicaItem, 'cqrs_delete', classmethod(lambda cls, *args, **kwargs: False))

    with pytest.raises(ApplyError, match='cqrs_delete'):
        apply(delete(1))
    assert stored() == ('apple', 1, 0)
    assert tombstone() is None


@pytest.mark.parametrize('signal', ['SAVE', 'DELETE'])
def test_a_falsy_result_from_a_raw_replica_raises_apply_error(monkeypatch, signal):
    monkeypatch.setattr(ManualNoteSink, 'cqrs_save', classmethod(lambda cls, *args, **kwargs: None))
    monkeypatch.setattr(ManualNoteSink, 'cqrs_delete', classmethod(lambda cls, *args, **kwargs: False))

    with pytest.raises(ApplyError):
        apply(note_envelope(signal))


@pytest.mark.django_db(transaction=True)
def test_a_replica_whose_primary_key_is_renamed_by_the_mapping_follows_every_rule(loopback):
    from cqrs_celery.envelope import Envelope
    from cqrs_celery.models import ReplicaTombstone
    from cqrs_celery.replica.apply import Outcome, apply
    from tests.master_app.models import Renamed
    from tests.replica_app.models import ReplicaRenamed

    row = Renamed.objects.create(number=41, name='first')
    stale = row.to_cqrs_dict()
    row.name = 'second'
    row.save()
    assert ReplicaRenamed.objects.values_list('remote_id', 'title', 'cqrs_revision').get() == (row.pk, 'second', 1)

    row_pk = row.pk
    row.delete()
    assert not ReplicaRenamed.objects.exists()
    assert ReplicaTombstone.objects.get(cqrs_id='renamed', pk_value=str(row_pk)).revision == 2
    late = Envelope(signal_type=SignalType.SAVE, cqrs_id='renamed', instance_pk=row_pk, instance_data=stale)
    assert apply(late).outcome == Outcome.STALE
    assert ReplicaRenamed.cqrs_save(stale) is None  # the model API keys the tombstone the same way
    assert not ReplicaRenamed.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_apply_in_process_raises_a_replica_error_at_block_exit_and_leaves_no_state_behind(monkeypatch):
    from cqrs_celery.models import OutboxEvent
    from cqrs_celery.testing import apply_in_process
    from tests.master_app.models import Item
    from tests.replica_app.models import ReplicaItem

    def broken(cls, sync, mapped_data, previous_data=None, meta=None):
        raise RuntimeError('replica bug')

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(broken))
    with pytest.raises(RuntimeError, match='replica bug'), apply_in_process():
        Item.objects.create(sku='A', name='a')
    monkeypatch.undo()
    assert not OutboxEvent.objects.exists()

    with apply_in_process():  # the next block (and the next test) starts clean
        Item.objects.create(sku='B', name='b')
    assert ReplicaItem.objects.filter(pk='B').exists()


@pytest.mark.django_db(transaction=True)
def test_apply_in_process_can_skip_cqrs_ids_without_a_local_replica():
    from cqrs_celery.registry import ReplicaRegistry
    from cqrs_celery.testing import apply_in_process
    from tests.master_app.models import Item, Publisher

    publisher_replica = ReplicaRegistry._models.pop('publisher')
    try:
        with pytest.raises(UnknownCQRSIdError), apply_in_process():
            Publisher.objects.create(name='p')
        with apply_in_process(only_local=True) as results:
            Publisher.objects.create(name='p')
            Item.objects.create(sku='C', name='c')
    finally:
        ReplicaRegistry._models['publisher'] = publisher_replica
    assert len(results) == 1
