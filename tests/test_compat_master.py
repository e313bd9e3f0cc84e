"""The master side behaves as django-cqrs's own tests say (issue 10): hooks, revisions, tracked
fields, DELETE data, bulk signals, registration calls and settings a migrating project brings.

Tier i: publishes are captured (``cqrs_captured``) or applied in-process (``loopback``); no broker.
"""

import contextlib
import math
from unittest import mock

import pytest
from django.conf import settings
from django.core import checks
from django.db import transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.test import override_settings

from cqrs_celery import SignalType
from cqrs_celery.checks import check_models, check_settings
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import (
    ALL_BASIC_FIELDS,
    DEFAULT_MASTER_AUTO_UPDATE_FIELDS,
    DEFAULT_MASTER_MESSAGE_TTL,
    FIELDS_TRACKER_FIELD_NAME,
)
from cqrs_celery.correlation import get_correlation_id
from cqrs_celery.exceptions import DataError
from cqrs_celery.metas import MasterMeta, ReplicaMeta
from cqrs_celery.mixins import bulk_relate_cqrs_serialization as mixins_bulk_relate
from cqrs_celery.replica.apply import Outcome
from cqrs_celery.signals import post_bulk_create, post_update
from cqrs_celery.utils import bulk_relate_cqrs_serialization
from tests.master_app.models import (
    Author,
    CompatFiltered,
    CompatProxy,
    CompatRegistered,
    CompatSimple,
    CompatTrackedBulk,
    CompatTrackedChild,
    CompatTrackedParent,
    Item,
)
from tests.replica_app.models import ReplicaItem

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _nothing_reaches_a_broker(cqrs_captured):
    """Every test captures what it publishes (``loopback`` applies it instead where a test asks)."""


class Rollback(Exception):
    """Raised inside ``transaction.atomic()`` to roll it back."""


def master_settings(**master):
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS.get('master', {}), **master}})


def of(captured, model):
    return [e for e in captured if e.cqrs_id == model.CQRS_ID]


def stored_revision(model, pk):
    return model._base_manager.values_list('cqrs_revision', flat=True).get(pk=pk)


# --- revisions: one change per instance and transaction ----------------------------------------


def test_a_row_created_and_saved_again_in_one_transaction_stays_at_revision_zero(cqrs_captured):
    before = CompatTrackedChild.objects.create(char_field='old')
    with transaction.atomic():
        created = CompatTrackedParent.objects.create(char_field='1')
        created.char_field = '2'
        created.save()
        built = CompatTrackedParent(char_field='a')
        built.save()
        before.char_field = 'new'
        before.save()

    assert [stored_revision(type(i), i.pk) for i in (before, created, built)] == [1, 0, 0]
    sent = {(e.cqrs_id, e.instance_pk): e for e in cqrs_captured[1:]}
    assert len(cqrs_captured) == 4 and len(sent) == 3
    assert (sent['cm_tracked_parent', created.pk].instance_data['char_field'],
            sent['cm_tracked_parent', created.pk].revision,
            sent['cm_tracked_parent', created.pk].previous_data['char_field']) == ('2', 0, None)
    assert (sent['cm_tracked_child', before.pk].revision,
            sent['cm_tracked_child', before.pk].previous_data['char_field']) == (1, 'old')


def test_saves_of_one_instance_in_a_transaction_bump_once_and_send_the_first_previous_values(cqrs_captured):
    instance = CompatTrackedParent.objects.create(char_field='db_value')
    with transaction.atomic():
        instance.refresh_from_db()
        instance.char_field = 'save_1'
        instance.save()
        instance.char_field = 'save_2'
        instance.save()

    create, update = cqrs_captured
    assert (create.instance_data['char_field'], create.previous_data['char_field']) == ('db_value', None)
    assert (update.instance_data['char_field'], update.previous_data['char_field']) == ('save_2', 'db_value')
    assert update.revision == 1 == stored_revision(CompatTrackedParent, instance.pk)
    assert instance.cqrs_revision == 1


def test_each_save_outside_a_transaction_bumps_the_revision():
    row = CompatSimple.objects.create(id=1)
    for expected in (1, 2):
        row.save()
        row.refresh_from_db()
        assert row.cqrs_revision == expected


