"""The settings object: one ``CQRS`` dict read into a frozen, typed object with every default in one
place, rebuilt whenever ``settings.CQRS`` changes, and refusing bad values by name (tier i)."""

import dataclasses
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from cqrs_celery import ConfigurationError
from cqrs_celery.conf import ALL_KEYS, CQRSSettings, MasterSettings, ReplicaSettings, get_settings
from tests.celery_app import app as celery_app
from tests.master_app.meta import meta_function

APP = 'tests.celery_app.app'


def built(raw):
    """The settings object Django code sees while ``settings.CQRS`` is ``raw``."""
    with override_settings(CQRS=raw):
        return get_settings()


def correlation_id():
    return 'corr-1'


# --- defaults --------------------------------------------------------------------------------


def test_an_empty_cqrs_setting_gives_every_default():
    settings = built({})

    assert settings == CQRSSettings()
    assert settings.app is None
    assert settings.queue is None
    assert settings.master == MasterSettings(auto_update_fields=False, message_ttl=None,
                                             correlation_function=None, meta_function=None)
    assert settings.replica == ReplicaSettings(max_retries=30, retry_delay=2)


def test_empty_sections_give_their_defaults():
    settings = built({'app': APP, 'master': {}, 'replica': {}})

    assert settings.master == MasterSettings()
    assert settings.replica == ReplicaSettings()


def test_the_test_projects_own_setting_is_read():
    settings = get_settings()

    assert settings.app == APP
    assert settings.master.meta_function is meta_function
    assert settings.replica == ReplicaSettings(max_retries=5, retry_delay=0.2, retry_backoff_max=2)
    assert (settings.master.publish_timeout, settings.master.outbox_relay_delay) == (1.0, 1.0)


# --- every key -------------------------------------------------------------------------------

