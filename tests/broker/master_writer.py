"""A master process of the test project that writes authors, publishes them and reports.

Run as ``python -m tests.broker.master_writer <mode> <count> [<seed>]`` with the master's
environment (``tests.broker.harness.master_env``):

* ``bulk``: create ``count`` authors with ``Author.cqrs.bulk_create`` (batches of 1,000);
* ``churn``: ``count`` random changes of existing authors, as a busy master makes them: saves of one
  row, ``Author.cqrs.bulk_update`` of a few rows, creates and deletes (several such processes may
  run at once on the same rows).

Before it exits it publishes everything it committed and prints one JSON line: what it did and
``unroutable_counts()`` (rows it published that reached no replica queue).
"""

import json
import random
import sys

import django


def bulk(count: int) -> dict:
    from tests.master_app.models import Author

    for start in range(0, count, 1000):
        size = min(1000, count - start)
        Author.cqrs.bulk_create([Author(name=f'author {start + i}', email=f'a{start + i}@example.com')
                                 for i in range(size)])
    return {'created': count}


def churn(count: int, seed: int) -> dict:
    from django.db import OperationalError

    from tests.master_app.models import Author

    rng = random.Random(seed)
    done = {'saved': 0, 'bulk_updated': 0, 'created': 0, 'deleted': 0, 'deadlocks': 0}
    low, high = Author.objects.order_by('pk').values_list('pk', flat=True)[0], Author.objects.order_by('-pk')[0].pk
    for n in range(count):
        try:
            change(done, rng.random(), rng.randint(low, high), seed, n)
        except OperationalError:  # two writers locked the same rows in another order: one gives way
            done['deadlocks'] += 1
    return done


def change(done: dict, roll: float, pk: int, seed: int, n: int) -> None:
    from django.db import transaction

    from tests.master_app.models import Author

    if roll < 0.55:
        with transaction.atomic():
            author = Author.objects.select_for_update().filter(pk=pk).first()
            if author is not None:
                author.name = f'{author.name[:60]} s{seed}.{n}'
                author.email = f's{seed}.{n}@example.com'
                author.save()
                done['saved'] += 1
    elif roll < 0.75:
        done['bulk_updated'] += Author.cqrs.bulk_update(Author.objects.filter(pk__gte=pk, pk__lt=pk + 5),
                                                        email=f'bulk{seed}.{n}@example.com')
    elif roll < 0.9:
        Author.objects.create(name=f'new {seed}.{n}')
        done['created'] += 1
    else:
        deleted, _ = Author.objects.filter(pk=pk).delete()
        done['deleted'] += deleted


def main() -> None:
    django.setup()
    from cqrs_celery.master import publisher
    from cqrs_celery.producer import unroutable_counts

    mode, count = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    done = bulk(count) if mode == 'bulk' else churn(count, seed)
    publisher.shutdown()  # publish everything committed before reporting
    print(json.dumps({'done': done, 'unroutable': unroutable_counts()}), flush=True)


if __name__ == '__main__':
    main()
