"""NATS header blocks: rendered once per event type, parsed cheaply; the one header parser.

>>> header_block({"ce-id": "1"})
b'NATS/1.0\\r\\nce-id: 1\\r\\n\\r\\n'
>>> parse_header_block(b"NATS/1.0\\r\\nce-id: 1\\r\\n\\r\\n")
{'ce-id': '1'}

A header block is ``NATS/1.0`` then ``Name: value`` lines, CRLF each, and an empty line:
plain text any client reads. These functions give the same results as nats-py's own
(``tests/test_bus_publish.py`` compares them) at a fraction of the cost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["STATUS_LINE", "header_block", "header_lines", "parse_header_block", "parse_header_lines"]

STATUS_LINE = b"NATS/1.0\r\n"


def header_lines(headers: Mapping[str, str]) -> str | None:
    """``name: value`` lines joined by CRLF, or None where nats-py must encode them itself."""
    try:
        lines = "\r\n".join(map(": ".join, headers.items()))  # joins in C: half the cost of f-strings
    except TypeError:
        return None  # a name or value that is not a string
    breaks = len(headers) - 1
    if lines.count("\n") != breaks or lines.count("\r") != breaks:
        return None  # a value with a line break (nats-py cleans those)
    return lines


def header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS/1.0 header block nats-py would send, or b"" where nats-py must encode it itself."""
    if not headers:
        return STATUS_LINE + b"\r\n"
    lines = header_lines(headers)
    return b"" if lines is None else ("NATS/1.0\r\n" + lines + "\r\n\r\n").encode()


_WHITESPACE = re.compile(r"\s")
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes
_NAMES: dict[str, str] = {}  # raw header name -> its key, for the first valid names seen


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """The ``Name: value`` lines of a header block (after its status line) as a dict.

    Same results as nats-py's parser, ~5x cheaper: each distinct raw name is checked once
    and remembered (the bus sends the same few names on every message). A name with
    whitespace inside is dropped, as nats-py does; bytes that are not UTF-8 become U+FFFD.
    """
    try:
        text = raw.decode("ascii")  # the usual case: one decode for the whole block
    except UnicodeDecodeError:
        return _parse_header_bytes(raw)
    out: dict[str, str] = {}
    names = _NAMES
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = names.get(name)
            if key is None:
                key = _header_name(name)
            if key is not None:
                out[key] = value.strip(_BYTES_WHITESPACE)
    return out


def parse_header_block(block: bytes) -> dict[str, str]:
    """A whole header block (``NATS/1.0`` status line first) as a dict."""
    _, _, lines = block.partition(b"\r\n")
    return parse_header_lines(lines)


def _header_name(name: str) -> str | None:
    key = name.strip(_BYTES_WHITESPACE)
    if _WHITESPACE.search(key):
        return None  # whitespace inside a name: nats-py drops the line
    if len(_NAMES) < 256:  # bounded: names come from the wire
        _NAMES[name] = key
    return key


def _parse_header_bytes(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out
