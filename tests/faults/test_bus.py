"""Fault matrix: a bus that executes nothing.

The codec (deployments/bus.py) is checked on its own first; then a pickle that would run code,
an oversized and a deeply nested message go to the real 0MQ proxy of a real home with its real
bridge, followed by a proper scan: nothing runs, the bridge logs each one and stays up, and the
scan is still reconstructed and recorded.
"""

from __future__ import annotations

import os
import pickle

import msgpack
import numpy as np
import pytest
from test_flows_support import LIVE, final_run, publish_raw, wait_for
from tomopipe.deployments import bus

from faults.fault_support import (
    assert_targets,
    matrix_row,
    scan_documents,
    send,
    service_pid,
)


class MakesADirectory:
    """Unpickling this creates ``path``: what an attacker on the machine would send."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_msgpack_carries_numpy_and_reads_back_only_numbers():
    doc = {"uid": "u", "data": {"img": np.arange(6, dtype=np.uint16).reshape(2, 3),
                                "x": np.float64(1.5), "n": np.int32(3)}, "t": (1, 2)}
    back = bus.deserializer("msgpack")(bus.serializer("msgpack")(doc))
    assert back["data"]["img"].dtype == np.uint16 and back["data"]["img"].tolist() == \
        [[0, 1, 2], [3, 4, 5]]
    assert back["data"]["x"] == 1.5 and back["data"]["n"] == 3 and back["t"] == [1, 2]
    # an object array in msgpack_numpy's layout is refused, not unpickled
    hostile = msgpack.packb({b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1],
                             b"data": pickle.dumps([MakesADirectory("/nonexistent/x")])},
                            use_bin_type=True)
    assert bus.decode_message(b" start " + hostile, bus.deserializer("msgpack")) is None


def test_oversized_and_deeply_nested_messages_are_dropped_with_one_line(caplog):
    loads = bus.deserializer("msgpack")
    big = b" start " + msgpack.packb({"uid": "big", "blob": b"x" * (bus.MAX_MESSAGE_BYTES + 1)})
    nested: object = "leaf"
    for _ in range(bus.MAX_DEPTH + 5):
        nested = {"a": nested}
    deep = b" start " + msgpack.packb({"uid": "deep", "md": nested})
    with caplog.at_level("WARNING", logger="tomopipe.deployments.bus"):
        assert bus.decode_message(big, loads, source="tcp://127.0.0.1:1") is None
        assert bus.decode_message(deep, loads, source="tcp://127.0.0.1:1") is None
        assert bus.decode_message(b"no framing", loads) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "tcp://127.0.0.1:1" in lines[0] and "'start'" in lines[0] and "bytes" in lines[0]
    assert "nested deeper than" in lines[1] and "'start'" in lines[1]
    assert "framing" in lines[2]
    # at the limit it still decodes
    ok: object = "leaf"
    for _ in range(bus.MAX_DEPTH - 2):
        ok = {"a": ok}
    assert bus.decode_message(b" start " + msgpack.packb({"uid": "ok", "md": ok}), loads)


def test_pickle_only_when_asked_and_then_with_a_warning(tmp_path):
    from tomopipe.infra.services import _bus_serializer

    from tomopipe.config import load_settings

    said: list[str] = []
    assert _bus_serializer(load_settings(tmp_path), said.append) == "msgpack" and not said
    (tmp_path / "config.yaml").write_text("bus: {serializer: pickle}\n")
    assert _bus_serializer(load_settings(tmp_path), said.append) == "pickle"
    assert len(said) == 1 and "pickle" in said[0] and "runs code" in said[0]
    (tmp_path / "config.yaml").write_text("bus: {serializer: yaml}\n")
    from tomopipe.errors import ConfigError

    with pytest.raises(ConfigError, match="bus.serializer"):
        load_settings(tmp_path)


@pytest.mark.services
@pytest.mark.timeout(1800)
def test_a_pickle_sent_to_the_bus_runs_nothing_and_the_next_scan_is_reconstructed(
        fault_services, tmp_path):
    from tomopipe.tasks import results_table

    home, state = fault_services
    assert state["zmq_serializer"] == "msgpack"
    bridge = service_pid(home, "bridge")
    target = tmp_path / "made-by-the-bus"
    nested: object = 0
    for _ in range(200):
        nested = [nested]
    publish_raw(state["zmq_in"], [
        b" start " + pickle.dumps(MakesADirectory(str(target))),
        b" start " + msgpack.packb({"uid": "huge", "pad": b"x" * (bus.MAX_MESSAGE_BYTES + 10)}),
        b" start " + msgpack.packb({"uid": "deep", "time": 1.0, "md": nested}),
    ])
    log = home / "logs" / "bridge.log"
    wait_for(lambda: log.read_text().count("dropped a message from") >= 3, 60, 0.5,
             "the bridge to log the three messages")
    assert not target.exists(), "the bus ran the code in a pickle"
    os.kill(bridge, 0)  # still up
    dropped = [ln for ln in log.read_text().splitlines() if "dropped a message from" in ln]
    assert all(state["zmq_out"] in ln and "'start'" in ln for ln in dropped[-3:]), dropped
    assert "not msgpack" in dropped[-3] and "bytes, more than" in dropped[-2] \
        and "nested deeper than" in dropped[-1], dropped

    uid, docs = scan_documents(home, "after-a-pickle")
    send(state, docs)
    fr = final_run(state, LIVE, uid, 300)
    assert fr["state_type"] == "COMPLETED", fr["state"]["message"]
    assert results_table.read_one(home, uid)["state"] == "completed"
    row = matrix_row("pickle / oversized / deeply nested message on the bus", home, state, [uid],
                     dropped[-3].split(" WARNING ", 1)[-1])
    assert_targets(row)
