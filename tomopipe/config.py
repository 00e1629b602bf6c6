"""Where tomopipe keeps its state, and the settings of a home.

All state (databases, logs, data root, outputs) lives under ``$TOMOPIPE_HOME``, by default the
user's data directory, so two homes can run side by side.

The settings are ``$TOMOPIPE_HOME/config.yaml`` (optional) over the embedded defaults, checked by
pydantic. The addresses of the home's services are configuration too: ``services:`` in
config.yaml, each one overridable from the environment as ``TOMOPIPE_SERVICES__<NAME>`` (e.g.
``TOMOPIPE_SERVICES__TILED=http://tiled:8000``). Those nobody set, ``tomopipe up`` picks the
first time and keeps in ``$TOMOPIPE_HOME/addresses.yaml`` (``record_service_addresses``), so
every address, the Prefect UI's among them, stays the same across restarts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tomopipe.errors import ConfigError

# The one list of default tomography plans: a run is a tomography run when its start document
# has a ``tomo`` mapping or its plan name is one of ``tomo_plans`` (config.yaml).
DEFAULT_TOMO_PLANS = ("tomo_scan",)
ADDRESSES_FILE = "addresses.yaml"  # the service addresses `tomopipe up` picked
# a streamed run's recorded angles against its planned ones (config.yaml: stream:)
DEFAULT_ANGLE_TOLERANCE_DEG = 0.01

_HTTP = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?(/\S*)?$")
_TCP = re.compile(r"^tcp://[^\s/:]+:\d{1,5}$")
_ZMQ = re.compile(r"^(tcp://)?[^\s/:]+:\d{1,5}$")  # bluesky's 0MQ takes host:port too


def _address(pattern: re.Pattern, example: str):
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        if not pattern.match(value):
            raise ValueError(f"expected an address such as {example}, got {value!r}")
        return value.rstrip("/")
    return AfterValidator(check)


HttpAddress = Annotated[str, _address(_HTTP, "http://127.0.0.1:4200/api")]
TcpAddress = Annotated[str, _address(_TCP, "tcp://127.0.0.1:8786")]
ZmqAddress = Annotated[str, _address(_ZMQ, "tcp://127.0.0.1:5577")]
RedisAddress = Annotated[str, _address(re.compile(r"^[^\s/:]+:\d{1,5}$"), "127.0.0.1:6379")]


class ServiceAddresses(BaseModel):
    """Where the services of a home listen. None: not configured (``tomopipe up`` picks a free
    loopback port for it and records it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefect_api: HttpAddress | None = None  # http://127.0.0.1:P/api
    prefect_ui: HttpAddress | None = None  # default: prefect_api without /api
    tiled: HttpAddress | None = None
    zmq_in: ZmqAddress | None = None  # the document bus: publishers send here
    zmq_out: ZmqAddress | None = None  # ... and subscribers read here
    dask_scheduler: TcpAddress | None = None
    dask_dashboard: HttpAddress | None = None
    # the queue (tomopipe up --with-queue): Redis, and the RE Manager's 0MQ control/info sockets
    redis: RedisAddress | None = None
    queue_control: TcpAddress | None = None
    queue_info: TcpAddress | None = None
    work_pool: str = "tomopipe"
    # Facility mode: the Prefect server's database (postgresql+asyncpg://user@host:port/db);
    # None: SQLite under the home's PREFECT_HOME.
    prefect_database: str | None = None

    @field_validator("prefect_database")
    @classmethod
    def _database_url(cls, value):
        if value is not None and not re.match(r"^(postgresql\+asyncpg|sqlite\+aiosqlite)://\S+$",
                                              value):
            raise ValueError("expected postgresql+asyncpg://USER@HOST:PORT/DB (or "
                             "sqlite+aiosqlite:///PATH)")
        return value

    @model_validator(mode="after")
    def _ui_from_api(self):
        if self.prefect_ui is None and self.prefect_api is not None:
            object.__setattr__(self, "prefect_ui", self.prefect_api.removesuffix("/api"))
        return self

    def port(self, name: str) -> int | None:
        """The port of one address, or None when it is not set."""
        value = getattr(self, name)
        if not value:
            return None
        m = re.match(r"^(?:\w+://)?[^/:]+:(\d+)", value)
        return int(m.group(1)) if m else None


class BusSettings(BaseModel):
    """The 0MQ document bus (deployments/bus.py). ``serializer``: msgpack (default) or json run
    no code; pickle runs whatever a message names, so it is only used when asked for here, and
    the bridge and ``tomopipe up`` warn about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serializer: Literal["msgpack", "json", "pickle"] = "msgpack"


class StreamSettings(BaseModel):
    """Streaming (tasks/recon/streaming.py). ``angle_tolerance_deg``: how far the angles a
    run's events recorded may be from the ones it planned (the streamed frames are weighted
    by the plan) for the streamed volume to be published; farther, the run is reconstructed
    at the stop from the recorded angles. A real stage's readback may need more than the
    default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    angle_tolerance_deg: float = Field(DEFAULT_ANGLE_TOLERANCE_DEG, gt=0, le=1.0)


