"""Hand envelopes to the broker through the project's Celery app (pooled producers, JSON only).

Publishing uses a kombu producer pool of its own, built from the app's broker settings with a
bounded connect timeout and, on RabbitMQ, publisher confirms: a publish returns only once the
broker has stored the message.

A broadcast that reaches no queue (no replica service has bound a queue for that CQRS_ID) is
*unroutable*: it is detected, counted (:func:`unroutable_counts`), announced by the
``cqrs_celery.signals.unroutable`` signal and logged once per CQRS_ID per minute
(:mod:`cqrs_celery.unroutable`). What happens to it then depends on what "no queue" can mean on the broker:

* RabbitMQ keeps durable queues and their bindings across restarts, so no queue means no replica
  service has been deployed yet: the publish counts as done (there was nobody to deliver to; the
  outbox does not keep it, or a model nobody replicates would fill it for ever). Every publish is
  *mandatory*; RabbitMQ returns an unroutable message before it confirms it.
* Redis keeps its binding table in memory: after a restart without persistence it is empty until
  the replica workers reconnect and declare their bindings again. So there (and on the filesystem
  broker) the publish fails with :class:`~cqrs_celery.exceptions.UnroutableError` and the outbox
  keeps the event, retrying with back-off. kombu would drop such a message silently, so the
  binding table is read first, before every publish (one round trip per message, which carries
  a whole batch; not cached, see ``_is_bound``).

A replica deployed later is made whole by its first-run sync (:mod:`cqrs_celery.bootstrap`) and by
reconciliation. A directed publish (``cqrs.direct``) to a queue that does not exist fails with
:class:`~cqrs_celery.exceptions.UnroutableError` on every broker.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ujson
from kombu import pools
from kombu.serialization import registry  # type: ignore[attr-defined]  # (not in kombu-stubs)
from kombu.utils import json as kombu_json

from cqrs_celery import filesystem, observability, topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import JSON_CONTENT_TYPE, TASK_NAME
from cqrs_celery.envelope import Envelope, encode_batch
from cqrs_celery.exceptions import BrokerUnavailableError, PublishError
from cqrs_celery.unroutable import record as _unroutable
from cqrs_celery.unroutable import unroutable_counts as unroutable_counts  # (public here too)

logger = logging.getLogger(__name__)

#: Replaced by ``cqrs_celery.testing`` to apply in-process or capture instead of using the broker.
_sender: Callable[..., None] | None = None
_installed: Callable[..., None] | None = None


def set_sender(sender: Callable[..., None] | None) -> Callable[..., None] | None:
    """Install ``sender`` instead of the broker (``None`` restores it); returns the previous one.

    The sender is called as ``sender(envelope, route_to=None, countdown=None)`` for every row sent
    (the arguments ``send`` takes); one that takes only the envelope is called with it alone.
    """
    global _sender, _installed
    previous = _installed
    _installed = sender
    _sender = None if sender is None else _full_signature(sender)
    return previous


def _full_signature(sender: Callable[..., None]) -> Callable[..., None]:
    try:
        parameters = inspect.signature(sender).parameters
    except (TypeError, ValueError):
        return sender
    if 'route_to' in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return sender
    return lambda envelope, route_to=None, countdown=None: sender(envelope)


_families: dict[tuple[int, str], str] = {}


def transport_family(app: Any) -> str:
    """``amqp`` or ``virtual`` for the app's broker; cached per app and broker URL."""
    key = (id(app), str(app.conf.broker_url))
    if key not in _families:
        filesystem.configure(app)  # before the first connection: shared folders for filesystem://
        with app.connection_for_write() as conn:
            driver = conn.transport.driver_type
        if driver == 'filesystem':
            ensure_filesystem_folders(app)
        _families[key] = topology.transport_family(driver)
    return _families[key]


def prepare(app: Any) -> None:
    """Load what the first publish of a process would load, without connecting to the broker.

    The broker's kombu transport (redis-py alone takes some 60 ms to import), Celery's message
    builder and router, the modules of its event dispatcher and of the result backend it looks up
    on every send, and the IDNA codec a connection by host name uses. The first publish did all of
    this itself: a fresh process's first events waited for it, and its request threads waited for
    the interpreter while it ran. Nothing connects here: what is built holds no connection until the
    first publish uses it.

    Raises:
        Exception: whatever loading raised (a missing client library, a bad broker URL); the
            caller leaves it for the first publish to report.
    """
    import encodings.idna  # noqa: F401  (socket.getaddrinfo imports it for a host name)

    from celery.app import backends

    transport_family(app)
    app.amqp.send_task_message  # noqa: B018  (Celery's message sender, its router and a disabled event dispatcher)
    backends.by_url(app.backend_cls or app.conf.result_backend, app.loader)  # the class only, not an instance


