"""The EventBus: typed publish and consumer-group subscribe on NATS JetStream.

>>> from buslib import EventBus, Event, MessageContext
>>> class OrderCreated(Event, type="orders.created"):
...     order_id: str
>>> async def handle(event: OrderCreated, ctx: MessageContext) -> None:
...     print(event.order_id, ctx.num_delivered)
>>> async with EventBus.connect(service="billing") as bus:                 # doctest: +SKIP
...     sub = await bus.subscribe(OrderCreated, group="billing", handler=handle)
...     ack = await bus.publish(OrderCreated(order_id="A-1"))             # stored once, acked
...     await sub.stop()

Publishing: every event is stored in a stream (created on first use: subject
``orders.created.v1`` -> stream ``ORDERS`` with subjects ``orders.>``), carries its id as
``Nats-Msg-Id`` so a retried publish is stored once, and a W3C ``traceparent``.
``publish_many`` sends fast-ingest batches acknowledged every 500 messages on a 2.14+
server, and otherwise keeps thousands of acked publishes in flight at once.

Subscribing: a *group* is a durable pull consumer; every instance that subscribes with
the same group shares the messages (each goes to one instance), and every group gets
every message. The durable is named ``<group>__<subject>`` with dots, ``*`` and ``>``
spelled ``_``, ``any`` and ``all`` (``billing__orders_created_v1``), so one group can
consume several event types. Subscribing to a contract class reads its whole history:
the consumer filters on every subject the class can decode (``filter_subjects``: v1 and
v2 when an upcaster links them; the durable keeps the class's own subject in its name).
A handler that returns acks the message; an exception retries it later (``Retry``);
``Reject``, exhausted retries and undecodable payloads go to the dead-letter sink and are
terminated. Running handlers are kept alive with ``in_progress``, for at most
``handler_timeout`` (5 minutes by default): then the handler is cancelled and the message
retried. A worker survives server restarts. If its stream is deleted, the subscription
logs one warning, checks back quietly every few seconds, and resumes when a stream of that
name exists again (``stop()`` it if the stream is gone for good).

How the consumer pulls: one inbox subscription per worker with pull requests kept
overlapping (a new one goes out before the last is used up), so messages keep arriving
while handlers run. nats-py's ``fetch()`` waits for each batch in turn, which is about
3x slower. Only as many messages are pulled ahead as the handlers start within 0.1 s
(measured as they run; at most ``prefetch``, and well within ``ack_wait``): what one
member holds, the others of its group cannot take, so a longer look-ahead lets the first
member grab a backlog (with 5 ms handlers, 512 ahead split 60 events 56/2/2 over three
workers), and a slow handler would let buffered messages time out.

Where the code is (``buslib/bus/``): this module is the facade; ``streams`` finds and creates
streams (and detects drift), ``publisher`` and ``batch`` publish, ``consumer`` binds a
group's durable, ``subscription`` runs a member's pull loop and ``settlement`` settles each
delivery. Import everything from ``buslib``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamInfo

from buslib._nats import fastpath
from buslib._nats.info import api_level
from buslib.bus.attempts import PUBLISH_DEADLINE
from buslib.bus.consumer import ConsumerSpec
from buslib.bus.options import BUS_OPTIONS, Connecting, check_bus_options
from buslib.bus.publisher import Publisher
from buslib.bus.settlement import HANDLER_TIMEOUT, Handler, Settlement
from buslib.bus.streams import DUPLICATE_WINDOW, StreamDirectory, subject_of
from buslib.bus.subscription import Subscription, fast_ack
from buslib.connection import connect as _connect
from buslib.contracts.versions import subjects_readable_by
from buslib.errors import BusError
from buslib.events import Event
from buslib.retry import DeadLetterSink, Retry
from buslib.subjects import check_group, check_subject

__all__ = ["EventBus"]

log = logging.getLogger("buslib")


class EventBus:
    """Typed events over JetStream for one service.

    Args:
        nc: a connected nats-py client (``EventBus.connect`` makes one for you).
        service: this service's name (CloudEvents ``source``, the connection name).
        auto_create_streams: create the conventional stream on the first publish to a
            subject no stream covers; if False, such a publish raises ``PublishError``.
        publish_timeout: seconds each try of a publish waits for its acknowledgement.
        publish_deadline: seconds within which a publish keeps trying (same ``Nats-Msg-Id``,
            so it is stored once) before it raises ``PublishError``; 15 by default, longer
            than a cluster's leader election (4-12 s). None: no limit by time.
        publish_attempts: at most this many tries per publish; None (the default): as many as
            fit in ``publish_deadline``.
        owns_connection: ``close()`` also drains and closes ``nc`` (set by ``connect``).

    Attributes:
        nc / js: the nats-py connection and its JetStream context, to look underneath.
        streams: which stream stores which subject (:class:`~buslib.bus.streams.StreamDirectory`).
        publisher: the publishing component (:class:`~buslib.bus.publisher.Publisher`).
    """

    def __init__(
        self,
        nc: Client,
        *,
        service: str,
        auto_create_streams: bool = True,
        publish_timeout: float = 2.0,
        publish_deadline: float | None = PUBLISH_DEADLINE,
        publish_attempts: int | None = None,
        owns_connection: bool = False,
    ) -> None:
        check_bus_options(
            service,
            publish_timeout=publish_timeout,
            publish_deadline=publish_deadline,
            publish_attempts=publish_attempts,
        )
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.streams = StreamDirectory(nc, auto_create=auto_create_streams)
        self.publisher = Publisher(
            nc,
            self.streams,
            service=service,
            publish_timeout=publish_timeout,
            publish_deadline=publish_deadline,
            publish_attempts=publish_attempts,
        )
        self._owns_connection = owns_connection
        self._subscriptions: set[Subscription] = set()

    @classmethod
    def connect(cls, *, service: str, url: str | list[str] | None = None, **options: Any) -> Connecting[EventBus]:
        """Connect to NATS (fail fast, reconnect with backoff) and return a bus.

        Use ``async with EventBus.connect(service="billing") as bus:`` or
        ``bus = await EventBus.connect(service="billing")`` (then ``await bus.close()``).

        Args:
            service: this service's name.
            url: the server, or a cluster's servers (a list, or comma-separated like
                ``NATS_URL``); default ``buslib.ensure_server()`` (``NATS_URL`` or embedded).
            **options: ``EventBus`` options (``auto_create_streams``, ``publish_timeout``,
                ``publish_deadline``, ``publish_attempts``); anything else goes to ``buslib.connect``.

        Raises:
            ConnectError: no server answered (the message says what to try).
        """
        bus_options = {k: options.pop(k) for k in list(options) if k in BUS_OPTIONS}
        check_bus_options(service, **bus_options)  # before connecting: nothing to clean up

        async def factory() -> EventBus:
            holder: list[EventBus] = []
            user_cb = options.pop("reconnected_cb", None)

            async def reconnected() -> None:
                for bus in holder:
                    bus._on_reconnected()
                if user_cb is not None:
                    await user_cb()

            nc = await _connect(url, name=service, reconnected_cb=reconnected, **options)
            fastpath.install_header_parser(nc)
            bus = cls(nc, service=service, owns_connection=True, **bus_options)
            holder.append(bus)
            return bus

        return Connecting(factory)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<EventBus service={self.service!r} subscriptions={len(self._subscriptions)}>"

    # -- settings and facts -----------------------------------------------------------
    @property
    def auto_create_streams(self) -> bool:
        return self.streams.auto_create

    @property
    def publish_timeout(self) -> float:
        return self.publisher.publish_timeout

    @property
    def publish_deadline(self) -> float | None:
        return self.publisher.publish_deadline

    @property
    def publish_attempts(self) -> int | None:
        return self.publisher.publish_attempts

    @property
    def publish_retries(self) -> int:
        """Publishes repeated after a timeout, a reconnect or an election (same id: stored once)."""
        return self.publisher.retries

    async def api_level(self) -> int:
        """The server's JetStream API level (0 before 2.11; 2.12 -> 3, 2.14 -> 4, 2.15 -> 5)."""
        return await api_level(self.nc)

    @property
    def subscriptions(self) -> list[Subscription]:
        """The running subscriptions of this bus."""
        return list(self._subscriptions)

    def _on_reconnected(self) -> None:
        # Pull requests do not survive a server restart (nats.py #504): ask again at once.
        for sub in list(self._subscriptions):
            sub.rebind()

    async def close(self) -> None:
        """Stop every subscription (letting handlers finish), then drain the connection."""
        await asyncio.gather(*(sub.stop() for sub in list(self._subscriptions)), return_exceptions=True)
        if self._owns_connection and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as err:
                log.debug("drain on close: %s", err)
                await self.nc.close()

    # -- streams ----------------------------------------------------------------------
    async def ensure_stream(
        self,
        target: type[Event] | str,
        *,
        name: str | None = None,
        subjects: list[str] | None = None,
        storage: StorageType = StorageType.FILE,
        duplicate_window: float = DUPLICATE_WINDOW,
        replicas: int | None = None,
        **overrides: Any,
    ) -> StreamInfo:
        """Create the stream for an event type or subject, or check the existing one.

        By convention ``orders.created.v1`` lives in stream ``ORDERS`` with subjects
        ``orders.>``, file storage and a 120 s duplicate window.

        Args:
            target: an ``Event`` subclass or a subject.
            name / subjects / storage / duplicate_window: override the convention.
            replicas: on a cluster, how many nodes keep a copy (``num_replicas``; 3 survives
                the loss of one node). None: the server's default (1) for a new stream, and
                an existing stream's count is not checked.
            **overrides: other ``StreamConfig`` fields (``max_msgs=5``, ``discard=...``).

        Returns:
            The stream's ``StreamInfo``.

        Raises:
            ConfigDriftError: the stream exists with different settings (says which).
            SubjectError: the subject is not valid.
            BusError: the server refused the stream (e.g. subjects overlap another stream, or
                more replicas than the cluster has nodes).
        """
        return await self.streams.ensure(
            target,
            name=name,
            subjects=subjects,
            storage=storage,
            duplicate_window=duplicate_window,
            replicas=replicas,
            **overrides,
        )

    # -- publishing -------------------------------------------------------------------
    async def publish(self, event: Event) -> PubAck:
        """Publish an event and wait until the server has stored it (see :meth:`Publisher.publish`).

        Raises:
            TypeError: ``event`` is not an ``Event``.
            PublishError: not confirmed within ``publish_deadline``, or refused.
        """
        return await self.publisher.publish(event)

    async def publish_many(
        self, events: Iterable[Event], *, window: int = 4096, fast_ingest: bool = True
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; each stored once.

        See :func:`buslib.bus.batch.publish_many`: fast-ingest batches where the server
        has them (2.14+), else ``window`` acknowledgements in flight.

        Raises:
            TypeError: an item is not an ``Event``.
            PublishManyError: some events were not stored (which, and how many were).
        """
        return await self.publisher.publish_many(events, window=window, fast_ingest=fast_ingest)

    # -- subscribing ------------------------------------------------------------------
    async def subscribe(
        self,
        target: type[Event] | str,
        *,
        group: str,
        handler: Handler,
        event_type: type[Event] | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        dead_letters: DeadLetterSink | None = None,
        ack_wait: float = 30.0,
        stream: str | None = None,
        update: bool = False,
        prefetch: int = 512,
        pull_expires: float = 30.0,
        strict: bool = False,
        handler_timeout: float | None = HANDLER_TIMEOUT,
    ) -> Subscription:
        """Join a consumer group: each message of ``target`` goes to one instance of ``group``.

        Subscribing to a contract class reads its whole history: the consumer filters on
        every subject the class can decode (``contracts.subjects_readable_by``: its own
        and, through upcasters, its older versions'), and older messages arrive upcast.

        Args:
            target: an ``Event`` subclass, or a subject (wildcards allowed).
            group: the group name; instances with the same name share the messages.
            handler: ``async def handle(event, ctx: MessageContext) -> None``; it gets the
                decoded event (raw ``bytes`` for a subject without ``event_type``). It must
                not block the event loop (use ``await asyncio.to_thread(...)`` for slow
                sync work), or keep-alives and other handlers stall.
            event_type: for a subject target, the type to decode into (``Event`` itself:
                whichever type the ``ce-type`` header names).
            concurrency: handlers running at once in this instance.
            retry: the retry policy (``Retry()`` by default); sets ``max_deliver``.
            dead_letters: ``async def sink(failure: Failure)``, called before a message is
                terminated (rejected, retries exhausted, undecodable).
            ack_wait: seconds before the server redelivers an unacknowledged message (a
                crashed worker); running handlers are kept alive automatically.
            stream: the stream (default: the one that stores the subject).
            update: change an existing durable whose config differs (else ConfigDriftError).
            prefetch: at most this many messages pulled ahead of the handlers. Fewer in
                practice: only what the handlers start within 0.1 s (and a quarter of
                ``ack_wait``), measured as they run, so the members of a group share a
                backlog and buffered messages never time out.
            pull_expires: seconds each pull request lives (heartbeats at 1/6 of it).
            strict: reject payloads with fields the contract does not declare (they go to
                the dead-letter sink as "undecodable"); the default reader ignores them.
            handler_timeout: seconds a handler may run (kept alive with ``in_progress``
                meanwhile); after that it is cancelled and the message is retried like any
                failure (``TimeoutError``). Default 5 minutes; ``None``: no limit.

        Returns:
            The running ``Subscription`` (``.stats``, ``await .stop()``).

        Raises:
            ValueError: empty or invalid group, concurrency < 1, handler_timeout <= 0.
            SubjectError: invalid subject.
            ConfigDriftError: the durable exists with other settings and ``update`` is False.
            BusError: the versions of a contract live in different streams.
        """
        group = check_group(group)
        subject = check_subject(subject_of(target), wildcards=True)
        subjects = [subject]
        if isinstance(target, type):
            event_type = target
            subjects = subjects_readable_by(target)  # [..., v1, v2]: the durable is named after the last
        if handler_timeout is not None and not handler_timeout > 0:
            raise ValueError(
                f"handler_timeout is in seconds and must be > 0 (or None for no limit), got {handler_timeout}."
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
        if not _is_async_callable(handler):
            raise TypeError(
                f"handler must be an async function `async def handle(event, ctx): ...`, got {handler!r}. "
                "A plain `def` would block every other handler of this process while it runs."
            )
        if ack_wait < 0.5:
            raise ValueError(f"ack_wait is in seconds and must be at least 0.5, got {ack_wait}.")
        if stream is None:
            stream = await self._stream_of(target, subject, subjects)
        spec = ConsumerSpec(
            group=group,
            stream=stream,
            subjects=subjects,
            retry=retry or Retry(),
            ack_wait=ack_wait,
            event_type=event_type,
        )
        settlement = Settlement(
            group=group,
            durable=spec.durable,
            handler=handler,
            event_type=event_type,
            retry=spec.retry,
            dead_letters=dead_letters,
            strict=strict,
            handler_timeout=handler_timeout,
            ack_timers=spec.ack_timers(),
            ack=fast_ack(self.nc),
        )
        sub = Subscription(
            self.nc,
            spec,
            settlement,
            concurrency=concurrency,
            prefetch=prefetch,
            pull_expires=pull_expires,
            on_stopped=self._subscriptions.discard,
        )
        await sub.start(update=update)
        self._subscriptions.add(sub)
        return sub

    async def _stream_of(self, target: type[Event] | str, subject: str, subjects: list[str]) -> str:
        """The one stream a subscription reads: the subject's, which must hold the older versions too."""
        stream = await self.streams.find_or_create(
            subject, BusError(f"No stream stores {subject!r}. Create it with await bus.ensure_stream(...).")
        )
        for older in subjects[:-1]:
            other = await self.streams.find(older)
            if other is not None and other != stream:  # no stream for the old version: still filtered on
                name = getattr(target, "__name__", target)
                raise BusError(
                    f"{name} reads {subjects}, but {older!r} is stored in stream {other!r} and "
                    f"{subject!r} in {stream!r}. One consumer reads one stream: keep the versions of a "
                    "contract in one stream, or subscribe to each subject separately."
                )
        return stream


def _is_async_callable(handler: object) -> bool:
    call = type(handler).__dict__.get("__call__") if not inspect.isroutine(handler) else None
    return inspect.iscoroutinefunction(handler) or (call is not None and inspect.iscoroutinefunction(call))
