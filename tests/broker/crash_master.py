"""A master process that commits a change and is SIGKILLed before anything publishes it.

Run as ``python -m tests.broker.crash_master <sku>`` with the master's environment. Its publisher
is the relay alone (``CQRS_TEST_PUBLISHER=relay``), so the event is committed and nothing in this
process sends it: the kill lands between commit and publish.
"""

import os
import signal
import sys

import django


def main() -> None:
    os.environ['CQRS_TEST_PUBLISHER'] = 'relay'
    django.setup()
    from cqrs_celery.models import OutboxEvent
    from tests.master_app.models import Item

    Item.objects.create(sku=sys.argv[1], name='survives a crash', quantity=7)
    print(f'committed {OutboxEvent.objects.count()} outbox events, dying before publishing', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    print('not reached', flush=True)


if __name__ == '__main__':
    main()
