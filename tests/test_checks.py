"""System checks: each misconfiguration is reported under its own stable id with a hint, and bad model
declarations fail when the class is defined, naming model and attribute (tier i)."""

import inspect
import os
import re
from io import StringIO

import pytest
from celery import Celery
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps

from cqrs_celery import checks as cqrs_checks
from cqrs_celery import conf
from cqrs_celery.checks import CHECK_IDS
from cqrs_celery.mixins import MasterMixin, RawReplicaMixin, ReplicaMixin
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

GOOD = {'app': 'tests.celery_app.app', 'queue': 'replica_a'}

#: check id -> name of the test below that provokes it.
PROVOKED: dict[str, str] = {}


def provokes(check_id):
    """Mark a test as the one that provokes ``check_id``."""

    def mark(test):
        PROVOKED[check_id] = test.__name__
        return test

    return mark


def cqrs_errors():
    """Every message the cqrs_celery checks report for the current settings and models."""
    return [m for m in checks.run_checks(tags=['cqrs_celery']) if (m.id or '').startswith('cqrs_celery.')]


def reported_ids():
    return {m.id for m in cqrs_errors()}


@pytest.fixture
def throwaway_apps(registries):
    """Models defined in the test go to an isolated app registry, not the project's."""
    with isolate_apps('tests.master_app', 'tests.replica_app'):
        yield


# --- a clean configuration -------------------------------------------------------------------


def test_the_test_project_passes_every_check():
    out = StringIO()

    call_command('check', stdout=out, stderr=out)

    assert 'no issues' in out.getvalue()
    assert 'cqrs_celery' not in out.getvalue()
    assert cqrs_errors() == []


def test_a_minimal_replica_configuration_passes():
    with override_settings(CQRS=GOOD):
        assert cqrs_errors() == []


def test_the_check_command_fails_on_a_cqrs_error_and_shows_its_id():
    with override_settings(CQRS={**GOOD, 'queue': 'not a queue'}), \
            pytest.raises(SystemCheckError, match=r'cqrs_celery\.E007'):
        call_command('check', stdout=StringIO(), stderr=StringIO())


def test_every_reported_problem_is_an_error_with_a_hint():
    with override_settings(CQRS={'queue': 'bad queue', 'extra': 1, 'master': {'meta_function': 'no.such.f'},
                                 'replica': {'CQRS_MAX_RETRIES': 'x'}}):
        errors = cqrs_errors()

    assert {m.id for m in errors} >= {'cqrs_celery.E002', 'cqrs_celery.E004', 'cqrs_celery.E005',
                                      'cqrs_celery.E007', 'cqrs_celery.E008'}
    assert all(m.level == checks.ERROR for m in errors)
    assert all(m.hint for m in errors)


# --- one test per check id -------------------------------------------------------------------


@provokes('cqrs_celery.E001')
@pytest.mark.parametrize('raw', [None, ['app', 'tests.celery_app.app'], 'tests.celery_app.app'],
                         ids=['missing', 'a-list', 'a-string'])
def test_e001_the_cqrs_setting_is_missing_or_not_a_dict(raw):
    with override_settings(CQRS=raw):
        assert 'cqrs_celery.E001' in reported_ids()


@provokes('cqrs_celery.E002')
def test_e002_the_celery_app_is_not_set():
    with override_settings(CQRS={'queue': 'replica_a'}):
        assert reported_ids() == {'cqrs_celery.E002'}


@provokes('cqrs_celery.E003')
@pytest.mark.parametrize('app', ['tests.no_such_module.app', 'tests.settings.SECRET_KEY', 42, Celery, 'celery.Celery',
                                 type('MyCelery', (Celery,), {})],
                         ids=['not-importable', 'not-a-celery-app', 'an-int', 'the-celery-class',
                              'the-celery-class-by-path', 'a-subclass'])
def test_e003_the_celery_app_cannot_be_imported_or_is_not_a_celery_app(app):
    with override_settings(CQRS={**GOOD, 'app': app}):
        assert reported_ids() == {'cqrs_celery.E003'}


