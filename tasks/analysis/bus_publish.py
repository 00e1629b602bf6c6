"""Put analysis documents on the document bus (the 0MQ proxy's input), as a RunEngine's
``Publisher`` does. The documents hold plain Python values only, so msgpack or JSON packs them
as the bus codec (deployments/bus.py) does; pickle is not offered (it runs code)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from tomopipe.errors import ServiceError

SLOW_JOINER_S = 1.0  # 0MQ drops what a PUB socket sends before its connection is up


def _packer(kind: str):
    if kind == "json":
        return lambda doc: json.dumps(doc).encode()
    if kind == "msgpack":
        import msgpack

        return lambda doc: msgpack.packb(doc, use_bin_type=True)
    raise ServiceError(f"analysis documents: cannot publish with the {kind!r} serializer; "
                       "use msgpack or json on the bus")


def publish_documents(zmq_in: str, docs: Iterable[tuple[str, dict]], *,
                      serializer: str = "msgpack") -> int:
    """Send ``docs`` to the proxy at ``zmq_in``; returns how many were sent."""
    from bluesky.callbacks.zmq import Publisher

    try:
        pub = Publisher(zmq_in, serializer=_packer(serializer))
    except Exception as exc:
        raise ServiceError(f"document bus {zmq_in!r}: cannot connect: {exc}") from exc
    try:
        time.sleep(SLOW_JOINER_S)
        n = 0
        for name, doc in docs:
            pub(name, doc)
            n += 1
        time.sleep(0.2)  # let the last message leave the socket
        return n
    finally:
        pub.close()
