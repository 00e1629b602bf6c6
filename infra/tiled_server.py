"""The embedded Tiled catalog server: a config file under the home, and its health check.

The catalog stores Bluesky runs (``TiledWriter`` needs both file storage and a DuckDB storage to
write) and may read the data roots, so the HDF5 files that StreamResource documents name there
are served. Its root node carries the ``CatalogOfBlueskyRuns`` spec, so ``tiled.client.from_uri``
gives the bluesky-tiled-plugins catalog client (``ScanID``, ``TimeRange`` searches, ``cat[-1]``).
The API key lives in the config file (mode 0600), never on a command line or in a log.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml
from tomopipe.infra.processes import http_ok

CATALOG_SPEC = "CatalogOfBlueskyRuns"


def new_api_key() -> str:
    return secrets.token_hex(32)  # Tiled requires alphanumeric keys


def write_config(home: Path, data_roots: list[Path], api_key: str) -> Path:
    """Write ``$HOME/tiled/config.yml`` and return its path."""
    base = Path(home) / "tiled"
    (base / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "authentication": {"single_user_api_key": api_key},
        "trees": [{
            "path": "/",
            "tree": "catalog",
            "args": {
                "uri": f"sqlite:///{base / 'catalog.db'}",
                "writable_storage": [str(base / "data"), f"duckdb:///{base / 'tabular.duckdb'}"],
                "readable_storage": [str(root) for root in data_roots],
                "init_if_not_exists": True,
                "specs": [{"name": CATALOG_SPEC, "version": "3.0"}],
            },
        }],
    }
    path = base / "config.yml"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, path)
    return path


def argv(tiled_exe: str, config: Path, port: int) -> list[str]:
    return [tiled_exe, "serve", "config", str(config), "--host", "127.0.0.1", "--port", str(port)]


def healthy(url: str) -> bool:
    return http_ok(f"{url}/healthz")


def catalog_answers(url: str, api_key: str) -> bool:
    """True when the root's metadata reads with the key and carries the catalog spec.

    This is what ``from_uri`` fetches first, without importing the Tiled client.
    """
    import httpx

    try:
        resp = httpx.get(f"{url}/api/v1/metadata/", timeout=5.0,
                         headers={"Authorization": f"Apikey {api_key}"})
    except httpx.HTTPError:
        return False
    if not resp.is_success:
        return False
    specs = resp.json().get("data", {}).get("attributes", {}).get("specs") or []
    return CATALOG_SPEC in [s.get("name") for s in specs]
