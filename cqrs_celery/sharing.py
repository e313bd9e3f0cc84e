"""The publisher's share of the interpreter: short slices of Python, no garbage collection inside a drain.

The publisher thread runs inside the service's own processes, beside the threads that serve
requests and save rows, and shares one interpreter lock with them. ``benchmarks/drain_cost.py
--probe`` measures how long a thread that comes back from the database waits for it while drains
run. Two things made it wait:

* Pure Python keeps the lock until it blocks, or until another thread asks for it, which that
  thread does only after the switch interval (5 ms). A thread whose answer had come back waited
  until the publisher next blocked or offered the lock: up to 3 ms at a stretch, the longest
  stretches in building 16 envelopes, reading a batch's rows, merging its events and encoding its
  message. The loops over rows now offer the lock every few rows (:func:`offer`).
* A drain keeps its batch (events, rows, envelopes: about eleven objects an event) alive while
  it allocates more. The cyclic garbage collector, started by whichever thread allocates, found
  them alive, moved them to its older generations, and about once every ten thousand events this
  set off a collection of the whole process's heap with the lock held: 49–114 ms for the bench
  master's 76,000 objects, longer in a larger service. The library's own publishers (the thread,
  ``cqrs_outbox relay --follow``) drain with automatic collection paused
  (:func:`collections_paused`); what a drain made is freed by reference counting when it ends,
  before the collector runs again. A process that switched the collector off itself keeps it off,
  and a child forked while a drain of its parent had it paused starts with it on.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator

#: Rows between two offers of the interpreter lock, by the work a row costs there (on a slow
#: 2-core machine): building an envelope (about 30 µs), converting a row read (about 10 µs),
#: merging an event (about 5 µs), writing a row into a message (about 3 µs).
ENVELOPES_A_SLICE = 4
ROWS_A_SLICE = 8
EVENTS_A_SLICE = 16
WIRE_ROWS_A_SLICE = 32


def offer() -> None:
    """Let another thread of the process take the interpreter lock, if one is waiting for it.

    ``time.sleep(0)`` lets the lock go and naps for the kernel's timer slack (50 µs by default on
    Linux), long enough for a waiting thread to wake and take it; it costs the publisher about
    6 µs of CPU (measured on the 2-core machine of the benchmarks), and a drain of 150 events
    offers the lock about 70 times.
    """
    time.sleep(0)


_pauses = 0
_paused_by_us = False
_pauses_lock = threading.Lock()


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """Automatic garbage collection off for the block, back on when the last such block ends.

    Nested and concurrent blocks (publisher threads of several databases) count: the collector
    comes back on when none is left, and only if it was on when the first began.
    """
    global _pauses, _paused_by_us
    with _pauses_lock:
        if _pauses == 0:
            _paused_by_us = gc.isenabled()
            if _paused_by_us:
                gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses -= 1
            if _pauses == 0 and _paused_by_us:
                _paused_by_us = False
                gc.enable()


def _forked() -> None:
    """In a child forked during a pause: no drain of the parent's runs here, so the collector comes
    back on (it would stay off for good), with a lock no parent thread can be holding."""
    global _pauses, _paused_by_us, _pauses_lock
    if _pauses and _paused_by_us:
        gc.enable()
    _pauses, _paused_by_us, _pauses_lock = 0, False, threading.Lock()


if hasattr(os, 'register_at_fork'):  # (POSIX)
    os.register_at_fork(after_in_child=_forked)