@provokes('cqrs_celery.E004')
@pytest.mark.parametrize('raw', [
    {**GOOD, 'queues': ['replica_a']},
    {**GOOD, 'master': {'CQRS_MESSAGE_TTLS': 60}},
    {**GOOD, 'replica': {'CQRS_MAX_RETRY': 3}},
], ids=['top-level', 'master', 'replica'])
def test_e004_an_unknown_key(raw):
    with override_settings(CQRS=raw):
        assert reported_ids() == {'cqrs_celery.E004'}


@provokes('cqrs_celery.E005')
@pytest.mark.parametrize('raw', [
    {**GOOD, 'master': ['CQRS_MESSAGE_TTL', 60]},
    {**GOOD, 'master': {'CQRS_MESSAGE_TTL': '60'}},
    {**GOOD, 'replica': {'CQRS_MAX_RETRIES': -1}},
    {**GOOD, 'replica': {'CQRS_RETRY_DELAY': True}},
], ids=['section-not-a-dict', 'ttl-a-string', 'retries-negative', 'delay-a-bool'])
def test_e005_a_value_of_the_wrong_type(raw):
    with override_settings(CQRS=raw):
        assert reported_ids() == {'cqrs_celery.E005'}


@provokes('cqrs_celery.E006')
def test_e006_replica_models_without_a_queue():
    assert ReplicaRegistry.ids(), 'the test project declares replica models'

    with override_settings(CQRS={'app': 'tests.celery_app.app'}):
        errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E006'}
    assert 'book' in errors[0].msg


@provokes('cqrs_celery.E007')
@pytest.mark.parametrize('queue', ['my queue', '', '-leading-dash', 'q' * 201, 'replica_a\n', 7],
                         ids=['space', 'empty', 'leading-dash', 'too-long', 'trailing-newline', 'an-int'])
def test_e007_an_invalid_queue_name(queue):
    with override_settings(CQRS={**GOOD, 'queue': queue}):
        ids = reported_ids()

    # an empty name is also no queue at all for the replica models
    assert ids - {'cqrs_celery.E006'} == {'cqrs_celery.E007'}


@provokes('cqrs_celery.E008')
@pytest.mark.parametrize(('key', 'path'), [
    ('meta_function', 'tests.master_app.meta.no_such_function'),
    ('correlation_function', 'tests.no_such_module.correlation'),
    ('meta_function', 'tests.settings.SECRET_KEY'),
], ids=['meta-not-importable', 'correlation-not-importable', 'meta-not-callable'])
def test_e008_a_function_setting_cannot_be_imported_or_is_not_callable(key, path):
    with override_settings(CQRS={**GOOD, 'master': {key: path}}):
        errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E008'}
    assert key in errors[0].msg


@provokes('cqrs_celery.E009')
@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('side', ['master', 'replica'])
def test_e009_two_models_of_one_side_share_a_cqrs_id(side):
    if side == 'master':
        class DuplicateBook(MasterMixin):
            CQRS_ID = 'book'
            title = models.CharField(max_length=10)

            class Meta:
                app_label = 'master_app'
    else:
        class DuplicateNoteSink(RawReplicaMixin):
            CQRS_ID = 'manual_note'

    errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E009'}
    assert ('book' if side == 'master' else 'manual_note') in errors[0].msg


@provokes('cqrs_celery.E010')
@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('mapping', [{'id': 'id', 'title': 'headline'}, {'id': 'id', 'title': 5}],
                         ids=['unknown-field', 'not-a-string'])
def test_e010_the_replica_mapping_names_a_field_the_model_does_not_have(mapping):
    class MappedCopy(ReplicaMixin):
        CQRS_ID = 'throwaway_mapped'
        CQRS_MAPPING = mapping
        id = models.BigIntegerField(primary_key=True)
        title = models.CharField(max_length=10)

        class Meta:
            app_label = 'replica_app'

    errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E010'}
    assert errors[0].obj is MappedCopy
    assert 'replica_app.MappedCopy.CQRS_MAPPING' in errors[0].msg


