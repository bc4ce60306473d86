"""The seam between buslib and nats-py: protocol facts, server facts, and the fast paths.

- ``protocol``: header names, JetStream error codes, ack and pull subjects, PubAck parsing
  (the wire, as any client sees it);
- ``headers``: header blocks, rendered and parsed (the one header parser);
- ``info``: what the connected server is and can do, through public API;
- ``fastpath``: the only code that touches nats-py's private attributes, each use with its
  public fallback beside it and an off switch (``BUSLIB_FAST_PATHS=0``).

A nats-py upgrade that changes its internals breaks ``fastpath`` and nothing else; the
tests run the bus both ways.
"""
