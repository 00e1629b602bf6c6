"""The Globus mover: one checksum-verified Globus transfer task per run (globus-sdk 4).

The whole manifest goes in one task (``sync_level="checksum"`` skips files already identical,
``verify_checksum=True`` makes the service verify what it wrote, and each item carries the
source's SHA-256 as ``external_checksum`` with ``checksum_algorithm="SHA256"``). Globus
checksums with the algorithms its endpoints implement (MD5 when none is named; SHA1, SHA256,
SHA512, ADLER32 where the endpoint supports them), never BLAKE3: a manifest staged with SHA-256
(``tasks.transfer.movers.manifest_algorithm`` picks it for Globus sites) is sent as it is;
for a BLAKE3 manifest the mover computes each source's SHA-256 first, refusing a file whose size
or mtime moved since staging. The task is watched until it succeeds, a deadline
passes (the task is cancelled), or the service reports a fatal fault (permission denied, not
found, quota: cancelled at once). Transient API errors (429, 5xx, network) are retried with
backoff; the submission id is fetched once so a retried submission cannot start a second task.

Client credentials come from GLOBUS_CLIENT_ID / GLOBUS_CLIENT_SECRET or a Prefect Secret block;
the secret is never part of a repr, a log line or an exception message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import PurePosixPath

import globus_sdk
from tomopipe.tasks.staging.checksum import file_checksum, split_checksum
from tomopipe.tasks.staging.manifest import Manifest, ManifestEntry
from tomopipe.tasks.transfer.base import FileResult, Mover, TransferReport, safe_relpath
from tomopipe.tasks.transfer.sites import Site

from tomopipe.errors import ConfigError, ServiceError

log = logging.getLogger(__name__)

TRANSIENT_HTTP = (429, 500, 502, 503, 504)
# nice_status / event codes after which waiting cannot help
FATAL_CODES = ("PERMISSION_DENIED", "FILE_NOT_FOUND", "QUOTA_EXCEEDED", "NO_SPACE_LEFT",
               "ENDPOINT_NOT_FOUND", "PATH_NOT_FOUND", "EXPIRED_CREDENTIAL")
CHECKSUM_CODES = ("VERIFY_CHECKSUM", "CHECKSUM_MISMATCH")
# our algorithm name -> Globus's checksum_algorithm (only those tasks.staging.checksum computes)
GLOBUS_ALGORITHMS = {"sha256": "SHA256"}
EXTERNAL_ALGORITHM = "sha256"


class SourceChanged(Exception):
    pass


def external_checksum(entry: ManifestEntry) -> tuple[str, str]:
    """(Globus algorithm, hex) for a manifest entry: its own checksum when Globus knows the
    algorithm, else the SHA-256 of the source, read now (its size and mtime must still be the
    manifest's before and after the read)."""
    algo, digest = split_checksum(entry.checksum)
    if algo in GLOBUS_ALGORITHMS:
        return GLOBUS_ALGORITHMS[algo], digest
    try:
        before = os.stat(entry.path)
        checksum, nread = file_checksum(entry.path, algorithm=EXTERNAL_ALGORITHM)
        after = os.stat(entry.path)
    except OSError as exc:
        raise SourceChanged(f"cannot read the source to compute its SHA-256 for Globus "
                            f"({exc.strerror or exc})") from None
    staged = (entry.size, entry.mtime_ns)
    if (before.st_size, before.st_mtime_ns) != staged or \
            (after.st_size, after.st_mtime_ns) != staged or nread != entry.size:
        raise SourceChanged("source changed since it was staged; restage and move again")
    return GLOBUS_ALGORITHMS[EXTERNAL_ALGORITHM], split_checksum(checksum)[1]


class GlobusCredentials:
    """A client id and secret; the secret never shows in repr/str."""

    __slots__ = ("client_id", "_secret")

    def __init__(self, client_id: str, client_secret: str):
        if not client_id or not client_secret:
            raise ConfigError("Globus credentials: client id and secret must both be set")
        self.client_id = str(client_id)
        self._secret = str(client_secret)

    def __repr__(self) -> str:
        return f"GlobusCredentials(client_id={self.client_id!r}, client_secret='***')"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into Prefect results or Dask messages
        raise TypeError("GlobusCredentials cannot be pickled")

    def secret(self) -> str:
        return self._secret

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    @classmethod
    def from_env(cls, environ=None) -> GlobusCredentials:
        env = os.environ if environ is None else environ
        cid, secret = env.get("GLOBUS_CLIENT_ID"), env.get("GLOBUS_CLIENT_SECRET")
        missing = [k for k, v in (("GLOBUS_CLIENT_ID", cid), ("GLOBUS_CLIENT_SECRET", secret))
                   if not v]
        if missing:
            raise ConfigError(f"Globus credentials: environment variable(s) {missing} not set "
                              "(or configure transfer.secret_block)")
        return cls(cid, secret)

    @classmethod
    def from_prefect_secret(cls, block_name: str) -> GlobusCredentials:
        """A Prefect Secret block holding {"client_id": ..., "client_secret": ...} (or JSON)."""
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block_name).get()
        except ValueError as exc:
            raise ConfigError(f"transfer.secret_block: cannot load the Prefect Secret block "
                              f"{block_name!r} ({exc})") from None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict) or not {"client_id", "client_secret"} <= set(value):
            raise ConfigError(f"transfer.secret_block: Prefect Secret {block_name!r} must hold "
                              "a mapping with client_id and client_secret")
        return cls(value["client_id"], value["client_secret"])

    @classmethod
    def resolve(cls, secret_block: str | None = None) -> GlobusCredentials:
        if secret_block:
            return cls.from_prefect_secret(secret_block)
        return cls.from_env()


