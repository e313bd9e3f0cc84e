"""How the publisher shares the interpreter with the service's threads (``cqrs_celery.sharing``).

What it buys — shorter waits of another thread, no full collections set off by drains — is
measured by ``benchmarks/drain_cost.py --probe``, not here.
"""

import gc
import os
import threading

import pytest

from cqrs_celery import sharing
from cqrs_celery.master import publisher


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_collection_is_off_inside_the_block_and_back_on_after():
    with sharing.collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collection_comes_back_on_after_a_block_that_raised():
    with pytest.raises(RuntimeError), sharing.collections_paused():
        raise RuntimeError('the drain failed')
    assert gc.isenabled()


def test_nested_blocks_turn_collection_back_on_only_when_the_outermost_ends():
    with sharing.collections_paused():
        with sharing.collections_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_process_stays_off():
    gc.disable()
    with sharing.collections_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_blocks_of_two_threads_overlapping_leave_collection_on_when_both_end():
    first_in, second_done = threading.Event(), threading.Event()
    seen = []

    def first():
        with sharing.collections_paused():
            first_in.set()
            second_done.wait(5)
            seen.append(gc.isenabled())  # the other thread's block ended: still off for this one

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(5)
    with sharing.collections_paused():
        pass
    second_done.set()
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_the_publishers_drain_with_collection_paused(monkeypatch):
    from cqrs_celery.master import outbox

    during = []

    def drain(using, limit=None):
        during.append(gc.isenabled())
        return outbox.Drained(taken=0)

    monkeypatch.setattr(outbox, 'drain', drain)
    assert publisher.drain_ready('default') == (None, 0)
    assert during == [False]
    assert gc.isenabled()



@pytest.mark.skipif(not hasattr(os, 'fork'), reason='no fork here')
def test_a_child_forked_during_a_pause_starts_with_collection_on_and_can_pause_again():
    read, write = os.pipe()
    with sharing.collections_paused():
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's cleanup
            try:
                on_after_fork = gc.isenabled()
                with sharing.collections_paused():
                    off_inside = not gc.isenabled()
                on_after = gc.isenabled()
                os.write(write, f'{on_after_fork} {off_inside} {on_after}'.encode())
            finally:
                os._exit(0)
        assert not gc.isenabled()  # the parent's pause goes on
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        assert answer.read() == 'True True True'
    assert gc.isenabled()
