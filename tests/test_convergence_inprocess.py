"""Convergence (DESIGN §7), in-process: whatever order and duplication envelopes arrive in, each
replica row ends equal to the master's last committed state, and deleted rows stay deleted.

A seeded random history of updates, deletes and re-creations (explicit pks, so re-created rows
reuse a deleted pk) runs on the master while envelopes are captured; they are then delivered to
``apply()`` through the JSON wire form, shuffled and with duplicates.
"""

import contextlib
import random

import pytest
import ujson
from django.db import transaction

from cqrs_celery.envelope import decode
from cqrs_celery.replica.apply import apply
from tests.master_app.models import Item
from tests.replica_app.models import ReplicaItem

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 20
STEPS = 200
SKUS = [f'sku-{n:02d}' for n in range(ROWS)]


class Rollback(Exception):
    pass


def change(rng: random.Random, sku: str) -> None:
    """One random committed-or-not change of the row ``sku`` on the master."""
    item = Item.objects.filter(pk=sku).first()
    if item is None:
        Item.objects.create(sku=sku, name=f'{sku} reborn {rng.random():.6f}', quantity=rng.randint(0, 1000))
    elif rng.random() < 0.3:
        item.delete()
    else:
        item.name = f'{sku} v{rng.random():.6f}'
        item.quantity = rng.randint(0, 1000)
        item.save()


def run_master_history(rng: random.Random) -> None:
    Item.cqrs.bulk_create([Item(sku=sku, name=sku, quantity=0) for sku in SKUS])
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.6:
            change(rng, rng.choice(SKUS))
        elif roll < 0.8:
            # several changes of possibly the same rows in one transaction: one message per row
            with transaction.atomic():
                for _ in range(rng.randint(2, 4)):
                    change(rng, rng.choice(SKUS))
        elif roll < 0.9:
            with contextlib.suppress(Rollback), transaction.atomic():
                change(rng, rng.choice(SKUS))
                raise Rollback
        else:
            Item.cqrs.bulk_update(Item.objects.filter(pk__in=rng.sample(SKUS, 5)), quantity=rng.randint(0, 1000))


def master_state() -> dict:
    return {i.sku: (i.name, i.quantity, i.cqrs_revision, i.cqrs_updated) for i in Item.objects.all()}


def replica_state() -> dict:
    return {i.sku: (i.name, i.quantity, i.cqrs_revision, i.cqrs_updated) for i in ReplicaItem.objects.all()}


@pytest.mark.parametrize('seed', range(5))
def test_replica_converges_to_the_master_whatever_the_delivery_order(cqrs_captured, seed):
    rng = random.Random(seed)
    run_master_history(rng)
    expected = master_state()
    deleted = set(SKUS) - set(expected)
    wire = [ujson.dumps(envelope.to_wire()) for envelope in cqrs_captured]
    assert len(wire) > STEPS // 2

    deliveries = wire + rng.sample(wire, len(wire) // 3)  # about a third arrive twice
    rng.shuffle(deliveries)
    for text in deliveries:
        apply(decode(text))

    assert replica_state() == expected
    assert not ReplicaItem.objects.filter(pk__in=deleted).exists()


@pytest.mark.parametrize('seed', range(3))
def test_replaying_every_envelope_again_changes_nothing(cqrs_captured, seed):
    rng = random.Random(100 + seed)
    run_master_history(rng)
    wire = [ujson.dumps(envelope.to_wire()) for envelope in cqrs_captured]
    for text in wire:
        apply(decode(text))
    converged = replica_state()

    rng.shuffle(wire)
    for text in wire:
        apply(decode(text))

    assert replica_state() == converged == master_state()


def test_delivery_in_reverse_order_converges(cqrs_captured):
    run_master_history(random.Random(42))

    for envelope in reversed(cqrs_captured):
        apply(decode(ujson.dumps(envelope.to_wire())))

    assert replica_state() == master_state()
