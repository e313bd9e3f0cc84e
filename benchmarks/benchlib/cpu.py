"""Where a step's CPU goes: every process of the machine sampled from ``/proc``, grouped by role.

A sampler thread reads, every ``interval`` seconds, the machine's busy and idle time
(``/proc/stat``) and the CPU time (user + system, every thread) of each process of the roles below
(``/proc/<pid>/stat``), finding new processes every ``rescan`` seconds (those found after the start
count from their own start). ``used(start, end)`` gives the CPU seconds of each role between two
``time.time()`` moments, the samples interpolated linearly on both sides, so a step is measured
over its own window even when its processes started before it (a fresh master's imports, done
before its first save, are not counted).

Roles: ``master`` (``driver.py``; ``master main`` is its main thread alone, the saving loop,
without the publisher thread, and ``main in kernel`` the part of it spent in the kernel),
``publisher`` (``cqrs_outbox relay --follow``), ``worker`` (``celery … worker`` and its pool),
``postgres`` (every backend), ``rabbitmq`` (the Erlang VM and its helpers), ``redis``, ``bench``
(this process: the polling and the sampler itself), and ``rest``: the machine's busy time minus
those. ``idle`` is the machine's idle time (I/O waits included), summed over its cores.

/proc counts process times in ticks of 10 ms, so a figure of one short window is coarse; sum
windows over several runs.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from pathlib import Path

PROC = Path('/proc')
TICK = 1 / os.sysconf('SC_CLK_TCK')
ROLES = ('master', 'publisher', 'worker', 'postgres', 'rabbitmq', 'redis', 'bench')
#: The master's main thread: all its CPU, and the part in the kernel (system calls, switches).
MAIN = ('master main', 'main in kernel')


def role_of(pid: int, command: str) -> str | None:
    """The role of the process ``pid`` whose command line is ``command`` (arguments joined by spaces)."""
    if pid == os.getpid():
        return 'bench'
    if 'driver.py' in command:
        return 'master'
    if 'cqrs_outbox relay' in command:
        return 'publisher'
    if 'celery' in command and ' worker' in command:
        return 'worker'
    program = command.split(' ', 1)[0].rsplit('/', 1)[-1]
    if program.startswith('postgres'):
        return 'postgres'
    if program.startswith(('beam', 'erl_child_setup', 'epmd', 'inet_gethost')) or 'rabbit' in command:
        return 'rabbitmq'
    if program.startswith('redis-server'):
        return 'redis'
    return None


def command_line(entry: Path) -> str:
    """The command line of the process whose /proc directory is ``entry``, arguments joined by spaces."""
    return (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace').strip()


def machine_times() -> tuple[float, float]:
    """The machine's (busy, idle) seconds since boot, over every core."""
    fields = [int(value) for value in (PROC / 'stat').read_text().split('\n', 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy * TICK, idle * TICK


def process_time(pid: int, thread: int | None = None) -> float | None:
    """Seconds of CPU (user + system) of ``pid``, all its threads or only ``thread``; None once it has gone."""
    times = user_system(pid, thread)
    return None if times is None else times[0] + times[1]


def user_system(pid: int, thread: int | None = None) -> tuple[float, float] | None:
    """Seconds of CPU in user mode and in the kernel of ``pid`` (all its threads, or only ``thread``)."""
    try:
        text = (PROC / str(pid) / (f'task/{thread}/stat' if thread else 'stat')).read_text()
    except OSError:
        return None
    fields = text.rsplit(')', 1)[1].split()
    return int(fields[11]) * TICK, int(fields[12]) * TICK  # utime, stime


class CpuSampler:
    """Samples the machine and its roles' processes in a thread, from ``start()`` to ``stop()``."""

    def __init__(self, interval: float = 0.02, rescan: float = 0.05) -> None:
        self.interval, self.rescan = interval, rescan
        self.times: list[float] = []
        #: Per sample: {'busy': s, 'idle': s, role: s, …}, each a total since boot or process start.
        self.samples: list[dict[str, float]] = []
        #: Each process of a role: the role, and its CPU before the sampler started (0 for one found
        #: later: it started since, and all its CPU counts, at the sample that found it).
        self._pids: dict[int, tuple[str, float]] = {}
        #: Processes of no role (or that had no command line yet) are not read again.
        self._others: set[int] = set()
        self._started = False
        #: CPU of processes of each role that have ended (their last reading), so totals never drop.
        self._ended: dict[str, float] = dict.fromkeys((*ROLES, *MAIN), 0.0)
        self._last: dict[int, float] = {}
        #: The last reading of each master's main thread: its CPU, and the part in the kernel.
        self._main: dict[int, tuple[float, float]] = {}
        self._own_command = command_line(PROC / 'self')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='cpu-sampler', daemon=True)

    def start(self) -> CpuSampler:
        self._scan()
        self._started = True
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (nothing to do when ``start()`` was never reached)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _scan(self) -> None:
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in self._pids or pid in self._others:
                continue
            try:
                command = command_line(entry)
            except OSError:
                continue
            if command == self._own_command and pid != os.getpid():
                continue  # a child of this process between fork and exec: looked at again next scan
            role = role_of(pid, command)
            found = process_time(pid)
            if role is None or found is None:
                self._others.add(pid)
            else:
                self._pids[pid] = (role, found if not self._started else 0.0)

    def _run(self) -> None:
        next_scan = time.monotonic() + self.rescan
        while not self._stop.wait(self.interval):
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + self.rescan
            self._sample()

    def _sample(self) -> None:
        totals = dict(self._ended)
        for pid, (role, found) in list(self._pids.items()):
            seconds = process_time(pid)
            main = user_system(pid, pid) if role == 'master' else None
            if seconds is None:
                final = self._last.pop(pid, found) - found
                self._ended[role] += final
                totals[role] += final
                user, kernel = self._main.pop(pid, (0.0, 0.0))
                for key, value in (('master main', user + kernel), ('main in kernel', kernel)):
                    self._ended[key] += value
                    totals[key] += value
                del self._pids[pid]
                continue
            self._last[pid] = seconds
            totals[role] += seconds - found
            if main is not None:
                self._main[pid] = main
        for pid in self._pids:
            user, kernel = self._main.get(pid, (0.0, 0.0))
            totals['master main'] += user + kernel
            totals['main in kernel'] += kernel
        totals['busy'], totals['idle'] = machine_times()
        self.times.append(time.time())
        self.samples.append(totals)

    def _at(self, moment: float, key: str) -> float:
        index = bisect_left(self.times, moment)
        if index == 0:
            return self.samples[0][key]
        if index == len(self.times):
            return self.samples[-1][key]
        t0, t1 = self.times[index - 1], self.times[index]
        v0, v1 = self.samples[index - 1][key], self.samples[index][key]
        return v0 + (v1 - v0) * (moment - t0) / (t1 - t0)

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each role, ``rest``, ``busy`` and ``idle`` from ``start`` to ``end``.

        A process started after the sampler counts all its CPU, placed at the sample that found it
        (within ``rescan`` seconds of its start): start the sampler some time before the window.
        """
        used = {key: self._at(end, key) - self._at(start, key) for key in (*ROLES, *MAIN, 'busy', 'idle')}
        used['rest'] = used['busy'] - sum(used[role] for role in ROLES)
        return used