class Settings(BaseModel):
    """The settings of one home, resolved (home-relative defaults filled in)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    home: Path
    data_roots: list[Path] = Field(default_factory=list)
    output_root: Path | None = None
    tomo_plans: tuple[str, ...] = DEFAULT_TOMO_PLANS
    beamline: str = "sim"
    recon: dict[str, Any] = Field(default_factory=dict)  # defaults for ReconParams fields
    sites: dict[str, Any] = Field(default_factory=dict)  # parsed by tasks.transfer.sites
    transfer: dict[str, Any] = Field(default_factory=dict)
    retention: dict[str, Any] = Field(default_factory=dict)
    cluster: dict[str, Any] = Field(default_factory=dict)  # parsed by infra.cluster
    services: ServiceAddresses = Field(default_factory=ServiceAddresses)
    bus: BusSettings = Field(default_factory=BusSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)

    @field_validator("recon", "sites", "transfer", "retention", "cluster", "services",
                     "bus", "stream", mode="before")
    @classmethod
    def _mapping(cls, value):
        if value is None:
            return {}
        if not isinstance(value, dict | BaseModel):
            raise ValueError("must be a mapping")
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _roots(cls, value):
        if not isinstance(value, list) or not all(isinstance(r, str | Path) for r in value):
            raise ValueError("must be a list of paths")
        return value

    @field_validator("tomo_plans", mode="before")
    @classmethod
    def _plans(cls, value):
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
            raise ValueError("must be a list of plan names")
        return tuple(value)

    @model_validator(mode="after")
    def _home_relative(self):
        home = self.home.expanduser().resolve()
        roots = self.data_roots or [home / "data"]
        object.__setattr__(self, "home", home)
        object.__setattr__(self, "data_roots",
                           [Path(r).expanduser().resolve() for r in roots])
        object.__setattr__(self, "output_root",
                           Path(self.output_root or home / "volumes").expanduser().resolve())
        return self

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"


class _Environment(BaseSettings):
    """What the environment overrides: ``TOMOPIPE_SERVICES__TILED=...`` and so on."""

    model_config = SettingsConfigDict(env_prefix="TOMOPIPE_", env_nested_delimiter="__",
                                      extra="ignore")

    services: dict[str, str] = Field(default_factory=dict)


def home() -> Path:
    env = os.environ.get("TOMOPIPE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("tomopipe")).resolve()


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def one_line(exc: ValidationError) -> str:
    """The first fault of a pydantic error as ``key: message``, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where} {message}" if message.startswith("must ") else f"{where}: {message}"


def load_settings(home_dir: Path | str | None = None) -> Settings:
    """The settings of ``home_dir`` (default ``$TOMOPIPE_HOME``): its config.yaml over the
    embedded defaults; service addresses from addresses.yaml (those ``tomopipe up`` picked),
    config.yaml's ``services:`` over them and ``TOMOPIPE_SERVICES__*`` variables over both."""
    root = Path(home_dir).expanduser().resolve() if home_dir else home()
    cfg_path = root / "config.yaml"
    raw = _read_yaml(cfg_path)
    known = set(Settings.model_fields) - {"home"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{cfg_path}: unknown setting(s) {sorted(unknown)}; "
                          f"known: {sorted(known)}")
    picked = _picked_addresses(root)
    env = _Environment().services
    if picked or env:
        services = raw.get("services") if isinstance(raw.get("services"), dict) else {}
        if "services" not in raw or isinstance(raw.get("services"), dict):
            raw = {**raw, "services": {**picked, **services,
                                       **{k.lower(): v for k, v in env.items()}}}
    try:
        settings = Settings(home=root, **raw)
    except ValidationError as exc:
        where = cfg_path if not env else f"{cfg_path} (or TOMOPIPE_SERVICES__* variables)"
        raise ConfigError(f"{where}: {one_line(exc)}") from None
    if settings.cluster:
        from tomopipe.infra.cluster import parse_cluster_config  # no cluster is started

        try:
            parse_cluster_config(settings.cluster)
        except ConfigError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from exc
    return settings


def _picked_addresses(root: Path) -> dict:
    path = root / ADDRESSES_FILE
    picked = _read_yaml(path)
    try:
        ServiceAddresses(**picked)
    except (ValidationError, TypeError) as exc:
        detail = one_line(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"{path}: {detail}") from None
    return picked


def configured_addresses(home_dir: Path) -> dict[str, str]:
    """The addresses a person set: config.yaml's ``services:`` and TOMOPIPE_SERVICES__*."""
    raw = _read_yaml(Path(home_dir) / "config.yaml").get("services")
    env = {k.lower(): v for k, v in _Environment().services.items()}
    return {**(raw if isinstance(raw, dict) else {}), **env}


def record_service_addresses(home_dir: Path, addresses: dict[str, str]) -> None:
    """Keep the addresses ``tomopipe up`` runs the services at in addresses.yaml, all but those
    a person configured (config.yaml, environment), so the next ``up`` uses the same ones."""
    path = Path(home_dir) / ADDRESSES_FILE
    mine = configured_addresses(home_dir)
    picked = {k: v for k, v in addresses.items() if k not in mine}
    if _read_yaml(path) == picked:
        return
    text = ("# The addresses `tomopipe up` picked for this home's services, used again by every "
            "start.\n# To choose one, set it under `services:` in config.yaml (it wins), or "
            "TOMOPIPE_SERVICES__<NAME>.\n" + yaml.safe_dump(picked, sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ADDRESSES_FILE}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
