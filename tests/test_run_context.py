"""One run context: settings and service addresses resolved once, one place for a volume's key
and path, one size parser, one way to scope the Prefect API. Real files and a real
reconstruction; no services are started here."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from tomopipe.infra.state import write_services
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.storage.location import volume_key, volume_location

from tomopipe.config import load_settings, record_service_addresses
from tomopipe.context import prefect_api_scope, run_context
from tomopipe.errors import ConfigError, ServiceError
from tomopipe.sizes import parse_size


def test_addresses_are_configuration_with_environment_overrides(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"services": {
        "prefect_api": "http://127.0.0.1:4300/api", "tiled": "http://127.0.0.1:8001/",
        "dask_scheduler": "tcp://127.0.0.1:8786"}}))
    services = load_settings(tmp_path).services
    assert services.prefect_api == "http://127.0.0.1:4300/api"
    assert services.prefect_ui == "http://127.0.0.1:4300"  # from the API's address
    assert services.tiled == "http://127.0.0.1:8001" and services.port("tiled") == 8001
    assert services.zmq_in is None  # not configured: `tomopipe up` picks a port

    monkeypatch.setenv("TOMOPIPE_SERVICES__TILED", "http://tiled.facility:8000")
    assert load_settings(tmp_path).services.tiled == "http://tiled.facility:8000"
    monkeypatch.setenv("TOMOPIPE_SERVICES__TILED", "tiled.facility:8000")
    with pytest.raises(ConfigError, match=r"TOMOPIPE_SERVICES__\*.*services\.tiled: expected an "
                                          r"address such as http://"):
        load_settings(tmp_path)


@pytest.mark.parametrize("config, fault", [
    ({"services": {"zmq_in": "http://127.0.0.1:5577"}}, "services.zmq_in: expected an address"),
    ({"services": {"tiled_port": 9}}, "services.tiled_port: Extra inputs"),
    ({"services": ["tiled"]}, "services must be a mapping"),
    ({"data_roots": "/data"}, "data_roots must be a list of paths"),
    ({"tomo_plans": [3]}, "tomo_plans must be a list of plan names"),
    ({"colour": "blue"}, "unknown setting(s) ['colour']"),
])
def test_bad_settings_name_the_file_and_the_key(tmp_path, config, fault):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: ") and fault in message, message
    assert "\n" not in message


def test_up_keeps_the_addresses_it_picked_apart_from_those_a_person_set(tmp_path,
                                                                         monkeypatch):
    cfg = tmp_path / "config.yaml"
    text = "# our beamline\nservices:\n  tiled: http://127.0.0.1:8001  # the catalog\n"
    cfg.write_text(text)
    record_service_addresses(tmp_path, {"prefect_api": "http://127.0.0.1:4400/api",
                                        "tiled": "http://127.0.0.1:9999",
                                        "zmq_in": "tcp://127.0.0.1:5577"})
    assert cfg.read_text() == text  # a person's file is not rewritten
    picked = yaml.safe_load((tmp_path / "addresses.yaml").read_text())
    assert picked == {"prefect_api": "http://127.0.0.1:4400/api",
                      "zmq_in": "tcp://127.0.0.1:5577"}  # not tiled: a person set it
    services = load_settings(tmp_path).services
    assert services.tiled == "http://127.0.0.1:8001"
    assert services.prefect_ui == "http://127.0.0.1:4400"  # the same UI address next time
    monkeypatch.setenv("TOMOPIPE_SERVICES__ZMQ_IN", "tcp://127.0.0.1:6000")
    assert load_settings(tmp_path).services.zmq_in == "tcp://127.0.0.1:6000"
    monkeypatch.delenv("TOMOPIPE_SERVICES__ZMQ_IN")
    (tmp_path / "addresses.yaml").write_text("prefect_api: 4400\n")
    with pytest.raises(ConfigError, match=r"addresses\.yaml: prefect_api: "):
        load_settings(tmp_path)


def test_run_context_holds_settings_addresses_and_key(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "tomo_plans": ["fly_tomo"], "services": {"tiled": "http://127.0.0.1:8001"}}))
    idle = run_context(tmp_path)
    assert idle.tomo_plans == ("fly_tomo",) and idle.output_root == tmp_path / "volumes"
    assert idle.data_roots == [tmp_path / "data"] and not idle.running
    with pytest.raises(ServiceError, match="start them with `tomopipe up`"):
        idle.address("tiled")

    write_services(tmp_path, {"pids": {"tiled": 1}, "tiled_api_key": "secret-key-123",
                              # a state file from the production bootstrap may carry addresses:
                              # they fill what the configuration leaves open
                              "prefect_api": "http://prefect:4200/api",
                              "tiled": "http://elsewhere:1"})
    ctx = run_context(tmp_path)
    assert ctx.running and ctx.address("tiled") == "http://127.0.0.1:8001"  # configured wins
    assert ctx.address("prefect_api") == "http://prefect:4200/api"
    assert ctx.tiled_api_key == "secret-key-123" and "secret-key-123" not in repr(ctx)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.tiled_api_key = "other"

    # bluesky's 0MQ addresses may leave out tcp://; anything else is named with its file
    write_services(tmp_path, {"pids": {}, "zmq_in": "127.0.0.1:5577"})
    assert run_context(tmp_path).services.port("zmq_in") == 5577
    write_services(tmp_path, {"pids": {}, "zmq_in": "somewhere"})
    with pytest.raises(ConfigError, match=r"services\.json: zmq_in: expected an address"):
        run_context(tmp_path)


def test_a_flow_context_waits_for_an_up_that_is_starting_the_services(tmp_path):
    """The worker starts before the other services and re-runs what a crash left: a flow run it
    takes then waits for `tomopipe up` to write the services' state instead of failing with no
    services; without an `up` in progress it does not wait."""
    import threading

    from tomopipe.infra.state import STARTING_FILE

    assert not run_context(tmp_path, wait_for_up_s=30).running  # nothing starting: at once
    (tmp_path / STARTING_FILE).write_text("{}")
    timer = threading.Timer(0.5, write_services, (tmp_path, {"pids": {"tiled": 1}}))
    timer.start()
    ctx = run_context(tmp_path, wait_for_up_s=60)
    timer.join()
    assert ctx.running, "the context was read before the state was written"
    (tmp_path / "services.json").unlink()
    assert not run_context(tmp_path, wait_for_up_s=0.3).running  # an up that never finishes


def test_one_place_decides_key_and_path_and_the_engine_agrees(tmp_path):
    """The flows publish where volume_location says, the engine writes the same key into the
    volume, and backfill's check from the run uid alone finds the same path."""
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
    from tomopipe.tasks.recon.engine import reconstruct
    from tomopipe.tasks.sources import open_scan
    from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

    scan = make_phantom_scan(32, 4, 45, seed=2)
    path = tmp_path / "scan.h5"
    write_dxchange(path, scan["projections"], scan["flats"], scan["darks"], scan["angles_deg"])
    spec = open_scan(str(path))
    params = ReconParams(center=float(scan["center"]))
    out, key = volume_location(tmp_path / "volumes", spec, params)
    assert out == tmp_path / "volumes" / "scan" / f"{key}.zarr"
    result = reconstruct(spec, params, out, workers=0)
    assert result.key == key == read_provenance(out)["key"] and is_complete(out)
    assert volume_key(spec, ReconParams(center=float(scan["center"]) + 1)) != key

    run_spec = dataclasses.replace(spec, identity="run-uid-1", extra={"source": "bluesky"})
    by_spec = volume_location(tmp_path / "volumes", run_spec, params)
    assert by_spec == volume_location(tmp_path / "volumes", "run-uid-1", params)
    assert by_spec.path.parent.name == "run-uid-1"


@pytest.mark.parametrize("value, size", [
    ("16GB", 16 * 10**9), ("512MiB", 512 * 2**20), ("2 GiB", 2 * 2**30), ("2e9", 2 * 10**9),
    (1234, 1234), (1.5e9, 1_500_000_000)])
def test_one_size_parser(value, size):
    assert parse_size(value, "cluster.memory") == size


@pytest.mark.parametrize("value, fault", [
    ("lots", "expected a size such as 16GB"), ("-3GB", "must be positive"),
    (0, "must be positive"), (True, "expected a size"), ([1], "expected a size")])
def test_sizes_refused_naming_the_setting(value, fault):
    with pytest.raises(ConfigError, match=rf"^transfer\.max_bytes_in_flight: {fault}"):
        parse_size(value, "transfer.max_bytes_in_flight")


def test_prefect_api_scope_applies_inside_only():
    from prefect.settings import PREFECT_API_URL

    before = PREFECT_API_URL.value()
    with prefect_api_scope("http://127.0.0.1:4999/api"):
        assert PREFECT_API_URL.value() == "http://127.0.0.1:4999/api"
    assert PREFECT_API_URL.value() == before
