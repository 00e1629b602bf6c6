"""Hostile run documents through the real Bluesky source and the real staging manifest.

A real RunEngine run (the simulator) gives the documents; each case then points its
StreamResource at a readable HDF5 file *outside* the data roots, some way: ``..`` escapes
(plain, in a file URI, relative, percent-encoded), symbolic links to a file or a folder
outside, an absolute path or file URI elsewhere, and a file URI naming another host. Both
``scan_from_documents`` (what the flows resolve a run with) and ``manifest_from_documents``
(what staging checksums and moves) must refuse each with one line naming the run, the path and
the roots, having read nothing outside the roots: every open is audited, by Python's audit
hook and by inotify on the outside folder, which also sees HDF5's own C-level opens.

Enormous or deeply nested documents are refused at the source with one line too, before they
can exhaust memory or the interpreter's recursion limit (the bus has its own limits).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from tomopipe.infra.simulator.run import simulate
from tomopipe.tasks.sources.bluesky_run import scan_from_documents
from tomopipe.tasks.staging.manifest import manifest_from_documents
from tomopipe.tasks.staging.scan import manifest_for_spec

from faults.bad_inputs import (
    deeply_nested,
    hostile_uris,
    outside_target,
    with_datum_indices,
    with_start,
    with_uri,
)
from faults.opens import OpenAudit
from tomopipe.config import load_settings
from tomopipe.errors import InputError, PathEscapeError


class Recorder:
    def __init__(self):
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(uid, documents, data roots, outside folder) of one real simulated run."""
    base = tmp_path_factory.mktemp("hostile")
    settings = load_settings(base / "home")
    rec = Recorder()
    uid = simulate(settings, size=32, rows=8, angles=24, fps=None, sample="s", callbacks=[rec],
                   n_flats=2, n_darks=2, seed=3)
    roots = list(settings.data_roots)
    return uid, rec.docs, roots, base / "outside"


def test_the_untouched_run_resolves_and_stages_inside_the_roots(run):
    uid, docs, roots, outside = run
    with OpenAudit(roots, outside=[outside_target(outside).parent]) as audit:
        spec = scan_from_documents(docs, roots)
        manifest = manifest_from_documents(docs, roots)
    assert spec.identity == uid and manifest.entries
    assert audit.python_opens, "the audit saw no opens at all: it is not recording"
    assert audit.outside_roots() == []


def test_the_audit_sees_an_hdf5_read_outside_the_roots(run):
    """The witness can fail: h5py's C-level open of the outside file is caught by inotify."""
    uid, docs, roots, outside = run
    target = outside_target(outside)
    with OpenAudit(roots, outside=[outside]) as audit:
        with h5py.File(target, "r") as f:
            assert f["/entry/data/data"][0, 0, 0] == 7
    assert audit.outside_roots() == [str(target)]


HOSTILE = ["'..' escape", "'..' escape in a file URI", "relative '..' escape",
           "symbolic link to a file outside", "symbolic link to a folder outside",
           "absolute path elsewhere", "file URI elsewhere", "file URI to another host",
           "percent-encoded '..'"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_path_refused_by_source_and_staging_with_no_read_outside(run, case):
    uid, docs, roots, outside = run
    uri = hostile_uris(roots[0], outside)[case]
    hostile = with_uri(docs, uri)
    target = outside_target(outside)

    with OpenAudit(roots, outside=[outside], suspect=["/etc"]) as audit:
        with pytest.raises(PathEscapeError) as source_err:
            scan_from_documents(hostile, roots)
        with pytest.raises(PathEscapeError) as staging_err:
            manifest_from_documents(hostile, roots)

    assert audit.outside_roots() == [], f"{case}: read outside the roots"
    for err in (source_err.value, staging_err.value):
        text = str(err)
        assert "\n" not in text
        assert uid in text, f"the run is not named: {text}"
        assert uri in text or str(target) in text, f"the path is not named: {text}"
        if "host" not in case:
            assert str(roots[0].resolve()) in text, f"the roots are not named: {text}"
    # The same documents are fine once that folder is a data root: the refusal is the roots'.
    if "host" not in case:
        spec = scan_from_documents(hostile, [*roots, outside])
        assert spec.projections[0].path == str(target.resolve())


def test_a_spec_naming_a_file_outside_is_refused_by_staging_unread(run):
    """A ScanSpec that reaches staging with a path outside (e.g. edited flow parameters)."""
    uid, docs, roots, outside = run
    import dataclasses

    spec = scan_from_documents(docs, roots)
    target = outside_target(outside)
    forged = dataclasses.replace(spec, flats=(dataclasses.replace(spec.flats[0],
                                                                  path=str(target)),))
    with OpenAudit(roots, outside=[outside]) as audit:
        with pytest.raises(PathEscapeError, match=uid):
            manifest_for_spec(forged, roots)
    assert audit.outside_roots() == []


@pytest.mark.parametrize("case", ["nested 100 000 deep", "nested 65 deep", "a 65 MiB string",
                                  "a 1 MiB sample field", "10^12 frames in a StreamDatum"])
def test_enormous_or_deep_documents_refused_at_the_source(run, case):
    uid, docs, roots, outside = run
    if case == "nested 100 000 deep":  # deeper than the recursion limit: no RecursionError
        bad, what = with_start(docs, tomo_extra=deeply_nested(100_000)), "nested more than 64"
    elif case == "nested 65 deep":
        bad, what = with_start(docs, tomo_extra=deeply_nested(65)), "nested more than 64"
    elif case == "a 65 MiB string":
        bad, what = with_start(docs, notes="x" * (65 * 2**20)), "larger than 64 MiB"
    elif case == "a 1 MiB sample field":
        bad, what = with_start(docs, sample={"name": "y" * 2**20}), "'sample' is larger than"
    else:
        bad, what = with_datum_indices(docs, 10**12), "more than 10000000 frames"
    with pytest.raises(InputError) as err:
        scan_from_documents(bad, roots)
    text = str(err.value)
    assert uid in text and what in text and "\n" not in text and len(text) < 400


def test_deep_but_reasonable_metadata_is_accepted(run):
    uid, docs, roots, outside = run
    spec = scan_from_documents(with_start(docs, tomo_extra=deeply_nested(40),
                                          notes="n" * 100_000), roots)
    assert spec.identity == uid and spec.n_angles == 24
    assert np.allclose(spec.angles_deg[:2], [0.0, 7.5])


@pytest.mark.parametrize("form", ["plain path", "file URI (percent-encoded)"])
def test_spaces_and_non_ascii_in_document_paths_work(run, form):
    """A data folder named as people name them: the same frames, found and staged."""
    import shutil

    from tomopipe.tasks.sources.hdf5io import read_slab

    uid, docs, roots, outside = run
    original = scan_from_documents(docs, roots)
    folder = roots[0] / "beam time 2026 – Müller" / "scan №1 (ü)"
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(original.projections[0].path)
    copy = folder / src.name
    shutil.copy2(src, copy)
    uri = str(copy) if form == "plain path" else copy.as_uri()
    assert form == "plain path" or "%20" in uri  # really percent-encoded
    moved = with_uri(docs, uri)
    spec = scan_from_documents(moved, roots)
    assert {fs.path for fs in spec.projections} == {str(copy.resolve())}
    manifest = manifest_from_documents(moved, roots)
    assert [e.path for e in manifest.entries] == [str(copy.resolve())]
    assert manifest.entries[0].relpath == copy.resolve().relative_to(roots[0].resolve()).as_posix()
    np.testing.assert_array_equal(read_slab(spec, (0, 2))[0], read_slab(original, (0, 2))[0])
