"""django-cqrs compatibility of the replica model API (issue 10: points 2, 3 and 8).

A project moving from django-cqrs keeps its replica models: overridden ``cqrs_save``, hooks taking
``**kwargs``, raw (table-less) replicas, ``Model.cqrs`` calls, and its reliance on ``None``/``False``
from failed saves. These tests call the model API and :func:`apply` in-process, as the task does.
"""

import datetime
import logging
from unittest import mock

import pytest
from django.db import DatabaseError, models
from django.db.models import QuerySet

from cqrs_celery import ApplyError, DataError, SignalType, topology
from cqrs_celery.envelope import Envelope
from cqrs_celery.mixins import RawReplicaMixin, ReplicaMixin
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica import group
from cqrs_celery.replica.apply import Outcome, apply
from cqrs_celery.replica.group import apply_many
from cqrs_celery.replica.mixins import _prepare_replica
from cqrs_celery.replica.queues import replica_queue
from tests.replica_app.models import ReplicaBook, ReplicaItem

UPDATED = '2024-05-06T07:08:09.123456+00:00'
META = {'tenant': 'acme'}


def item_data(revision, sku='A', name='apple', quantity=1):
    return {'sku': sku, 'name': name, 'quantity': quantity, 'cqrs_revision': revision, 'cqrs_updated': UPDATED}


def envelope(signal, data, cqrs_id='item', pk='A', **kwargs):
    return Envelope(signal_type=SignalType(signal), cqrs_id=cqrs_id, instance_pk=pk, instance_data=data, **kwargs)


def stored(sku='A'):
    return ReplicaItem.objects.filter(pk=sku).values_list('name', 'quantity', 'cqrs_revision').first()


@pytest.fixture
def registry_restored():
    """Models declared by a test leave the replica registry as it was."""
    models_before, all_before = dict(ReplicaRegistry._models), {k: list(v) for k, v in ReplicaRegistry._all.items()}
    yield ReplicaRegistry
    ReplicaRegistry._models.clear()
    ReplicaRegistry._models.update(models_before)
    ReplicaRegistry._all.clear()
    ReplicaRegistry._all.update(all_before)


# --- point 2: overrides are honoured ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_apply_path_calls_an_overridden_cqrs_save_with_django_cqrs_keywords(monkeypatch):
    calls = []
    library_save = ReplicaItem.cqrs_save.__func__

    def cqrs_save(cls, master_data, **kwargs):
        calls.append((dict(master_data), kwargs))
        master_data['name'] = master_data['name'].upper()  # an override that adjusts data before super()
        return library_save(cls, master_data, **kwargs)

    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(cqrs_save))

    assert apply(envelope('SAVE', item_data(0), previous_data={'name': 'old'})).outcome == Outcome.CREATED
    assert apply(envelope('SYNC', item_data(1, name='pear'))).outcome == Outcome.UPDATED

    assert calls == [(item_data(0), {'previous_data': {'name': 'old'}}),
                     (item_data(1, name='pear'), {'previous_data': None, 'sync': True})]
    assert stored() == ('PEAR', 1, 1)


@pytest.mark.django_db(transaction=True)
def test_revision_and_tombstone_rules_stay_ours_around_an_override(monkeypatch):
    calls = []

    def cqrs_save(cls, master_data, **kwargs):
        calls.append(master_data['cqrs_revision'])
        return ReplicaItem.cqrs.save_instance(master_data, **kwargs)

    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(cqrs_save))
    apply(envelope('SAVE', item_data(3)))

    assert apply(envelope('SAVE', item_data(2))).outcome == Outcome.STALE  # older: the override is not called
    assert apply(envelope('SAVE', item_data(3))).outcome == Outcome.DUPLICATE
    assert apply(envelope('DELETE', item_data(4))).outcome == Outcome.DELETED
    assert apply(envelope('SAVE', item_data(4))).outcome == Outcome.STALE  # the tombstone holds
    assert calls == [3]
    assert stored() is None


