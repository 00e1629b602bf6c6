"""The science options where users give them: config.yaml ``recon:`` defaults and the flows'
parameters (the Prefect UI's form), the output key, and CGLS through the engine with its
iteration count in the provenance."""

import dataclasses

import numpy as np
import pytest
import zarr
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.params import LATER_FIELDS, ReconParams, output_key, recon_params
from tomopipe.tasks.sources import open_scan

from tomopipe.config import load_settings
from tomopipe.errors import ConfigError


def test_config_defaults_and_flow_parameters_reach_recon_params(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "recon:\n  phase: paganin\n  energy_kev: 25\n  distance_mm: 120\n  delta_beta: 300\n"
        "  flats: [/data/pre.h5:/flats, /data/post.h5:/flats]\n  darks: /data/dark.h5\n")
    params = recon_params(load_settings(tmp_path), {"algorithm": "cgls", "iterations": 12,
                                                    "delta_beta": 150})
    assert (params.phase, params.energy_kev, params.distance_mm) == ("paganin", 25, 120)
    assert params.delta_beta == 150  # the flow's parameter wins over config.yaml
    assert params.flats == ("/data/pre.h5:/flats", "/data/post.h5:/flats")
    assert params.darks == ("/data/dark.h5",)
    assert (params.algorithm, params.iterations) == ("cgls", 12)


def test_bad_flow_parameter_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        recon_params(load_settings(tmp_path), {"phase": "paganin", "energy_kev": 25})
    assert "distance_mm" in str(err.value) and "\n" not in str(err.value)


def test_every_new_parameter_enters_the_key():
    base = ReconParams()
    variants = [
        ReconParams(phase="paganin", energy_kev=20.0, distance_mm=100.0, delta_beta=100.0),
        ReconParams(phase="paganin", energy_kev=20.0, distance_mm=100.0, delta_beta=101.0),
        ReconParams(flats=("a.h5",)), ReconParams(darks=("d.h5",)),
        ReconParams(algorithm="cgls"), ReconParams(algorithm="cgls", iterations=7),
    ]
    keys = {output_key("id", p, "v") for p in [base, *variants]}
    assert len(keys) == len(variants) + 1


def test_volumes_made_before_the_new_parameters_keep_their_key():
    """The key hashes the parameters as they were named when the first volumes were made:
    new ones only when set, ``iterations`` under its old name."""
    d = ReconParams().key_dict()
    assert not set(LATER_FIELDS) & set(d) and "iterations" not in d
    old_fields = {f.name for f in dataclasses.fields(ReconParams)} - set(LATER_FIELDS)
    assert set(d) == (old_fields - {"iterations"}) | {"sirt_iterations"}
    assert "phase" in ReconParams().to_dict()  # the provenance shows every parameter


def test_cgls_through_the_engine_records_its_iterations(tmp_path):
    scan = make_phantom_scan(64, 4, 24, n_flats=2, n_darks=2, with_truth=True)
    path = write_dxchange(tmp_path / "few.h5", scan["projections"], scan["flats"],
                          scan["darks"], scan["angles_deg"])
    spec = open_scan(path)
    out = tmp_path / "cgls.zarr"
    result = reconstruct(spec, ReconParams(algorithm="cgls", iterations=9, center=32.0), out,
                         workers=0)
    assert result.backend in ("astra", "astra-cuda")
    prov = zarr.open_group(str(out), mode="r").attrs["tomopipe"]
    assert prov["params"]["iterations"] == 9 and prov["preprocess"]["iterations"] == 9
    volume = zarr.open_group(str(out), mode="r")["0"][:]
    body = scan["truth"] > 0
    assert np.corrcoef(volume[body], scan["truth"][body])[0, 1] > 0.8


def test_single_run_flow_takes_the_science_options(tmp_path, monkeypatch):
    """The single-run flow on a real (temporary) Prefect server, the options given as the
    flow's parameters (what the Prefect UI's form sends): a file without flats, its flats from
    another file, Paganin phase retrieval. The volume's provenance holds what was applied."""
    import h5py
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TOMOPIPE_HOME", str(home))
    scan = make_phantom_scan(48, 4, 24, n_flats=2, n_darks=2, with_truth=False)
    path = write_dxchange(tmp_path / "noflats.h5", scan["projections"], None, scan["darks"],
                          scan["angles_deg"], pixel_size_um=1.0)
    with h5py.File(tmp_path / "flats.h5", "w") as f:
        f["/flats"] = scan["flats"]
    params = {"center": 24.0, "phase": "paganin", "energy_kev": 20, "distance_mm": 50,
              "delta_beta": 50, "flats": f"{tmp_path / 'flats.h5'}:/flats"}
    with prefect_test_harness(server_startup_timeout=180):
        from tomopipe.flows.single_run import single_run

        result = single_run(path=str(path), params=params, workers=0, home=str(home))
    prov = zarr.open_group(result["output"], mode="r").attrs["tomopipe"]
    assert prov["key"] == result["key"]
    assert prov["params"]["phase"] == "paganin" and prov["preprocess"]["phase"]["delta_beta"] == 50
    assert prov["preprocess"]["field_files"]["flats"] == [f"{tmp_path / 'flats.h5'}:/flats"]
