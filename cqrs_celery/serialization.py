"""Model instance ⇄ JSON-safe dict; every concrete Django field type round-trips exactly.

Encoding is by value type, so nested values (a DRF serializer's output, metadata) follow the same
rules: Decimal → string with every digit, a float that is not finite → ``'NaN'``/``'Infinity'``,
date/time/datetime → ISO-8601 (offset and microseconds kept), timedelta → ISO-8601 duration,
UUID → string, bytes → base64. Decoding is by the replica field's own ``to_python``, which parses
exactly those forms.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import inspect
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from django.conf import settings as django_settings
from django.core import validators
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connections, models, router
from django.db.models.expressions import Combinable
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone
from django.utils.duration import duration_iso_string
from model_utils.tracker import DescriptorWrapper, FieldTracker

from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED
from cqrs_celery.exceptions import DataError


def to_json(value: Any) -> Any:
    """``value`` made JSON-safe without losing precision; containers are converted recursively."""
    python_type = type(value)
    if python_type is str or python_type is int or python_type is bool or value is None:  # the common cases
        return value
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinity (replica queues refuse such bodies); float() reads these back
        return 'NaN' if math.isnan(value) else 'Infinity' if value > 0 else '-Infinity'
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return duration_iso_string(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode('ascii')
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [to_json(v) for v in value]
    return str(value)


#: Value types every field's value is sent as directly (containers of them too).
_PLAIN = (str, bool, int, float, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta, uuid.UUID,
          bytes, bytearray, memoryview)


def is_plain(value: Any) -> bool:
    """True for a value ``to_json`` sends without falling back to ``str()``."""
    if value is None or isinstance(value, _PLAIN):
        return True
    if isinstance(value, Mapping):
        return all(is_plain(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return all(is_plain(v) for v in value)
    return False


#: The keys of a kombu type marker: kombu's JSON decoder turns an object with exactly these keys
#: into another type (or fails on a type it does not know), so replica queues refuse a message
#: holding one (``replica/guard.py``).
KOMBU_MARKER = frozenset({'__type__', '__value__'})


def unsendable(value: Any, deepest: int) -> str | None:
    """Why replica queues would refuse a message holding ``value``, or None.

    ``value`` may nest ``deepest`` levels of arrays and objects (see :data:`ENVELOPE_LEVELS`) and
    hold no kombu type marker (:data:`KOMBU_MARKER`). The answer completes ``the value …``.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            if item.keys() == KOMBU_MARKER:
                shown = repr(dict(item))
                shown = shown if len(shown) <= 80 else f'{shown[:80]}…'
                return (f'holds {shown}, a kombu type marker (kombu decodes such an object into another type), '
                        'which replica queues refuse')
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth > deepest:
            return (f"nests deeper than {deepest} levels, which replica queues refuse "
                    "(CQRS['replica']['max_nesting_depth'])")
        stack.extend((child, depth + 1) for child in children)
    return None


#: Containers around a value in a replica's task message (body, arguments, batch, rows, row,
#: instance_data or meta): a value may nest ``max_nesting_depth`` minus this many levels.
ENVELOPE_LEVELS = 6


def has_own_value_to_string(field: Any) -> bool:
    """True when the field's class defines how its value becomes text (a custom field's own hook)."""
    return type(field).value_to_string is not models.Field.value_to_string


def field_value(field: models.Field[Any, Any], instance: models.Model) -> Any:
    """The JSON-safe value of one concrete field (a foreign key gives its target's key).

    A value of a type JSON cannot carry (a custom field's own object) goes through the field's
    ``value_to_string``; without one it is refused rather than sent as ``str(value)``.

    Raises:
        DataError: the value cannot be sent.
    """
    value = field.value_from_object(instance)
    python_type = type(value)
    if python_type is str or python_type is int or python_type is bool or value is None:  # the common cases
        return value
    return _sendable(field, instance, value)


def _sendable(field: models.Field[Any, Any], instance: models.Model, value: Any) -> Any:
    """``field_value`` past its common cases: ``value`` is the field's value in ``instance``."""
    if isinstance(field, models.JSONField):
        return value
    if is_plain(value):
        return to_json(value)
    if has_own_value_to_string(field):
        return field.value_to_string(instance)
    raise DataError(f'{instance._meta.label}.{field.name}: a {type(value).__name__} value cannot be sent to '
                    'replicas; give the field a value_to_string() (and to_python() on the replica), or leave '
                    'it out of CQRS_FIELDS')


