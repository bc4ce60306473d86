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
every message. The durable is named ``<group>__<subject>``
(``billing__orders_created_v1``), so one group can consume several event types. Subscribing to a contract class reads its whole history:
the consumer filters on every subject the class can decode (``filter_subjects``: v1 and
v2 when an upcaster links them; the durable keeps the class's own subject in its name).
A handler that returns acks the message; an exception retries it later (``Retry``);
``Reject``, exhausted retries and undecodable payloads go to the dead-letter sink and are
terminated. Running handlers are kept alive with ``in_progress``, for at most
``handler_timeout`` (5 minutes by default): then the handler is cancelled and the message
retried. A worker survives server restarts, and waits quietly for a deleted stream to return.

Ordered groups (``ordered=True``) keep each key's events in order, one lane per partition
of the stream (:mod:`buslib.bus.ordered`); ``deliver=`` says where a new group starts
(:mod:`buslib.bus.deliver`); ``group_lag`` says how far behind a group is (:mod:`buslib.bus.lag`).
How a member pulls (overlapping pull requests, a short look-ahead): :mod:`buslib.bus.subscription`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamInfo

from buslib._nats import fastpath
from buslib._nats.info import api_level
from buslib.bus import groups
from buslib.bus.attempts import PUBLISH_DEADLINE
from buslib.bus.connecting import BUS_OPTIONS, Connecting, check_bus_options
from buslib.bus.consumer import ConsumerSpec
from buslib.bus.deliver import Deliver, deliver_settings
from buslib.bus.lag import GroupLag, consumers_lag
from buslib.bus.ordered import OrderedSubscription
from buslib.bus.partitions import lane_durable
from buslib.bus.publisher import Publisher
from buslib.bus.settlement import HANDLER_TIMEOUT, Handler
from buslib.bus.streams import StreamDirectory
from buslib.bus.subscription import Subscription
from buslib.connection import close_connection
from buslib.connection import connect as _connect
from buslib.errors import BusError
from buslib.events import Event
from buslib.retry import DeadLetterSink, Retry
from buslib.subjects import check_group, durable_name

__all__ = ["EventBus"]


class EventBus:
    """Typed events over JetStream for one service.

    Args:
        nc: a connected nats-py client (``EventBus.connect`` makes one for you).
        service: this service's name (CloudEvents ``source``, the connection name).
        auto_create_streams: create the conventional stream on the first publish to a
            subject no stream covers; if False, such a publish raises ``PublishError``.
        publish_timeout: seconds each try of a publish waits for its acknowledgement.
        publish_deadline: seconds a publish keeps trying (same ``Nats-Msg-Id``) before it raises
            ``PublishError``: 15, longer than a cluster's leader election. None: no limit by time.
        publish_attempts: at most this many tries per publish; None: as many as fit in the deadline.
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
        publishing: dict[str, Any] = dict(publish_timeout=publish_timeout, publish_deadline=publish_deadline)
        check_bus_options(service, publish_attempts=publish_attempts, **publishing)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.streams = StreamDirectory(nc, auto_create=auto_create_streams)
        self.publisher = Publisher(nc, self.streams, service=service, publish_attempts=publish_attempts, **publishing)
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

    publish_timeout = property(lambda self: self.publisher.publish_timeout, doc="Seconds each try waits.")
    publish_deadline = property(lambda self: self.publisher.publish_deadline, doc="Seconds a publish keeps trying.")
    publish_attempts = property(lambda self: self.publisher.publish_attempts, doc="At most this many tries, or None.")
    publish_retries = property(lambda self: self.publisher.retries, doc="Tries repeated (same id: stored once).")

    async def api_level(self) -> int:
        """The server's JetStream API level (0 before 2.11; 2.12 -> 3, 2.14 -> 4, 2.15 -> 5)."""
        return await api_level(self.nc)

    @property
    def subscriptions(self) -> list[Subscription]:
        """The running subscriptions of this bus (an ordered group's lanes one by one)."""
        return list(self._subscriptions)

    def _on_reconnected(self) -> None:
        # Pull requests do not survive a server restart (nats.py #504): ask again at once.
        for sub in list(self._subscriptions):
            sub.rebind()

    async def close(self) -> None:
        """Stop every subscription (letting handlers finish), then drain the connection."""
        await asyncio.gather(*(sub.stop() for sub in list(self._subscriptions)), return_exceptions=True)
        if self._owns_connection:
            await close_connection(self.nc)

    # -- streams ----------------------------------------------------------------------
    async def ensure_stream(
        self,
        target: type[Event] | str,
        *,
        name: str | None = None,
        subjects: list[str] | None = None,
        storage: StorageType = StorageType.FILE,
        duplicate_window: float | None = None,
        replicas: int | None = None,
        partitions: int | None = None,
        **overrides: Any,
    ) -> StreamInfo:
        """Create the stream for an event type or subject, or check the existing one.

        By convention ``orders.created.v1`` lives in stream ``ORDERS`` with subjects
        ``orders.>``, file storage and a 120 s duplicate window. **Default limits** of a
        stream the bus creates: ``max_age`` 7 days, no ``max_bytes``, ``discard`` old.
        Seven days leave time for replays, late groups and a week of debugging, and reserve
        nothing. ``max_bytes`` is left out because the server *reserves* it from its store
        when the stream is created, even while it is empty: a default would fill a small
        server with empty streams (lesson 07 shows it), and with ``discard`` old a byte cap
        silently drops what a slow group has not read. Size each stream you know (pass
        ``max_bytes=...``); ``max_age=None`` keeps messages forever. Only what you ask for
        is compared with an existing stream, never the default ``max_age``.

        Args:
            target: an ``Event`` subclass or a subject.
            name / subjects / storage / duplicate_window: override the convention (the
                duplicate window is at most ``max_age``).
            replicas: on a cluster, how many nodes keep a copy (3 survives the loss of one).
                None: the server's default (1) for a new stream; an existing one's is not checked.
            partitions: split a keyed event type's subjects into this many partitions
                (``orders.placed.v1.<p>.<key>``), for ordered groups that work in parallel.
                A stream partitions one keyed type; its count cannot change silently.
            **overrides: other ``StreamConfig`` fields (``max_age=3600``, ``max_msgs=5``, ...).

        Returns:
            The stream's ``StreamInfo``.

        Raises:
            ConfigDriftError: the stream exists with different settings (says which).
            SubjectError: the subject is not valid.
            ValueError: ``partitions`` or ``replicas`` out of range, ``partitions`` without a key.
            BusError: the server refused it (subjects overlap, storage reserved, too few nodes, ...).
        """
        return await self.streams.ensure(
            target,
            name=name,
            subjects=subjects,
            storage=storage,
            duplicate_window=duplicate_window,
            replicas=replicas,
            partitions=partitions,
            **overrides,
        )

    # -- publishing -------------------------------------------------------------------
    async def publish(self, event: Event, *, expect_last_subject_seq: int | None = None) -> PubAck:
        """Publish an event and wait until the server has stored it (see :meth:`Publisher.publish`).

        Args:
            event: the event (a keyed one goes to its subject plus its key).
            expect_last_subject_seq: optimistic concurrency: store the event only if the last
                message on its subject still has this stream sequence (0: no message yet); get
                it with :meth:`last_sequence`.

        Raises:
            TypeError: ``event`` is not an ``Event``.
            ConcurrencyError: another writer published to the subject after that sequence.
            PublishError: not confirmed within ``publish_deadline``, or refused.
        """
        return await self.publisher.publish(event, expect_last_subject_seq=expect_last_subject_seq)

    async def last_sequence(self, target: type[Event] | str, *, key: object = None) -> int:
        """The stream sequence of the last message on a subject (0 if none): what
        ``publish(..., expect_last_subject_seq=...)`` expects.

        Args:
            target: an ``Event`` subclass (with ``key`` for a keyed one) or a subject.
            key: the key, for a keyed event type (``last_sequence(OrderPlaced, key="C-1")``).
        """
        return await self.publisher.last_sequence(target, key=key)

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        window: int = 4096,
        fast_ingest: bool = True,
        progress: Callable[[int], object] | None = None,
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; each stored once.

        See :func:`buslib.bus.batch.publish_many`: fast-ingest batches where the server
        has them (2.14+), else ``window`` acknowledgements in flight; ``progress(stored)``
        follows the acknowledgements as they arrive.

        Raises:
            TypeError: an item is not an ``Event``.
            PublishManyError: some events were not stored (which, and how many were).
        """
        return await self.publisher.publish_many(events, window=window, fast_ingest=fast_ingest, progress=progress)

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
        deliver: Deliver | None = None,
        ordered: bool = False,
        partitions: list[int] | None = None,
    ) -> Subscription | OrderedSubscription:
        """Join a consumer group: each message of ``target`` goes to one instance of ``group``.

        Subscribing to a contract class reads its whole history: the consumer filters on
        every subject the class can decode (its own and, through upcasters, its older
        versions'; ``orders.placed.v1.>`` for a keyed one), and older messages arrive upcast.

        Args:
            target: an ``Event`` subclass, or a subject (wildcards allowed).
            group: the group name; instances with the same name share the messages.
            handler: ``async def handle(event, ctx: MessageContext) -> None``, given the decoded
                event (``bytes`` for a subject without ``event_type``); it must not block the loop.
            event_type: for a subject target, the type to decode into (``Event`` itself:
                whichever type the ``ce-type`` header names).
            concurrency: handlers running at once in this instance (1 when ``ordered``).
            retry: the retry policy (``Retry()`` by default); sets ``max_deliver``.
            dead_letters: ``async def sink(failure: Failure)``, called before a message is
                terminated (rejected, retries exhausted, undecodable).
            ack_wait: seconds before the server redelivers an unacknowledged message (a
                crashed worker); running handlers are kept alive automatically.
            stream: the stream (default: the one that stores the subject).
            update: change an existing durable whose config differs (else ConfigDriftError).
            prefetch: at most this many messages pulled ahead (fewer: what starts within 0.1 s).
            pull_expires: seconds each pull request lives (heartbeats at 1/6 of it).
            strict: reject payloads with fields the contract does not declare (dead letters).
            handler_timeout: seconds a handler may run (kept alive meanwhile); then it is
                cancelled and the message retried. Default 5 minutes; ``None``: no limit.
            deliver: where the group starts **when it is created**: ``"all"`` (the oldest
                stored message; the default), ``"new"``, ``"last"``, ``"last_per_subject"``
                (the newest of each key), a stream sequence, an aware ``datetime`` or a
                ``timedelta`` back from now. An existing group keeps its position; asking
                it for another kind of start raises ``ConfigDriftError``.
            ordered: keep each subject's (each key's) messages in order, retries included:
                one message in flight per lane (``max_ack_pending=1``), one lane per
                partition of the stream (``ensure_stream(..., partitions=N)``) or one for
                the whole group. Returns an :class:`OrderedSubscription`.
            partitions: with ``ordered``, the partitions this instance runs (default all).

        Returns:
            The running ``Subscription`` (``.stats``, ``await .stop()``), or an
            ``OrderedSubscription`` of lanes with ``ordered=True``.

        Raises:
            ValueError: empty or invalid group, concurrency < 1, handler_timeout <= 0, a
                deliver= that is not a starting point, partitions the stream does not have.
            SubjectError: invalid subject.
            ConfigDriftError: the durable exists with other settings and ``update`` is False.
            BusError: the server refused the group, or the versions of a contract live in
                different streams.
        """
        group = check_group(group)
        subject, filters, event_type = groups.target_filters(target, event_type)
        groups.check_options(
            handler, concurrency=concurrency, ack_wait=ack_wait, handler_timeout=handler_timeout, ordered=ordered
        )
        deliver_settings("all" if deliver is None else deliver)  # a bad starting point fails before anything is created
        if partitions is not None and not ordered:
            raise ValueError("partitions= chooses the lanes of an ordered group: pass ordered=True as well.")
        if stream is None:
            stream = await self._stream_of(target, subject, filters)
        spec = ConsumerSpec(
            group=group,
            stream=stream,
            subjects=filters,
            retry=retry or Retry(),
            ack_wait=ack_wait,
            event_type=event_type,
            deliver=deliver,
            name=durable_name(group, subject),
        )
        options: dict[str, Any] = dict(
            update=update,
            register=self._subscriptions,
            handler=handler,
            dead_letters=dead_letters,
            strict=strict,
            handler_timeout=handler_timeout,
            concurrency=concurrency,
            prefetch=prefetch,
            pull_expires=pull_expires,
        )
        if not ordered:
            return (await groups.start_members(self.nc, {0: spec}, **options))[0]
        count = await self.streams.partitions(stream, subject, fresh=True)
        lanes = await groups.start_members(self.nc, groups.lane_specs(spec, subject, count, partitions), **options)
        return OrderedSubscription(lanes, subject=subject, partitions=count)

    async def group_lag(self, target: type[Event] | str, *, group: str, stream: str | None = None) -> GroupLag:
        """How far behind ``group`` is on ``target``: pending + unacknowledged, over all its durables.

        Counts the group's plain durable and, on a partitioned stream, every lane of an
        ordered group (whichever instance runs them). See :mod:`buslib.bus.lag`.

        Raises:
            LookupError: the group has no durable on this subject (it never subscribed).
        """
        subject = groups.target_filters(target, None)[0]
        stream = stream or await self.streams.find(subject)
        if stream is None:
            raise LookupError(f"No stream stores {subject!r}, so group {group!r} has no lag to read.")
        durable = durable_name(check_group(group), subject)
        lanes = range(await self.streams.partitions(stream, subject, fresh=True) or 0)
        return await consumers_lag(self.js, stream, [durable, *(lane_durable(durable, p) for p in lanes)])

    async def _stream_of(self, target: type[Event] | str, subject: str, subjects: list[str]) -> str:
        """The one stream a subscription reads: the subject's, which must hold the older versions too."""
        stream = await self.streams.find_or_create(
            subject, BusError(f"No stream stores {subject!r}. Create it with await bus.ensure_stream(...).")
        )
        for older in (s.removesuffix(".>") for s in subjects[:-1]):
            other = await self.streams.find(older)
            if other is not None and other != stream:  # no stream for the old version: still filtered on
                name = getattr(target, "__name__", target)
                raise BusError(
                    f"{name} reads {subjects}, but {older!r} is stored in stream {other!r} and "
                    f"{subject!r} in {stream!r}. One consumer reads one stream: keep the versions of a "
                    "contract in one stream, or subscribe to each subject separately."
                )
        return stream
