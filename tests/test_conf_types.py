"""Type validation of the settings keys added with the outbox, the retry policy, dead letters and
tombstones (DESIGN §3): a wrong value is a ``cqrs_celery.E005`` system check naming the key and a
``ConfigurationError`` on use; a right one passes. ``test_conf.py`` reads every key; this file
refuses the wrong values of the keys its bad-value table does not cover.
"""

import datetime
import math

import pytest
from celery import Celery
from django.core import checks
from django.test import override_settings

from cqrs_celery import ConfigurationError
from cqrs_celery.conf import _MASTER_KEYS, _REPLICA_KEYS, ALL_KEYS, QUEUE_NAME_RE, get_settings, validate
from cqrs_celery.replica import queues
from tests.replica_app.models import ReplicaItem

GOOD = {'app': 'tests.celery_app.app', 'queue': 'replica_a'}

#: section.key -> (values that must be refused, values that must be accepted)
TYPES = {
    'master.outbox': (['yes', 1, 0, None], [True, False]),
    'master.publish_timeout': (['2', True, -1, None, 0], [0.5, 2]),
    'master.outbox_relay_batch': ([10.5, '100', True, -1, None, 0], [1, 500]),
    'master.outbox_relay_delay': (['2', False, -0.1, None], [0, 1.5, 3]),
    'master.publisher': (['threads', 'sync', None, 1, True], ['thread', 'inline', 'relay']),
    'master.publish_batch_size': ([10.5, '100', True, -1, None, 0], [1, 100]),
    'master.outbox_max_attempts': ([10.5, '100', True, -1, None, 0], [1, 50]),
    'master.tombstone_retention': ([3600.5, '3600', True, -1, None], [0, 3600]),
    'replica.retry_backoff': (['2', True, -2, None, 0.5], [1, 1.5, 2]),
    'replica.retry_backoff_max': (['300', True, -1, None], [0, 30, 2.5]),
    'replica.retry_jitter': (['no', 0, None], [True, False]),
    'replica.dead_letter_queue': ([42, True, ['graveyard']], ['graveyard', None]),
    'replica.dead_message_ttl': ([86400.5, '86400', True, -1], [0, 86400, None]),
    'replica.visibility_timeout': ([600.5, '600', True, -1, None, 0], [60, 600]),
    'replica.tombstone_retention': ([3600.5, '3600', False, -1, None], [0, 3600]),
    'replica.max_message_size': ([65536.5, '65536', True, None, 1023], [1024, 65536]),
    'replica.max_nesting_depth': ([32.5, '32', True, None, 7, 401], [8, 100, 400]),
    'master.reconcile_batch_size': ([10.5, '10', True, None, 0], [1, 100]),
    'master.reconcile_pause': (['1', True, -1, None], [0, 0.05, 2]),
    'master.reconcile_min_interval': (['30', True, -1, None], [0, 30.5]),
    'master.reconcile_grace': (['10', True, -1, None], [0, 2.5]),
    'replica.reconcile': (['yes', 1, None], [True, False]),
    'replica.reconcile_master_queue': ([1, True, ['q']], [None, 'master', {'book': 'library', '*': 'celery'}]),
    'master.bootstrap_queue': ([42, True, ['celery']], ['celery', None]),
    'replica.bootstrap': (['yes', 1, None], [True, False]),
    # ('quorum' is read by test_conf's KEY_TABLE; here the test app's memory:// broker would add W060)
    'replica.queue_type': (['Quorum', 'stream', None, 1, True], ['classic']),
    'replica.delivery_limit': ([10.5, '10', True, None, 0, -1], [1, 10]),
    'replica.group_rows': ([500.5, '500', True, None, -1, 2 ** 31], [0, 1, 500]),
}


def raw_setting(key, value):
    section, name = key.split('.')
    return {**GOOD, section: {name: value}}


def cqrs_check_ids():
    return {m.id for m in checks.run_checks(tags=['cqrs_celery']) if (m.id or '').startswith('cqrs_celery.')}


def test_every_nested_key_has_a_type_table_entry_or_is_covered_by_test_conf():
    covered_by_test_conf = {'master.CQRS_AUTO_UPDATE_FIELDS', 'master.CQRS_MESSAGE_TTL', 'master.correlation_function',
                            'master.meta_function', 'replica.CQRS_MAX_RETRIES', 'replica.CQRS_RETRY_DELAY'}

    assert {k for k in ALL_KEYS if '.' in k} == set(TYPES) | covered_by_test_conf