def concrete_fields(model: type[models.Model], names: Iterable[str] | None = None) -> list[Any]:
    """Concrete local fields of ``model`` limited to ``names`` (all when None), in model order."""
    wanted = None if names is None else set(names)
    return [f for f in model._meta.concrete_fields if wanted is None or f.name in wanted]


#: Per model and field selection, what ``instance_to_dict`` reads: (name, attname, field, whether
#: the value is read with a plain attribute lookup, whether a datetime or Decimal value may be
#: converted at once). Built on first use; a model's fields do not change while it runs.
_PlanRow = tuple[str, str, Any, bool, bool]
_plans: dict[tuple[type[models.Model], tuple[str, ...] | None], list[_PlanRow]] = {}


def _plan(model: type[models.Model], names: Iterable[str] | None) -> list[_PlanRow]:
    key = (model, None if names is None else tuple(names))
    plan = _plans.get(key)
    if plan is None:
        fields = concrete_fields(model, names)
        for extra in (model._meta.pk, model._meta.get_field(FIELD_REVISION), model._meta.get_field(FIELD_UPDATED)):
            if all(f.name != extra.name for f in fields):
                fields.append(extra)
        plan = [(f.name, f.attname, f, type(f).value_from_object is models.Field.value_from_object,
                 not isinstance(f, models.JSONField)) for f in fields]
        _plans[key] = plan
    return plan


class PendingExpression(DataError):
    """A field of the instance holds an expression (``F('n') + 1``) whose value is in the database only."""