def make_transfer_client(credentials: GlobusCredentials) -> globus_sdk.TransferClient:
    """A TransferClient authorised by client credentials; its own retries are off (ours back
    off and are counted in the report)."""
    refused = None
    try:
        auth = globus_sdk.ConfidentialAppAuthClient(client_id=credentials.client_id,
                                                    client_secret=credentials.secret())
        authorizer = globus_sdk.ClientCredentialsAuthorizer(
            auth, scopes=globus_sdk.TransferClient.scopes.all)
    except globus_sdk.GlobusError as exc:
        refused = (f"Globus Auth refused client {credentials.client_id}: "
                   f"{credentials.scrub(_describe(exc))}")
    if refused is not None:
        # Raised outside the handler: not even __context__ (which `from None` only hides) may
        # hold Globus's error, whose request carries the Basic auth header and whose text may
        # echo the secret.
        raise ServiceError(refused)
    return globus_sdk.TransferClient(
        authorizer=authorizer,
        retry_config=globus_sdk.transport.RetryConfig(max_retries=0))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, globus_sdk.GlobusAPIError):
        detail = exc.message or (exc.text or "")[:300] or exc.http_reason
        return f"HTTP {exc.http_status} {exc.code or ''}: {detail}".replace(" :", ":")
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, globus_sdk.GlobusAPIError):
        return exc.http_status in TRANSIENT_HTTP
    return isinstance(exc, globus_sdk.NetworkError | ConnectionError | TimeoutError)


class GlobusTaskFailed(ServiceError):
    pass