def test_the_saves_count_follows_the_transaction():
    instance = CompatTrackedParent(char_field='1')
    instance.reset_cqrs_saves_count()
    assert (instance.cqrs_saves_count, instance.is_initial_cqrs_save) == (0, True)
    instance.save()
    instance.save()
    assert (instance.cqrs_saves_count, instance.is_initial_cqrs_save) == (0, True)

    with transaction.atomic():
        instance.save()
        assert (instance.cqrs_saves_count, instance.is_initial_cqrs_save) == (1, True)
        instance.save()
        instance.refresh_from_db()
        assert (instance.cqrs_saves_count, instance.is_initial_cqrs_save) == (2, False)

        other = CompatTrackedParent.objects.get(pk=instance.pk)
        assert other.cqrs_saves_count == 0
        other.save()
        assert other.cqrs_saves_count == 1
        other.reset_cqrs_saves_count()
        assert other.cqrs_saves_count == 0

    assert instance.cqrs_saves_count == 0 == other.cqrs_saves_count


def test_a_rolled_back_transaction_does_not_stop_the_next_one_from_bumping(cqrs_captured):
    instance = CompatTrackedParent.objects.create(char_field='1')
    with contextlib.suppress(Rollback), transaction.atomic():
        instance.char_field = '3'
        instance.save()
        raise Rollback  # no reset_cqrs_saves_count(): cqrs_celery notices the rollback itself
    with transaction.atomic():
        instance.char_field = '2'
        instance.save()

    assert stored_revision(CompatTrackedParent, instance.pk) == 1
    assert [(e.instance_data['char_field'], e.revision) for e in cqrs_captured] == [('1', 0), ('2', 1)]


def test_a_change_rolled_back_to_a_savepoint_is_bumped_again_by_the_next_save(cqrs_captured):
    row = CompatSimple.objects.create(id=1, name='a')
    cqrs_captured.clear()
    with transaction.atomic():
        CompatSimple.objects.create(id=2)  # the transaction has other work before the savepoint
        with contextlib.suppress(Rollback), transaction.atomic():
            row.name = 'b'
            row.save()
            raise Rollback
        row.name = 'c'
        row.save()

    assert stored_revision(CompatSimple, 1) == 1
    [envelope] = [e for e in cqrs_captured if e.instance_pk == 1]
    assert (envelope.instance_data['name'], envelope.revision) == ('c', 1)


def test_replicas_converge_on_rows_saved_several_times_in_transactions(loopback):
    item = Item.objects.create(sku='A', name='one')
    with transaction.atomic():
        item.name = 'two'
        item.save()
        item.quantity = 5
        item.save()
    with transaction.atomic():
        again = Item.objects.get(pk='A')
        again.name = 'three'
        again.save()

    master, replica = Item.objects.get(pk='A'), ReplicaItem.objects.get(pk='A')
    assert (replica.name, replica.quantity, replica.cqrs_revision) == ('three', 5, 2) == (
        master.name, master.quantity, master.cqrs_revision)


# --- update_fields -----------------------------------------------------------------------------


def test_update_fields_alone_neither_bumps_nor_publishes(cqrs_captured):
    row = CompatSimple.objects.create(id=1)
    cqrs_captured.clear()

    row.name = 'New'
    row.save(update_fields=['name'])

    assert cqrs_captured == []
    row.refresh_from_db()
    assert (row.name, row.cqrs_revision) == ('New', 0)


@pytest.mark.parametrize('how', ['setting', 'flag'])
def test_update_fields_with_the_setting_or_the_flag_bumps_and_publishes(cqrs_captured, how):
    row = CompatSimple.objects.create(id=1)
    updated = row.cqrs_updated
    cqrs_captured.clear()

    row.name = 'New'
    if how == 'setting':
        with master_settings(CQRS_AUTO_UPDATE_FIELDS=not DEFAULT_MASTER_AUTO_UPDATE_FIELDS,
                             CQRS_MESSAGE_TTL=DEFAULT_MASTER_MESSAGE_TTL):
            row.save(update_fields=['name'])
    else:
        row.save(update_fields=['name'], update_cqrs_fields=True)

    [envelope] = cqrs_captured
    assert (envelope.signal_type, envelope.instance_pk, envelope.instance_data['name'], envelope.revision) == (
        SignalType.SAVE, 1, 'New', 1)
    assert row.cqrs_updated > updated