def instance_to_dict(instance: models.Model, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The row as a JSON-safe dict keyed by field name, with the revision fields always present.

    Each value is what ``field_value`` gives; the usual types are converted here without its call.

    Raises:
        PendingExpression: a field holds an expression (saved: read the row back; unsaved: a mistake).
        DataError: a value cannot be sent.
    """
    plan = _plan(type(instance), names)
    return _to_dict(plan, [getattr(instance, attname) if plain_read else field.value_from_object(instance)
                           for _, attname, field, plain_read, _ in plan], instance)


def _to_dict(plan: list[_PlanRow], values: Sequence[Any], instance: models.Model | None) -> dict[str, Any]:
    """The dict of the row whose fields in ``plan`` hold ``values``: see ``instance_to_dict`` and ``row_to_dict``."""
    data: dict[str, Any] = {}
    for (name, _, field, _, convertible), value in zip(plan, values, strict=True):
        python_type = type(value)
        if python_type is str or python_type is int or python_type is bool or value is None:
            data[name] = value
        elif convertible and python_type is datetime.datetime:
            data[name] = value.isoformat()
        elif convertible and python_type is decimal.Decimal:
            data[name] = str(value)
        elif instance is None:
            if isinstance(field, models.JSONField):
                data[name] = value
            elif is_plain(value):
                data[name] = to_json(value)
            else:
                raise NeedsInstance(f'{field.model._meta.label}.{name}: a {python_type.__name__} value')
        elif isinstance(value, Combinable):
            raise PendingExpression(f'{instance._meta.label}.{name} holds an expression ({value!r}), not a value: '
                                    'save the instance (the value is then read back) before it is sent')
        else:
            data[name] = _sendable(field, instance, value)
    return data


class NeedsInstance(DataError):
    """A value ``row_to_dict`` cannot convert without the instance (the field's own ``value_to_string``)."""


def row_plan(model: type[models.Model], names: Iterable[str] | None = None) -> list[_PlanRow] | None:
    """What ``row_to_dict`` reads, in order: the fields ``instance_to_dict`` sends, when the model's
    rows can be read as plain value tuples (``values_list``) and give the same dict; else None.

    That holds when loading a row only stores each column's value (after the fields'
    ``from_db_value``) in the instance and ``instance_to_dict`` only reads it back: the model does
    not override ``__init__`` or ``from_db``, and every field is read through Django's own
    attribute (no descriptor of its own, no ``value_from_object`` of its own). A field tracker
    (``CQRS_TRACKED_FIELDS``, django-model-utils) wraps both ``__init__`` and the tracked fields'
    attributes, only to note values: that is allowed. The caller checks what is the model's to
    decide (its ``to_cqrs_dict``, serializer, related reads).
    """
    key = (model, None if names is None else tuple(names))
    if key in _row_plans:
        return _row_plans[key]
    plan: list[_PlanRow] | None = _plan(model, names)
    if not _plain_init(model) or \
            getattr(model.from_db, '__func__', None) is not models.Model.from_db.__func__:  # type: ignore[attr-defined]
        plan = None
    for _, attname, _field, plain_read, _ in plan or ():
        if not plain_read or not _plain_descriptor(inspect.getattr_static(model, attname, None)):
            plan = None
            break
    _row_plans[key] = plan
    return plan


_row_plans: dict[tuple[type[models.Model], tuple[str, ...] | None], list[_PlanRow] | None] = {}
#: The attributes through which Django's own fields read a loaded value back unchanged.
_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)
#: The code of the ``__init__`` a django-model-utils field tracker puts on its model (it calls
#: the model's own, then notes the values).
_TRACKER_INIT_CODES = tuple(code for code in FieldTracker.patch_init.__code__.co_consts if inspect.iscode(code))


def _plain_init(model: type[models.Model]) -> bool:
    """True when ``model.__init__`` is Django's, or field trackers' wrappers of it."""
    init = model.__init__
    while getattr(init, '__code__', None) in _TRACKER_INIT_CODES and hasattr(init, '__wrapped__'):
        init = init.__wrapped__
    return init is models.Model.__init__


def _plain_descriptor(descriptor: Any) -> bool:
    """True for Django's own field attribute, or a field tracker's wrapper of one."""
    if isinstance(descriptor, DescriptorWrapper):
        descriptor = descriptor.descriptor
    return type(descriptor) in _PLAIN_DESCRIPTORS


def row_to_dict(plan: list[_PlanRow], values: Sequence[Any]) -> dict[str, Any]:
    """``instance_to_dict`` of a row read as the tuple ``values`` (in ``plan``'s order: see ``row_plan``).

    Raises:
        NeedsInstance: a value only the field can convert, given the instance: read that row as one.
    """
    return _to_dict(plan, values, None)


def field_for_key(model: type[models.Model], key: str) -> Any | None:
    """The concrete field of ``model`` named (or with attname) ``key``, or None."""
    try:
        field = model._meta.get_field(key)
    except FieldDoesNotExist:
        for f in model._meta.concrete_fields:
            if f.attname == key:
                return f
        # A master foreign key travels under its name (``author``) with the target's key as value;
        # a replica that keeps that id in a plain column named like the attname (``author_id``) gets it.
        for f in model._meta.concrete_fields:
            if f.name == f'{key}_id' and not f.is_relation:
                return f
        return None
    return field if getattr(field, 'concrete', False) else None


def from_json(model: type[models.Model], data: Mapping[str, Any], connection: Any = None) -> dict[str, Any]:
    """``data`` converted to Python values of ``model``'s fields, keyed by attname.

    Keys that name no concrete field are dropped. ``connection`` is the one the row is written to
    (looked up when not given).

    Raises:
        DataError: a value does not fit its field; the message names field and value.
    """
    result: dict[str, Any] = {}
    if connection is None:
        connection = replica_connection(model)  # looked up once per row, not once per value
    known = _keys.get(model)
    if known is None:
        known = _keys[model] = {}
    for key, value in data.items():
        entry = known.get(key)
        if entry is None:
            field = field_for_key(model, key)
            if field is None:
                continue
            # only keys that name a field: unknown keys cannot grow the cache
            entry = known[key] = (field, field.attname, _checks.get(field) or _checks_for(field))
        field, attname, checks = entry
        result[attname] = python_value(model, field, value, connection, checks)
    return result


#: Per replica model, for each data key seen so far that names a field (``field_for_key``): the
#: field, its attname and its checks, worked out once (a Django field hashes slowly, in Python).
_keys: dict[Any, dict[str, tuple[Any, str, _Checks]]] = {}


def replica_connection(model: type[models.Model]) -> Any:
    """The database connection the replica writes ``model``'s rows to."""
    return connections[router.db_for_write(model) or 'default']


def python_value(model: type[models.Model], field: Any, value: Any, connection: Any = None,
                 checks: _Checks | None = None) -> Any:
    """One JSON value converted by ``field.to_python`` and checked against what the column holds.

    ``checks``: the field's, when the caller has them at hand.

    Raises:
        DataError: the value does not fit the field: wrong type, out of the column's range, too
            long, too many digits, a datetime outside what UTC can express, text that is not
            valid Unicode, NULL for a NOT NULL column. Retrying cannot help.
    """
    try:
        if value is None:
            if not field.null and not field.primary_key:
                raise ValueError('NULL for a column that does not allow it')
            return None
        if checks is None:
            checks = _checks.get(field) or _checks_for(field)
        if type(value) is checks.as_is:  # the common case: only the column's limits to check
            _check_fits(checks, value)
            if isinstance(value, str) and '\x00' in value:
                _check_database_takes(connection or replica_connection(model), field, checks, value)
            return value
        if checks.json:
            return value
        _refuse_coercion(checks, value)
        converted = field.to_python(value)
        if checks.datetime:
            converted = _aware(converted)
        _check_fits(checks, converted)
        _check_database_takes(connection or replica_connection(model), field, checks, converted)
    except (ValidationError, TypeError, ValueError, ArithmeticError, decimal.InvalidOperation) as exc:
        raise DataError(
            f'{model._meta.label}.{field.name}: value {_short(value)} does not fit a {field.get_internal_type()}'
            f' ({_reason(exc)})'
        ) from exc
    if checks.binary and isinstance(converted, memoryview):
        return bytes(converted)
    return converted


class _Checks(NamedTuple):
    """What ``python_value`` checks for one field, worked out once per field."""

    #: A JSONField: the JSON value is the Python value.
    json: bool
    #: Size validators of the field (or, for a relation, of its target field).
    validators: tuple[Any, ...]
    #: The field (or its target) is an integer field: a fractional float is refused.
    integer: bool
    #: The field (or its target) is a BooleanField: only it takes a JSON boolean.
    boolean: bool
    #: The field (or its target) is a BinaryField.
    binary: bool
    #: A DateTimeField: a naive value is made aware as Django's save would.
    datetime: bool
    #: The field's class is not one whose database preparation cannot fail (``_PREPARED_AS_IS``).
    prepare: bool
    #: The size validators that are a plain comparison with a fixed limit, as (kind, limit,
    #: validator): the comparison runs first, and the validator itself (for its message) only
    #: when the value is out of bounds. The other size validators are in ``validators``.
    limits: tuple[tuple[str, Any, Any], ...] = ()
    #: The JSON type (exactly it, not a subclass) this field's ``to_python`` returns unchanged and
    #: whose preparation cannot fail, so such a value is only checked against the limits (None:
    #: every value takes the whole way).
    as_is: type | None = None


_checks: dict[Any, _Checks] = {}


def _checks_for(field: Any) -> _Checks:
    target = field.target_field if field.is_relation else field
    sizes: list[Any] = [v for v in target.validators if isinstance(v, _SIZE_VALIDATORS)]
    limits = tuple((_LIMIT_KINDS[type(v)], v.limit_value, v) for v in sizes
                   if type(v) in _LIMIT_KINDS and not callable(v.limit_value))
    checks = _Checks(
        json=isinstance(field, models.JSONField),
        validators=tuple(v for v in sizes if not any(v is limit[2] for limit in limits)),
        limits=limits,
        integer=isinstance(target, models.IntegerField),
        boolean=isinstance(target, models.BooleanField),
        binary=isinstance(target, models.BinaryField),
        datetime=isinstance(field, models.DateTimeField),
        prepare=type(field) not in _PREPARED_AS_IS,
        as_is=RETURNED_AS_IS.get(type(field)),
    )
    _checks[field] = checks
    return checks


#: Validators about what a column can hold (range, length, digits); format validators (email,
#: URL…) are the master's business and are not run again here.
_SIZE_VALIDATORS = (validators.MinValueValidator, validators.MaxValueValidator, validators.MaxLengthValidator,
                    validators.DecimalValidator)
#: Validator classes (exactly these, not subclasses) that compare the value, or its length, with
#: their limit the way Django's own ``compare`` does.
_LIMIT_KINDS: dict[Any, str] = {validators.MinValueValidator: 'min', validators.MaxValueValidator: 'max',
                validators.MaxLengthValidator: 'length'}


def _check_fits(checks: _Checks, value: Any) -> None:
    for kind, limit, validator in checks.limits:
        if (value < limit) if kind == 'min' else (value > limit) if kind == 'max' else (len(value) > limit):
            validator(value)  # raises, with Django's own message
    for validator in checks.validators:
        validator(value)
    python_type = type(value)
    if (python_type is str or python_type is int or python_type is bool) and not checks.binary:  # the common cases
        if python_type is str and not value.isascii():
            value.encode('utf-8')  # a lone surrogate raises UnicodeEncodeError (a ValueError)
        return
    if isinstance(value, str):
        value.encode('utf-8')
    elif isinstance(value, datetime.datetime) and value.tzinfo is not None:
        value.astimezone(datetime.timezone.utc)  # OverflowError outside years 1…9999 in UTC
    elif checks.binary and not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f'a {type(value).__name__} is not binary data')
    if isinstance(value, datetime.timedelta):
        abs(value)  # OverflowError for the smallest timedelta


