"""NATS and JetStream protocol facts the bus relies on: header names, error codes, subjects.

>>> from buslib._nats.protocol import ErrorCode, pull_subject
>>> ErrorCode.STREAM_NOT_FOUND
<ErrorCode.STREAM_NOT_FOUND: 10059>
>>> pull_subject("ORDERS", "billing__orders_created_v1")
'$JS.API.CONSUMER.MSG.NEXT.ORDERS.billing__orders_created_v1'

Everything here is the wire protocol (what a Go or Node client sees too), written once.
Nothing here reads nats-py's private attributes: that is :mod:`buslib._nats.fastpath`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import IntEnum

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, PubAck

__all__ = [
    "API_PREFIX",
    "MSG_ID",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "STATUS",
    "DESCRIPTION",
    "PENDING_MESSAGES",
    "ErrorCode",
    "delivery_info",
    "hpub_frame",
    "parse_pub_ack",
    "pull_subject",
    "wire_size",
]

API_PREFIX = DEFAULT_PREFIX  # "$JS.API": the bus always uses the default JetStream API prefix

# Headers the server reads or writes (https://docs.nats.io/nats-concepts/jetstream/headers)
MSG_ID = "Nats-Msg-Id"  # deduplication: the server stores one message per id within duplicate_window
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"  # optimistic concurrency
STATUS = "Status"  # in a status message (no payload): 100 heartbeat, 404/408/409 pull ends, 503 no responders
DESCRIPTION = "Description"
PENDING_MESSAGES = "Nats-Pending-Messages"  # how much of a pull request was left unanswered


class ErrorCode(IntEnum):
    """JetStream API error codes (``err_code`` of an ``APIError``) the kit reacts to.

    Measured on servers 2.11 to 2.15 (lesson 07 shows most of them happen).
    """

    NO_SUITABLE_PEERS = 10005  # a cluster has too few nodes for the replicas asked for
    JETSTREAM_UNAVAILABLE = 10008  # a cluster without a meta leader (most nodes down): "temporarily unavailable"
    DELIVER_POLICY_UPDATE = 10012  # a durable's deliver policy cannot change
    CONSUMER_NOT_FOUND = 10014
    INSUFFICIENT_RESOURCES = 10023  # the server's store is full (publish)
    INSUFFICIENT_MEMORY = 10028  # a memory stream's max_bytes does not fit max_memory_store
    NO_MESSAGE_FOUND = 10037  # get_msg / get_last_msg: nothing there
    INSUFFICIENT_STORAGE = 10047  # a file stream's max_bytes does not fit max_file_store (reserved at creation)
    INVALID_STREAM_CONFIG = 10052  # e.g. duplicate_window > max_age
    MESSAGE_TOO_LARGE = 10054  # over the stream's max_msg_size
    STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another configuration
    STREAM_NOT_FOUND = 10059
    STREAM_MISMATCH = 10060  # Nats-Expected-Stream names another stream (nothing is stored)
    SUBJECTS_OVERLAP = 10065  # the subjects overlap those of an existing stream
    STREAM_WRONG_LAST_MSG_ID = 10070  # Nats-Expected-Last-Msg-Id did not match
    STREAM_WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-(Subject-)Sequence did not match
    REPLICAS_NOT_SUPPORTED = 10074  # replicas > 1 on a server that is not part of a cluster
    MAXIMUM_EXCEEDED = 10077  # discard=new: max_msgs / max_bytes / max_msgs_per_subject reached
    DELIVER_POLICY_NEEDS_FILTER = 10094  # last_per_subject without a filter; by_start_time without a time
    WORKQUEUE_NOT_UNIQUE = 10099  # a second unfiltered consumer on a work-queue stream
    WORKQUEUE_FILTER_OVERLAP = 10100  # overlapping filters on a work-queue stream
    WORKQUEUE_DELIVER_ALL = 10101  # a work-queue consumer must deliver all
    DUPLICATE_IN_PROCESS = 10158  # the same Nats-Msg-Id is still being replicated (a retry came early)


def wire_size(data: bytes, headers: Mapping[str, str] | None) -> int:
    """The bytes of a message the server holds against its ``max_payload``: payload and header block.

    nats-py checks only the payload before sending; a message whose headers take it over the
    limit reaches the server, which answers "Maximum Payload Violation" and closes the
    connection (and nats-py then closes the client for good). Check with this first.
    The block is counted as nats-py renders it: ``NATS/1.0``, then ``Name: value`` lines
    with names and values stripped (empty names skipped), then an empty line.
    """
    if not headers:
        return len(data)
    lines = sum(len(k.strip().encode()) + len(str(v).strip().encode()) + 4 for k, v in headers.items() if k.strip())
    return len(data) + len(b"NATS/1.0\r\n\r\n") + lines


def pull_subject(stream: str, consumer: str) -> str:
    """The subject a pull request for ``consumer`` of ``stream`` is published to."""
    return f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def delivery_info(msg: Msg) -> tuple[str, int, int]:
    """(stream, num_delivered, stream sequence) of a JetStream delivery, read from its ack subject.

    nats-py's ``msg.metadata`` builds several frozen dataclasses for the same (~5 us a
    message); it is the fallback for forms this does not know.
    """
    tokens = msg.reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>
        return tokens[2], int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
        return tokens[4], int(tokens[6]), int(tokens[7])
    meta = msg.metadata
    return meta.stream, meta.num_delivered, meta.sequence.stream


def hpub_frame(subject: bytes, reply: bytes, block: bytes, data: bytes) -> bytes:
    """One HPUB protocol frame: what ``nc.publish`` writes for a message with headers."""
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(block), len(block) + len(data), block, data)


# The usual acknowledgement, read without json.loads (half the cost of handling an ack).
_PLAIN_ACK = re.compile(rb'\{"stream":"([^"\\]+)","seq":(\d+)\}')


def parse_pub_ack(msg: Msg) -> PubAck | Exception:
    """The server's answer to a publish: a ``PubAck``, or the error it stands for (not raised)."""
    if msg.headers and msg.headers.get(STATUS) == "503":
        return nats.js.errors.NoStreamResponseError()
    plain = _PLAIN_ACK.fullmatch(msg.data)
    if plain is not None:
        return PubAck(stream=plain[1].decode(), seq=int(plain[2]))
    try:
        resp = json.loads(msg.data)
    except ValueError:
        return ValueError(f"unreadable acknowledgement {msg.data[:80]!r}")
    if "error" in resp:
        try:
            nats.js.errors.APIError.from_error(resp["error"])  # raises the matching subclass
        except nats.js.errors.APIError as err:
            return err
    try:
        return PubAck(
            stream=resp["stream"], seq=resp["seq"], domain=resp.get("domain"), duplicate=resp.get("duplicate")
        )
    except KeyError:
        return PubAck.from_response(resp)
