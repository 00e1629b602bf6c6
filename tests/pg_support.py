"""A real PostgreSQL for the tests: Debian's server in a temporary data folder on loopback.

Nothing is installed here (Debian's ``postgresql`` package; server binaries under
/usr/lib/postgresql/<version>/bin). The server refuses to run as root, so as root the data
folder is given to the ``postgres`` user (created by the package) and initdb, pg_ctl and
createdb run as that user through ``runuser``. :func:`start_postgres` returns the database's
SQLAlchemy URL for asyncpg (what Prefect's PREFECT_API_DATABASE_CONNECTION_URL takes).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

USER = "postgres"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def postgres_unavailable() -> str | None:
    """Why a PostgreSQL server cannot start here, or None."""
    if pg_bin() is None:
        return "PostgreSQL server binaries missing (Debian's postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return "no postgres user to run the server as (it refuses root)"
        if shutil.which("runuser") is None:
            return "runuser missing (needed to run the server as postgres)"
    return None


@dataclass
class Postgres:
    data: Path
    port: int
    database: str

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{self.database}"

    def psql(self, sql: str) -> str:
        return _as_user([str(pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                         "-d", self.database, "-tAc", sql]).stdout

    def stop(self) -> None:
        _as_user([str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                 check=False)


def _as_user(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", USER, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout}")
    return done


def start_postgres(root: Path, port: int, database: str = "prefect") -> Postgres:
    """initdb in ``root/data``, start the server on 127.0.0.1:port, create ``database``."""
    reason = postgres_unavailable()
    if reason:
        raise RuntimeError(reason)
    root = Path(root)
    data, sock = root / "data", root / "sock"
    for d in (root, sock):
        d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(USER)
        for d in (root, sock):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        root.chmod(0o755)
        for parent in root.parents:  # the server user must reach its folder (tmp folders: 0700)
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    b = pg_bin()
    _as_user([str(b / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"])
    pg = Postgres(data=data, port=port, database=database)
    _as_user([str(b / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w",
              "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    try:
        deadline = time.monotonic() + 30
        while _as_user([str(b / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                       check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not accept connections in 30 s")
            time.sleep(0.2)
        _as_user([str(b / "createdb"), "-h", "127.0.0.1", "-p", str(port), database])
    except BaseException:
        pg.stop()
        raise
    return pg