@pytest.mark.django_db(transaction=True)
def test_cqrs_create_and_cqrs_update_written_with_kwargs_receive_previous_data_and_meta(monkeypatch):
    seen = []

    def cqrs_create(cls, sync, mapped_data, **kwargs):
        seen.append(('create', sync, kwargs))
        return cls._default_manager.create(**mapped_data)

    def cqrs_update(self, sync, mapped_data, **kwargs):
        seen.append(('update', sync, kwargs))
        for key, value in mapped_data.items():
            setattr(self, key, value)
        self.save()
        return self

    monkeypatch.setattr(ReplicaItem, 'cqrs_create', classmethod(cqrs_create))
    monkeypatch.setattr(ReplicaItem, 'cqrs_update', cqrs_update)
    monkeypatch.setattr(ReplicaItem, 'CQRS_META', True)

    apply(envelope('SAVE', item_data(0), meta=META))
    apply(envelope('SYNC', item_data(1, name='pear'), previous_data={'name': 'apple'}, meta=META))

    assert seen == [('create', False, {'previous_data': None, 'meta': META}),
                    ('update', True, {'previous_data': {'name': 'apple'}, 'meta': META})]
    assert stored() == ('pear', 1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_mutation_in_cqrs_update_does_not_leak_into_the_envelope_a_retry_sends(monkeypatch):
    def cqrs_update(self, sync, mapped_data, previous_data=None, meta=None):
        mapped_data.clear()
        previous_data['name'] = 'changed by the model'
        meta['tenant'] = 'changed by the model'
        return None  # fails: the envelope is retried as it arrived

    monkeypatch.setattr(ReplicaItem, 'cqrs_update', cqrs_update)
    monkeypatch.setattr(ReplicaItem, 'CQRS_META', True)
    apply(envelope('SAVE', item_data(0)))
    second = envelope('SAVE', item_data(1, name='pear'), previous_data={'name': 'apple'}, meta={'tenant': 'acme'})

    with pytest.raises(ApplyError):
        apply(second)

    assert second.instance_data == item_data(1, name='pear')
    assert second.previous_data == {'name': 'apple'}
    assert second.meta == {'tenant': 'acme'}


@pytest.mark.django_db(transaction=True)
def test_a_group_of_a_model_with_an_override_goes_row_by_row_and_calls_it(monkeypatch):
    calls = []
    library_save = ReplicaItem.cqrs_save.__func__

    def cqrs_save(cls, master_data, **kwargs):
        calls.append(master_data['sku'])
        return library_save(cls, master_data, **kwargs)

    assert group.uses_bulk_path(ReplicaItem)
    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(cqrs_save))
    assert not group.uses_bulk_path(ReplicaItem)

    results = apply_many([envelope('SAVE', item_data(0, sku=sku), pk=sku) for sku in 'ABC'])

    assert [r.outcome for r in results] == [Outcome.CREATED] * 3
    assert calls == ['A', 'B', 'C']


@pytest.mark.parametrize(('signal', 'cqrs_meta', 'expected'), [
    ('SAVE', True, ('save', {'previous_data': None, 'meta': META})),
    ('SYNC', True, ('save', {'previous_data': None, 'meta': META, 'sync': True})),
    ('DELETE', True, ('delete', {'meta': META})),
    ('SAVE', False, ('save', {'previous_data': None})),
    ('SYNC', False, ('save', {'previous_data': None, 'sync': True})),
    ('DELETE', False, ('delete', {})),
])
def test_a_raw_replica_receives_exactly_the_arguments_django_cqrs_passes(registry_restored, signal, cqrs_meta,
                                                                          expected):
    received = []

    class Documents(RawReplicaMixin):
        CQRS_ID = 'compat_documents'
        CQRS_META = cqrs_meta

        @classmethod
        def cqrs_save(cls, master_data, **kwargs):
            received.append(('save', kwargs))
            return master_data

        @classmethod
        def cqrs_delete(cls, master_data, **kwargs):
            received.append(('delete', kwargs))
            return True

    data = {'slug': 'x', 'cqrs_revision': 0, 'cqrs_updated': UPDATED}
    result = apply(envelope(signal, data, cqrs_id='compat_documents', pk='x', meta=META))

    assert result.outcome == Outcome.HANDLED
    assert received == [expected]


# --- point 3: the failure contract ----------------------------------------------------------------


@pytest.mark.django_db
def test_cqrs_save_on_data_missing_a_required_field_returns_none_and_logs(caplog):
    data = {'sku': 'A', 'quantity': 1, 'cqrs_revision': 0, 'cqrs_updated': UPDATED}

    with caplog.at_level(logging.ERROR):
        assert ReplicaItem.cqrs_save(data) is None

    assert 'cqrs SAVE failed: cqrs_id=item pk=A revision=0' in caplog.text
    assert 'name' in caplog.text
    assert stored() is None