#: key (as in ``conf.ALL_KEYS``) -> (the CQRS dict that sets it, how to read it back, expected value)
KEY_TABLE = {
    'app': ({'app': APP}, lambda s: s.celery_app(), celery_app),
    'queue': ({'app': APP, 'queue': 'billing_replica'}, lambda s: s.queue, 'billing_replica'),
    'master': ({'app': APP, 'master': {'CQRS_MESSAGE_TTL': 60}}, lambda s: s.master,
               MasterSettings(message_ttl=60)),
    'replica': ({'app': APP, 'replica': {'CQRS_MAX_RETRIES': 3}}, lambda s: s.replica,
                ReplicaSettings(max_retries=3)),
    'master.CQRS_AUTO_UPDATE_FIELDS': ({'app': APP, 'master': {'CQRS_AUTO_UPDATE_FIELDS': True}},
                                       lambda s: s.master.auto_update_fields, True),
    'master.CQRS_MESSAGE_TTL': ({'app': APP, 'master': {'CQRS_MESSAGE_TTL': 3600}},
                                lambda s: s.master.message_ttl, 3600),
    'master.correlation_function': ({'app': APP, 'master': {'correlation_function': 'uuid.uuid4'}},
                                    lambda s: s.master.correlation_function, uuid.uuid4),
    'master.meta_function': ({'app': APP, 'master': {'meta_function': 'tests.master_app.meta.meta_function'}},
                             lambda s: s.master.meta_function, meta_function),
    'replica.CQRS_MAX_RETRIES': ({'app': APP, 'replica': {'CQRS_MAX_RETRIES': 0}},
                                 lambda s: s.replica.max_retries, 0),
    'replica.CQRS_RETRY_DELAY': ({'app': APP, 'replica': {'CQRS_RETRY_DELAY': 0.5}},
                                 lambda s: s.replica.retry_delay, 0.5),
    'master.outbox': ({'app': APP, 'master': {'outbox': False}},
                     lambda s: s.master.outbox, False),
    'master.publish_timeout': ({'app': APP, 'master': {'publish_timeout': 0.5}},
                              lambda s: s.master.publish_timeout, 0.5),
    'master.outbox_relay_batch': ({'app': APP, 'master': {'outbox_relay_batch': 50}},
                                 lambda s: s.master.outbox_relay_batch, 50),
    'master.outbox_relay_delay': ({'app': APP, 'master': {'outbox_relay_delay': 0}},
                                 lambda s: s.master.outbox_relay_delay, 0),
    'master.publisher': ({'app': APP, 'master': {'publisher': 'inline'}},
                         lambda s: s.master.publisher, 'inline'),
    'master.publish_batch_size': ({'app': APP, 'master': {'publish_batch_size': 20}},
                                  lambda s: s.master.publish_batch_size, 20),
    'master.outbox_max_attempts': ({'app': APP, 'master': {'outbox_max_attempts': 3}},
                                   lambda s: s.master.outbox_max_attempts, 3),
    'master.tombstone_retention': ({'app': APP, 'master': {'tombstone_retention': 3600}},
                                  lambda s: s.master.tombstone_retention, 3600),
    'replica.retry_backoff': ({'app': APP, 'replica': {'retry_backoff': 1}},
                             lambda s: s.replica.retry_backoff, 1),
    'replica.retry_backoff_max': ({'app': APP, 'replica': {'retry_backoff_max': 30}},
                                 lambda s: s.replica.retry_backoff_max, 30),
    'replica.retry_jitter': ({'app': APP, 'replica': {'retry_jitter': False}},
                            lambda s: s.replica.retry_jitter, False),
    'replica.dead_letter_queue': ({'app': APP, 'replica': {'dead_letter_queue': 'graveyard'}},
                                 lambda s: s.replica.dead_letter_queue, 'graveyard'),
    'replica.dead_message_ttl': ({'app': APP, 'replica': {'dead_message_ttl': None}},
                                lambda s: s.replica.dead_message_ttl, None),
    'replica.visibility_timeout': ({'app': APP, 'replica': {'visibility_timeout': 120}},
                                  lambda s: s.replica.visibility_timeout, 120),
    'replica.tombstone_retention': ({'app': APP, 'replica': {'tombstone_retention': 60}},
                                   lambda s: s.replica.tombstone_retention, 60),
    'replica.max_message_size': ({'app': APP, 'replica': {'max_message_size': 65536}},
                                lambda s: s.replica.max_message_size, 65536),
    'replica.max_nesting_depth': ({'app': APP, 'replica': {'max_nesting_depth': 32}},
                                 lambda s: s.replica.max_nesting_depth, 32),
    'master.reconcile_batch_size': ({'app': APP, 'master': {'reconcile_batch_size': 10}},
                                    lambda s: s.master.reconcile_batch_size, 10),
    'master.reconcile_pause': ({'app': APP, 'master': {'reconcile_pause': 0.5}},
                               lambda s: s.master.reconcile_pause, 0.5),
    'master.reconcile_min_interval': ({'app': APP, 'master': {'reconcile_min_interval': 5}},
                                      lambda s: s.master.reconcile_min_interval, 5),
    'master.reconcile_grace': ({'app': APP, 'master': {'reconcile_grace': 0}},
                               lambda s: s.master.reconcile_grace, 0),
    'replica.reconcile': ({'app': APP, 'replica': {'reconcile': False}}, lambda s: s.replica.reconcile, False),
    'replica.reconcile_master_queue': ({'app': APP, 'replica': {'reconcile_master_queue': {'book': 'library',
                                                                                           '*': 'main'}}},
                                       lambda s: (s.replica.master_queue('book'), s.replica.master_queue('x')),
                                       ('library', 'main')),
    'master.bootstrap_queue': ({'app': APP, 'master': {'bootstrap_queue': 'billing_master'}},
                               lambda s: s.master.bootstrap_queue, 'billing_master'),
    'replica.bootstrap': ({'app': APP, 'replica': {'bootstrap': False}},
                          lambda s: s.replica.bootstrap, False),
    'replica.queue_type': ({'app': APP, 'replica': {'queue_type': 'quorum'}},
                           lambda s: s.replica.queue_type, 'quorum'),
    'replica.delivery_limit': ({'app': APP, 'replica': {'delivery_limit': 5}},
                               lambda s: s.replica.delivery_limit, 5),
    'replica.group_rows': ({'app': APP, 'replica': {'group_rows': 50}}, lambda s: s.replica.group_rows, 50),
}


def test_the_key_table_covers_every_settings_key():
    assert sorted(KEY_TABLE) == sorted(ALL_KEYS)