@provokes('cqrs_celery.E011')
@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('attr', ['CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'])
def test_e011_the_master_names_a_field_it_does_not_have(attr):
    FieldsOriginal = type('FieldsOriginal', (MasterMixin,), {
        '__module__': __name__, 'CQRS_ID': 'throwaway_fields', attr: ['id', 'title', 'subtitle'],
        'title': models.CharField(max_length=10), 'Meta': type('Meta', (), {'app_label': 'master_app'}),
    })

    errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E011'}
    assert errors[0].obj is FieldsOriginal
    assert f'master_app.FieldsOriginal.{attr}' in errors[0].msg
    assert 'subtitle' in errors[0].msg


# --- declarations and settings a project moving from django-cqrs brings (issue 10) ----------


def _throwaway_master(**attrs):
    return type('DjangoCqrsOriginal', (MasterMixin,), {
        '__module__': __name__, 'CQRS_ID': 'throwaway_djcqrs', 'title': models.CharField(max_length=10),
        'Meta': type('Meta', (), {'app_label': 'master_app'}), **attrs})


@provokes('cqrs_celery.E020')
@pytest.mark.usefixtures('throwaway_apps')
def test_e020_cqrs_fields_without_the_primary_key():
    model = _throwaway_master(CQRS_FIELDS=['title'])

    errors = cqrs_errors()

    assert [(m.id, m.obj) for m in errors] == [('cqrs_celery.E020', model)]
    assert "'id'" in errors[0].msg


@provokes('cqrs_celery.E021')
@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('attr', ['CQRS_FIELDS', 'CQRS_TRACKED_FIELDS', 'CQRS_MAPPING'])
def test_e021_a_field_named_twice(attr):
    if attr == 'CQRS_MAPPING':
        class TwiceCopy(ReplicaMixin):
            CQRS_ID = 'throwaway_twice'
            CQRS_MAPPING = {'id': 'id', 'title': 'title', 'name': 'title'}
            id = models.BigIntegerField(primary_key=True)
            title = models.CharField(max_length=10)

            class Meta:
                app_label = 'replica_app'
    else:
        _throwaway_master(**{attr: ['id', 'title', 'title']})

    assert reported_ids() == {'cqrs_celery.E021'}


@provokes('cqrs_celery.E022')
@pytest.mark.usefixtures('throwaway_apps')
def test_e022_cqrs_fields_together_with_a_serializer():
    _throwaway_master(CQRS_FIELDS=['id', 'title'], CQRS_SERIALIZER='tests.master_app.serializers.ShelfSerializer')

    assert reported_ids() == {'cqrs_celery.E022'}


@provokes('cqrs_celery.E023')
@pytest.mark.usefixtures('throwaway_apps')
def test_e023_a_mapping_that_gives_the_replica_no_primary_key():
    class KeylessCopy(ReplicaMixin):
        CQRS_ID = 'throwaway_keyless'
        CQRS_MAPPING = {'title': 'title'}
        id = models.BigIntegerField(primary_key=True)
        title = models.CharField(max_length=10)

        class Meta:
            app_label = 'replica_app'

    errors = cqrs_errors()

    assert [(m.id, m.obj) for m in errors] == [('cqrs_celery.E023', KeylessCopy)]


@provokes('cqrs_celery.W020')
@provokes('cqrs_celery.W021')
@provokes('cqrs_celery.W022')
@pytest.mark.parametrize(('raw', 'check_id'), [
    ({**GOOD, 'transport': 'dj_cqrs.transport.RabbitMQTransport'}, 'cqrs_celery.W020'),
    ({**GOOD, 'url': 'amqp://localhost'}, 'cqrs_celery.W020'),
    ({**GOOD, 'host': 'localhost', 'port': 5672, 'user': 'u', 'password': 'p', 'exchange': 'cqrs'}, 'cqrs_celery.W020'),
    ({**GOOD, 'consumer_prefetch_count': 5}, 'cqrs_celery.W021'),
    ({**GOOD, 'replica': {'delay_queue_max_size': 100}}, 'cqrs_celery.W021'),
    ({**GOOD, 'replica': {'CQRS_QUERY_TIMEOUT': 1000}}, 'cqrs_celery.W022'),
    ({**GOOD, 'replica': {'CQRS_LOG_TIMED_OUT_QUERIES': True, 'CQRS_QUERY_LOGGER': 'x'}}, 'cqrs_celery.W022'),
])
def test_w020_w022_django_cqrs_settings_are_ignored_with_a_warning(raw, check_id):
    with override_settings(CQRS=raw):
        messages = cqrs_errors()
        conf.get_settings()  # the settings still build

    assert {m.id for m in messages} == {check_id}
    assert all(m.level == checks.WARNING and m.hint for m in messages)
    out = StringIO()
    with override_settings(CQRS=raw):
        call_command('check', stdout=out, stderr=out)  # warnings do not fail the command
    assert check_id in out.getvalue()


