"""The run context: everything a flow run needs to know about its home, resolved once.

A flow builds it once from its ``home`` parameter (``run_context(home)``) and passes it to the
tasks that need it, so no task reads the settings, the service addresses or the state file
again. It holds:

- ``settings``: config.yaml over the defaults (data roots, output root, tomography plans, ...);
- ``services``: the addresses of the home's services (Prefect API, Tiled, Dask scheduler, ...),
  from the configuration (and ``TOMOPIPE_SERVICES__*``), or from a state file that
  ``infra/production/bootstrap.py`` wrote;
- ``tiled_api_key``: the catalog's key of the running services (never printed);
- ``running``: whether ``tomopipe up`` (or the bootstrap) has services up for this home.

``prefect_api_scope`` is the one way tomopipe points Prefect's client at a server.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from tomopipe.config import ServiceAddresses, Settings, home, load_settings, one_line
from tomopipe.errors import ConfigError, ServiceError


@dataclass(frozen=True)
class RunContext:
    settings: Settings
    services: ServiceAddresses
    tiled_api_key: str | None = field(default=None, repr=False)
    running: bool = False

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def data_roots(self) -> list[Path]:
        return self.settings.data_roots

    @property
    def output_root(self) -> Path:
        return self.settings.output_root

    @property
    def tomo_plans(self) -> tuple[str, ...]:
        return self.settings.tomo_plans

    def address(self, name: str) -> str:
        """The address of one service (``tiled``, ``prefect_api``, ...), or a ServiceError
        that says how to get one."""
        value = getattr(self.services, name)
        if not self.running or not value:
            raise ServiceError(f"no services are running for {self.home}: start them with "
                               f"`tomopipe up` (no {name} address)")
        return value


def run_context(home_dir: str | Path | None = None, *, wait_for_up_s: float = 0.0
                ) -> RunContext:
    """The context of ``home_dir`` (default ``$TOMOPIPE_HOME``). ``wait_for_up_s``: while a
    ``tomopipe up`` is starting the services, wait this long for it (a flow run does)."""
    from tomopipe.infra.state import read_services, state_path, wait_while_starting

    settings = load_settings(Path(home_dir) if home_dir else home())
    if wait_for_up_s > 0:
        wait_while_starting(settings.home, wait_for_up_s)
    state = read_services(settings.home) or {}
    configured = settings.services.model_dump(exclude_unset=True)
    # Addresses a production bootstrap recorded in the state file fill what is not configured.
    recorded = {k: state[k] for k in ServiceAddresses.model_fields
                if state.get(k) and k not in configured}
    try:
        services = ServiceAddresses(**{**recorded, **configured}) if recorded \
            else settings.services
    except ValidationError as exc:  # a state file written by hand or by an older bootstrap
        raise ConfigError(f"{state_path(settings.home)}: {one_line(exc)}") from None
    cluster = settings.cluster or {}
    if cluster.get("kind") == "address" and not services.dask_scheduler:  # a facility's own
        services = services.model_copy(update={"dask_scheduler": cluster.get("address")})
    return RunContext(settings=settings, services=services,
                      tiled_api_key=state.get("tiled_api_key"), running=bool(state))


@contextlib.contextmanager
def prefect_api_scope(api_url: str, prefect_home: Path | None = None):
    """Point this process's Prefect client at ``api_url`` (and, when given, its files at
    ``prefect_home``) for a block.

    Prefect's settings, not ``os.environ``: Prefect may have read its settings already in this
    process, and then a changed variable is ignored (runs and events would go to a throw-away
    ephemeral server). A process started for a home gets ``PREFECT_API_URL`` in its environment
    instead (the worker's flow runs, the bridge).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    updates = {PREFECT_API_URL: api_url}
    if prefect_home is not None:
        updates[PREFECT_HOME] = Path(prefect_home)
    with temporary_settings(updates=updates):
        yield