class GlobusMover(Mover):
    """Move a manifest from ``source`` to ``destination`` (two Globus sites) in one task."""

    name = "globus"

    def __init__(self, source: Site, destination: Site, *,
                 client: globus_sdk.TransferClient | None = None,
                 credentials: GlobusCredentials | None = None, deadline_s: float = 3600.0,
                 poll_s: float = 15.0, retries: int = 3, backoff_s: float = 2.0,
                 max_checksum_faults: int = 3, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        for site, role in ((source, "source"), (destination, "destination")):
            if not site.collection:
                raise ConfigError(f"sites.{site.name}.collection: the {role} site of a Globus "
                                  "transfer needs a collection id")
        self.source, self.destination = source, destination
        self._client = client
        self._credentials = credentials
        self.deadline_s, self.poll_s = deadline_s, poll_s
        self.retries, self.backoff_s = retries, backoff_s
        self.max_checksum_faults = max_checksum_faults
        self._sleep, self._clock = sleep, clock

    def __repr__(self) -> str:
        return f"GlobusMover({self.source.name} -> {self.destination.name})"

    @property
    def client(self) -> globus_sdk.TransferClient:
        if self._client is None:
            self._client = make_transfer_client(self._credentials or GlobusCredentials.from_env())
        return self._client

    def _scrub(self, text: str) -> str:
        return self._credentials.scrub(text) if self._credentials else text

    # -- API calls with retry -----------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except globus_sdk.GlobusError as exc:
                if not is_transient(exc) or attempt >= self.retries:
                    raise GlobusTaskFailed(f"Globus {what} failed: "
                                           f"{self._scrub(_describe(exc))}") from None
                delay = self.backoff_s * 2 ** attempt
                log.warning("Globus %s: transient error (%s); retry %d/%d in %.1f s", what,
                            self._scrub(_describe(exc)), attempt + 1, self.retries, delay)
                self._sleep(delay)
                attempt += 1

    def _cancel(self, task_id: str, report: TransferReport, why: str) -> None:
        report.error = why
        try:
            self._call("cancel_task", self.client.cancel_task, task_id)
            report.error += f"; task {task_id} cancelled"
        except GlobusTaskFailed as exc:
            report.error += f"; cancelling task {task_id} failed too: {exc}"

    def _fault_events(self, task_id: str) -> list[dict]:
        resp = self._call("task_event_list", self.client.task_event_list, task_id, limit=100)
        return [dict(ev) for ev in resp if ev.get("is_error")]

    # -- the transfer -------------------------------------------------------------------------
    def external_checksums(self, manifest: Manifest) -> tuple[dict[str, tuple[str, str]],
                                                              list[FileResult]]:
        """relpath -> (Globus algorithm, hex) for every entry; and the entries that failed."""
        sums, failed = {}, []
        for entry in manifest.entries:
            try:
                sums[entry.relpath] = external_checksum(entry)
            except SourceChanged as exc:
                failed.append(FileResult(relpath=entry.relpath, source=entry.path,
                                         destination="", size=entry.size,
                                         checksum=entry.checksum, error=str(exc)))
        return sums, failed

    def build_transfer_data(self, manifest: Manifest, dest: str | os.PathLike,
                            submission_id: str,
                            checksums: dict[str, tuple[str, str]] | None = None
                            ) -> tuple[globus_sdk.TransferData, list[FileResult]]:
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.deadline_s)
        tdata = globus_sdk.TransferData(
            self.source.collection, self.destination.collection,
            label=f"tomopipe run {manifest.run_uid}"[:128], submission_id=submission_id,
            sync_level="checksum", verify_checksum=True, preserve_timestamp=True,
            fail_on_quota_errors=True, deadline=deadline.isoformat())
        files = []
        for entry in manifest.entries:
            rel = safe_relpath(entry.relpath, source=manifest.run_uid)
            dest_local = PurePosixPath(os.fspath(dest)).joinpath(*rel.parts)
            src_path = self.source.collection_path(entry.path)
            dst_path = self.destination.collection_path(dest_local)
            algo, digest = (checksums[entry.relpath] if checksums is not None
                            else external_checksum(entry))
            tdata.add_item(src_path, dst_path, external_checksum=digest,
                           checksum_algorithm=algo)
            files.append(FileResult(relpath=entry.relpath, source=src_path,
                                    destination=dst_path, size=entry.size,
                                    checksum=f"{algo.lower()}:{digest}"))
        return tdata, files

    def transfer(self, manifest: Manifest, dest: str | os.PathLike) -> TransferReport:
        self.check_manifest(manifest)
        report = TransferReport(run_uid=manifest.run_uid, mover=self.name,
                                destination=f"{self.destination.collection}:"
                                            f"{self.destination.collection_path(dest)}")
        checksums, failed = self.external_checksums(manifest)  # before any request
        if failed:
            report.files = failed
            report.error = (f"{len(failed)} file(s) not sent to Globus: {failed[0].relpath}: "
                            f"{failed[0].error}")
            report.finished = time.time()
            return report
        try:
            self._run(manifest, dest, report, checksums)
        except GlobusTaskFailed as exc:
            report.error = report.error or str(exc)
        report.finished = time.time()
        return report

    def _run(self, manifest: Manifest, dest, report: TransferReport,
             checksums: dict[str, tuple[str, str]] | None = None) -> None:
        client = self.client
        sid = self._call("get_submission_id", client.get_submission_id)["value"]
        tdata, report.files = self.build_transfer_data(manifest, dest, sid, checksums)
        result = self._call("submit_transfer", client.submit_transfer, tdata)
        task_id = report.task_id = str(result["task_id"])
        log.info("Globus task %s submitted for run %s (%d files)", task_id, manifest.run_uid,
                 len(report.files))
        deadline = self._clock() + self.deadline_s
        while True:
            task = self._call("get_task", client.get_task, task_id)
            status, nice = task["status"], task.get("nice_status") or ""
            if status == "SUCCEEDED":
                break
            if status == "FAILED":
                report.events = self._fault_events(task_id)
                raise GlobusTaskFailed(f"Globus task {task_id} failed "
                                       f"({task.get('fatal_error') or nice or 'no reason given'})"
                                       + _event_text(report.events))
            if nice in FATAL_CODES:
                report.events = self._fault_events(task_id)
                self._cancel(task_id, report, f"Globus task {task_id}: fatal fault {nice} "
                                              "(waiting cannot help)" + _event_text(report.events))
                return
            if task.get("faults"):
                events = self._fault_events(task_id)
                report.events = events
                fatal = [e for e in events if e.get("code") in FATAL_CODES]
                checks = [e for e in events if e.get("code") in CHECKSUM_CODES]
                if fatal or len(checks) >= self.max_checksum_faults or nice in CHECKSUM_CODES:
                    kind = fatal[0]["code"] if fatal else "checksum verification failed"
                    self._cancel(task_id, report, f"Globus task {task_id}: {kind}"
                                                  + _event_text(events))
                    return
            remaining = deadline - self._clock()
            if remaining <= 0:
                self._cancel(task_id, report, f"Globus task {task_id} not done within its "
                                              f"deadline of {self.deadline_s:g} s ({nice})")
                return
            wait = max(1, int(min(self.poll_s, remaining)))
            self._call("task_wait", client.task_wait, task_id, timeout=wait,
                       polling_interval=wait)
        self._mark_verified(task_id, report)

    def _mark_verified(self, task_id: str, report: TransferReport) -> None:
        """Files the service transferred (checksum verified) or skipped as identical."""
        done: set[str] = set()
        marker = None
        while True:
            kwargs = {"marker": marker} if marker else {}
            resp = self._call("task_successful_transfers",
                              self.client.task_successful_transfers, task_id, **kwargs)
            done |= {item["destination_path"] for item in resp["DATA"]}
            marker = resp.get("next_marker")
            if not marker:
                break
        for f in report.files:
            # sync_level=checksum: a file absent from the list was already identical there
            f.status = "verified" if f.destination in done else "unchanged"


def _event_text(events: list[dict]) -> str:
    if not events:
        return ""
    shown = "; ".join(f"{e.get('code')}: {e.get('description', '')} {e.get('details', '')}"
                      .strip() for e in events[:3])
    return f" [service events: {shown}]"
