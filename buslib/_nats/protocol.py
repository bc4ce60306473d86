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
]

API_PREFIX = DEFAULT_PREFIX  # "$JS.API": the bus always uses the default JetStream API prefix

# Headers the server reads or writes (https://docs.nats.io/nats-concepts/jetstream/headers)
MSG_ID = "Nats-Msg-Id"  # deduplication: the server stores one message per id within duplicate_window
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"  # optimistic concurrency
STATUS = "Status"  # in a status message (no payload): 100 heartbeat, 404/408/409 pull ends, 503 no responders
DESCRIPTION = "Description"
PENDING_MESSAGES = "Nats-Pending-Messages"  # how much of a pull request was left unanswered


class ErrorCode(IntEnum):
    """JetStream API error codes (``err_code`` of an ``APIError``) the kit reacts to."""

    NO_SUITABLE_PEERS = 10005  # a cluster has too few nodes for the replicas asked for
    JETSTREAM_UNAVAILABLE = 10008  # a cluster without a meta leader (most nodes down): "temporarily unavailable"
    CONSUMER_NOT_FOUND = 10014
    STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another configuration
    STREAM_NOT_FOUND = 10059
    SUBJECTS_OVERLAP = 10065  # the subjects overlap those of an existing stream
    STREAM_WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence did not match
    REPLICAS_NOT_SUPPORTED = 10074  # replicas > 1 on a server that is not part of a cluster
    DUPLICATE_IN_PROCESS = 10158  # the same Nats-Msg-Id is still being replicated (a retry came early)


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
