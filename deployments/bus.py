"""Subscribers to the document bus: 0MQ (the embedded default) and Kafka (at a facility).

Both deliver ``callback(name, doc)`` with undecodable messages logged and dropped. The 0MQ
subscriber reads bluesky's wire format (``prefix name payload``) itself rather than through
``bluesky.callbacks.zmq.RemoteDispatcher``, whose poll loop ends on an unknown document name.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Callable

from tomopipe.errors import ConfigError

log = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset({
    "start", "stop", "descriptor", "event", "event_page", "resource", "datum", "datum_page",
    "stream_resource", "stream_datum",
})


def deserializer(kind: str) -> Callable[[bytes], object]:
    if kind == "pickle":
        return pickle.loads  # loopback only: the proxy is bound to 127.0.0.1
    if kind == "msgpack":
        import msgpack

        return lambda b: msgpack.unpackb(b, raw=False)
    if kind == "json":
        return json.loads
    raise ConfigError(f"zmq_serializer: unknown serializer {kind!r}; use pickle, msgpack or json")


def decode_message(message: bytes, loads, prefix: bytes = b"") -> tuple[str, object] | None:
    """(name, doc) from one bus message, or None (logged) when it cannot be decoded."""
    try:
        got_prefix, name, payload = message.split(b" ", 2)
        if prefix and got_prefix != prefix:
            return None
        text = name.decode()
        return text, loads(payload)
    except Exception as exc:
        log.warning("dropped an undecodable bus message (%d bytes): %s", len(message), exc)
        return None


class ZmqSubscriber:
    def __init__(self, address: str, serializer: str = "pickle", prefix: bytes = b""):
        if not address:
            raise ConfigError("zmq_out: no address of the document bus")
        self.address = address if "://" in address else f"tcp://{address}"
        self._loads = deserializer(serializer)
        self._prefix = prefix
        self._stop = threading.Event()

    def run(self, callback: Callable[[str, object], None], ready: Callable | None = None) -> None:
        """Deliver documents until ``stop()``; ``ready`` is called once subscribed."""
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if ready:
            ready()
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                decoded = decode_message(sock.recv(), self._loads, self._prefix)
                if decoded is not None:
                    callback(*decoded)
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """The socket is closed by ``run`` itself once stopped."""
        self.stop()


class KafkaSubscriber:
    """Documents from Kafka topics through bluesky-kafka (msgpack, as bluesky-kafka publishes)."""

    def __init__(self, topics: list[str], bootstrap_servers: str, group_id: str = "tomopipe-bridge",
                 consumer_config: dict | None = None):
        try:
            from bluesky_kafka import RemoteDispatcher
        except ImportError as exc:
            raise ConfigError("the Kafka bus needs bluesky-kafka: pip install 'tomopipe[kafka]'") \
                from exc
        config = {"auto.offset.reset": "latest", **(consumer_config or {})}
        self._dispatcher = RemoteDispatcher(topics=topics, bootstrap_servers=bootstrap_servers,
                                            group_id=group_id, consumer_config=config)
        self._stop = threading.Event()

    def run(self, callback: Callable[[str, object], None], ready: Callable | None = None) -> None:
        self._dispatcher.subscribe(lambda name, doc: callback(getattr(name, "name", name), doc))
        if ready:
            ready()
        self._dispatcher.start(continue_polling=lambda: not self._stop.is_set())

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Release the Kafka consumer (it connects in the background from construction)."""
        self.stop()
        consumer = getattr(self._dispatcher, "_bluesky_consumer", None)
        if consumer is not None:
            consumer.close()