def ensure_filesystem_folders(app: Any) -> None:
    """Create the folders of kombu's filesystem transport, which fails on missing ones."""
    filesystem.ensure_folders(app.conf.broker_transport_options or {})


_pools: dict[tuple[int, str, float], Any] = {}


def producer_pool(app: Any) -> Any:
    """kombu's shared producer pool for publishing envelopes (looked up once per app, broker and timeout)."""
    timeout = get_settings().master.publish_timeout
    key = (id(app), str(app.conf.broker_url), timeout)
    pool = _pools.get(key)
    # kombu's pools.reset() (tests, forks) closes every pool: a cached one must still be registered.
    if pool is None or not any(p is pool for p in pools.producers.values()):
        options = dict(app.conf.broker_transport_options or {})
        options.setdefault('max_retries', 1)
        if transport_family(app) == topology.AMQP:
            options['confirm_publish'] = True
        connection = app.connection_for_write(connect_timeout=timeout, transport_options=options)
        pool = _pools[key] = pools.producers[connection]
    return pool


def send(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """Publish one envelope: to every replica, or to one queue (a directed sync, or ``route_to``)."""
    if _sender is not None:
        _sender(envelope, route_to=route_to, countdown=countdown)
        return
    publish_to_broker(envelope, route_to=route_to, countdown=countdown)


def send_batch(envelopes: Sequence[Envelope], *, checked: bool = False) -> None:
    """Publish rows of one CQRS_ID sharing queue, expiry and retries as one v2 message.

    Raises ``PublishError``, before anything is sent, for a row that replica queues would refuse
    (``publish.refusal``): the replica would dead-letter the whole batch with it. ``checked``: the
    caller asked that of every row already.
    """
    if not checked:
        from cqrs_celery.master.publish import refusal

        for envelope in envelopes:
            refused = refusal(envelope)
            if refused is not None:
                raise PublishError(str(refused))
    if _sender is not None:
        for envelope in envelopes:
            _sender(envelope, route_to=None, countdown=None)
        return
    body = encode_batch(envelopes)
    text = encode_json(body)
    if _too_large(text):
        if len(envelopes) == 1:
            raise PublishError(f'{body["cqrs_id"]} pk={envelopes[0].instance_pk!r}: the row encodes to more than '
                               "CQRS['replica']['max_message_size'] bytes, which replica queues refuse")
        # a batch no replica queue would take goes out in halves (each row keeps its revision rules)
        half = len(envelopes) // 2
        send_batch(envelopes[:half], checked=True)
        send_batch(envelopes[half:], checked=True)
        return
    first = envelopes[0]
    started = time.monotonic()
    exchange, routing_key = _publish(body, first.cqrs_id, first.queue, None,
                                     f'{len(envelopes)} rows of {first.cqrs_id} (revisions {_revisions(envelopes)})',
                                     len(envelopes), text)
    observability.published(envelopes, queue=first.queue, exchange=exchange, routing_key=routing_key,
                            duration=time.monotonic() - started)


#: Bytes of a task message body around its argument (``[[...], {}, {"callbacks": null, …}]``), rounded up.
_CALL_OVERHEAD = 256


def _too_large(text: str) -> bool:
    """True when the task message carrying the JSON ``text`` would exceed what replica queues accept."""
    size = len(text) if text.isascii() else len(text.encode('utf-8', 'surrogatepass'))
    return size + _CALL_OVERHEAD > get_settings().replica.max_message_size


def encode_json(value: Any) -> str:
    """``value`` as JSON text, ASCII as kombu's ``json`` writes it (a lone surrogate is escaped, and
    the replica's gate refuses it with the reason): by ujson, or by kombu's encoder for what ujson
    refuses (an integer beyond 64 bits)."""
    try:
        return ujson.dumps(value, escape_forward_slashes=False)
    except (TypeError, ValueError, OverflowError):
        return str(kombu_json.dumps(value))


#: The kombu serializer of cqrs task messages: JSON (``application/json``, utf-8) as kombu's own
#: ``json`` writes it, by ujson, three times as fast; kombu's decoder still reads it.
SERIALIZER = 'cqrs_json'
#: Per thread, the body being published with its JSON text (``_publish`` measured it): the task
#: message reuses that text, so an envelope is encoded once.
_encoding = threading.local()


def _encode_call(call: Any) -> str:
    """The JSON of a protocol 2 task body ``(args, kwargs, embed)``."""
    ready = getattr(_encoding, 'ready', None)
    if ready is not None and isinstance(call, tuple) and len(call) == 3:
        args, kwargs, embed = call
        if isinstance(args, list) and len(args) == 1 and args[0] is ready[0]:
            return f'[[{ready[1]}],{encode_json(kwargs)},{encode_json(embed)}]'
    return encode_json(call)


registry.register(SERIALIZER, _encode_call, None, content_type=JSON_CONTENT_TYPE, content_encoding='utf-8')
registry.type_to_name[JSON_CONTENT_TYPE] = 'json'  # received messages stay kombu's json


def testing_sender_installed() -> bool:
    """True while ``cqrs_celery.testing`` (or a test) replaces the broker."""
    return _sender is not None


def _revisions(envelopes: Sequence[Envelope]) -> str:
    shown = ', '.join(f'{e.instance_pk!r}@{e.revision}' for e in envelopes[:5])
    return shown + (', …' if len(envelopes) > 5 else '')


def publish_to_broker(envelope: Envelope, *, route_to: str | None = None, countdown: float | None = None) -> None:
    """What ``send`` does when no test sender is installed: one message through the Celery app.

    Raises:
        PublishError: the broker could not be reached in time, or (Redis, filesystem) no replica
            queue is bound to the model's exchange.
    """
    started = time.monotonic()
    exchange, routing_key = _publish(envelope.to_wire(), envelope.cqrs_id, route_to or envelope.queue, countdown,
                                     f'{envelope.cqrs_id} pk={envelope.instance_pk!r} revision={envelope.revision}')
    observability.published([envelope], queue=route_to or envelope.queue, exchange=exchange,
                            routing_key=routing_key, duration=time.monotonic() - started)


def _publish(body: dict[str, Any], cqrs_id: str, target: str | None, countdown: float | None, what: str,
             rows: int = 1, text: str | None = None) -> tuple[str, str]:
    """Publish ``body`` (``text`` is its JSON when already encoded); returns the exchange and routing key used."""
    family = transport_family(get_settings().celery_app())
    if target:
        exchange = topology.direct_exchange()
        routing_key = topology.direct_routing_key(target)
    else:
        exchange = topology.broadcast_exchange(cqrs_id, family)
        routing_key = topology.broadcast_routing_key(cqrs_id)
    _encoding.ready = (body, encode_json(body) if text is None else text)
    try:
        delivered = _send(TASK_NAME, [body], exchange, routing_key, countdown, f'publishing {what}', f'[{what}]')
    finally:
        _encoding.ready = None
    if not delivered:
        # RabbitMQ returned it: dropped (bindings are durable); elsewhere it was not sent and is kept.
        _unroutable(cqrs_id, exchange.name, routing_key, target, rows, keep=family != topology.AMQP)
    return exchange.name, routing_key


def publish_task(name: str, args: list[Any], exchange: Any, routing_key: str) -> bool:
    """Publish one plain Celery task message (not an envelope) through ``exchange``.

    Returns False when no queue is bound to ``exchange`` for ``routing_key`` (nothing was delivered).

    Raises:
        PublishError: the broker could not be reached in time.
    """
    return _send(name, args, exchange, routing_key, None, f'publishing task {name}')


def _send(name: str, args: list[Any], exchange: Any, routing_key: str, countdown: float | None, what: str,
          argsrepr: str | None = None) -> bool:
    """One persistent JSON task message through a pooled producer; False if no queue took it.

    ``argsrepr``: how monitors (Flower, ``celery events``) show the arguments; by default Celery
    writes a ``repr`` of them, which for a batch of envelopes walked every row to show a kilobyte.

    RabbitMQ: the publish is *mandatory* and a ``basic.return`` (which comes before the confirm)
    means no queue was bound. Redis, filesystem, memory: kombu would drop such a message silently,
    so the binding table is read first and nothing is sent when no binding routes it.

    Raises:
        BrokerUnavailableError: the broker could not be reached in time.
        PublishError: any other failure of the publish.
    """
    app = get_settings().celery_app()
    timeout = get_settings().master.publish_timeout
    amqp = transport_family(app) == topology.AMQP
    try:
        with producer_pool(app).acquire(block=True, timeout=timeout) as producer:
            if amqp:
                returned = _returns(producer)
                returned.clear()
            elif not _is_bound(producer.channel, exchange.name, routing_key):
                return False
            app.send_task(
                name, args=args, exchange=exchange.name, routing_key=routing_key, exchange_type=exchange.type,
                declare=[exchange], serializer=SERIALIZER, producer=producer, delivery_mode=topology.PERSISTENT,
                countdown=countdown, ignore_result=True, confirm_timeout=timeout, retry=True, mandatory=amqp,
                result_cls=_Sent, add_to_parent=False,
                **({} if argsrepr is None else {'argsrepr': argsrepr, 'kwargsrepr': '{}'}),
                retry_policy={'max_retries': 1, 'interval_start': 0, 'interval_step': timeout / 2,
                              'interval_max': timeout / 2},
            )
            if amqp and returned:
                returned.clear()
                return False
    except Exception as exc:
        error = BrokerUnavailableError if is_broker_error(exc) else PublishError
        raise error(f'{what} failed: {exc!r}') from exc
    return True


class _Sent:
    """What ``send_task`` returns for a cqrs message: its id, no result.

    Celery's default, an ``AsyncResult``, resolves the app's result backend (per thread: the first
    publish of every publisher thread scanned the installed packages' entry points for it, about
    3 ms of CPU); a message nobody waits on needs none. With ``add_to_parent=False`` a task that publishes
    (the relay) does not keep one per message in its request's children either.
    """

    __slots__ = ('id', 'ignored')

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def copy_to_queue(message: Any, queue: str) -> None:
    """Publish a copy of a received task ``message`` (body, headers, properties) to ``queue``'s tail.

    The copy goes through ``cqrs.direct`` with publisher confirms on RabbitMQ, so once this returns
    the original may be acknowledged. A quorum queue's ``x-delivery-count`` is not copied: the copy
    is a new message, not a redelivery.

    Raises:
        BrokerUnavailableError: the broker could not be reached in time.
        PublishError: any other failure of the publish.
    """
    app = get_settings().celery_app()
    timeout = get_settings().master.publish_timeout
    exchange = topology.direct_exchange()
    headers = {key: value for key, value in dict(message.headers or {}).items() if key != 'x-delivery-count'}
    properties = {key: message.properties[key] for key in ('correlation_id', 'reply_to', 'priority')
                  if message.properties.get(key) is not None}
    try:
        with producer_pool(app).acquire(block=True, timeout=timeout) as producer:
            producer.publish(message.body, exchange=exchange.name, routing_key=topology.direct_routing_key(queue),
                             headers=headers, content_type=message.content_type,
                             content_encoding=message.content_encoding, delivery_mode=topology.PERSISTENT,
                             declare=[exchange], timeout=timeout, confirm_timeout=timeout, retry=True,
                             retry_policy={'max_retries': 1, 'interval_start': 0, 'interval_step': timeout / 2,
                                           'interval_max': timeout / 2}, **properties)
    except Exception as exc:
        error = BrokerUnavailableError if is_broker_error(exc) else PublishError
        raise error(f'copying a message to queue {queue} failed: {exc!r}') from exc


def is_broker_error(exc: BaseException) -> bool:
    """True for errors of the connection to the broker (refused, lost, timed out), not of a message."""
    from kombu.exceptions import OperationalError

    if isinstance(exc, OperationalError | OSError | TimeoutError):
        return True
    try:
        from amqp.exceptions import ConnectionError as AMQPConnectionError
        from amqp.exceptions import RecoverableConnectionError
    except ImportError:  # pragma: no cover - py-amqp comes with kombu
        return False
    if isinstance(exc, AMQPConnectionError | RecoverableConnectionError):
        return True
    try:
        from redis import exceptions as redis_errors
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError)