def test_a_django_cqrs_settings_dict_without_app_still_publishes_to_the_test_helpers(cqrs_captured):
    row = CompatSimple.objects.create(id=1)
    cqrs_captured.clear()

    with override_settings(CQRS={'transport': 'tests.dj.transport.TransportStub', 'master': {
            'CQRS_AUTO_UPDATE_FIELDS': True, 'CQRS_MESSAGE_TTL': 86400, 'correlation_function': None,
            'meta_function': None}}):
        row.name = 'New'
        row.save(update_fields=['name'])

    [envelope] = cqrs_captured
    assert (envelope.instance_data['name'], envelope.revision, envelope.meta) == ('New', 1, None)


def test_update_fields_naming_the_revision_publish_what_the_caller_set(cqrs_captured):
    row = CompatSimple.objects.create(id=1, name='Old')
    cqrs_captured.clear()

    row.name = 'New'
    row.cqrs_revision = F('cqrs_revision') + 1
    row.save(update_fields=['name', 'cqrs_revision', 'cqrs_updated'], update_cqrs_fields=False)

    [envelope] = cqrs_captured
    assert (envelope.instance_data['name'], envelope.revision) == ('New', 1)
    assert row.cqrs_revision == 1


# --- CQRS_SERIALIZER ----------------------------------------------------------------------------


def test_the_serializer_class_is_imported_once_and_kept_on_the_model():
    from tests.master_app.models import SerializedBook
    from tests.master_app.serializers import SerializedBookSerializer

    book = SerializedBook.objects.create(title='Dune', price='12.50')

    assert book.to_cqrs_dict()['title'] == 'Dune'
    assert SerializedBook._cqrs_serializer_class is SerializedBookSerializer


def test_a_serializer_that_cannot_be_imported_fails_the_save_and_nothing_is_written(monkeypatch):
    from tests.master_app.models import SerializedBook

    monkeypatch.setattr(SerializedBook, 'CQRS_SERIALIZER', 'tests.Serializer')

    with pytest.raises(ImportError, match="CQRS_SERIALIZER can't be imported"), transaction.atomic():
        SerializedBook.objects.create(title='Dune', price='12.50')
    assert not SerializedBook.objects.exists()


# --- is_sync_instance ----------------------------------------------------------------------------


def test_is_sync_instance_filters_saves_and_deletes(cqrs_captured):
    out_row = CompatFiltered.objects.create(name='a')
    in_row = CompatFiltered.objects.create(name='title')
    assert [e.instance_pk for e in cqrs_captured] == [in_row.pk]

    cqrs_captured.clear()
    out_row.name, in_row.name = 'long', 's'
    for row in (out_row, in_row):
        row.save()
        row.refresh_from_db()
        assert row.cqrs_revision == 1
    assert [e.instance_pk for e in cqrs_captured] == [out_row.pk]

    cqrs_captured.clear()
    in_row.delete()
    assert cqrs_captured == []
    out_row.delete()
    assert [e.signal_type for e in cqrs_captured] == [SignalType.DELETE]


# --- DELETE data -------------------------------------------------------------------------------


def test_delete_data_names_the_pk_as_id_and_carries_the_custom_data(cqrs_captured):
    row = CompatSimple.objects.create(id=1)
    row.get_custom_cqrs_delete_data = lambda *args: {'1': '2'}
    row.delete()

    envelope = cqrs_captured[1]
    assert envelope.signal_type == SignalType.DELETE
    data = envelope.instance_data
    assert (data['id'], data['cqrs_revision'], data['custom']) == (1, 1, {'1': '2'})
    assert data['1'] == '2'  # merged in as well, as cqrs_celery always sent it
    assert isinstance(data['cqrs_updated'], str)


def test_a_replica_applies_a_delete_with_id_and_custom_data(loopback):
    item = Item.objects.create(sku='A', name='apple')
    item.get_custom_cqrs_delete_data = lambda: {'reason': 'sold out'}
    item.delete()

    assert [r.outcome for r in loopback] == [Outcome.CREATED, Outcome.DELETED]
    assert not ReplicaItem.objects.exists()


# --- tracked fields ----------------------------------------------------------------------------


