"""The input rows of the fault matrix: bad files and hostile documents, run for real, quickly.

``cases()`` returns one row per case with ``case``, ``runs_lost``, ``reconstructed_twice``,
``half_complete``, ``reads_outside_roots`` and ``message`` (the one line a user sees). The target
of every row is 0, 0, 0, 0 and a message naming the input and the fault.
benchmarks/bench_faults.py imports it and prints these rows in its matrix; run alone it prints
them as a table:

    .venv/bin/python benchmarks/faults_input.py [--json PATH]

What is measured, per row:

- **bad files** (tests/faults/bad_inputs.py builds each as a small real HDF5 file) go through the
  real ``tomopipe recon`` (``tomopipe.cli.main``, in this process, ``--workers 0``), twice.
  ``runs_lost``: a volume published earlier in the same folder that is no longer complete with
  its key, plus an input file whose bytes changed. ``reconstructed_twice``: complete
  reconstructions beyond the first over the two runs (a valid input's second run must be a
  no-op). ``half_complete``: a failed run that left something marked complete.
  ``reads_outside_roots``: files opened outside the case's folder, among those watched.
- **hostile documents** (a real simulated run's documents, each StreamResource pointed outside
  the data roots some way, or made enormous or deeply nested) go through the real Bluesky
  source and the real staging manifest. ``reads_outside_roots``: files opened outside the roots,
  by Python (audit hook) or by any code, HDF5's C library included (inotify on the outside
  folder). ``runs_lost``: files under the roots whose bytes changed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the shared case builders and the open auditor

from faults.bad_inputs import (  # noqa: E402
    BAD_FILES,
    BAD_OUTPUTS,
    GOOD_FILES,
    deeply_nested,
    good,
    hostile_uris,
    with_datum_indices,
    with_start,
    with_uri,
)
from faults.opens import OpenAudit  # noqa: E402

KEYS = ("case", "runs_lost", "reconstructed_twice", "half_complete", "reads_outside_roots",
        "message")


def _recon(source: Path, out: Path, extra: list[str]) -> tuple[int, str, bool]:
    """(exit status, the last stderr line, skipped) of one real ``tomopipe recon``."""
    from tomopipe.cli import main

    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        code = main(["recon", str(source), "--out", str(out), "--workers", "0", "--no-progress",
                     "--json", *extra])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    skipped = bool(code == 0 and json.loads(std.getvalue() or "{}").get("skipped"))
    message = lines[-1] if lines else ("" if code == 0 else "(no message)")
    if len(lines) > 1 and code != 0:
        message = f"{len(lines)} lines: {message}"
    return code, message, skipped


def _file_cases(work: Path) -> list[dict]:
    from tomopipe.tasks.sources.identity import file_checksum
    from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

    rows = []
    volumes = work / "volumes"
    volumes.mkdir(parents=True)
    earlier = volumes / "earlier.zarr"
    source, _ = good(work / "earlier")
    code, message, _ = _recon(source, earlier, [])
    if code != 0:
        raise RuntimeError(f"the reference volume failed: {message}")
    key = read_provenance(earlier)["key"]
    outside = work / "outside"
    outside.mkdir()

    def run(case: str, source: Path, out: Path, extra: list[str], folder: Path) -> dict:
        before = file_checksum(source)
        with OpenAudit([folder, volumes], outside=[outside]) as audit:
            results = [_recon(source, out, extra) for _ in range(2)]
        (code, message, _), (code2, _, skipped2) = results
        made = int(code == 0) + int(code2 == 0 and not skipped2)
        lost = int(not (is_complete(earlier) and read_provenance(earlier)["key"] == key))
        lost += int(file_checksum(source) != before)
        half = int(code != 0 and (is_complete(out) or is_complete(
            out.with_name(out.name + ".partial"))))
        return {"case": case, "runs_lost": lost, "reconstructed_twice": max(0, made - 1),
                "half_complete": half, "reads_outside_roots": len(audit.outside_roots()),
                "message": message if code != 0 else f"works: {out.name} published once"}

    for case, (build, _fault) in BAD_FILES.items():
        folder = work / re.sub(r"\W+", "_", case)
        source, extra = build(folder)
        rows.append(run(case, source, volumes / f"{source.stem}.zarr", extra, folder))
    for case, (target, _fault) in BAD_OUTPUTS.items():
        if "read-only" in case:
            continue  # needs chmod as a user or a read-only mount as root: the tests do it
        folder = work / re.sub(r"\W+", "_", case)
        source, _ = good(folder)
        (folder / "a_file").write_text("a file a user keeps here\n")
        rows.append(run(case, source, folder / target, ["--overwrite"], folder))
    for case, build in GOOD_FILES.items():
        folder = work / re.sub(r"\W+", "_", case)
        source, extra = build(folder)
        rows.append(run(case, source, source.parent / "vol ü.zarr", extra, folder))
    return rows


def _document_cases(work: Path) -> list[dict]:
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents
    from tomopipe.tasks.sources.identity import file_checksum
    from tomopipe.tasks.staging.manifest import manifest_from_documents

    from tomopipe.config import load_settings
    from tomopipe.errors import TomopipeError

    settings = load_settings(work / "home")
    docs: list = []
    simulate(settings, size=32, rows=8, angles=24, fps=None, sample="faults",
             callbacks=[lambda name, doc: docs.append((name, doc))], n_flats=2, n_darks=2,
             seed=3)
    roots = list(settings.data_roots)
    outside = work / "outside"

    def stored() -> dict:
        return {p: file_checksum(p) for r in roots for p in Path(r).rglob("*.h5")
                if p.is_file() and not p.is_symlink()}

    variants = {f"document: {case}": with_uri(docs, uri)
                for case, uri in hostile_uris(roots[0], outside).items()}
    variants["document: nested 100 000 deep"] = with_start(docs, extra=deeply_nested(100_000))
    variants["document: 65 MiB"] = with_start(docs, notes="x" * (65 * 2**20))
    variants["document: 10^12 frames claimed"] = with_datum_indices(docs, 10**12)
    rows = []
    for case, hostile in variants.items():
        before = stored()
        messages = []
        with OpenAudit(roots, outside=[outside], suspect=["/etc"]) as audit:
            for step in (scan_from_documents, manifest_from_documents):
                try:
                    step(hostile, roots)
                    messages.append(f"ACCEPTED by {step.__name__}")
                except TomopipeError as exc:
                    messages.append(str(exc))
        source_message = messages[0]
        rows.append({"case": case, "runs_lost": sum(1 for p, c in before.items()
                                                     if stored().get(p) != c),
                     "reconstructed_twice": 0, "half_complete": 0,
                     "reads_outside_roots": len(audit.outside_roots()),
                     "message": source_message})
    return rows


def cases() -> list[dict]:
    """Every input case, one row each (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="faults-input-") as tmp:
        work = Path(tmp)
        return _file_cases(work / "files") + _document_cases(work / "documents")


def print_table(rows: list[dict], width: int = 110) -> None:
    head = ["case", "lost", "twice", "half", "outside", "message"]
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for r in rows:
        msg = r["message"] if len(r["message"]) <= width else r["message"][: width - 1] + "…"
        print(f"{r['case']} | {r['runs_lost']} | {r['reconstructed_twice']} | "
              f"{r['half_complete']} | {r['reads_outside_roots']} | {msg}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = cases()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    bad = [r["case"] for r in rows if any(r[k] for k in KEYS[1:5])]
    print(f"\n{len(rows)} cases; {len(bad)} miss a 0 target" + (f": {bad}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