@provokes('cqrs_celery.E012')
@pytest.mark.usefixtures('throwaway_apps')
def test_e012_the_master_serializer_cannot_be_imported():
    class SerializedOriginal(MasterMixin):
        CQRS_ID = 'throwaway_serialized'
        CQRS_SERIALIZER = 'tests.master_app.serializers.NoSuchSerializer'
        title = models.CharField(max_length=10)

        class Meta:
            app_label = 'master_app'

    errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E012'}
    assert errors[0].obj is SerializedOriginal
    assert 'NoSuchSerializer' in errors[0].msg


#: Every numeric key that takes a float, as (section, key).
FLOAT_KEYS = [(section, key) for section, table in (('master', conf._MASTER_KEYS), ('replica', conf._REPLICA_KEYS))
              for key, (_, types) in table.items() if float in types]


@provokes('cqrs_celery.E005')
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')], ids=['nan', 'inf', '-inf'])
@pytest.mark.parametrize(('section', 'key'), FLOAT_KEYS, ids=[f'{s}.{k}' for s, k in FLOAT_KEYS])
def test_e005_every_numeric_setting_refuses_values_that_are_not_finite(section, key, value):
    with override_settings(CQRS={**GOOD, section: {key: value}}):
        errors = cqrs_errors()

    assert {m.id for m in errors} == {'cqrs_celery.E005'}
    assert 'finite' in errors[0].msg and key in errors[0].msg


@provokes('cqrs_celery.E005')
@pytest.mark.parametrize('raw', [
    {**GOOD, 'replica': {'retry_backoff_max': 1e300}},
    {**GOOD, 'replica': {'CQRS_RETRY_DELAY': 10 ** 12}},
    {**GOOD, 'master': {'CQRS_MESSAGE_TTL': 10 ** 15}},
    {**GOOD, 'replica': {'max_nesting_depth': 1000}},
    {**GOOD, 'replica': {'max_nesting_depth': 2}},
    {**GOOD, 'replica': {'max_message_size': 10}},
    {**GOOD, 'master': {'outbox_relay_batch': 2 ** 63}},
    {**GOOD, 'master': {'publish_batch_size': 10 ** 400}},
    {**GOOD, 'replica': {'delivery_limit': 2 ** 31}},
    {**GOOD, 'replica': {'tombstone_retention': 10 ** 400}},
], ids=['backoff-max-1e300', 'delay-beyond-ten-years', 'ttl-beyond-ten-years', 'nesting-too-deep-for-a-worker',
        'nesting-too-shallow-for-an-envelope', 'message-size-too-small', 'relay-batch-beyond-a-sql-limit',
        'publish-batch-beyond-any-int', 'delivery-limit-beyond-a-broker-argument', 'retention-beyond-any-date'])
def test_e005_numbers_out_of_their_working_range(raw):
    with override_settings(CQRS=raw):
        assert reported_ids() == {'cqrs_celery.E005'}


@pytest.mark.parametrize('value', [None, 10 ** 6, 0])
def test_max_retries_may_be_none_for_no_limit_or_any_count(value):
    with override_settings(CQRS={**GOOD, 'replica': {'CQRS_MAX_RETRIES': value}}):
        assert cqrs_errors() == []
        retries = conf.get_settings().replica.max_retries
    assert retries == (float('inf') if value is None else value)


