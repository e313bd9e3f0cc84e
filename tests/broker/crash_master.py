"""A master process that commits a change and is SIGKILLed before it can publish it.

Run as ``python -m tests.broker.crash_master <sku>`` with the master's environment.
"""

import os
import signal
import sys

import django


def main() -> None:
    django.setup()
    from cqrs_celery.master import outbox
    from tests.master_app.models import Item

    def die(event_ids):
        print(f'committed {len(event_ids)} outbox events, dying before publishing', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    outbox.before_publish_hook = die
    Item.objects.create(sku=sys.argv[1], name='survives a crash', quantity=7)
    print('not reached', flush=True)


if __name__ == '__main__':
    main()
