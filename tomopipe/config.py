"""Where tomopipe keeps its state, and the settings file under it.

All state (databases, logs, data root, outputs) lives under ``$TOMOPIPE_HOME``, by default the
user's data directory, so two homes can run side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tomopipe.errors import ConfigError

DEFAULT_TOMO_PLANS = ("tomo_scan",)


def home() -> Path:
    env = os.environ.get("TOMOPIPE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("tomopipe")).resolve()


@dataclass
class Settings:
    home: Path
    data_roots: list[Path]
    output_root: Path
    tomo_plans: tuple[str, ...] = DEFAULT_TOMO_PLANS
    beamline: str = "sim"
    recon: dict = field(default_factory=dict)  # defaults for ReconParams fields
    sites: dict = field(default_factory=dict)  # parsed by tasks.transfer.sites
    transfer: dict = field(default_factory=dict)
    retention: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)  # parsed by infra.cluster

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"


_KNOWN = {"data_roots", "output_root", "tomo_plans", "beamline", "recon", "sites", "transfer",
          "retention", "cluster"}


def load_settings(home_dir: Path | None = None) -> Settings:
    """Read ``$TOMOPIPE_HOME/config.yaml`` (optional) over the embedded defaults."""
    root = Path(home_dir) if home_dir else home()
    cfg_path = root / "config.yaml"
    raw: dict = {}
    if cfg_path.exists():
        try:
            raw = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{cfg_path}: expected a mapping at the top level")
        unknown = set(raw) - _KNOWN
        if unknown:
            raise ConfigError(f"{cfg_path}: unknown setting(s) {sorted(unknown)}; "
                              f"known: {sorted(_KNOWN)}")
    roots = raw.get("data_roots") or [str(root / "data")]
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ConfigError(f"{cfg_path}: data_roots must be a list of paths")
    plans = raw.get("tomo_plans", list(DEFAULT_TOMO_PLANS))
    if not isinstance(plans, list) or not all(isinstance(p, str) for p in plans):
        raise ConfigError(f"{cfg_path}: tomo_plans must be a list of plan names")
    for section in ("recon", "sites", "transfer", "retention", "cluster"):
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{cfg_path}: {section} must be a mapping")
    if raw.get("cluster"):
        from tomopipe.infra.cluster import parse_cluster_config  # no cluster is started

        try:
            parse_cluster_config(raw["cluster"])
        except ConfigError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from exc
    return Settings(
        home=root,
        data_roots=[Path(r).expanduser().resolve() for r in roots],
        output_root=Path(raw.get("output_root") or root / "volumes").expanduser().resolve(),
        tomo_plans=tuple(plans),
        beamline=str(raw.get("beamline", "sim")),
        recon=raw.get("recon", {}),
        sites=raw.get("sites", {}),
        transfer=raw.get("transfer", {}),
        retention=raw.get("retention", {}),
        cluster=raw.get("cluster", {}),
    )