@provokes('cqrs_celery.E013')
def test_e013_the_dead_letter_queue_is_the_replica_queue_itself():
    with override_settings(CQRS={**GOOD, 'replica': {'dead_letter_queue': GOOD['queue']}}):
        errors = cqrs_errors()
        with pytest.raises(SystemCheckError, match=r'cqrs_celery\.E013'):
            call_command('check', stdout=StringIO(), stderr=StringIO())

    assert {m.id for m in errors} == {'cqrs_celery.E013'}


@provokes('cqrs_celery.E013')
@pytest.mark.parametrize('raw', [
    {**GOOD, 'replica': {'dead_letter_queue': 'celery'}},
    {**GOOD, 'replica': {'dead_letter_queue': 'masters', 'reconcile_master_queue': 'masters'}},
    {**GOOD, 'replica': {'dead_letter_queue': 'masters', 'reconcile_master_queue': {'book': 'masters'}}},
    {**GOOD, 'master': {'bootstrap_queue': 'boot'}, 'replica': {'dead_letter_queue': 'boot'}},
], ids=['celerys-default-queue', 'reconciliation-queue', 'a-models-reconciliation-queue', 'bootstrap-queue'])
def test_e013_the_dead_letter_queue_is_a_queue_workers_consume(raw):
    with override_settings(CQRS=raw):
        assert reported_ids() == {'cqrs_celery.E013'}


def celery_app(**conf_values):
    from celery import Celery

    app = Celery('checks_tests', broker='memory://', set_as_current=False)
    app.conf.update(conf_values)
    return app


@provokes('cqrs_celery.W001')
@pytest.mark.parametrize('accept', [['json', 'pickle', 'yaml'], ['application/x-python-serialize']])
def test_w001_the_celery_app_accepts_pickle(accept):
    with override_settings(CQRS={**GOOD, 'app': celery_app(accept_content=accept)}):
        messages = cqrs_errors()
        out = StringIO()
        call_command('check', stdout=out, stderr=out)

    assert [(m.id, m.level) for m in messages] == [('cqrs_celery.W001', checks.WARNING)]
    assert 'cqrs_celery.W001' in out.getvalue()


def test_a_celery_app_that_accepts_json_and_yaml_gets_no_warning():
    with override_settings(CQRS={**GOOD, 'app': celery_app(accept_content=['json', 'yaml'])}):
        assert cqrs_errors() == []


@provokes('cqrs_celery.E014')
@pytest.mark.parametrize('protocol', [1, 'x', [2], object()], ids=['one', 'a-string', 'a-list', 'an-object'])
def test_e014_the_celery_app_sends_task_protocol_1(protocol):
    with override_settings(CQRS={**GOOD, 'app': celery_app(task_protocol=protocol)}):
        assert reported_ids() == {'cqrs_celery.E014'}


@pytest.mark.parametrize('accept', [1, 'json', None, object(), ('json',)],
                         ids=['int', 'json', 'none', 'object', 'tuple'])  # (the same ids in every xdist worker)
def test_an_accept_content_of_any_shape_is_checked_without_an_error(accept):
    with override_settings(CQRS={**GOOD, 'app': celery_app(accept_content=accept)}):
        assert reported_ids() == set()


@provokes('cqrs_celery.W060')
def test_w060_quorum_queues_are_configured_on_a_broker_that_is_not_rabbitmq():
    with override_settings(CQRS={**GOOD, 'app': celery_app(), 'replica': {'queue_type': 'quorum'}}):
        messages = cqrs_errors()

    assert [(m.id, m.level) for m in messages] == [('cqrs_celery.W060', checks.WARNING)]


def test_quorum_queues_on_rabbitmq_get_no_warning():
    app = celery_app()
    app.conf.broker_url = 'amqp://guest:guest@127.0.0.1:5672//'
    with override_settings(CQRS={**GOOD, 'app': app, 'replica': {'queue_type': 'quorum'}}):
        assert cqrs_errors() == []


