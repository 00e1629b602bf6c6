"""Deployment triggers from prefect.yaml's ``triggers`` entries, checked as Prefect's own
``DeploymentTriggerTypes`` (``DeploymentEventTrigger`` and the rest), with an error naming the
deployment and the trigger. The deployment names their automations ``<deployment>__automation_N``.
"""

from __future__ import annotations

from tomopipe.errors import ConfigError


def build_triggers(deployment_name: str, specs: list[dict]) -> list:
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(DeploymentTriggerTypes)
    triggers = []
    for i, spec in enumerate(specs, start=1):
        try:
            triggers.append(adapter.validate_python(spec))
        except ValidationError as exc:
            raise ConfigError(f"prefect.yaml: trigger {i} of deployment {deployment_name!r}: "
                              f"{exc}") from exc
    return triggers
