"""Test settings of a replica service configured the way the hostile-message tests need.

Environment (on top of ``tests.settings``):
    CQRS_TEST_ACCEPT_CONTENT    comma-separated CELERY_ACCEPT_CONTENT (an old project's pickle habit)
    CQRS_TEST_MAX_MESSAGE_SIZE  CQRS['replica']['max_message_size']
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import CQRS

if os.environ.get('CQRS_TEST_ACCEPT_CONTENT'):
    CELERY_ACCEPT_CONTENT = os.environ['CQRS_TEST_ACCEPT_CONTENT'].split(',')

if os.environ.get('CQRS_TEST_MAX_MESSAGE_SIZE'):
    CQRS = {**CQRS, 'replica': {**CQRS['replica'], 'max_message_size': int(os.environ['CQRS_TEST_MAX_MESSAGE_SIZE'])}}