def _aware(value: Any) -> Any:
    """A naive datetime for a DateTimeField made aware in the default time zone, as Django's save would.

    Done here so that its range in UTC is checked (a naive 9999-12-31T23:00 west of UTC is year
    10000 in the database, a row nobody could read back).
    """
    if isinstance(value, datetime.datetime) and value.tzinfo is None and django_settings.USE_TZ:
        return timezone.make_aware(value, timezone.get_default_timezone())
    return value


def _check_database_takes(connection: Any, field: Any, checks: _Checks, value: Any) -> None:
    """Raise for a value the replica's database adapter refuses (an IP address that is none, NUL in text).

    The field prepares the value as the write will, so whatever its adapter refuses is found before
    anything is written, as bad data, instead of failing the write (a retry could never succeed).
    Fields of the built-in classes in ``_PREPARED_AS_IS`` are not prepared here: once ``to_python``
    and the size checks passed, their preparation cannot fail (and it costs as much again as the
    write's own).
    """
    if checks.prepare or (isinstance(value, datetime.datetime | datetime.time) and value.tzinfo is not None
                          and not django_settings.USE_TZ):
        field.get_db_prep_save(value, connection=connection)
    if isinstance(value, str) and '\x00' in value and connection.vendor == 'postgresql':
        raise ValueError('PostgreSQL text cannot hold the NUL character')


