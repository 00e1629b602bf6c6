"""Local mover throughput against plain ``cp``, checksums on, verification included.

A run of ``--size-gb`` GB in ``--files`` files is written once; then, alternately and
``--repeat`` times, ``cp -r`` (and ``cp -r`` + ``sync``, which like the mover puts the bytes on
the device) and the LocalMover (kernel copy, read-back + SHA-256 of the copy compared with the
manifest's, fsync, atomic rename; with the read-back from the page cache or from the device)
copy it to fresh destinations on the same file system. The source
is in the page cache for every contender (it was just written and is re-read each round).
Staging (the manifest's own checksum pass) is timed separately.

    .venv/bin/python benchmarks/bench_mover.py --size-gb 1 --files 8 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.staging.manifest import build_manifest  # noqa: E402
from tasks.transfer.local import LocalMover  # noqa: E402


def make_run(root: Path, size_bytes: int, n_files: int) -> list[Path]:
    per = size_bytes // n_files
    block = os.urandom(4 * 1024 * 1024)
    files = []
    for i in range(n_files):
        p = root / "run" / f"frames_{i:03d}.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as fh:
            left = per
            while left:
                n = min(left, len(block))
                fh.write(block[:n])
                left -= n
        files.append(p)
    return files


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (cp)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, cpu: list | None = None) -> float:
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(cpu_seconds() - c0)
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="bench-mover-", dir=args.dir))
    try:
        size = int(args.size_gb * 1e9)
        files = make_run(base, size, args.files)
        total = sum(p.stat().st_size for p in files)
        manifest = None

        def stage():
            nonlocal manifest
            manifest = build_manifest(files, run_uid="bench", roots=[base])

        t_stage = timed(stage)
        contenders = {
            "cp": lambda d: subprocess.run(["cp", "-r", str(base / "run"), str(d)], check=True),
            "cp+sync": lambda d: (subprocess.run(["cp", "-r", str(base / "run"), str(d)],
                                                 check=True), os.sync()),
            "mover (verify from page cache)": lambda d: LocalMover(
                workers=args.workers, verify_from_device=False).transfer(
                    manifest, d).raise_if_incomplete(),
            "mover (verify from device)": lambda d: LocalMover(
                workers=args.workers, verify_from_device=True).transfer(
                    manifest, d).raise_if_incomplete(),
        }
        times: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        for r in range(args.repeat):
            for name, fn in contenders.items():
                dest = base / f"dest-{r}-{len(times[name])}-{name.split()[0]}"
                os.sync()
                times[name].append(timed(lambda fn=fn, dest=dest: fn(dest), cpu[name]))
                shutil.rmtree(dest)
        figures = {"bytes": total, "files": args.files, "repeat": args.repeat,
                   "workers": args.workers, "cpus": os.cpu_count(),
                   "load_avg": os.getloadavg()[0], "staging_s": round(t_stage, 3),
                   "staging_GBps": round(total / t_stage / 1e9, 3), "results": {}}
        cp_best = min(times["cp"])
        cp_sync_best = min(times["cp+sync"])
        for name, ts in times.items():
            best = min(ts)
            figures["results"][name] = {
                "best_s": round(best, 3), "median_s": round(statistics.median(ts), 3),
                "GBps": round(total / best / 1e9, 3),
                "cpu_s_median": round(statistics.median(cpu[name]), 3),
                "vs_cp": round(cp_best / best, 3), "vs_cp_sync": round(cp_sync_best / best, 3)}
        print(json.dumps(figures, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
