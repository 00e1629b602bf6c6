"""Parse and validate the ``sites``, ``transfer`` and ``retention`` sections of config.yaml.

Example (all keys optional except where said)::

    sites:
      beamline:                       # a site: where data lives and how to reach it
        mover: local                  # local | globus
        root: /data/raw               # its local data directory
      hpc:
        mover: globus
        collection: 6c5d...-uuid      # required for globus: the Globus collection id
        path_map: {/scratch/tomo: /tomo}   # local prefix -> collection path (longest wins)
    transfer:
      source: beamline                # site the raw data is on
      destination: hpc                # site the compute reads from (unset: no move)
      destination_path: /scratch/tomo/staging   # runs land in <destination_path>/<run uid>
      results_to: beamline            # where published volumes go back (optional)
      results_path: /data/results
      hardlink: false                 # local mover may hard link on one file system
      verify_from_device: false       # local mover: re-read copies from the device, not cache
      workers: 4                      # files copied at once by the local mover
      max_concurrent: 2               # transfers at once (Prefect global concurrency limit)
      max_bytes_in_flight: 50GB       # bytes being moved at once (idem)
      deadline_s: 3600                # a Globus task not done by then is cancelled
      poll_s: 15
      retries: 3                      # transient Globus API errors, with backoff
      secret_block: globus-credentials  # Prefect Secret block with client_id / client_secret
    retention:
      beamline: {keep_days: 14, roots: [/data/raw]}   # roots default to the site's root
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tomopipe.errors import ConfigError
from tomopipe.sizes import parse_size

MOVERS = ("local", "globus")


@dataclass(frozen=True)
class Site:
    name: str
    mover: str = "local"
    root: Path | None = None
    collection: str | None = None
    path_map: dict[str, str] = field(default_factory=dict)

    def collection_path(self, local_path: str | Path) -> str:
        """The path of ``local_path`` on this site's Globus collection (longest prefix wins)."""
        local = PurePosixPath(local_path)
        best = None
        for prefix, remote in self.path_map.items():
            p = PurePosixPath(prefix)
            if (local == p or p in local.parents) and (best is None or len(p.parts) >
                                                        len(best[0].parts)):
                best = (p, remote)
        if best is None:
            raise ConfigError(f"sites.{self.name}.path_map: no entry maps the local path "
                              f"{local} (prefixes: {sorted(self.path_map)})")
        rel = local.relative_to(best[0])
        return str(PurePosixPath(best[1]) / rel) if rel.parts else best[1]


@dataclass(frozen=True)
class TransferSettings:
    source: str | None = None
    destination: str | None = None
    destination_path: Path | None = None
    results_to: str | None = None
    results_path: Path | None = None
    hardlink: bool = False
    verify_from_device: bool = False
    workers: int = 4
    max_concurrent: int = 2
    max_bytes_in_flight: int = 50 * 10**9
    deadline_s: float = 3600.0
    poll_s: float = 15.0
    retries: int = 3
    secret_block: str | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    site: str
    keep_days: float
    roots: tuple[Path, ...]


@dataclass(frozen=True)
class TransferConfig:
    sites: dict[str, Site]
    transfer: TransferSettings
    retention: dict[str, RetentionPolicy]

    def site(self, name: str, key: str = "transfer") -> Site:
        if name not in self.sites:
            raise ConfigError(f"{key}: site {name!r} is not defined under sites "
                              f"(defined: {sorted(self.sites)})")
        return self.sites[name]


def _number(raw: dict, key: str, path: str, default, kind=float, minimum=0):
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}.{key}: expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}.{key}: must be at least {minimum}, got {value!r}")
    return kind(value)


def _str(raw: dict, key: str, path: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}.{key}: expected a string, got {value!r}")
    return value