@pytest.mark.parametrize('key', sorted(KEY_TABLE))
def test_every_settings_key_is_read_into_the_settings_object(key):
    raw, read, expected = KEY_TABLE[key]

    assert read(built(raw)) == expected


def test_callables_may_be_given_as_objects():
    settings = built({'app': APP, 'master': {'correlation_function': correlation_id,
                                             'meta_function': meta_function}})

    assert settings.master.correlation_function is correlation_id
    assert settings.master.meta_function is meta_function


def test_callables_given_as_dotted_paths_are_imported():
    settings = built({'app': APP, 'master': {'correlation_function': 'tests.test_conf.correlation_id'}})

    assert settings.master.correlation_function is correlation_id
    assert settings.master.correlation_function() == 'corr-1'


def test_an_integer_retry_delay_is_accepted():
    assert built({'app': APP, 'replica': {'CQRS_RETRY_DELAY': 3}}).replica.retry_delay == 3


def test_the_celery_app_may_be_given_as_the_object():
    assert built({'app': celery_app}).celery_app() is celery_app


def test_asking_for_the_celery_app_when_none_is_set_names_the_key():
    settings = built({'queue': 'replica_a'})

    with pytest.raises(ConfigurationError, match=r"CQRS\['app'\]"):
        settings.celery_app()


# --- frozen, cached, rebuilt -----------------------------------------------------------------


def test_the_settings_object_is_frozen():
    settings = get_settings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue = 'other'  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.master.message_ttl = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.replica.max_retries = 1  # type: ignore[misc]


def test_the_settings_object_is_built_once_and_reused():
    assert get_settings() is get_settings()


def test_changing_another_setting_keeps_the_settings_object():
    before = get_settings()

    with override_settings(USE_THOUSAND_SEPARATOR=True):
        assert get_settings() is before


def test_override_settings_rebuilds_the_settings_object_and_restores_it_afterwards():
    original = get_settings()

    with override_settings(CQRS={'app': APP, 'queue': 'overridden', 'replica': {'CQRS_MAX_RETRIES': 1}}):
        assert get_settings().queue == 'overridden'
        assert get_settings().replica.max_retries == 1

    assert get_settings() == original


def test_override_settings_works_as_a_decorator():
    @override_settings(CQRS={'app': APP, 'master': {'CQRS_MESSAGE_TTL': 9}})
    def read_ttl():
        return get_settings().master.message_ttl

    assert read_ttl() == 9
    assert get_settings().master.message_ttl is None


def test_the_pytest_django_settings_fixture_rebuilds_the_settings_object(settings):
    settings.CQRS = {'app': APP, 'queue': 'from_fixture'}
    assert get_settings().queue == 'from_fixture'

    settings.CQRS = {'app': APP, 'queue': 'changed_again', 'master': {'CQRS_AUTO_UPDATE_FIELDS': True}}
    assert get_settings().queue == 'changed_again'
    assert get_settings().master.auto_update_fields is True


def test_the_users_dict_is_never_mutated():
    raw = {'app': APP, 'master': {'meta_function': 'tests.master_app.meta.meta_function'}}

    built(raw)

    assert raw == {'app': APP, 'master': {'meta_function': 'tests.master_app.meta.meta_function'}}


# --- bad values ------------------------------------------------------------------------------

