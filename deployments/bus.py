"""Subscribers to the document bus: 0MQ (the embedded default) and Kafka (at a facility), and the
codec of the 0MQ bus.

Both deliver ``callback(name, doc)`` with undecodable messages logged and dropped. The 0MQ
subscriber reads bluesky's wire format (``prefix name payload``) itself rather than through
``bluesky.callbacks.zmq.RemoteDispatcher``, whose poll loop ends on an unknown document name.

The codec executes nothing it is sent. The default is msgpack; NumPy arrays and scalars in a
document travel as msgpack_numpy writes them (so bluesky-kafka's publishers are understood), and
are read back only as numeric arrays. JSON also works. Pickle, which runs whatever code a message
names, is used only when ``config.yaml`` asks for it (``bus: {serializer: pickle}``), and the
bridge and ``tomopipe up`` then warn. A message larger than MAX_MESSAGE_BYTES or nested deeper than
MAX_DEPTH is refused before or right after decoding.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Callable

from tomopipe.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset({
    "start", "stop", "descriptor", "event", "event_page", "resource", "datum", "datum_page",
    "stream_resource", "stream_datum",
})
SERIALIZERS = ("msgpack", "json", "pickle")
DEFAULT_SERIALIZER = "msgpack"
MAX_MESSAGE_BYTES = 8 << 20  # one document; detector images travel in files, not on the bus
MAX_DEPTH = 64  # mappings and lists inside one another
MAX_CONTAINER_LEN = 1 << 20  # items in one list or mapping
PICKLE_WARNING = ("the document bus uses pickle (config.yaml bus.serializer): any process that "
                  "can reach its input port runs code as the bridge's user; use msgpack or json "
                  "unless every publisher is trusted")
# msgpack_numpy's layout of an array: {b"nd": True, b"type": dtype.str, b"shape": ..., b"data"}
_ND, _NUMERIC_KINDS = b"nd", "biufc"


def _pack_default(obj):
    """What msgpack cannot pack by itself: NumPy arrays (msgpack_numpy's layout) and scalars."""
    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype.kind in _NUMERIC_KINDS:
        arr = np.ascontiguousarray(obj)
        return {_ND: True, b"type": arr.dtype.str, b"kind": b"", b"shape": list(arr.shape),
                b"data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot put a {type(obj).__name__} on the bus")


def _unpack_hook(obj: dict):
    """An msgpack_numpy array back to NumPy, for numeric dtypes only; other maps unchanged."""
    if obj.get(_ND) is True and b"data" in obj:
        import numpy as np

        dtype = np.dtype(obj[b"type"])
        if dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"array of dtype {dtype} refused (numbers only)")
        return np.frombuffer(obj[b"data"], dtype=dtype).reshape(obj[b"shape"])
    return obj


def serializer(kind: str) -> Callable[[object], bytes]:
    """The function a publisher (bluesky's 0MQ ``Publisher``) packs documents with."""
    if kind == "msgpack":
        import msgpack

        return lambda doc: msgpack.packb(doc, default=_pack_default, use_bin_type=True)
    if kind == "json":
        return lambda doc: json.dumps(doc, default=_json_default).encode()
    if kind == "pickle":
        return pickle.dumps
    raise ConfigError(f"bus serializer: unknown serializer {kind!r}; use one of {SERIALIZERS}")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"cannot put a {type(obj).__name__} on the bus")


def deserializer(kind: str) -> Callable[[bytes], object]:
    """The function the bridge reads documents with. Only ``pickle`` can run code."""
    if kind == "msgpack":
        import msgpack

        return lambda b: msgpack.unpackb(
            b, raw=False, object_hook=_unpack_hook, strict_map_key=False,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN,
            max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES)
    if kind == "json":
        return json.loads
    if kind == "pickle":
        return pickle.loads  # only when config.yaml asks for it; see PICKLE_WARNING
    raise ConfigError(f"bus serializer: unknown serializer {kind!r}; use one of {SERIALIZERS}")


def nesting_depth(doc, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and mappings nest in ``doc`` (walked without recursion), up to
    ``limit + 1``."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, list):
            children = obj
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def decode_message(message: bytes, loads, prefix: bytes = b"", source: str = "the bus",
                   codec: str = "the bus's codec") -> tuple[str, object] | None:
    """(name, doc) from one bus message, or None when it cannot be decoded or is refused; each
    refusal is one log line naming ``source``, the topic and the fault."""
    head = message[:80].split(b" ", 2)
    topic = head[1].decode(errors="replace")[:40] if len(head) == 3 else "?"
    try:
        if len(message) > MAX_MESSAGE_BYTES:
            raise InputError("message", f"{len(message)} bytes, more than the "
                             f"{MAX_MESSAGE_BYTES} a document may take")
        parts = message.split(b" ", 2)
        if len(parts) != 3:
            raise InputError("message", "not bluesky's 'prefix name document' framing")
        got_prefix, name, payload = parts
        if prefix and got_prefix != prefix:
            return None
        try:
            doc = loads(payload)
        except Exception as exc:
            raise InputError("document", f"not {codec}: {type(exc).__name__}: {exc}") from None
        depth = nesting_depth(doc)
        if depth > MAX_DEPTH:
            raise InputError("document", f"nested deeper than {MAX_DEPTH} levels")
        return name.decode(), doc
    except Exception as exc:
        why = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        log.warning("dropped a message from %s (topic %r, %d bytes): %s", source, topic,
                    len(message), why[:200])
        return None


class ZmqSubscriber:
    def __init__(self, address: str, serializer: str = DEFAULT_SERIALIZER, prefix: bytes = b""):
        if not address:
            raise ConfigError("zmq_out: no address of the document bus")
        self.address = address if "://" in address else f"tcp://{address}"
        self.serializer = serializer
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
                decoded = decode_message(sock.recv(), self._loads, self._prefix, self.address,
                                         self.serializer)
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