def test_tracked_fields_on_create_and_update_are_those_django_cqrs_sends(cqrs_captured):
    instance = CompatTrackedParent()
    instance.char_field = 'Value'
    instance.save()
    assert instance.get_tracked_fields_data() == {'cqrs_revision': None, 'char_field': None}
    assert cqrs_captured[-1].previous_data == instance.get_tracked_fields_data()

    instance.char_field = 'New Value'
    instance.save()
    assert instance.get_tracked_fields_data() == {'cqrs_revision': 0, 'char_field': 'Value'}
    assert cqrs_captured[-1].previous_data == instance.get_tracked_fields_data()


def test_a_foreign_key_is_tracked_by_its_column_and_reported_by_its_name():
    first = CompatTrackedParent.objects.create(char_field='p1')
    second = CompatTrackedParent.objects.create(char_field='p2')
    child = CompatTrackedChild.objects.create(char_field='c', parent=first)

    assert getattr(child, FIELDS_TRACKER_FIELD_NAME).fields == {'char_field', 'parent_id'}
    assert child.get_tracked_fields_data() == {'char_field': None, 'parent_id': None}

    child.parent = second
    child.save()
    assert child.get_tracked_fields_data() == {'parent': first.pk}


def test_an_f_expression_is_read_back_for_the_dict_and_the_tracked_value_is_the_old_one(cqrs_captured):
    row = CompatTrackedBulk.objects.create(id=1, status='1')
    row.status = F('id')  # any expression
    row.save()

    assert row.to_cqrs_dict()['status'] == '1'
    assert row.get_tracked_fields_data()['status'] == '1'


def test_an_expression_not_saved_yet_cannot_be_sent_and_says_so(cqrs_captured):
    row = CompatTrackedBulk(status=F('id'))  # no primary key: nothing to read back

    with pytest.raises(DataError, match=r'status holds an expression .* save the instance'):
        row.to_cqrs_dict()


def test_bulk_create_sends_the_created_rows_with_their_tracked_columns(cqrs_captured):
    rows = CompatTrackedBulk.cqrs.bulk_create([CompatTrackedBulk(id=i, status='new') for i in range(1, 4)])

    assert [(r.id, r.status, r.cqrs_revision) for r in rows] == [(1, 'new', 0), (2, 'new', 0), (3, 'new', 0)]
    assert sorted((e.instance_pk, e.instance_data['status'], e.instance_data['description'], e.previous_data)
                  for e in cqrs_captured) == [(i, 'new', None, {'status': None}) for i in range(1, 4)]


@pytest.mark.parametrize(('filter_kwargs', 'untouched_revision', 'expected'), [
    ({'description': 'old'}, 1, [(0, {'description': 'old', 'status': None}, 1),
                                 (1, {'description': 'old', 'status': 'x'}, 2),
                                 (2, {'description': 'old', 'status': None}, 1)]),
    ({'id__in': {0, 1}}, 0, [(0, {'description': 'old', 'status': None}, 1),
                             (1, {'description': 'old', 'status': 'x'}, 2)]),
])
def test_bulk_update_sends_every_tracked_value_before_the_update(cqrs_captured, filter_kwargs, untouched_revision,
                                                                  expected):
    for i in range(3):
        CompatTrackedBulk.objects.create(id=i, description='old')
    changed = CompatTrackedBulk.objects.get(id=1)
    changed.status = 'x'
    changed.save()
    cqrs_captured.clear()

    count = CompatTrackedBulk.cqrs.bulk_update(
        queryset=CompatTrackedBulk.objects.filter(**filter_kwargs).order_by('id'), description='new', status=None)

    assert stored_revision(CompatTrackedBulk, 2) == untouched_revision
    assert count == len(cqrs_captured)
    sent = sorted(cqrs_captured, key=lambda e: e.instance_pk)
    assert [(e.instance_pk, e.previous_data, e.revision) for e in sent] == expected
    assert all((e.instance_data['description'], e.instance_data['status']) == ('new', None) for e in sent)


def test_bulk_update_of_nothing_publishes_nothing(cqrs_captured):
    CompatTrackedBulk.cqrs.bulk_update(queryset=CompatTrackedBulk.objects.all(), description='something')

    assert cqrs_captured == []


# --- bulk signals ------------------------------------------------------------------------------


