"""Register the deployments of ``prefect.yaml`` on the home's Prefect server.

Through Prefect's own deployment API: each entry becomes ``flow.to_deployment(...)`` (a
``RunnerDeployment`` on the ``tomopipe`` process work pool, with its schedules and its triggers
as ``DeploymentEventTrigger``s) and ``apply()`` creates or updates it and replaces its trigger
automations. What is ours on top is a small stale clean-up: deployments of our pool that the file
no longer defines are deleted, with their automations (deleting a deployment leaves its
automations behind).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

import tomopipe
from tomopipe.config import Settings
from tomopipe.errors import ConfigError

# Installed with the package (a link to the top-level prefect.yaml in a checkout).
PREFECT_YAML = Path(tomopipe.__file__).resolve().parent / "prefect.yaml"


def load_spec(path: Path = PREFECT_YAML) -> dict:
    """The deployments of prefect.yaml."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the deployments: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("deployments"), list):
        raise ConfigError(f"{path}: expected a 'deployments' list")
    return spec


def register_all(settings: Settings, state: dict, *, prefect_yaml: Path = PREFECT_YAML) -> dict:
    """Create or update every deployment of prefect.yaml on ``state["prefect_api"]``, delete
    stale ones; returns {"flow/deployment": deployment id}."""
    from prefect.client.schemas.objects import VersionInfo
    from tomopipe.deployments.crash_recovery import register_crash_detection

    from tomopipe.context import prefect_api_scope

    spec = load_spec(prefect_yaml)
    deployments = [_deployment(settings, state, d) for d in spec["deployments"]]
    # the package's version, rather than Prefect asking git in whatever folder `up` ran from
    version = VersionInfo(type="prefect:simple", version=tomopipe.__version__)
    with prefect_api_scope(state["prefect_api"]):
        registered = {}
        for deployment in deployments:
            registered[deployment.full_name] = str(deployment.apply(version_info=version))
        asyncio.run(_delete_stale(registered, {d.work_pool_name for d in deployments}))
        register_crash_detection()  # zombie flow runs -> Crashed (deployments/crash_recovery.py)
    return registered


def _deployment(settings: Settings, state: dict, d: dict):
    """The RunnerDeployment of one prefect.yaml entry."""
    from prefect.flows import load_flow_from_entrypoint
    from tomopipe.deployments.triggers import build_triggers

    name, entry = d.get("name"), d.get("entrypoint")
    if not name or not entry:
        raise ConfigError(f"prefect.yaml: every deployment needs a name and an entrypoint: {d}")
    try:
        flow = load_flow_from_entrypoint(entry)
    except Exception as exc:
        raise ConfigError(f"prefect.yaml: deployment {name!r}: cannot load {entry}: "
                          f"{exc}") from exc
    pool = d.get("work_pool") or {}
    deployment = flow.to_deployment(
        name=name, description=d.get("description"), parameters=d.get("parameters") or {},
        work_pool_name=pool.get("name") or state.get("work_pool", "tomopipe"),
        job_variables={**_job_variables(settings, state, entry),
                       **(pool.get("job_variables") or {})},
        schedules=_schedules(d), triggers=build_triggers(name, d.get("triggers") or []),
        version=tomopipe.__version__, enforce_parameter_schema=True,
    )
    deployment.entrypoint = entry  # the module path as prefect.yaml gives it
    return deployment


def _job_variables(settings: Settings, state: dict, entrypoint: str) -> dict:
    """What a flow-run process gets. PREFECT__FLOW_ENTRYPOINT (the flow's module, which the
    fork server has imported already) lets the engine load the flow directly: without it it
    reads the deployment first, an API round trip before the run turns RUNNING."""
    return {"env": {"TOMOPIPE_HOME": str(settings.home), "PREFECT_API_URL": state["prefect_api"],
                    "PREFECT__FLOW_ENTRYPOINT": entrypoint}}


def _schedules(deployment: dict) -> list:
    """The deployment's ``schedules`` (``cron``, ``interval`` in seconds, or ``rrule`` each,
    with an optional ``timezone``), as Prefect takes them."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import construct_schedule

    made = []
    for i, entry in enumerate(deployment.get("schedules") or []):
        try:
            made.append(DeploymentScheduleCreate(schedule=construct_schedule(**entry)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"prefect.yaml: deployment {deployment['name']!r}: schedules[{i}]: "
                              f"{exc}") from exc
    return made


async def _delete_stale(registered: dict[str, str], pools: set[str]) -> None:
    """Delete the deployments of our pools that prefect.yaml no longer defines, their
    automations first, then automations whose deployment is gone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        existing = await client.read_deployments(work_pool_filter=WorkPoolFilter(
            name=WorkPoolFilterName(any_=sorted(pools))))
        flows = {f.id: f.name for f in await client.read_flows()}
        for dep in existing:
            if f"{flows.get(dep.flow_id, '?')}/{dep.name}" not in registered:
                await client.delete_resource_owned_automations(f"prefect.deployment.{dep.id}")
                await client.delete_deployment(dep.id)
        for automation in await client.read_automations():
            owner = automation.owner_resource or ""
            if not owner.startswith("prefect.deployment."):
                continue
            try:
                await client.read_deployment(owner.removeprefix("prefect.deployment."))
            except ObjectNotFound:
                await client.delete_automation(automation.id)
