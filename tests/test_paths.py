"""Paths from documents resolve only under the data roots (real files and links on disk)."""

import os

import pytest
from tomopipe.tasks.paths import is_under_roots, resolve_data_path

from tomopipe.errors import ConfigError, InputError, PathEscapeError


@pytest.fixture
def roots(tmp_path):
    root_a, root_b = tmp_path / "rootA", tmp_path / "rootB"
    (root_a / "run1").mkdir(parents=True)
    root_b.mkdir()
    (root_a / "run1" / "scan.h5").write_bytes(b"x")
    (root_b / "other.h5").write_bytes(b"y")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.h5").write_bytes(b"z")
    return root_a, root_b, outside


def test_plain_relative_and_uri_paths_resolve(roots):
    root_a, root_b, _ = roots
    want = (root_a / "run1" / "scan.h5").resolve()
    assert resolve_data_path(str(want), [root_a, root_b], source="uid1") == want
    assert resolve_data_path("run1/scan.h5", [root_a, root_b], source="uid1") == want
    assert resolve_data_path(f"file://{want}", [root_a, root_b], source="uid1") == want
    assert resolve_data_path(f"file://localhost{want}", [root_a], source="uid1") == want
    # a path under the second root, and a percent-encoded URI
    other = (root_b / "other.h5").resolve()
    assert resolve_data_path(f"file://{str(other).replace('other', 'oth%65r')}",
                             [root_a, root_b], source="uid1") == other
    # an inner ".." that stays inside the root is fine
    assert resolve_data_path(str(root_a / "run1" / ".." / "run1" / "scan.h5"), [root_a],
                             source="uid1") == want


@pytest.mark.parametrize("bad", ["../outside/secret.h5", "run1/../../outside/secret.h5",
                                 "ABS_OUTSIDE", "URI_OUTSIDE", "/etc/passwd"])
def test_escapes_refused_with_path_source_and_roots(roots, bad):
    root_a, root_b, outside = roots
    bad = bad.replace("ABS_OUTSIDE", str(outside / "secret.h5"))
    bad = bad.replace("URI_OUTSIDE", f"file://{outside / 'secret.h5'}")
    with pytest.raises(PathEscapeError) as info:
        resolve_data_path(bad, [root_a, root_b], source="run-uid-42")
    msg = str(info.value)
    assert "run-uid-42" in msg and bad in msg
    assert str(root_a.resolve()) in msg and str(root_b.resolve()) in msg
    assert info.value.roots == [str(root_a.resolve()), str(root_b.resolve())]


def test_symlink_out_of_roots_refused_but_inside_allowed(roots):
    root_a, _, outside = roots
    os.symlink(outside / "secret.h5", root_a / "run1" / "link_out.h5")
    os.symlink(outside, root_a / "dir_out")
    os.symlink(root_a / "run1" / "scan.h5", root_a / "link_in.h5")
    for bad in ("run1/link_out.h5", "dir_out/secret.h5"):
        with pytest.raises(PathEscapeError, match="symbolic link"):
            resolve_data_path(bad, [root_a], source="uid")
    assert resolve_data_path("link_in.h5", [root_a], source="uid") == \
        (root_a / "run1" / "scan.h5").resolve()


def test_other_schemes_hosts_and_no_roots(roots):
    root_a, _, _ = roots
    with pytest.raises(PathEscapeError, match="another host"):
        resolve_data_path("file://evil.example/data/x.h5", [root_a], source="u")
    with pytest.raises(InputError, match="unsupported URI scheme 'https'"):
        resolve_data_path("https://example.org/x.h5", [root_a], source="u")
    with pytest.raises(InputError, match="NUL"):
        resolve_data_path("run1/scan.h5\x00.txt", [root_a], source="u")
    with pytest.raises(ConfigError, match="data_roots"):
        resolve_data_path("run1/scan.h5", [], source="u")
    assert is_under_roots(root_a / "run1" / "scan.h5", [root_a])
    assert not is_under_roots("/etc/passwd", [root_a])


def test_output_checks_name_the_output_and_the_fault(tmp_path):
    from tomopipe.tasks.paths import check_output_path

    scan = tmp_path / "scan.h5"
    scan.write_bytes(b"raw data")
    (tmp_path / "notes.txt").write_text("keep me")
    ok = check_output_path(tmp_path / "new" / "deeper" / "vol.zarr", inputs=[scan])
    assert ok == tmp_path / "new" / "deeper" / "vol.zarr" and not (tmp_path / "new").exists()
    cases = [(tmp_path / "notes.txt", "is a file, not a volume folder"),
             (tmp_path / "notes.txt" / "vol.zarr", "notes.txt is a file, not a folder"),
             (scan, "is the input file")]
    os.symlink(scan, tmp_path / "alias.zarr")  # the input under another name
    cases.append((tmp_path / "alias.zarr", "is the input file"))
    for out, fault in cases:
        with pytest.raises(InputError) as info:
            check_output_path(out, inputs=[scan])
        assert str(info.value).startswith(f"{out}: ") and fault in str(info.value)
    assert scan.read_bytes() == b"raw data" and (tmp_path / "notes.txt").read_text() == "keep me"