def _returns(producer: Any) -> list[tuple[str, str]]:
    """The (exchange, routing key) of messages RabbitMQ returned to this pooled producer as unroutable.

    The handler is installed once per producer (kombu adds it again to a revived channel); with
    publisher confirms, a return arrives before the confirm, so after a publish the list is final.
    """
    returned: list[tuple[str, str]] | None = getattr(producer, '_cqrs_returned', None)
    if returned is None:
        box: list[tuple[str, str]] = []

        def on_return(exc: Any, exchange: str, routing_key: str, message: Any) -> None:
            box.append((exchange, routing_key))

        producer.on_return = on_return
        producer._cqrs_returned = returned = box
        producer.channel.events['basic_return'].add(on_return)
    return returned


def _is_bound(channel: Any, exchange: str, routing_key: str) -> bool:
    """Whether kombu's binding table routes ``routing_key`` of ``exchange`` to a queue.

    Read before every publish (one round trip per message on Redis, and a message carries a whole
    batch). It is not cached: a Redis restarted without persistence has an empty table until the
    workers reconnect, and kombu silently drops what is published to it meanwhile; a cached "bound"
    lost the events of a two-second Redis restart that way.
    """
    try:
        table = channel.get_table(exchange)
    except KeyError:  # the memory transport does not know an exchange nobody declared
        table = []
    return any(row[0] == routing_key for row in table)