def _mapping(raw, path: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw


def _unknown(raw: dict, known: set[str], path: str) -> None:
    extra = set(raw) - known
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {sorted(extra)}; known: {sorted(known)}")


def parse_site(name: str, raw) -> Site:
    path = f"sites.{name}"
    raw = _mapping(raw, path)
    _unknown(raw, {"mover", "root", "collection", "path_map"}, path)
    mover = raw.get("mover", "local")
    if mover not in MOVERS:
        raise ConfigError(f"{path}.mover: must be one of {list(MOVERS)}, got {mover!r}")
    root = _str(raw, "root", path)
    collection = _str(raw, "collection", path)
    path_map = _mapping(raw.get("path_map"), f"{path}.path_map")
    for k, v in path_map.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k.startswith("/"):
            raise ConfigError(f"{path}.path_map: expected absolute local path -> collection "
                              f"path strings, got {k!r}: {v!r}")
    if mover == "globus":
        if not collection:
            raise ConfigError(f"{path}.collection: required for a globus site (the Globus "
                              "collection id)")
        try:
            uuid.UUID(collection)
        except ValueError as exc:
            raise ConfigError(f"{path}.collection: not a Globus collection id (a UUID): "
                              f"{collection!r}") from exc
        if not path_map:
            if not root:
                raise ConfigError(f"{path}.path_map: a globus site needs path_map (or root, "
                                  "mapped to the collection's /)")
            path_map = {root: "/"}
    return Site(name=name, mover=mover, root=Path(root).expanduser() if root else None,
                collection=collection, path_map=dict(path_map))


def parse_transfer(raw, sites: dict[str, Site]) -> TransferSettings:
    path = "transfer"
    raw = _mapping(raw, path)
    known = set(TransferSettings.__dataclass_fields__)
    _unknown(raw, known, path)
    for key in ("source", "destination", "results_to"):
        name = _str(raw, key, path)
        if name is not None and name not in sites:
            raise ConfigError(f"transfer.{key}: site {name!r} is not defined under sites "
                              f"(defined: {sorted(sites)})")
    if raw.get("destination") and not raw.get("source"):
        raise ConfigError("transfer.source: required when transfer.destination is set")
    if raw.get("destination") and not raw.get("destination_path"):
        raise ConfigError("transfer.destination_path: required when transfer.destination is set")
    for key in ("hardlink", "verify_from_device"):
        if not isinstance(raw.get(key, False), bool):
            raise ConfigError(f"transfer.{key}: expected true or false, got {raw[key]!r}")
    dest_path, results_path = _str(raw, "destination_path", path), _str(raw, "results_path",
                                                                         path)
    return TransferSettings(
        source=raw.get("source"), destination=raw.get("destination"),
        destination_path=Path(dest_path).expanduser() if dest_path else None,
        results_to=raw.get("results_to"),
        results_path=Path(results_path).expanduser() if results_path else None,
        hardlink=raw.get("hardlink", False),
        verify_from_device=raw.get("verify_from_device", False),
        workers=_number(raw, "workers", path, 4, int, 1),
        max_concurrent=_number(raw, "max_concurrent", path, 2, int, 1),
        max_bytes_in_flight=parse_size(raw.get("max_bytes_in_flight", 50 * 10**9),
                                       "transfer.max_bytes_in_flight"),
        deadline_s=_number(raw, "deadline_s", path, 3600.0, float, 1),
        poll_s=_number(raw, "poll_s", path, 15.0, float, 1),
        retries=_number(raw, "retries", path, 3, int, 0),
        secret_block=_str(raw, "secret_block", path),
    )


def parse_retention(raw, sites: dict[str, Site]) -> dict[str, RetentionPolicy]:
    raw = _mapping(raw, "retention")
    policies = {}
    for name, body in raw.items():
        path = f"retention.{name}"
        if name not in sites:
            raise ConfigError(f"{path}: site {name!r} is not defined under sites "
                              f"(defined: {sorted(sites)})")
        body = _mapping(body, path)
        _unknown(body, {"keep_days", "roots"}, path)
        if "keep_days" not in body:
            raise ConfigError(f"{path}.keep_days: required (days to keep raw data)")
        keep = _number(body, "keep_days", path, None, float, 0)
        roots = body.get("roots")
        if roots is None:
            if sites[name].root is None:
                raise ConfigError(f"{path}.roots: required when sites.{name}.root is not set")
            roots = [str(sites[name].root)]
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise ConfigError(f"{path}.roots: expected a list of paths, got {roots!r}")
        policies[name] = RetentionPolicy(site=name, keep_days=keep,
                                         roots=tuple(Path(r).expanduser() for r in roots))
    return policies


def parse_transfer_config(sites_raw, transfer_raw, retention_raw) -> TransferConfig:
    sites_raw = _mapping(sites_raw, "sites")
    sites = {str(name): parse_site(str(name), body) for name, body in sites_raw.items()}
    return TransferConfig(sites=sites, transfer=parse_transfer(transfer_raw, sites),
                          retention=parse_retention(retention_raw, sites))


def load_transfer_config(settings) -> TransferConfig:
    """From a ``tomopipe.config.Settings`` (its raw ``sites``/``transfer``/``retention``)."""
    try:
        return parse_transfer_config(settings.sites, settings.transfer, settings.retention)
    except ConfigError as exc:
        raise ConfigError(f"{settings.config_file}: {exc}") from exc