@pytest.mark.parametrize(('key', 'value'), [(k, v) for k, (bad, _) in sorted(TYPES.items()) for v in bad])
def test_a_value_of_the_wrong_type_is_reported_by_e005_and_refused_on_use(key, value):
    with override_settings(CQRS=raw_setting(key, value)):
        assert cqrs_check_ids() == {'cqrs_celery.E005'}
        with pytest.raises(ConfigurationError) as refused:
            get_settings()

    name = key.split('.')[1]
    assert f"CQRS['{key.split('.')[0]}']['{name}']" in str(refused.value)
    assert 'cqrs_celery.E005' in str(refused.value)


@pytest.mark.parametrize(('key', 'value'), [(k, v) for k, (_, good) in sorted(TYPES.items()) for v in good])
def test_a_value_of_the_right_type_passes_and_is_read(key, value):
    section, name = key.split('.')
    with override_settings(CQRS=raw_setting(key, value)):
        assert cqrs_check_ids() == set()
        settings = get_settings()

    assert getattr(getattr(settings, section), name) == value


@pytest.mark.parametrize('name', ['', 'has space', 'new\nline', '-leading-dash'])
def test_a_bootstrap_queue_name_that_is_no_queue_name_is_reported_as_e007(name):
    problems = validate({'app': 'tests.celery_app.app', 'master': {'bootstrap_queue': name}})
    assert [p.id for p in problems] == ['cqrs_celery.E007']


@pytest.mark.parametrize('name', ['', 'has space', 'new\nline', '-leading-dash'])
def test_a_dead_letter_queue_name_that_is_no_queue_name_is_reported_as_e007(name):
    problems = validate({'app': 'tests.celery_app.app', 'replica': {'dead_letter_queue': name}})
    assert [p.id for p in problems] == ['cqrs_celery.E007']


@pytest.mark.parametrize('value', ['', 'has space', 'lone \ud800', 'q' * 201, {'book': 42}, {'book': ''},
                                   {'book': 'bad name!'}, {'': 'library'}, {1: 'library'}])
def test_a_reconcile_master_queue_that_names_no_queue_is_reported_as_e007(value):
    problems = validate({'app': 'tests.celery_app.app', 'replica': {'reconcile_master_queue': value}})
    assert [p.id for p in problems] == ['cqrs_celery.E007']


#: Values a user could give any key by mistake (each key gets every one of them).
ANY_VALUE = [None, True, False, 0, -1, 1, 2 ** 63, 10 ** 400, -(10 ** 400), 0.5, float('nan'), float('inf'),
             float('-inf'), 1e308, '', 'x', 'thread', 'quorum', 'tests.celery_app.app', 'uuid.uuid4', 'no.such.thing',
             [], ['json'], {}, {'*': 'q'}, {'a': 42}, object(), Celery, type, len, b'x', 'q' * 300, 'has space',
             'lone \ud800']


def every_setting_with_any_value():
    for section, keys in (('master', _MASTER_KEYS), ('replica', _REPLICA_KEYS)):
        for key in keys:
            yield from ({**GOOD, section: {key: value}} for value in ANY_VALUE)
    for key in ('app', 'queue', 'master', 'replica'):
        yield from ({**GOOD, key: value} for value in ANY_VALUE)
    yield from ANY_VALUE


def test_no_value_of_any_setting_makes_the_checks_raise_and_every_accepted_one_works():
    for raw in every_setting_with_any_value():
        with override_settings(CQRS=raw):
            try:
                errors = [m for m in checks.run_checks(tags=['cqrs_celery']) if m.is_serious()]
            except Exception as exc:
                raise AssertionError(f'the checks raised {exc!r} for CQRS = {raw!r}') from exc
            if errors:
                continue
            settings = get_settings()
            for retry in (0, 1, 1000, 10 ** 6):
                delay = ReplicaItem.get_cqrs_retry_delay(retry)
                assert math.isfinite(delay) and delay >= 0, raw
                assert ReplicaItem.should_retry_cqrs(retry) in (True, False), raw
            assert 0 < queues.max_retry_delay() <= queues.MAX_HOP, raw
            assert settings.dead_letter_queue is None or QUEUE_NAME_RE.fullmatch(settings.dead_letter_queue), raw
            named = settings.replica.master_queue('item')
            assert named is None or QUEUE_NAME_RE.fullmatch(named), raw
            now = datetime.datetime.now(datetime.timezone.utc)
            for seconds in (settings.master.tombstone_retention, settings.replica.tombstone_retention,
                            settings.master.message_ttl or 0, settings.replica.dead_message_ttl or 0):
                assert now - datetime.timedelta(seconds=seconds), raw