@pytest.mark.parametrize('model', [CompatSimple, CompatTrackedParent, CompatRegistered])
@pytest.mark.parametrize('signal', [post_delete, post_save, post_bulk_create, post_update])
def test_the_signals_of_every_publishing_master_model_are_connected(model, signal):
    assert signal.has_listeners(model)


def test_post_bulk_create_sent_by_hand_publishes_the_rows(cqrs_captured):
    CompatSimple.objects.bulk_create([CompatSimple(id=i) for i in range(3)])  # the plain manager
    rows = list(CompatSimple.objects.all())
    assert cqrs_captured == []

    CompatSimple.call_post_bulk_create(rows)

    assert sorted(e.instance_pk for e in cqrs_captured) == [0, 1, 2]


def test_post_update_sent_by_hand_publishes_the_rows(cqrs_captured):
    for i in range(2):
        CompatSimple.objects.create(id=i)
    cqrs_captured.clear()
    CompatSimple.objects.update(name='bulk', cqrs_revision=F('cqrs_revision') + 1)

    post_update.send(CompatSimple, instances=list(CompatSimple.objects.all()), using='default')

    assert sorted((e.instance_pk, e.instance_data['name'], e.revision) for e in cqrs_captured) == [
        (0, 'bulk', 1), (1, 'bulk', 1)]


@pytest.mark.parametrize('module_function', [bulk_relate_cqrs_serialization, mixins_bulk_relate])
def test_bulk_relate_cqrs_serialization_works_as_context_manager_and_decorator(cqrs_captured, module_function):
    with module_function(), transaction.atomic(savepoint=False):
        for i in range(3):
            CompatSimple.objects.create(id=i)

    @module_function('cm_simple')
    def create_more():
        CompatSimple.objects.create(id=10)

    create_more()
    assert sorted(e.instance_pk for e in cqrs_captured) == [0, 1, 2, 10]


# --- MasterMeta / ReplicaMeta ------------------------------------------------------------------


def test_a_model_registered_with_master_meta_publishes_like_a_master_mixin_model(cqrs_captured):
    row = CompatRegistered.objects.create(name='abc')
    row.name = 'abcd'
    row.save()
    row.delete()

    assert [(e.signal_type, e.revision) for e in cqrs_captured] == [
        (SignalType.SAVE, 0), (SignalType.SAVE, 1), (SignalType.DELETE, 2)]
    assert cqrs_captured[1].previous_data == {'name': 'abc', 'cqrs_revision': 0}
    assert getattr(row, FIELDS_TRACKER_FIELD_NAME) is not None


def test_a_proxy_registered_with_master_meta_publishes_under_its_own_cqrs_id(cqrs_captured):
    CompatProxy.objects.create(id=5, name='proxy')

    [envelope] = cqrs_captured
    assert (envelope.cqrs_id, envelope.instance_pk, envelope.instance_data['name']) == ('cm_proxy', 5, 'proxy')


def test_master_meta_register_twice_is_harmless_and_refuses_a_model_without_the_mixin():
    assert MasterMeta.register(CompatRegistered) is CompatRegistered

    with pytest.raises(Exception, match='RawMasterMixin'):
        MasterMeta.register(Author.__mro__[-1])  # object


def test_replica_meta_register_prepares_the_model_as_the_replica_mixin_does(monkeypatch):
    from cqrs_celery.replica import mixins as replica_mixins

    prepared = []
    monkeypatch.setattr(replica_mixins, '_prepare_replica', lambda model, **kwargs: prepared.append(model))

    assert ReplicaMeta.register(ReplicaItem) is ReplicaItem
    assert prepared == [ReplicaItem]


# --- hooks: meta_function, get_cqrs_meta, correlation_function ----------------------------------


def test_meta_function_gets_django_cqrs_keywords_only(cqrs_captured):
    function = mock.MagicMock(return_value={1: 2})
    with master_settings(meta_function=function):
        row = CompatSimple.objects.create(id=1)

    assert cqrs_captured[0].meta == {'1': 2}  # JSON keys are strings
    function.assert_called_once()
    kwargs = function.call_args.kwargs
    assert set(kwargs) == {'obj', 'instance_data', 'previous_data', 'signal_type'}
    assert kwargs['obj'] is row
    assert (kwargs['signal_type'], kwargs['previous_data']) == (SignalType.SAVE, None)
    assert {k: kwargs['instance_data'][k] for k in ('id', 'name', 'cqrs_revision')} == {
        'id': 1, 'name': None, 'cqrs_revision': 0}