@pytest.mark.django_db
def test_cqrs_save_without_the_primary_key_returns_none():
    assert ReplicaItem.cqrs_save({'id': 'A', 'name': 'x', 'quantity': 1, 'cqrs_revision': 0,
                                  'cqrs_updated': UPDATED}) is None


@pytest.mark.django_db
def test_cqrs_save_on_a_database_error_returns_none_and_logs(monkeypatch, caplog):
    def refuse(**kwargs):
        raise DatabaseError('refused')

    monkeypatch.setattr(ReplicaItem.objects, 'create', refuse)
    with caplog.at_level(logging.ERROR):
        assert ReplicaItem.cqrs_save(item_data(0)) is None
    assert 'refused' in caplog.text


@pytest.mark.django_db
def test_cqrs_save_on_a_database_error_in_an_update_returns_none(monkeypatch):
    ReplicaItem.cqrs_save(item_data(0))

    def refuse(self, *args, **kwargs):
        raise DatabaseError('refused')

    monkeypatch.setattr(ReplicaItem, 'save', refuse)
    assert ReplicaItem.cqrs_save(item_data(1, name='pear')) is None
    assert stored() == ('apple', 1, 0)


@pytest.mark.django_db
def test_cqrs_save_called_directly_returns_the_instance_for_stale_and_duplicate_data():
    ReplicaItem.cqrs_save(item_data(2, name='pear'))

    assert ReplicaItem.cqrs_save(item_data(2)).name == 'pear'
    assert ReplicaItem.cqrs_save(item_data(1)).name == 'pear'


@pytest.mark.django_db
def test_cqrs_save_accepts_python_values_and_django_cqrs_str_datetimes():
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)

    first = ReplicaItem.cqrs_save({**item_data(0), 'cqrs_updated': moment})
    second = ReplicaItem.cqrs_save({**item_data(1), 'cqrs_updated': str(moment)})

    assert first.cqrs_updated == moment
    second.refresh_from_db()
    assert second.cqrs_updated == moment


@pytest.mark.django_db
def test_cqrs_delete_takes_the_pk_under_id_and_deleting_nothing_succeeds():
    ReplicaItem.cqrs_save(item_data(0))

    assert ReplicaItem.cqrs_delete({'id': 'A', 'cqrs_revision': 1, 'cqrs_updated': UPDATED}) is True
    assert stored() is None
    assert ReplicaItem.cqrs_delete({'id': 'B', 'cqrs_revision': 1, 'cqrs_updated': UPDATED}) is True


@pytest.mark.django_db
def test_cqrs_delete_on_bad_data_or_a_database_error_returns_false_and_logs(monkeypatch, caplog):
    with caplog.at_level(logging.ERROR):
        assert ReplicaItem.cqrs_delete({'cqrs_revision': 1, 'cqrs_updated': UPDATED}) is False
        assert ReplicaItem.cqrs_delete({'sku': 'A', 'cqrs_updated': UPDATED}) is False

        def refuse(*args, **kwargs):
            raise DatabaseError('refused')

        monkeypatch.setattr(ReplicaItem.objects, 'filter', refuse)
        monkeypatch.setattr(ReplicaItem.objects, 'select_for_update', refuse)
        assert ReplicaItem.cqrs_delete({'id': 'A', 'cqrs_revision': 1, 'cqrs_updated': UPDATED}) is False

    assert caplog.text.count('cqrs DELETE failed') == 3


@pytest.mark.django_db
def test_a_direct_cqrs_delete_asks_the_managers_filter_even_when_no_row_is_stored(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise DatabaseError('refused')

    monkeypatch.setattr(ReplicaItem.objects, 'filter', refuse)
    with caplog.at_level(logging.ERROR):
        assert ReplicaItem.cqrs_delete({'id': 'A', 'cqrs_revision': 0, 'cqrs_updated': UPDATED}) is False

    assert 'cqrs DELETE failed: cqrs_id=item pk=A' in caplog.text


@pytest.mark.django_db(transaction=True)
def test_on_the_apply_path_what_super_logged_still_dead_letters_or_retries(monkeypatch):
    def cqrs_save(cls, master_data, **kwargs):
        return super(ReplicaItem, cls).cqrs_save(master_data, **kwargs)

    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(cqrs_save))
    missing_name = {'sku': 'A', 'quantity': 1, 'cqrs_revision': 0, 'cqrs_updated': UPDATED}
    with pytest.raises(DataError):  # bad data: the task dead-letters it
        apply(envelope('SAVE', missing_name))

    def refuse(**kwargs):
        raise DatabaseError('refused')

    monkeypatch.setattr(ReplicaItem.objects, 'create', refuse)
    with pytest.raises(DatabaseError):  # a database error: the task retries it
        apply(envelope('SAVE', item_data(0)))


