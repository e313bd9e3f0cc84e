"""What the diff, dump and load commands share: models by CQRS_ID, pks in JSON form, the pipe's lines.

The pipe format is django-cqrs's, so its runbooks keep working: a header line
``<CQRS_ID>,<time>[,<queue>]`` then one JSON array per line (``[[pk, revision], …]`` from the
master's diff, ``[pk, …]`` from the others).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import ujson
from django.core.management.base import CommandError

from cqrs_celery.exceptions import UnknownCQRSIdError
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry
from cqrs_celery.serialization import to_json

#: What django-cqrs writes for "no queue" in the header.
NO_QUEUE = 'None'


def master_model(cqrs_id: str) -> Any:
    try:
        return MasterRegistry.get(cqrs_id)
    except UnknownCQRSIdError as exc:
        raise CommandError(f'{exc} (run this command in the master service of {cqrs_id!r})') from exc


def replica_model(cqrs_id: str) -> Any:
    try:
        return ReplicaRegistry.get(cqrs_id)
    except UnknownCQRSIdError as exc:
        raise CommandError(f'{exc} (run this command in a replica service of {cqrs_id!r})') from exc


def input_stream(options: dict[str, Any]) -> TextIO:
    """The command's input: ``stdin=`` given to ``call_command``, else the process's stdin."""
    return options.get('stdin') or sys.stdin


def header(stream: TextIO, command: str) -> tuple[str, list[str]]:
    """The pipe's header line split into CQRS_ID and the rest."""
    line = stream.readline().strip()
    if not line:
        raise CommandError(f'{command}: no input (pipe the output of the previous command into this one)')
    cqrs_id, *rest = line.split(',')
    return cqrs_id, rest


def packages(stream: TextIO, command: str) -> Iterator[list[Any]]:
    """The JSON arrays of the following lines (blank lines skipped)."""
    for number, line in enumerate(stream, start=2):
        if not line.strip():
            continue
        try:
            package = ujson.loads(line)
        except ValueError as exc:
            raise CommandError(f'{command}: line {number} is not JSON ({exc}); is the input the output of '
                               'the previous command of the pipe?') from exc
        if not isinstance(package, list):
            raise CommandError(f'{command}: line {number} is not a JSON array')
        yield package


def dumps(value: Any) -> str:
    return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)


def python_pk(model: Any, value: Any) -> Any:
    """A pk in JSON form as ``model``'s Python value (``'7'`` and ``7`` name one row of an int pk).

    Raises:
        CommandError: the value is not a primary key of ``model``.
    """
    try:
        if isinstance(value, dict | list):
            raise ValueError('a JSON object or array is not a primary key')
        return model._meta.pk.to_python(value)
    except Exception as exc:
        raise CommandError(f'{value!r} is not a primary key of {model._meta.label}: {exc}') from exc


def json_pks(model: Any, values: Iterable[Any]) -> dict[Any, Any]:
    """``{python pk: the pk as given}`` for pks in JSON form."""
    return {python_pk(model, value): value for value in values}


def pk_json(value: Any) -> Any:
    return to_json(value)


def filtered(queryset: Any, text: str | None) -> Any:
    """``queryset`` filtered by a JSON object of lookups (``--filter``)."""
    if not text:
        return queryset
    try:
        lookups = ujson.loads(text)
        if not isinstance(lookups, dict):
            raise ValueError('it must be a JSON object')
        queryset = queryset.filter(**lookups)
        queryset.exists()
    except Exception as exc:
        raise CommandError(f'--filter {text!r} is not a usable filter: {exc}') from exc
    return queryset


def batches(queryset: Any, size: int, fields: tuple[str, ...] | None = None) -> Iterator[list[Any]]:
    """Rows of ``queryset`` ``size`` at a time in pk order, by keyset (stable while rows change).

    With ``fields``, each row is a tuple of those values, the pk first.
    """
    if size < 1:
        raise CommandError('--batch must be at least 1.')
    queryset = queryset.order_by('pk')
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        chunk = list(page.values_list('pk', *fields)[:size] if fields is not None else page[:size])
        if not chunk:
            return
        last = chunk[-1][0] if fields is not None else chunk[-1].pk
        yield chunk