@pytest.mark.parametrize('check_id', sorted(CHECK_IDS))
def test_every_check_id_is_provoked_by_a_test_in_this_file(check_id):
    assert check_id in PROVOKED, f'write a test here that provokes {check_id}'


def test_every_id_the_checks_can_report_is_listed_in_check_ids():
    source = inspect.getsource(conf) + inspect.getsource(cqrs_checks)

    assert set(re.findall(r'cqrs_celery\.[EW]\d{3}', source)) == set(CHECK_IDS)


def test_the_throwaway_models_of_these_tests_are_gone_afterwards():
    assert not [cqrs_id for cqrs_id in MasterRegistry.ids() + ReplicaRegistry.ids() if 'throwaway' in cqrs_id]
    assert MasterRegistry.duplicates() == {}
    assert ReplicaRegistry.duplicates() == {}


# --- bad model declarations fail at class definition -----------------------------------------

#: Values a model option could be given by mistake.
ANY_OPTION_VALUE = [None, '', 'x', 'title', '__all__', 42, True, [], ['title'], ['title', 'title'], ['nope'],
                    ('id', 'title'), {'title': 'name'}, {'id': 'id'}, {1: 2}, {'title': None}, object(), 'a b',
                    'x' * 300, b'x', ['id', 42]]
MASTER_OPTIONS = ['CQRS_ID', 'CQRS_FIELDS', 'CQRS_TRACKED_FIELDS', 'CQRS_SERIALIZER', 'CQRS_PRODUCE']
REPLICA_OPTIONS = ['CQRS_ID', 'CQRS_MAPPING', 'CQRS_CUSTOM_SERIALIZATION', 'CQRS_SELECT_FOR_UPDATE',
                   'CQRS_NO_DB_OPERATIONS', 'CQRS_META', 'CQRS_ONLY_DIRECT_SYNCS']


@pytest.mark.usefixtures('throwaway_apps')
def test_any_value_of_a_model_option_fails_at_definition_or_passes_the_checks_without_raising():
    for number, (mixin, option, value) in enumerate(
            [(MasterMixin, option, value) for option in MASTER_OPTIONS for value in ANY_OPTION_VALUE]
            + [(ReplicaMixin, option, value) for option in REPLICA_OPTIONS for value in ANY_OPTION_VALUE]):
        attrs = {'__module__': __name__, 'CQRS_ID': f'throwaway_option_{number}',
                 'title': models.CharField(max_length=10),
                 'Meta': type('Meta', (), {'app_label': 'master_app' if mixin is MasterMixin else 'replica_app'})}
        if mixin is ReplicaMixin:
            attrs['id'] = models.BigIntegerField(primary_key=True)
        attrs[option] = value
        try:
            type(f'Option{number}', (mixin,), attrs)
        except ImproperlyConfigured as exc:
            assert option in str(exc), (option, value, exc)
            continue
        except Exception as exc:
            raise AssertionError(f'{mixin.__name__} with {option} = {value!r} failed with {exc!r}') from exc
        try:
            checks.run_checks(tags=['cqrs_celery'])
        except Exception as exc:
            raise AssertionError(f'the checks raised {exc!r} after {mixin.__name__} with {option} = {value!r}') from exc




@pytest.mark.usefixtures('throwaway_apps')
def test_a_master_model_without_cqrs_id_fails_at_definition():
    with pytest.raises(ImproperlyConfigured, match=r'master_app\.NoIdOriginal\.CQRS_ID'):
        class NoIdOriginal(MasterMixin):
            name = models.CharField(max_length=10)

            class Meta:
                app_label = 'master_app'


@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('cqrs_id', [None, '', '   ', 5, 'x' * 201], ids=['missing', 'empty', 'blank', 'an-int',
                                                                       'longer-than-its-columns'])
def test_a_replica_model_without_a_usable_cqrs_id_fails_at_definition(cqrs_id):
    attrs = {'__module__': __name__, 'id': models.BigIntegerField(primary_key=True),
             'Meta': type('Meta', (), {'app_label': 'replica_app'})}
    if cqrs_id is not None:
        attrs['CQRS_ID'] = cqrs_id

    with pytest.raises(ImproperlyConfigured, match=r'replica_app\.NoIdCopy\.CQRS_ID'):
        type('NoIdCopy', (ReplicaMixin,), attrs)


