"""The flow-run fork server (infra/zygote.py) and its client (infra/zygote_client.py).

A real zygote process (with the real preload: Prefect, NumPy, Dask, our flows) serves real client
processes over a Unix socket. Instead of prefect.engine the zygote runs a small probe module
(TOMOPIPE_ZYGOTE_MODULE), which reports what it was given; the real engine through the zygote is
measured end to end with the real services (see the report), as it needs a Prefect server.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import os, signal, sys, time
print("STARTED", repr(time.time()), flush=True)
print("PRELOADED", "prefect" in sys.modules and "numpy" in sys.modules)
print("CATALOG_CLIENT", "bluesky_tiled_plugins" in sys.modules)
orchestration = sys.modules.get("prefect.client.orchestration")
init = orchestration.SyncPrefectClient.__init__ if orchestration else None
print("PLAIN_HTTP", getattr(init, "tomopipe_plain_http", False))
print("PID", os.getpid(), "PPID", os.getppid())
mode = os.environ.get("PROBE_MODE", "report")
if mode == "report":
    print("ENV", os.environ.get("PROBE_VALUE"))
    print("CWD", os.getcwd())
    print("ARGV", sys.argv[1:])
    print("STDIN", sys.stdin.readline().strip())
    print("ERR", file=sys.stderr)
    sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
if mode == "settings":
    import logging
    from prefect.settings import get_current_settings
    print("API", get_current_settings().api.url)
    print("LEVEL", logging.getLogger("prefect").getEffectiveLevel())
if mode == "arrow":  # pyarrow's allocator in a forked child, threads of its own
    import threading
    import pyarrow as pa
    import pyarrow.compute as pc
    totals = []
    def work():
        table = pa.table({"x": pa.array(range(200_000))})
        totals.append(pc.sum(table["x"]).as_py())
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ARROW", totals == [sum(range(200_000))] * 4, pa.default_memory_pool().backend_name)
if mode == "wait":
    def on_term(signum, frame):
        print("TERM", flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_term)
    print("READY", flush=True)
    time.sleep(60)
    sys.exit(3)
'''


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "zyg_probe.py").write_text(PROBE)
    return d


def base_env(probe_dir: Path, sock: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=str(probe_dir), TOMOPIPE_ZYGOTE_MODULE="zyg_probe",
               TOMOPIPE_ZYGOTE_SOCKET=str(sock), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def zygote(probe_dir, tmp_path_factory):
    sock = tmp_path_factory.mktemp("zyg") / "z.sock"
    proc = subprocess.Popen([sys.executable, "-m", "tomopipe.infra.zygote", str(sock)], cwd=REPO,
                            env=base_env(probe_dir, sock), stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # the preload takes seconds, more on a loaded machine
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"zygote did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    yield proc, sock
    proc.terminate()
    proc.wait(timeout=10)
    assert not sock.exists(), "the zygote removes its socket when it stops"


def client(probe_dir, sock, cwd, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tomopipe.infra.zygote_client", *args], cwd=cwd,
                            env={**base_env(probe_dir, sock), **env}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def fields(stdout: str) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in stdout.splitlines()
            if " " in line}


@pytest.mark.parametrize("exit_code", [0, 5])
def test_env_cwd_argv_stdio_and_exit_code_are_carried(zygote, probe_dir, tmp_path, exit_code):
    proc, sock = zygote
    token = uuid.uuid4().hex
    c = client(probe_dir, sock, tmp_path, "a1", "b 2", PROBE_VALUE=token, PROBE_EXIT=str(exit_code))
    out, err = c.communicate("hello zygote\n", timeout=30)
    got = fields(out)
    assert c.returncode == exit_code, err
    assert got["PID"].endswith(f"PPID {proc.pid}"), "the child is the zygote's, not a fallback"
    assert got["PRELOADED"] == "True"
    assert got["ENV"] == token
    assert got["CWD"] == str(tmp_path)
    assert got["ARGV"] == "['a1', 'b 2']"
    assert got["STDIN"] == "hello zygote"
    assert err.strip() == "ERR"


def test_prefect_settings_follow_the_client_environment(zygote, probe_dir, tmp_path):
    # The zygote imported Prefect without PREFECT_API_URL, and with the default logging level;
    # the child must see the client's.
    _, sock = zygote
    api = f"http://127.0.0.1:9/api-{uuid.uuid4().hex[:8]}"
    c = client(probe_dir, sock, tmp_path, PROBE_MODE="settings", PREFECT_API_URL=api,
               PREFECT_LOGGING_LEVEL="ERROR")
    out, err = c.communicate("", timeout=30)
    assert c.returncode == 0, err
    assert fields(out)["API"] == api
    assert fields(out)["LEVEL"] == "40"


def wait_ready(c: subprocess.Popen) -> dict[str, str]:
    seen = {}
    for line in c.stdout:
        key, _, value = line.strip().partition(" ")
        seen[key] = value
        if key == "READY":
            return seen
    raise AssertionError(f"probe never got ready: {c.stderr.read()}")


def child_pid(seen: dict[str, str]) -> int:
    return int(seen["PID"].split()[0])


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_catalog_client_is_preloaded_without_a_jemalloc_thread(zygote, probe_dir,
                                                                   tmp_path):
    """The catalog's client (tiled, bluesky_tiled_plugins: seconds to import) is preloaded; the
    pyarrow it brings starts no allocator thread in the fork server, and a forked child
    allocates with pyarrow from several threads."""
    proc, sock = zygote
    threads = [(Path(f"/proc/{proc.pid}/task") / t / "comm").read_text().strip()
               for t in os.listdir(f"/proc/{proc.pid}/task")]
    assert "jemalloc_bg_thd" not in threads, threads
    c = client(probe_dir, sock, tmp_path, PROBE_MODE="arrow")
    out, err = c.communicate(timeout=120)
    assert c.returncode == 0, err
    got = fields(out)
    assert got["CATALOG_CLIENT"] == "True"
    assert got["PLAIN_HTTP"] == "True"  # infra/plain_http.py: inherited from the fork server
    assert got["ARROW"].startswith("True"), got["ARROW"]


def test_sigterm_to_the_client_reaches_the_child(zygote, probe_dir, tmp_path):
    _, sock = zygote
    c = client(probe_dir, sock, tmp_path, PROBE_MODE="wait")
    pid = child_pid(wait_ready(c))
    assert pid != c.pid
    c.send_signal(signal.SIGTERM)
    out, _ = c.communicate(timeout=30)
    assert "TERM" in out, "the child's own SIGTERM handler ran"
    assert c.returncode == 7
    assert gone(pid, 5)


def test_a_killed_client_takes_its_child_along(zygote, probe_dir, tmp_path):
    _, sock = zygote
    c = client(probe_dir, sock, tmp_path, PROBE_MODE="wait")
    pid = child_pid(wait_ready(c))
    c.kill()  # SIGKILL cannot be forwarded; the child sees its client's connection close
    c.wait(timeout=10)
    assert gone(pid, 10)


def test_a_child_killed_by_a_signal_kills_the_client_alike(zygote, probe_dir, tmp_path):
    _, sock = zygote
    c = client(probe_dir, sock, tmp_path, PROBE_MODE="wait")
    os.kill(child_pid(wait_ready(c)), signal.SIGKILL)
    c.wait(timeout=30)
    assert c.returncode == -signal.SIGKILL


def test_falls_back_to_running_the_engine_itself(probe_dir, tmp_path):
    c = client(probe_dir, tmp_path / "no-zygote.sock", tmp_path, "x", PROBE_VALUE="v")
    out, err = c.communicate("in\n", timeout=60)
    got = fields(out)
    assert c.returncode == 0, err
    assert "starting python -m zyg_probe directly" in err
    assert int(got["PID"].split()[0]) == c.pid, "the client exec'd the engine module"
    assert (got["ENV"], got["ARGV"], got["STDIN"]) == ("v", "['x']", "in")


def test_a_different_pythonpath_is_refused_and_falls_back(zygote, probe_dir, tmp_path):
    proc, sock = zygote
    c = client(probe_dir, sock, tmp_path, PYTHONPATH=f"{probe_dir}{os.pathsep}{tmp_path}")
    out, err = c.communicate("", timeout=60)
    assert c.returncode == 0, err
    assert "refused" in err
    assert not fields(out)["PID"].endswith(f"PPID {proc.pid}")


def test_latency_and_no_zombies(zygote, probe_dir, tmp_path):
    proc, sock = zygote
    latencies = []
    for _ in range(5):
        t0 = time.time()
        c = client(probe_dir, sock, tmp_path)
        out, err = c.communicate("\n", timeout=30)
        assert c.returncode == 0, err
        latencies.append(float(fields(out)["STARTED"]) - t0)
    median = statistics.median(latencies)
    print(f"\nzygote: client start -> child running: median {median * 1000:.0f} ms "
          f"(min {min(latencies) * 1000:.0f}, max {max(latencies) * 1000:.0f})")
    # About 50 ms on an idle machine; a fresh `python -m prefect.engine` takes seconds.
    assert median < 1.0
    time.sleep(0.5)  # the zygote reaps within its select loop
    zombies = [p for p in Path("/proc").glob("[0-9]*") if _ppid_state(p) == (proc.pid, "Z")]
    assert not zombies


def _ppid_state(proc_dir: Path) -> tuple[int, str] | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    fields_ = stat.rsplit(")", 1)[1].split()
    return int(fields_[1]), fields_[0]


def test_the_zygote_stops_with_the_process_that_started_it(probe_dir, tmp_path):
    # The worker starts the zygote; should the worker die, the zygote must not linger.
    sock = tmp_path / "z.sock"
    starter = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable,"
         f" '-m', 'tomopipe.infra.zygote', {str(sock)!r}]); print(p.pid, flush=True);"
         " time.sleep(600)"],
        cwd=REPO, env=base_env(probe_dir, sock), stdout=subprocess.PIPE, text=True)
    zygote_pid = int(starter.stdout.readline())
    deadline = time.monotonic() + 180
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists()
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 10
    while (state := _ppid_state(Path(f"/proc/{zygote_pid}"))) and state[1] != "Z":
        assert time.monotonic() < deadline, "the zygote outlived its parent"
        time.sleep(0.05)  # (a zombie is done: its new parent reaps it)
    assert not sock.exists()


def test_a_client_whose_worker_dies_stops_its_run_and_leaves_a_record(zygote, probe_dir,
                                                                       tmp_path):
    """The worker SIGKILLed: the kernel sends its client SIGTERM (PR_SET_PDEATHSIG), which the
    child gets as a cancellation; the launch record names both processes for crash recovery."""
    import json

    _, sock = zygote
    out = tmp_path / "client.out"
    env = {**base_env(probe_dir, sock), "PROBE_MODE": "wait", "TOMOPIPE_HOME": str(tmp_path),
           "PREFECT__FLOW_RUN_ID": "run-1"}
    worker = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"c = subprocess.Popen([sys.executable, '-m', 'tomopipe.infra.zygote_client'], "
         f"stdout=open({str(out)!r}, 'w'), stdin=subprocess.PIPE)\n"
         "print(c.pid, flush=True)\ntime.sleep(600)"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    client_pid = int(worker.stdout.readline())
    deadline = time.monotonic() + 60
    while "READY" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the probe never got ready"
        time.sleep(0.05)
    pid = child_pid(fields(out.read_text()))
    record = json.loads((tmp_path / "flow-runs" / "run-1.json").read_text())
    assert record["flow_run_id"] == "run-1"
    assert [p for p, _ in record["processes"]] == [client_pid, pid]
    worker.kill()
    worker.wait(10)
    assert gone(client_pid, 15) and gone(pid, 15)
    assert "TERM" in out.read_text(), "the child was asked to stop, not left running"
    from tomopipe.infra.zygote_client import start_ticks

    assert all(start_ticks(p) is None for p, _ in record["processes"])