@pytest.mark.django_db(transaction=True)
def test_an_override_that_returns_nothing_is_a_failure_to_retry(monkeypatch):
    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(lambda cls, master_data, **kwargs: None))

    with pytest.raises(ApplyError, match='cqrs_save returned None'):
        apply(envelope('SAVE', item_data(0)))


def test_raw_replica_mixin_reads_as_django_cqrs_defines_it():
    assert RawReplicaMixin.CQRS_ID is None
    assert RawReplicaMixin.CQRS_NO_DB_OPERATIONS is True
    assert RawReplicaMixin.CQRS_META is False
    with pytest.raises(NotImplementedError):
        RawReplicaMixin.cqrs_save(None)
    with pytest.raises(NotImplementedError):
        RawReplicaMixin.cqrs_delete(None)


def test_an_abstract_no_db_replica_raises_not_implemented_until_it_implements_the_methods(registry_restored):
    class NoTable(ReplicaMixin):
        CQRS_ID = 'compat_no_table'
        CQRS_NO_DB_OPERATIONS = True

        id = models.IntegerField(primary_key=True)

        class Meta:
            abstract = True

    with pytest.raises(NotImplementedError):
        NoTable.cqrs_save(None)
    with pytest.raises(NotImplementedError):
        NoTable.cqrs_delete(None)


# --- point 8: Model.cqrs, table-less replicas, registration by hand ---------------------------------


@pytest.mark.django_db
def test_the_cqrs_manager_saves_and_deletes_with_the_rules():
    instance = ReplicaItem.cqrs.save_instance(item_data(0))
    assert isinstance(instance, ReplicaItem)
    assert ReplicaItem.cqrs.save_instance(item_data(1, name='pear'), sync=True).name == 'pear'
    assert ReplicaItem.cqrs.delete_instance({'sku': 'A', 'cqrs_revision': 2, 'cqrs_updated': UPDATED}) is True
    assert stored() is None


@pytest.mark.django_db(transaction=True)
def test_the_cqrs_manager_create_instance_returns_none_when_the_row_exists(caplog):
    ReplicaItem.cqrs_save(item_data(1))
    mapped = {'sku': 'A', 'name': 'x', 'quantity': 1, 'cqrs_revision': 0,
              'cqrs_updated': datetime.datetime.now(datetime.timezone.utc)}

    with caplog.at_level(logging.ERROR):
        assert ReplicaItem.cqrs.create_instance(mapped) is None

    assert 'cqrs create failed: cqrs_id=item pk=A' in caplog.text
    assert stored() == ('apple', 1, 1)


@pytest.mark.django_db
def test_the_cqrs_manager_update_instance_skips_older_data_unless_it_is_a_sync():
    instance = ReplicaItem.cqrs_save(item_data(2))
    older = {'sku': 'A', 'name': 'old', 'quantity': 1, 'cqrs_revision': 1}

    assert ReplicaItem.cqrs.update_instance(instance, older).name == 'apple'
    assert ReplicaItem.cqrs.update_instance(instance, older, sync=True).name == 'old'
    assert stored() == ('old', 1, 1)


@pytest.mark.django_db
def test_the_cqrs_manager_maps_previous_data_like_the_apply_path(monkeypatch):
    seen = []

    def cqrs_update(self, sync, mapped_data, **kwargs):
        seen.append(kwargs)
        return self

    ReplicaBook.cqrs_save({'id': 1, 'title': 'T', 'price': '1.5', 'author': 1, 'cqrs_revision': 0,
                           'cqrs_updated': UPDATED})
    monkeypatch.setattr(ReplicaBook, 'cqrs_update', cqrs_update)
    ReplicaBook.cqrs_save({'id': 1, 'title': 'U', 'price': '1.5', 'author': 1, 'cqrs_revision': 1,
                           'cqrs_updated': UPDATED}, previous_data={'title': 'T'})

    assert seen == [{'previous_data': {'name': 'T'}}]