@pytest.mark.usefixtures('registries')
def test_a_raw_replica_with_an_empty_cqrs_id_fails_at_definition():
    with pytest.raises(ImproperlyConfigured, match=r'EmptyIdSink\.CQRS_ID'):
        class EmptyIdSink(RawReplicaMixin):
            CQRS_ID = ''


@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('attr', ['CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'])
def test_master_fields_given_as_a_plain_string_fail_at_definition(attr):
    attrs = {'__module__': __name__, 'CQRS_ID': 'throwaway_string_fields', attr: 'title',
             'title': models.CharField(max_length=10), 'Meta': type('Meta', (), {'app_label': 'master_app'})}

    with pytest.raises(ImproperlyConfigured, match=rf'master_app\.StringFieldsOriginal\.{attr}'):
        type('StringFieldsOriginal', (MasterMixin,), attrs)


@pytest.mark.usefixtures('throwaway_apps')
@pytest.mark.parametrize('mapping', [['title'], 'title', (('title', 'title'),)], ids=['a-list', 'a-string', 'pairs'])
def test_a_replica_mapping_that_is_not_a_dict_fails_at_definition(mapping):
    with pytest.raises(ImproperlyConfigured, match=r'replica_app\.ListMappedCopy\.CQRS_MAPPING'):
        class ListMappedCopy(ReplicaMixin):
            CQRS_ID = 'throwaway_list_mapped'
            CQRS_MAPPING = mapping
            id = models.BigIntegerField(primary_key=True)
            title = models.CharField(max_length=10)

            class Meta:
                app_label = 'replica_app'


# --- migrations written under django-cqrs (issue 10; more in test_migrate_imports.py) ----------------


@pytest.fixture
def django_cqrs_migration(tmp_path, settings, monkeypatch):
    """The replica app's migrations: one that django-cqrs 3.1.0's makemigrations wrote."""
    import shutil
    import sys
    from pathlib import Path

    package = tmp_path / 'checks_generated_migrations'
    package.mkdir()
    (package / '__init__.py').write_text('')
    generated = Path(__file__).parent / 'djcqrs_project' / 'shop_replica' / 'migrations' / '0001_initial.py'
    shutil.copy(generated, package / '0001_initial.py')
    monkeypatch.syspath_prepend(str(tmp_path))
    settings.MIGRATION_MODULES = {'replica_app': 'checks_generated_migrations'}
    yield
    sys.modules.pop('checks_generated_migrations', None)


@provokes('cqrs_celery.E030')
def test_a_migration_importing_dj_cqrs_without_django_cqrs_installed_is_an_error(django_cqrs_migration):
    assert reported_ids() == {'cqrs_celery.E030'}


@provokes('cqrs_celery.W030')
def test_a_migration_importing_dj_cqrs_while_django_cqrs_is_installed_is_a_warning(django_cqrs_migration,
                                                                                    monkeypatch):
    from cqrs_celery import migration_imports

    monkeypatch.setattr(migration_imports, 'django_cqrs_installed', lambda: True)
    assert reported_ids() == {'cqrs_celery.W030'}


# --- first run: the embedded broker and SQLite replicas (issue 9, point 6) --------------------


@pytest.fixture
def filesystem_app(tmp_path, monkeypatch):
    """A Celery app on ``filesystem://`` with the README's settings only; the shared folder in tmp_path."""
    from celery import Celery

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('CQRS_FILESYSTEM_BROKER', str(tmp_path / 'shared'))
    return Celery('first_run', broker='filesystem://', set_as_current=False)