BAD_VALUES = [
    # (CQRS dict, text the error must contain)
    pytest.param({'app': APP, 'queue': 'has spaces'}, "CQRS['queue']", id='queue-with-spaces'),
    pytest.param({'app': APP, 'queue': 'replica_a\n'}, "CQRS['queue']", id='queue-with-trailing-newline'),
    pytest.param({'app': APP, 'queue': 'q' * 201}, "CQRS['queue']", id='queue-too-long'),
    pytest.param({'app': APP, 'queue': 7}, "CQRS['queue']", id='queue-an-int'),
    pytest.param({'app': 'tests.no_such_module.app'}, "CQRS['app']", id='app-not-importable'),
    pytest.param({'app': 'tests.settings.SECRET_KEY'}, "CQRS['app']", id='app-not-a-celery-app'),
    pytest.param({'app': 42}, "CQRS['app']", id='app-an-int'),
    pytest.param({'app': APP, 'replicas': {}}, "CQRS['replicas']", id='unknown-top-level-key'),
    pytest.param({'app': APP, 1: 'one', 'z': 'zed'}, 'Unknown key CQRS[', id='unknown-keys-of-mixed-types'),
    pytest.param({'app': APP, 'master': []}, "CQRS['master']", id='master-not-a-dict'),
    pytest.param({'app': APP, 'replica': 'fast'}, "CQRS['replica']", id='replica-not-a-dict'),
    pytest.param({'app': APP, 'master': {'CQRS_MESSAGE_TTLS': 1}}, 'CQRS_MESSAGE_TTLS', id='unknown-master-key'),
    pytest.param({'app': APP, 'replica': {'max_retries': 1}}, 'max_retries', id='unknown-replica-key'),
    pytest.param({'app': APP, 'master': {'CQRS_AUTO_UPDATE_FIELDS': 'yes'}}, 'CQRS_AUTO_UPDATE_FIELDS',
                 id='auto-update-fields-a-string'),
    pytest.param({'app': APP, 'master': {'CQRS_MESSAGE_TTL': -1}}, 'CQRS_MESSAGE_TTL', id='ttl-negative'),
    pytest.param({'app': APP, 'master': {'CQRS_MESSAGE_TTL': True}}, 'CQRS_MESSAGE_TTL', id='ttl-a-bool'),
    pytest.param({'app': APP, 'master': {'CQRS_MESSAGE_TTL': '60'}}, 'CQRS_MESSAGE_TTL', id='ttl-a-string'),
    pytest.param({'app': APP, 'master': {'correlation_function': 42}}, 'correlation_function',
                 id='correlation-function-an-int'),
    pytest.param({'app': APP, 'master': {'correlation_function': 'tests.no_such.func'}}, 'correlation_function',
                 id='correlation-function-not-importable'),
    pytest.param({'app': APP, 'master': {'meta_function': 'tests.settings.SECRET_KEY'}}, 'meta_function',
                 id='meta-function-not-callable'),
    pytest.param({'app': APP, 'replica': {'CQRS_MAX_RETRIES': -1}}, 'CQRS_MAX_RETRIES', id='max-retries-negative'),
    pytest.param({'app': APP, 'replica': {'CQRS_MAX_RETRIES': 2.5}}, 'CQRS_MAX_RETRIES', id='max-retries-a-float'),
    pytest.param({'app': APP, 'replica': {'CQRS_MAX_RETRIES': False}}, 'CQRS_MAX_RETRIES', id='max-retries-a-bool'),
    pytest.param({'app': APP, 'replica': {'CQRS_RETRY_DELAY': '2'}}, 'CQRS_RETRY_DELAY', id='retry-delay-a-string'),
    pytest.param({'app': APP, 'replica': {'CQRS_RETRY_DELAY': -0.5}}, 'CQRS_RETRY_DELAY',
                 id='retry-delay-negative'),
    pytest.param(['app', APP], 'CQRS setting', id='not-a-dict'),
]


@pytest.mark.parametrize(('raw', 'named'), BAD_VALUES)
def test_a_bad_value_raises_configuration_error_naming_the_key(raw, named):
    with override_settings(CQRS=raw), pytest.raises(ConfigurationError) as excinfo:
        get_settings()

    assert named in str(excinfo.value)
    assert 'cqrs_celery.E0' in str(excinfo.value)


def test_a_configuration_error_is_an_improperly_configured():
    with override_settings(CQRS={'app': APP, 'replica': {'CQRS_MAX_RETRIES': -1}}), \
            pytest.raises(ImproperlyConfigured):
        get_settings()


def test_a_bad_value_is_reported_on_every_use_not_only_the_first():
    with override_settings(CQRS={'app': APP, 'queue': 'bad queue'}):
        for _ in range(2):
            with pytest.raises(ConfigurationError):
                get_settings()


def test_good_settings_are_back_after_a_bad_override():
    with override_settings(CQRS={'app': APP, 'queue': 'bad queue'}), pytest.raises(ConfigurationError):
        get_settings()

    assert get_settings().app == APP