#: Built-in field classes whose database preparation of a value that passed ``to_python`` and the
#: size checks only converts it (on every backend Django ships); subclasses are prepared, since
#: they may override it. An aware datetime with ``USE_TZ = False`` is always prepared (SQLite and
#: MySQL refuse it).
_PREPARED_AS_IS = frozenset({
    models.CharField, models.TextField, models.SlugField, models.EmailField, models.URLField,
    models.IntegerField, models.BigIntegerField, models.SmallIntegerField, models.PositiveIntegerField,
    models.PositiveBigIntegerField, models.PositiveSmallIntegerField, models.AutoField, models.BigAutoField,
    models.SmallAutoField, models.BooleanField, models.FloatField, models.DecimalField, models.DateField,
    models.DateTimeField,
})


#: Built-in field classes (exactly these) whose ``to_python`` returns a JSON value of this type as it
#: is: text stays text, an int stays the same int, a boolean stays itself.
RETURNED_AS_IS: dict[Any, type] = {
    **dict.fromkeys([models.CharField, models.TextField, models.SlugField, models.EmailField, models.URLField], str),
    **dict.fromkeys([models.IntegerField, models.BigIntegerField, models.SmallIntegerField,
                     models.PositiveIntegerField, models.PositiveBigIntegerField, models.PositiveSmallIntegerField,
                     models.AutoField, models.BigAutoField, models.SmallAutoField], int),
    models.BooleanField: bool,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f'{text[:200]}…'


def _refuse_coercion(checks: _Checks, value: Any) -> None:
    """Raise for values ``to_python`` would silently turn into something else (str(dict), int(1.5))."""
    kind = type(value)
    if kind is str or kind is int:
        return  # the common cases (exactly these types), decided without the checks below
    if isinstance(value, Mapping | list):
        raise TypeError(f'a JSON {"object" if isinstance(value, Mapping) else "array"} is not a single value')
    if isinstance(value, bool):
        if not checks.boolean:
            raise TypeError('a boolean is not a value of this field')
    elif isinstance(value, float) and checks.integer and not value.is_integer():
        raise ValueError('a fractional number is not an integer')


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return '; '.join(str(m) for m in exc.messages)
    return str(exc) or type(exc).__name__
