"""Register the deployments of ``prefect.yaml`` on the home's Prefect server.

``register_all(settings, state)`` creates or updates each deployment (on the ``tomopipe``
process work pool, its flow imported by module name, with its schedules), replaces
its trigger automations, and deletes what is stale: deployments of our flows no longer in the
file and their automations (deleting a deployment leaves its automations behind, so they are
deleted explicitly first).
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
    """Create/update every deployment whose flow file exists; returns {name: deployment id}."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: state["prefect_api"]}):
        return asyncio.run(_register(settings, state, load_spec(prefect_yaml)))


async def _delete_orphan_automations(client) -> list[str]:
    """Automations owned by a deployment that no longer exists (left behind by a deletion)."""
    from prefect.exceptions import ObjectNotFound

    deleted = []
    for automation in await client.read_automations():
        owner = automation.owner_resource or ""
        if not owner.startswith("prefect.deployment."):
            continue
        try:
            await client.read_deployment(owner.removeprefix("prefect.deployment."))
        except ObjectNotFound:
            await client.delete_automation(automation.id)
            deleted.append(automation.name)
    return deleted


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


async def _register(settings: Settings, state: dict, spec: dict) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from tomopipe.deployments.triggers import build_triggers

    pull = spec.get("pull") or []
    registered: dict[str, str] = {}
    async with get_client() as client:
        for d in spec["deployments"]:
            entry = d["entrypoint"]
            try:
                flow = load_flow_from_entrypoint(entry)
            except Exception as exc:
                raise ConfigError(f"prefect.yaml: deployment {d['name']!r}: cannot load "
                                  f"{entry}: {exc}") from exc
            flow_id = await client.create_flow_from_name(flow.name)
            pool = (d.get("work_pool") or {}).get("name") or state.get("work_pool", "tomopipe")
            dep_id = await client.create_deployment(
                flow_id=flow_id, name=d["name"], entrypoint=entry, work_pool_name=pool,
                description=d.get("description"), parameters=d.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                pull_steps=d.get("pull") or pull,
                job_variables={**_job_variables(settings, state, entry),
                               **((d.get("work_pool") or {}).get("job_variables") or {})},
                schedules=_schedules(d),
                enforce_parameter_schema=True,
            )
            await client.delete_resource_owned_automations(f"prefect.deployment.{dep_id}")
            for trigger in build_triggers(d["name"], d.get("triggers") or []):
                trigger.set_deployment_id(dep_id)
                await client.create_automation(trigger.as_automation())
            registered[f"{flow.name}/{d['name']}"] = str(dep_id)

        # stale: deployments of our pool that the file no longer defines
        pool_names = {(d.get("work_pool") or {}).get("name", "tomopipe")
                      for d in spec["deployments"]}
        existing = await client.read_deployments(work_pool_filter=WorkPoolFilter(
            name=WorkPoolFilterName(any_=sorted(pool_names))))
        flows = {f.id: f.name for f in await client.read_flows()}
        for dep in existing:
            full = f"{flows.get(dep.flow_id, '?')}/{dep.name}"
            if full not in registered:
                await client.delete_resource_owned_automations(f"prefect.deployment.{dep.id}")
                await client.delete_deployment(dep.id)
        await _delete_orphan_automations(client)
    return registered
