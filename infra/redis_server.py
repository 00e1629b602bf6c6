"""A Redis server for the queue server's queue and history: Debian's ``redis-server`` on
loopback, its files under ``$TOMOPIPE_HOME/redis`` (``make redis`` installs it where root).

Started by ``tomopipe up --with-queue`` (infra/services.py) before the RE Manager; persistence is
an append-only file in the home, so a queue survives ``down`` and ``up``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tomopipe.infra.processes import LOOPBACK

from tomopipe.errors import ServiceError


def executable() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise ServiceError("the queue needs Redis: redis-server is not installed (Debian: "
                           "apt-get install redis-server, or `make redis` as root)")
    return found


def argv(home: Path, port: int) -> list[str]:
    folder = Path(home) / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    return [executable(), "--bind", LOOPBACK, "--port", str(port), "--dir", str(folder),
            "--save", "", "--appendonly", "yes", "--protected-mode", "yes",
            "--daemonize", "no", "--logfile", ""]


def address(port: int) -> str:
    return f"{LOOPBACK}:{port}"


def healthy(addr: str) -> bool:
    """True when the server at ``host:port`` answers PING."""
    import redis

    host, _, port = addr.rpartition(":")
    try:
        return bool(redis.Redis(host=host, port=int(port), socket_timeout=2).ping())
    except (redis.RedisError, OSError, ValueError):
        return False
