"""The server's HTTP monitoring endpoints: health, JetStream usage, every consumer's numbers.

>>> status, body = read_endpoint(server.monitor_url, "/healthz?js-enabled-only=true")   # doctest: +SKIP
>>> status, body                                                                       # doctest: +SKIP
(200, {'status': 'ok'})
>>> jsz = read_endpoint(server.monitor_url, "/jsz?consumers=true")[1]                  # doctest: +SKIP
>>> consumer_rows(jsz)[0]["num_pending"]                                               # doctest: +SKIP
15

A nats-server started with a monitoring port (``-m``; :class:`EmbeddedServer` always has one,
``server.monitor_url``) answers plain HTTP GETs with JSON: ``/healthz`` (200 when healthy,
503 with the reason when not; ``?js-enabled-only=true`` checks JetStream too), ``/varz``
(the server), ``/jsz`` (JetStream: ``config.max_storage``, ``storage`` used,
``reserved_storage`` promised to streams' ``max_bytes``; ``?streams=true`` and
``?consumers=true`` add every stream and consumer). This is what a load balancer, a
Kubernetes probe or Prometheus' NATS exporter reads. On a real deployment the port is
private: it has no authentication.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["consumer_rows", "read_endpoint"]


def read_endpoint(monitor_url: str, path: str, *, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """GET ``monitor_url + path`` and return ``(HTTP status, JSON body)``.

    A 503 from ``/healthz`` is an answer, not an error: it is returned with its body.

    Raises:
        OSError: the server cannot be reached (``urllib.error.URLError``).
        ValueError: the answer is not JSON.
    """
    url = monitor_url.rstrip("/") + "/" + path.lstrip("/")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback monitoring URL
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:  # 4xx/5xx still carry a JSON body
        status, raw = err.code, err.read()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ValueError(f"{url} answered {status} with something that is not JSON: {raw[:80]!r}") from None
    return status, body if isinstance(body, dict) else {"value": body}


def consumer_rows(jsz: dict[str, Any]) -> list[dict[str, Any]]:
    """Every consumer in a ``/jsz?consumers=true`` answer, flattened: one dict each with
    ``stream_name``, ``name``, ``num_pending``, ``num_ack_pending``, ``num_redelivered``, ..."""
    rows = []
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            for consumer in stream.get("consumer_detail") or []:
                rows.append({"stream_name": stream.get("name"), **consumer})
    return rows