def test_filesystem_with_the_readmes_settings_alone_uses_the_shared_absolute_folder(filesystem_app, tmp_path):
    with override_settings(CQRS={**GOOD, 'app': filesystem_app}):
        assert not {'cqrs_celery.W040', 'cqrs_celery.W041'} & reported_ids()
        conf.get_settings().celery_app()

    options = filesystem_app.conf.broker_transport_options
    assert options['data_folder_in'] == options['data_folder_out'] == str(tmp_path / 'shared' / 'messages')
    assert options['control_folder'] == str(tmp_path / 'shared' / 'control')
    assert filesystem_app.conf.broker_transport == 'cqrs_celery.filesystem:Transport'
    assert (tmp_path / 'shared' / 'messages').is_dir() and (tmp_path / 'shared' / 'control').is_dir()


def test_two_projects_with_the_readmes_settings_meet_in_the_same_folders(tmp_path, monkeypatch):
    from celery import Celery

    from cqrs_celery import filesystem

    monkeypatch.delenv('CQRS_FILESYSTEM_BROKER', raising=False)
    found = []
    for project in ('shop', 'billing'):
        monkeypatch.chdir(tmp_path.joinpath(project).mkdir() or tmp_path / project)
        app = Celery(project, broker='filesystem://', set_as_current=False)
        filesystem.configure(app)
        found.append(filesystem.folders(app))

    assert found[0] == found[1]
    assert all(os.path.isabs(path) for path in found[0].values())
    assert found[0]['data_folder_in'].startswith(filesystem.default_folder())


@provokes('cqrs_celery.W040')
def test_a_relative_filesystem_folder_is_reported(filesystem_app):
    filesystem_app.conf.broker_transport_options = {'data_folder_in': 'broker', 'data_folder_out': 'broker'}
    with override_settings(CQRS={**GOOD, 'app': filesystem_app}):
        [warning] = [m for m in cqrs_errors() if m.id == 'cqrs_celery.W040']

    assert warning.level == checks.WARNING
    assert "data_folder_in='broker'" in warning.msg and 'control_folder' not in warning.msg
    assert 'CELERY_BROKER_TRANSPORT_OPTIONS' in warning.hint


@provokes('cqrs_celery.W041')
def test_filesystem_folders_that_read_elsewhere_than_they_write_are_reported(filesystem_app, tmp_path):
    filesystem_app.conf.broker_transport_options = {'data_folder_in': str(tmp_path / 'in'),
                                                    'data_folder_out': str(tmp_path / 'out')}
    with override_settings(CQRS={**GOOD, 'app': filesystem_app}):
        ids = reported_ids()

    assert 'cqrs_celery.W041' in ids and 'cqrs_celery.W040' not in ids


class ToSqlite:
    """Routes every replica model's writes to the ``cqrs_check_sqlite`` database."""

    def db_for_write(self, model, **hints):
        return 'cqrs_check_sqlite' if ReplicaRegistry.ids() and model in ReplicaRegistry.models() else None


@pytest.fixture
def sqlite_replica_database(monkeypatch, tmp_path):
    from django.db import connections

    def use(options):
        monkeypatch.setitem(connections.settings, 'cqrs_check_sqlite', {
            'ENGINE': 'django.db.backends.sqlite3', 'NAME': str(tmp_path / 'replica.sqlite3'), 'OPTIONS': options})

    return use


@provokes('cqrs_celery.W042')
@override_settings(DATABASE_ROUTERS=['tests.test_checks.ToSqlite'])
def test_a_sqlite_replica_database_without_immediate_transactions_is_reported(sqlite_replica_database):
    sqlite_replica_database({'timeout': 20})

    [warning] = [m for m in cqrs_errors() if m.id == 'cqrs_celery.W042']

    assert "'cqrs_check_sqlite'" in warning.msg and 'database is locked' in warning.msg
    assert 'IMMEDIATE' in warning.hint


@override_settings(DATABASE_ROUTERS=['tests.test_checks.ToSqlite'])
def test_a_sqlite_replica_database_set_up_as_the_example_does_passes(sqlite_replica_database):
    sqlite_replica_database({'timeout': 20, 'transaction_mode': 'IMMEDIATE',
                             'init_command': 'PRAGMA journal_mode=WAL;'})

    assert 'cqrs_celery.W042' not in reported_ids()