def test_an_instance_get_cqrs_meta_replaces_the_meta_function(cqrs_captured):
    row = CompatSimple.objects.create(id=1)
    cqrs_captured.clear()
    function = mock.MagicMock()
    row.get_cqrs_meta = lambda **kwargs: {'a': {'b': {}}, 'keys': sorted(kwargs)}

    with master_settings(meta_function=function):
        row.save()
        row.delete()

    assert [e.meta for e in cqrs_captured] == [
        {'a': {'b': {}}, 'keys': ['instance_data', 'previous_data', 'signal_type']},
        {'a': {'b': {}}, 'keys': ['instance_data', 'signal_type']}]
    function.assert_not_called()


def test_a_get_cqrs_meta_with_named_parameters_gets_them(cqrs_captured):
    row = CompatSimple.objects.create(id=1)
    cqrs_captured.clear()
    row.get_cqrs_meta = lambda instance_data, signal_type, previous_data=None: {
        'signal': str(signal_type), 'pk': instance_data['id']}

    row.save()
    row.delete()

    assert [e.meta for e in cqrs_captured] == [{'signal': 'SAVE', 'pk': 1}, {'signal': 'DELETE', 'pk': 1}]


def test_without_a_meta_function_the_meta_is_empty(cqrs_captured):
    with master_settings(meta_function=None):
        row = CompatSimple.objects.create(id=1)
        assert row.get_cqrs_meta() == {}

    assert cqrs_captured[0].meta is None  # kept: an empty meta travels as null


def test_the_correlation_function_is_called_as_django_cqrs_calls_it(cqrs_captured):
    assert get_correlation_id(None, None, None, None) is None
    with master_settings(correlation_function=lambda *args: '1q2w3e'):
        assert get_correlation_id(None, None, None, None) == '1q2w3e'
    with master_settings(correlation_function=lambda st, cid, pk, q: f'{cid}:{pk}:{st}:{q}'):
        CompatSimple.objects.create(id=3)

    assert cqrs_captured[0].correlation_id == 'cm_simple:3:SAVE:None'


# --- settings and checks a migrating project brings -------------------------------------------


DJANGO_CQRS_SETTINGS = {
    'transport': 'dj_cqrs.transport.RabbitMQTransport',
    'url': 'amqp://guest:guest@localhost:5672/',
    'consumer_prefetch_count': 10,
    'master': {'CQRS_AUTO_UPDATE_FIELDS': False, 'CQRS_MESSAGE_TTL': 86400, 'correlation_function': None,
               'meta_function': None},
    'replica': {'CQRS_MAX_RETRIES': None, 'CQRS_RETRY_DELAY': 1, 'delay_queue_max_size': 1000,
                'dead_letter_queue': 'dead_letter_replica', 'dead_message_ttl': 864000,
                'CQRS_QUERY_TIMEOUT': 10000, 'CQRS_LOG_TIMED_OUT_QUERIES': True, 'CQRS_QUERY_LOGGER': 'q'},
}


def test_django_cqrs_settings_are_warnings_with_hints_and_the_rest_works():
    with override_settings(CQRS={**DJANGO_CQRS_SETTINGS, 'app': settings.CQRS['app'], 'queue': 'replica'}):
        messages = check_settings()
        built = get_settings()

    assert all(isinstance(m, checks.Warning) and m.hint for m in messages)
    assert sorted(m.id for m in messages) == ['cqrs_celery.W020', 'cqrs_celery.W020', 'cqrs_celery.W021',
                                              'cqrs_celery.W021', 'cqrs_celery.W022', 'cqrs_celery.W022',
                                              'cqrs_celery.W022']
    assert built.replica.max_retries == math.inf
    assert (built.master.message_ttl, built.replica.retry_delay) == (86400, 1)


def test_cqrs_max_retries_none_retries_for_ever():
    with override_settings(CQRS={**settings.CQRS, 'replica': {'CQRS_MAX_RETRIES': None}}):
        assert ReplicaItem.should_retry_cqrs(10 ** 9)
        assert ReplicaItem.get_cqrs_retry_delay(10 ** 6) > 0


