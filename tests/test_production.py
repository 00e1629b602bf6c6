"""infra/production: the compose files, the image, the example facility config and the bootstrap.

No image is built or pulled and no container runs here (no registry access, no Docker daemon):
the files are parsed and checked against the project, and the example configuration goes through
the same loaders tomopipe uses at start-up.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from tomopipe.infra.cluster import cluster_config, parse_cluster_config, slurm_job_script
from tomopipe.infra.production import bootstrap
from tomopipe.infra.state import read_services
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.transfer.sites import load_transfer_config

from tomopipe.config import load_settings
from tomopipe.errors import ConfigError, ServiceError

REPO = Path(__file__).resolve().parents[1]
PROD = REPO / "infra/production"
COMPOSE = PROD / "docker-compose.yml"


def _compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())  # PyYAML's safe loader resolves anchors and `<<`


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", text))


def test_every_compose_service_has_an_image_or_build_and_known_dependencies():
    spec = _compose()
    services = spec["services"]
    assert {"postgres", "prefect-server", "prefect-worker", "tiled", "bridge",
            "zmq-proxy", "bootstrap"} <= set(services)
    named_volumes = set(spec.get("volumes") or {})
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on undefined service {dep}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if source.startswith("."):  # a file or folder of this directory, bind-mounted
                path = PROD / source
                if path.name == "config.yaml":  # the operator copies config.example.yaml
                    path = path.with_name("config.example.yaml")
                assert path.exists(), f"{name}: mounts {source}, which does not exist"
            elif not source.startswith(("/", "$")):
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        build = svc.get("build")
        if build:
            context = (PROD / build["context"]).resolve()
            assert context == REPO
            assert (context / build["dockerfile"]).exists()


def test_required_secrets_are_in_the_env_example():
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"POSTGRES_PASSWORD", "TILED_SINGLE_USER_API_KEY"} <= required
    example = (PROD / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(\w+)=", example, re.MULTILINE))
    assert required <= documented, required - documented


def test_compose_commands_name_real_modules_and_the_work_pool():
    services = _compose()["services"]
    pool = {d["work_pool"]["name"] for d in yaml.safe_load(
        (REPO / "prefect.yaml").read_text())["deployments"]}
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(cmd[2]) is not None, f"{name}: no module {cmd[2]}"
        if "--pool" in cmd:
            assert {cmd[cmd.index("--pool") + 1]} == pool
    assert services["bridge"]["command"][2] == "tomopipe.deployments.bridge"
    assert services["prefect-server"]["image"].startswith("prefecthq/prefect:3.8")
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:" in db_url


def test_gpu_override_names_services_of_the_base_file():
    base = set(_compose()["services"])
    override = _compose(PROD / "docker-compose.gpu.yml")["services"]
    assert set(override) <= base
    devices = override["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_copies_what_exists_and_installs_known_extras():
    text = (PROD / "Dockerfile").read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            for source in parts[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    extras = set(re.search(r"ARG EXTRAS=(\S+)", text).group(1).split(","))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    known = set(pyproject["project"]["optional-dependencies"])
    assert extras <= known, extras - known
    assert {"gpu", "globus", "kafka"} <= extras
    assert "ARG BASE_IMAGE=nvidia/cuda:" in text


def test_postgres_init_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(PROD / "postgres/init-databases.sh")], check=True)


def test_tiled_config_validates_with_tiled(monkeypatch):
    from tiled.config import parse_configs
    from tiled.storage import SQLStorage, parse_storage

    monkeypatch.setenv("TILED_SINGLE_USER_API_KEY", "0123abcd")
    monkeypatch.setenv("TILED_DB_PASSWORD", "secret")
    monkeypatch.setenv("FACILITY_DATA", "/gpfs/tomo")
    config = parse_configs(PROD / "tiled/config.yml")
    assert config.authentication.single_user_api_key == "0123abcd"
    args = config.trees[0].args
    assert args["uri"].startswith("postgresql+asyncpg://tiled:secret@postgres")
    assert args["readable_storage"] == ["/gpfs/tomo"]
    storages = [parse_storage(s) for s in args["writable_storage"]]
    assert any(isinstance(s, SQLStorage) and s.dialect == "postgresql" for s in storages)


@pytest.fixture
def facility_home(tmp_path):
    shutil.copy(PROD / "config.example.yaml", tmp_path / "config.yaml")
    return tmp_path


def test_example_config_loads_with_every_parser(facility_home):
    settings = load_settings(facility_home)
    assert settings.data_roots == [Path("/gpfs/tomo/raw")]
    transfer = load_transfer_config(settings)
    assert {s.mover for s in transfer.sites.values()} == {"globus"}
    assert transfer.site("hpc").collection_path("/lus/tomo/staging/run1/a.h5") == \
        "/projects/tomo/staging/run1/a.h5"
    assert transfer.transfer.destination == "hpc"
    recon_params(settings)  # every recon default is a ReconParams field
    cluster = cluster_config(settings)
    assert (cluster.kind, cluster.gpus_per_job, cluster.max_jobs) == ("slurm", 4, 8)
    # the example's InfiniBand interface does not exist here; the rest of the script does
    script = slurm_job_script(dataclasses.replace(cluster, interface=None))
    for directive in ("-p gpu", "-A tomo-ops", "--gres=gpu:4", "--constraint=a100",
                      "-t 04:00:00", "--cpus-per-task=32"):
        assert f"#SBATCH {directive}" in script
    assert "/lus/tomo/sw/tomopipe/bin/python -m dask cuda worker" in script


def test_interface_missing_here_is_a_config_error_naming_it():
    cfg = parse_cluster_config({"kind": "slurm", "cores": 2, "memory": "2GB",
                                "interface": "no-such-nic0"})
    with pytest.raises(ConfigError, match=r"^cluster\.interface: "):
        slurm_job_script(cfg)


ENV = {"PREFECT_API_URL": "http://prefect-server:4200/api",
       "TOMOPIPE_TILED_URL": "http://tiled:8000/", "TILED_SINGLE_USER_API_KEY": "abc123",
       "TOMOPIPE_ZMQ_IN": "tcp://zmq-proxy:5577", "TOMOPIPE_ZMQ_OUT": "tcp://zmq-proxy:5578"}


def test_bootstrap_state_from_env(facility_home):
    state = bootstrap.state_from_env(ENV, load_settings(facility_home))
    assert state["prefect_api"] == ENV["PREFECT_API_URL"]
    assert state["prefect_ui"] == "http://prefect-server:4200"
    assert state["tiled"] == "http://tiled:8000" and state["tiled_api_key"] == "abc123"
    assert state["zmq_out"] == ENV["TOMOPIPE_ZMQ_OUT"] and state["zmq_serializer"] == "msgpack"
    assert state["data_roots"] == ["/gpfs/tomo/raw"] and "dask_scheduler" not in state


@pytest.mark.parametrize("change, name", [
    ({"PREFECT_API_URL": ""}, "PREFECT_API_URL"),
    ({"TOMOPIPE_TILED_URL": "tiled:8000"}, "TOMOPIPE_TILED_URL"),
    ({"TOMOPIPE_ZMQ_OUT": "zmq-proxy"}, "TOMOPIPE_ZMQ_OUT"),
    ({"TOMOPIPE_ZMQ_SERIALIZER": "yaml"}, "TOMOPIPE_ZMQ_SERIALIZER"),
])
def test_bootstrap_rejects_bad_environment_naming_the_variable(facility_home, change, name):
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        bootstrap.state_from_env({**ENV, **change}, load_settings(facility_home))


def test_bootstrap_main_writes_the_state_file(facility_home, monkeypatch, capsys):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert bootstrap.main(["--home", str(facility_home), "--no-register"]) == 0
    state = read_services(facility_home)
    assert state["tiled"] == "http://tiled:8000" and state["home"] == str(facility_home)
    monkeypatch.delenv("TOMOPIPE_TILED_URL")
    assert bootstrap.main(["--home", str(facility_home), "--no-register"]) == 2
    assert "TOMOPIPE_TILED_URL: required" in capsys.readouterr().err


def test_bootstrap_gives_up_on_a_prefect_api_that_does_not_answer():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceError, match="not healthy after 1 s"):
        bootstrap.wait_for_prefect(f"http://127.0.0.1:{port}/api", timeout_s=1)
