"""Deployment triggers from prefect.yaml's ``triggers`` entries (as ``prefect deploy`` does)."""

from __future__ import annotations

import copy

from tomopipe.errors import ConfigError


def build_triggers(deployment_name: str, specs: list[dict]) -> list:
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(DeploymentTriggerTypes)
    triggers = []
    for i, spec in enumerate(specs, start=1):
        spec = copy.deepcopy(spec)
        spec.setdefault("name", f"{deployment_name}__automation_{i}")
        try:
            triggers.append(adapter.validate_python(spec))
        except ValidationError as exc:
            raise ConfigError(f"prefect.yaml: trigger {i} of deployment {deployment_name!r}: "
                              f"{exc}") from exc
    return triggers
