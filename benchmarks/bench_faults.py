"""The fault matrix: every case run for real, one row each, printed as a table.

    .venv/bin/python benchmarks/bench_faults.py [--json PATH] [--only bus,burst,...] [--no-input]

Columns: case, runs lost, runs reconstructed twice, half volumes marked complete, reads outside
the data roots, and the message a user sees. The target of every row is 0, 0, 0, 0 and a message
that names the input and the fault.

Where the rows come from:

- **service faults** (tests/faults/test_bus.py, test_burst.py, test_documents.py,
  test_services_killed.py, test_worker_killed.py, test_dask_worker_killed.py): real services
  in a temporary home of their own, started and broken by the tests, which measure their rows
  (tests/faults/fault_support.py ``matrix_row``) and assert the targets. This script runs
  them with pytest and collects the rows they write (TOMOPIPE_FAULT_ROWS). A test that fails
  before it measures shows as a row with its failure.
- **bad files and hostile documents**: ``benchmarks/faults_input.py`` ``cases()``, when present.

Takes about 10-20 minutes on 2 cores (each `tomopipe up` is most of a minute there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SERVICE_CASES = {
    "bus": "tests/faults/test_bus.py",
    "burst": "tests/faults/test_burst.py",
    "documents": "tests/faults/test_documents.py",
    "services": "tests/faults/test_services_killed.py",
    "worker": "tests/faults/test_worker_killed.py",
    "dask": "tests/faults/test_dask_worker_killed.py",
}
COLUMNS = ("case", "runs_lost", "reconstructed_twice", "half_complete", "reads_outside_roots",
           "message")
HEADERS = ("case", "runs lost", "reconstructed twice", "half volumes complete",
           "reads outside roots", "message a user sees")


def run_pytest(targets: list[str], rows_file: Path) -> tuple[int, str, float]:
    env = {**os.environ, "TOMOPIPE_FAULT_ROWS": str(rows_file)}
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                           *targets], cwd=REPO, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def failures(output: str) -> dict[str, str]:
    """{test node id: first line of its failure} from pytest's -rf summary."""
    found = {}
    for line in output.splitlines():
        if line.startswith("FAILED "):
            node, _, why = line.removeprefix("FAILED ").partition(" - ")
            found[node.strip()] = why.strip()[:160] or "failed"
    return found


def service_rows(only: list[str]) -> tuple[list[dict], float]:
    targets = [SERVICE_CASES[k] for k in only]
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        code, output, seconds = run_pytest(targets, rows_file)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line]
    log = Path(tempfile.gettempdir()) / "bench_faults.pytest.log"
    log.write_text(output)  # the whole story of a failed case
    print(f"pytest output: {log}", file=sys.stderr)
    failed = failures(output)
    for node, why in failed.items():
        rows.append({"case": f"FAILED {node.split('::')[-1]}", "runs_lost": None,
                     "reconstructed_twice": None, "half_complete": None,
                     "reads_outside_roots": None, "message": why})
    if code not in (0, 1):
        rows.append({"case": "pytest", **dict.fromkeys(COLUMNS[1:5]),
                     "message": output.strip().splitlines()[-1][:160] if output else "no output"})
    return rows, seconds


def input_rows() -> list[dict]:
    path = REPO / "benchmarks" / "faults_input.py"
    if not path.exists():
        return []
    sys.path.insert(0, str(path.parent))
    import faults_input

    return list(faults_input.cases())


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    p.add_argument("--only", default=",".join(SERVICE_CASES),
                   help=f"service cases to run, of {','.join(SERVICE_CASES)} (default: all)")
    p.add_argument("--no-input", action="store_true", help="leave out faults_input.py's rows")
    args = p.parse_args(argv)
    only = [k for k in args.only.split(",") if k]
    unknown = set(only) - set(SERVICE_CASES)
    if unknown:
        p.error(f"--only: unknown case(s) {sorted(unknown)}; choose from {list(SERVICE_CASES)}")
    rows, seconds = service_rows(only) if only else ([], 0.0)
    if not args.no_input:
        rows += input_rows()
    print(table(rows))
    targets_met = all(all(r.get(c) == 0 for c in COLUMNS[1:5]) and r.get("message")
                      for r in rows)
    print(f"\n{len(rows)} rows; service cases took {seconds:.0f} s; every figure 0 and every row "
          f"with a message: {'yes' if targets_met else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "service_seconds": seconds}, indent=1))
    return 0 if targets_met else 1


if __name__ == "__main__":
    sys.exit(main())
