"""Fault injection for ReplicaFlaky: attempt counters and switches kept as files."""

import fcntl
from pathlib import Path

from django.conf import settings


class PlannedFailure(RuntimeError):
    pass


def fault_dir():
    return Path(settings.CQRS_TEST_FAULT_DIR) if settings.CQRS_TEST_FAULT_DIR else None


def count_attempt(pk, revision):
    path = fault_dir() / f'attempts_{pk}_{revision}'
    with open(path, 'a+') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write('x')
        handle.flush()
        handle.seek(0)
        return len(handle.read())


def attempts(directory, pk, revision):
    path = Path(directory) / f'attempts_{pk}_{revision}'
    return len(path.read_text()) if path.exists() else 0


def maybe_fail(pk, revision, fail_times):
    if fault_dir() is None or fail_times == 0:
        return
    attempt = count_attempt(pk, revision)
    if fail_times < 0 and (fault_dir() / f'always_fail_{pk}').exists():
        raise PlannedFailure(f'planned failure of flaky {pk} (always, attempt {attempt})')
    if 0 < attempt <= fail_times:
        raise PlannedFailure(f'planned failure of flaky {pk} (attempt {attempt} of {fail_times})')