@pytest.mark.django_db(transaction=True)
def test_an_abstract_no_db_replica_is_registered_routed_and_bound_to_the_queue(registry_restored, settings):
    received = []

    class Notifications(ReplicaMixin):
        CQRS_ID = 'compat_notifications'
        CQRS_NO_DB_OPERATIONS = True
        CQRS_META = True

        id = models.IntegerField(primary_key=True)

        class Meta:
            abstract = True

        @classmethod
        def cqrs_save(cls, master_data, previous_data=None, sync=False, meta=None):
            received.append(('save', master_data['id'], sync, meta))
            return True

        @classmethod
        def cqrs_delete(cls, master_data, meta=None):
            received.append(('delete', master_data['id'], False, meta))
            return True

    assert ReplicaRegistry.get('compat_notifications') is Notifications
    data = {'id': 7, 'cqrs_revision': 0, 'cqrs_updated': UPDATED}
    assert apply(envelope('SAVE', data, cqrs_id='compat_notifications', pk=7, meta=META)).outcome == Outcome.HANDLED
    assert apply(envelope('DELETE', data, cqrs_id='compat_notifications', pk=7)).outcome == Outcome.HANDLED
    assert received == [('save', 7, False, META), ('delete', 7, False, None)]

    from tests.celery_app import app

    queue = replica_queue(app)
    assert topology.exchange_name('compat_notifications') in {binding.exchange.name for binding in queue.bindings}


def test_a_concrete_subclass_takes_the_place_of_its_abstract_replica(registry_restored):
    class Base(ReplicaMixin):
        CQRS_ID = 'compat_base'

        class Meta:
            abstract = True
            app_label = 'replica_app'

    assert ReplicaRegistry.get('compat_base') is Base

    class Concrete(Base):
        id = models.IntegerField(primary_key=True)

        class Meta:
            app_label = 'replica_app'

    assert ReplicaRegistry.get('compat_base') is Concrete
    assert 'compat_base' not in ReplicaRegistry.duplicates()


def test_prepare_replica_registers_a_proxy_and_a_raw_class_by_hand(registry_restored):
    class ItemProxy(ReplicaItem):
        class Meta:
            proxy = True
            app_label = 'replica_app'

    assert ReplicaRegistry.get('item') is ReplicaItem  # a proxy is not registered on its own
    _prepare_replica(ItemProxy)
    assert ReplicaRegistry.get('item') is ItemProxy
    assert 'item' not in ReplicaRegistry.duplicates()

    class Sink:
        CQRS_ID = 'compat_sink'

    with pytest.raises(Exception, match='RawReplicaMixin'):
        _prepare_replica(Sink)

    class RawSink(RawReplicaMixin):
        pass

    RawSink.CQRS_ID = 'compat_raw_sink'
    _prepare_replica(RawSink)
    assert ReplicaRegistry.get('compat_raw_sink') is RawSink


@pytest.mark.django_db(transaction=True)
def test_overridden_methods_decide_about_data_without_a_revision_as_in_django_cqrs(monkeypatch):
    saved, deleted = [], []
    monkeypatch.setattr(ReplicaItem, 'cqrs_save', classmethod(lambda cls, data, **kw: saved.append((data, kw)) or 1))
    monkeypatch.setattr(ReplicaItem, 'cqrs_delete',
                        classmethod(lambda cls, data, **kw: deleted.append((data, kw)) or 1))

    apply(envelope('SAVE', {}, previous_data={}))
    apply(envelope('DELETE', {'id': 1}))

    assert saved == [({}, {'previous_data': {}})]
    assert deleted == [({'id': 1}, {})]


@pytest.mark.django_db(transaction=True)
def test_the_apply_path_accepts_django_cqrs_str_datetimes():
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)

    result = apply(envelope('SAVE', {**item_data(0), 'cqrs_updated': str(moment)}))

    assert result.outcome == Outcome.CREATED
    assert ReplicaItem.objects.get(pk='A').cqrs_updated == moment


@pytest.mark.django_db
def test_a_direct_cqrs_save_asks_the_orm_for_its_row_lock_on_every_database():
    # django-cqrs's tests check the lock by patching QuerySet.select_for_update; the per-row path
    # keeps asking the ORM for it (a no-op where the database has no row locks)
    unlocked = mock.patch.object(QuerySet, 'select_for_update', autospec=True, side_effect=lambda queryset: queryset)
    with unlocked as asked:
        assert ReplicaItem.cqrs_save(item_data(0)).pk == 'A'
        assert ReplicaItem.cqrs_save(item_data(1)).name == 'apple'

    assert asked.call_count == 2