@pytest.mark.parametrize(('model', 'attr', 'value', 'check_id'), [
    (CompatSimple, 'CQRS_FIELDS', ['name'], 'cqrs_celery.E020'),
    (CompatSimple, 'CQRS_FIELDS', ['id', 'name', 'name'], 'cqrs_celery.E021'),
    (CompatTrackedBulk, 'CQRS_TRACKED_FIELDS', ('status', 'status'), 'cqrs_celery.E021'),
    (CompatSimple, 'CQRS_SERIALIZER', 'tests.master_app.serializers.ShelfSerializer', None),
    (ReplicaItem, 'CQRS_MAPPING', {'sku': 'name', 'name': 'name'}, 'cqrs_celery.E021'),
    (ReplicaItem, 'CQRS_MAPPING', {'name': 'name'}, 'cqrs_celery.E023'),
    (CompatTrackedBulk, 'CQRS_TRACKED_FIELDS', ('status', 'nope'), 'cqrs_celery.E011'),
])
def test_declarations_django_cqrs_refuses_are_refused_by_checks(monkeypatch, model, attr, value, check_id):
    monkeypatch.setattr(model, attr, value)
    if attr == 'CQRS_SERIALIZER':  # with explicit CQRS_FIELDS: both set
        monkeypatch.setattr(model, 'CQRS_FIELDS', ['id', 'name'])
        check_id = 'cqrs_celery.E022'

    found = [m for m in check_models() if m.obj is model]

    assert check_id in {m.id for m in found}
    assert all(isinstance(m, checks.Error) and m.hint for m in found)


def test_the_test_project_passes_the_django_cqrs_checks():
    assert not [m for m in check_models() if m.id in {'cqrs_celery.E020', 'cqrs_celery.E021',
                                                      'cqrs_celery.E022', 'cqrs_celery.E023'}]


def test_all_basic_fields_is_the_all_value():
    assert ALL_BASIC_FIELDS == '__all__' == CompatTrackedParent.CQRS_TRACKED_FIELDS


# --- the PostgreSQL trigger path keeps the same revisions ---------------------------------------


@pytest.fixture
def triggers_installed():
    from cqrs_celery.master import triggers

    with master_settings(meta_function=None):
        triggers.install('default')
        triggers.forget()
        assert triggers.active('default', Item)
        yield
    triggers.install('default')
    triggers.forget()


@pytest.mark.usefixtures('triggers_installed')
def test_with_triggers_saves_in_one_transaction_bump_once_and_replicas_converge(loopback):
    with transaction.atomic():
        item = Item.objects.create(sku='T', name='one')
        item.name = 'two'
        item.save()
    with transaction.atomic():
        item.name = 'three'
        item.save()
        item.quantity = 3
        item.save()
    with contextlib.suppress(Rollback), transaction.atomic():
        item.name = 'rolled back'
        item.save()
        raise Rollback
    item.refresh_from_db()
    item.name = 'four'
    item.save()

    master, replica = Item.objects.get(pk='T'), ReplicaItem.objects.get(pk='T')
    assert (master.name, master.quantity, master.cqrs_revision) == ('four', 3, 2)
    assert (replica.name, replica.quantity, replica.cqrs_revision) == ('four', 3, 2)


def test_an_instance_saved_in_a_transaction_still_pickles_and_copies():
    import copy
    import pickle

    with transaction.atomic():
        row = CompatSimple.objects.create(id=1)
        transaction.on_commit(lambda: None)  # an unpicklable callback waits for the commit
        row.save()
        assert row.cqrs_saves_count == 2

        clone = pickle.loads(pickle.dumps(row))
        twin = copy.deepcopy(row)

    assert (clone.pk, clone.cqrs_saves_count, twin.pk, twin.cqrs_saves_count) == (1, 0, 1, 0)


def test_the_registries_answer_under_django_cqrs_method_name(caplog):
    from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

    assert MasterRegistry.get_model_by_cqrs_id('cm_simple') is CompatSimple
    assert ReplicaRegistry.get_model_by_cqrs_id('item') is ReplicaItem
    assert ReplicaRegistry.get_model_by_cqrs_id('invalid') is None
    assert 'No replica model with such CQRS_ID: invalid.' in caplog.text
