"""Dask clusters: connect to a running scheduler, or start one for this process.

Where the workers come from is the ``cluster:`` mapping of ``$TOMOPIPE_HOME/config.yaml``::

    cluster:
      kind: local          # local (default) | address | slurm
      # kind: local -- a cluster on this machine
      workers: 4           # default: one per core, or one per GPU
      memory_limit: 8GB    # per worker (default: 90 % of RAM shared out)
      gpus: auto           # auto | 0 (CPU only) | N
      # kind: address -- a scheduler someone else runs
      address: tcp://10.0.0.5:8786
      # kind: slurm -- dask-jobqueue submits worker jobs, scaled between min_jobs and max_jobs
      cores: 32            # per job (required)
      memory: 256GB        # per job (required)
      processes: 4         # Dask workers per job (default: dask-jobqueue's choice; GPUs: one each)
      walltime: "02:00:00"
      queue: gpu           # SLURM partition
      account: tomo
      min_jobs: 0
      max_jobs: 8
      gpus_per_job: 1      # adds --gres=gpu:N and starts dask-cuda workers (one per GPU)
      job_extra_directives: [--constraint=a100]
      job_script_prologue: [module load cuda/12, source /opt/tomopipe/bin/activate]
      worker_extra_args: []
      interface: ib0       # network interface of workers and scheduler
      scheduler_host: null # or the address compute nodes reach this machine by
      local_directory: /tmp
      log_directory: /scratch/tomo/dask-logs
      python: /opt/tomopipe/bin/python    # default: this interpreter (shared file system)
      death_timeout_s: 120
      job_name: tomopipe-dask
      idle_timeout_s: 60   # a worker job idle this long is given back (adaptive scale-down)
      worker_throughput: 1e7     # sinogram elements (row x angle x column) a worker does a second
      backfill_deadline_s: 600   # a run that is not live is reconstructed within this

Before a run submits its slabs to a SLURM cluster it asks for the workers that reconstruct the
scan in time (``tasks.recon.resources``, ``infra.scaling``): a live run keeps up with the
detector (its acquisition rate), any other run meets ``backfill_deadline_s``; a request above
``max_jobs`` is refused before any job is submitted. ``worker_throughput`` defaults to about half
the fourier backend's one-thread FBP speed on a 2-core test machine (README Benchmarks: 512 x
720 sinograms at 0.018 s a slice, 2e7 elements/s), leaving room for reading and writing.

With kind slurm, ``tomopipe up`` runs the standing scheduler (``infra/dask_service.py``) on
the address in ``scheduler_host`` (default loopback: a single-node SLURM) with dask-jobqueue's
adaptive scaling between ``min_jobs`` and ``max_jobs``: no job while idle, jobs submitted as
slabs wait, the same warm jobs serve the runs of a burst, and a job whose workers have been idle
``idle_timeout_s`` seconds is cancelled (checked every second: ``adapt_options``).

Locally: ``LocalCUDACluster`` (one worker per GPU) when GPUs are present, ``LocalCluster`` with
one single-threaded worker process per core otherwise. dask_cuda and dask_jobqueue are imported
only when they are needed: both are optional extras (``gpu`` and ``hpc``).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tomopipe.errors import ConfigError, ServiceError

KINDS = ("local", "address", "slurm")
_COMMON = {"kind"}
_LOCAL_KEYS = {"workers", "memory_limit", "gpus"}
_ADDRESS_KEYS = {"address"}
_SLURM_KEYS = {"cores", "memory", "processes", "walltime", "queue", "account", "min_jobs",
               "max_jobs", "gpus_per_job", "job_extra_directives", "job_script_prologue",
               "worker_extra_args", "interface", "scheduler_host", "local_directory",
               "log_directory", "python", "death_timeout_s", "job_name", "idle_timeout_s",
               "worker_throughput", "backfill_deadline_s"}
_KEYS = {"local": _LOCAL_KEYS, "address": _ADDRESS_KEYS, "slurm": _SLURM_KEYS}
# SLURM's accepted time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_ADDRESS = re.compile(r"^(?:(tcp|tls|ucx|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})$")
# The dask CLI runs dask-cuda's `cuda worker` subcommand: one worker process per visible GPU.
CUDA_WORKER_COMMAND = "dask cuda worker"


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed ``cluster:`` mapping (see the module docstring for every key)."""

    kind: str = "local"
    # local
    workers: int | None = None
    memory_limit: int | None = None
    gpus: int | None = None  # None: count them
    # address
    address: str | None = None
    # slurm
    cores: int | None = None
    memory: int | None = None  # bytes per job
    processes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    min_jobs: int = 0
    max_jobs: int = 1
    gpus_per_job: int = 0
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    worker_extra_args: tuple[str, ...] = ()
    interface: str | None = None
    scheduler_host: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    death_timeout_s: float | None = None
    job_name: str | None = None
    idle_timeout_s: float = 60.0
    worker_throughput: float = 1e7  # sinogram elements a worker reconstructs a second
    backfill_deadline_s: float = 600.0

    @property
    def workers_per_job(self) -> int:
        if self.gpus_per_job:
            return self.gpus_per_job
        if self.processes:
            return self.processes
        from distributed.deploy.local import nprocesses_nthreads

        return nprocesses_nthreads(self.cores or 1)[0]  # what dask-jobqueue picks


def _int(raw: Mapping, key: str, minimum: int, default=None) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"cluster.{key}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"cluster.{key}: must be at least {minimum}, got {value!r}")
    return value


def _str(raw: Mapping, key: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"cluster.{key}: expected a non-empty string, got {value!r}")
    return value


def _strings(raw: Mapping, key: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"cluster.{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _positive(raw: Mapping, key: str, default: float, what: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, str):  # YAML reads 1e7 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or value == float("inf"):
        raise ConfigError(f"cluster.{key}: expected {what}, got {value!r}")
    return value


def _size(raw: Mapping, key: str) -> int | None:
    from tomopipe.sizes import parse_size

    return None if raw.get(key) is None else parse_size(raw[key], f"cluster.{key}")


def parse_cluster_config(raw) -> ClusterConfig:
    """Validate the ``cluster:`` mapping; errors name the key (``cluster.<key>``) and the fault."""
    if raw is None:
        return ClusterConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"cluster: expected a mapping, got {type(raw).__name__}")
    kind = raw.get("kind", "local")
    if kind not in KINDS:
        raise ConfigError(f"cluster.kind: must be one of {list(KINDS)}, got {kind!r}")
    unknown = set(raw) - _COMMON - _KEYS[kind]
    if unknown:
        raise ConfigError(f"cluster: unknown key(s) {sorted(unknown)} for kind {kind}; "
                          f"known: {sorted(_COMMON | _KEYS[kind])}")
    if kind == "local":
        gpus = raw.get("gpus", "auto")
        if gpus != "auto":
            gpus = _int(raw, "gpus", 0)
        return ClusterConfig(kind=kind, workers=_int(raw, "workers", 1),
                             memory_limit=_size(raw, "memory_limit"),
                             gpus=None if gpus == "auto" else gpus)
    if kind == "address":
        address = _str(raw, "address")
        if not address:
            raise ConfigError("cluster.address: required for kind address (the scheduler's "
                              "address, e.g. tcp://10.0.0.5:8786)")
        m = _ADDRESS.match(address.strip())
        if not m or not 0 < int(m.group(3)) < 65536:
            raise ConfigError(f"cluster.address: expected [tcp://]host:port, got {address!r}")
        return ClusterConfig(kind=kind, address=address.strip())
    return _parse_slurm(raw)


def _parse_slurm(raw: Mapping) -> ClusterConfig:
    for key in ("cores", "memory"):
        if raw.get(key) is None:
            raise ConfigError(f"cluster.{key}: required for kind slurm (per job, e.g. cores: 32, "
                              "memory: 256GB)")
    cores = _int(raw, "cores", 1)
    processes = _int(raw, "processes", 1)
    gpus = _int(raw, "gpus_per_job", 0, 0)
    if processes and processes > cores:
        raise ConfigError(f"cluster.processes: {processes} workers per job cannot share "
                          f"{cores} cores (cluster.cores)")
    if gpus and processes and processes != gpus:
        raise ConfigError(f"cluster.processes: a GPU job runs one worker per GPU; set it to "
                          f"cluster.gpus_per_job ({gpus}) or leave it out")
    if gpus and gpus > cores:
        raise ConfigError(f"cluster.gpus_per_job: {gpus} GPU workers need at least as many "
                          f"cores, got cluster.cores {cores}")
    min_jobs = _int(raw, "min_jobs", 0, 0)
    max_jobs = _int(raw, "max_jobs", 1, max(1, min_jobs))
    if max_jobs < min_jobs:
        raise ConfigError(f"cluster.max_jobs: {max_jobs} is below cluster.min_jobs {min_jobs}")
    walltime = raw.get("walltime")
    if walltime is not None:
        if isinstance(walltime, bool) or not isinstance(walltime, str | int):
            raise ConfigError(f"cluster.walltime: expected HH:MM:SS, got {walltime!r}")
        walltime = str(walltime)  # a bare number is minutes to SLURM
        if not _WALLTIME.match(walltime):
            raise ConfigError(f"cluster.walltime: expected a SLURM time such as 02:00:00 or "
                              f"1-12:00:00, got {walltime!r}")
    death = raw.get("death_timeout_s")
    if death is not None and (isinstance(death, bool) or not isinstance(death, int | float)
                              or death <= 0):
        raise ConfigError(f"cluster.death_timeout_s: expected a positive number of seconds, "
                          f"got {death!r}")
    idle = _positive(raw, "idle_timeout_s", 60.0, "a positive number of seconds")
    throughput = _positive(raw, "worker_throughput", 1e7,
                           "a positive number of sinogram elements a second")
    backfill = _positive(raw, "backfill_deadline_s", 600.0, "a positive number of seconds")
    for key in ("job_extra_directives",):
        for d in _strings(raw, key):
            if not d.startswith("-"):
                raise ConfigError(f"cluster.{key}: {d!r} is not an sbatch option (e.g. "
                                  "--constraint=a100; dask-jobqueue adds the #SBATCH)")
    return ClusterConfig(
        kind="slurm", cores=cores, memory=_size(raw, "memory"), processes=processes,
        walltime=walltime, queue=_str(raw, "queue"), account=_str(raw, "account"),
        min_jobs=min_jobs, max_jobs=max_jobs, gpus_per_job=gpus,
        job_extra_directives=_strings(raw, "job_extra_directives"),
        job_script_prologue=_strings(raw, "job_script_prologue"),
        worker_extra_args=_strings(raw, "worker_extra_args"),
        interface=_str(raw, "interface"), scheduler_host=_str(raw, "scheduler_host"),
        local_directory=_str(raw, "local_directory"),
        log_directory=_str(raw, "log_directory"), python=_str(raw, "python"),
        death_timeout_s=death, job_name=_str(raw, "job_name"), idle_timeout_s=float(idle),
        worker_throughput=float(throughput), backfill_deadline_s=float(backfill),
    )


def cluster_config(settings) -> ClusterConfig:
    """The cluster of a ``tomopipe.config.Settings`` (errors name its config file)."""
    try:
        return parse_cluster_config(getattr(settings, "cluster", None))
    except ConfigError as exc:
        raise ConfigError(f"{settings.config_file}: {exc}") from exc


def configured_cluster() -> ClusterConfig:
    """The cluster of ``$TOMOPIPE_HOME/config.yaml``; the local default without a config file."""
    from tomopipe.config import home, load_settings

    if not (home() / "config.yaml").exists():
        return ClusterConfig()
    return cluster_config(load_settings())


# config.yaml's cluster keys that dask-jobqueue's ``jobqueue.slurm`` configuration takes as
# they are (dask config accepts the underscores); the others are translated in slurm_dask_config.
_JOBQUEUE_SAME = ("cores", "queue", "account", "walltime", "interface", "local_directory",
                  "log_directory", "python", "job_extra_directives", "job_script_prologue",
                  "worker_extra_args")
# Where tomopipe puts a run's SLURM settings in dask's configuration: beside (not over)
# ``jobqueue.slurm``, whose values a facility may set in its own dask config files.
JOBQUEUE_CONFIG = "tomopipe-slurm"


def slurm_dask_config(cfg: ClusterConfig) -> dict:
    """dask-jobqueue settings (keys of ``jobqueue.slurm``) for a kind-slurm config."""
    if cfg.kind != "slurm":
        raise ConfigError(f"cluster.kind: {cfg.kind!r} is not slurm")
    conf = {k: list(v) if isinstance(v, tuple) else v
            for k in _JOBQUEUE_SAME if (v := getattr(cfg, k)) not in (None, ())}
    conf.update({
        "memory": f"{cfg.memory}B",
        "processes": cfg.workers_per_job,
        "name": cfg.job_name or "tomopipe-dask",
        # a free dashboard port: the scheduler runs inside the flow's process
        "scheduler_options": {"dashboard_address": ":0",
                              **({"host": cfg.scheduler_host} if cfg.scheduler_host else {})},
    })
    if cfg.death_timeout_s is not None:
        conf["death_timeout"] = cfg.death_timeout_s
    if cfg.gpus_per_job:
        directives = list(cfg.job_extra_directives)
        if not any(d.startswith(("--gres", "--gpus")) for d in directives):
            directives.append(f"--gres=gpu:{cfg.gpus_per_job}")
        conf["job_extra_directives"] = directives
        # dask-cuda starts one worker per GPU the job was given and pins each to its GPU
        conf["worker_command"] = CUDA_WORKER_COMMAND
    return conf


ADAPT_INTERVAL_S = 1.0  # how often adaptive scaling looks at the scheduler


def adapt_options(cfg: ClusterConfig) -> dict:
    """``cluster.adapt`` keywords: bounds in jobs, and scale-down only after ``idle_timeout_s``
    (a worker must be recommended for retirement that many consecutive checks)."""
    import math

    return {"minimum_jobs": cfg.min_jobs, "maximum_jobs": cfg.max_jobs,
            "interval": f"{ADAPT_INTERVAL_S}s",
            "wait_count": max(1, math.ceil(cfg.idle_timeout_s / ADAPT_INTERVAL_S))}


def slurm_cluster(cfg: ClusterConfig, scheduler_options: dict | None = None):
    """A ``dask_jobqueue.SLURMCluster`` with its scheduler running here and no jobs submitted.

    Its settings go through dask's configuration: the facility's ``jobqueue.slurm`` (dask
    config files, DASK_JOBQUEUE__SLURM__* variables) with config.yaml's ``cluster:`` over it,
    kept as ``jobqueue.tomopipe-slurm`` for the jobs adaptive scaling submits later.
    """
    import dask

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ConfigError("cluster.kind: slurm needs dask-jobqueue (pip install "
                          "'tomopipe[hpc]')") from exc
    # dask's config files spell keys with hyphens; ours must replace theirs, not sit beside them
    ours = {k.replace("_", "-"): v for k, v in slurm_dask_config(cfg).items()}
    merged = {**dask.config.get("jobqueue.slurm", {}), **ours}
    if scheduler_options:  # the standing service's fixed host and ports
        merged["scheduler-options"] = {**merged.get("scheduler-options", {}),
                                       **scheduler_options}
    dask.config.set({f"jobqueue.{JOBQUEUE_CONFIG}": merged})
    try:
        cluster = SLURMCluster(config_name=JOBQUEUE_CONFIG)
    except (RuntimeError, ValueError, OSError) as exc:  # the scheduler could not start here
        cause = exc.__cause__ or exc
        key = "cluster.interface" if "network interface" in str(cause) else "cluster"
        raise ConfigError(f"{key}: cannot start the Dask scheduler of the SLURM cluster on "
                          f"this machine: {cause}") from exc
    # Before the first job starts there are no workers to measure: the planner sizes slabs
    # from what the jobs will bring (see worker_resources).
    cluster.tomopipe_expected = (cfg.max_jobs * cfg.workers_per_job,
                                 cfg.memory // cfg.workers_per_job)
    return cluster


def slurm_job_script(cfg: ClusterConfig) -> str:
    """The sbatch script one worker job of ``cfg`` would run (submits nothing)."""
    cluster = slurm_cluster(cfg)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def gpu_count() -> int:
    """Number of NVIDIA GPUs visible through NVML; 0 when pynvml or a driver is missing."""
    if os.environ.get("TOMOPIPE_NO_GPU"):
        return 0
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML raises its own error types when no driver is loaded
        return 0


def gpu_memory_bytes() -> int | None:
    """Memory of the smallest visible GPU, or None without GPUs."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            sizes = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                     for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return min(sizes) if sizes else None


def parse_memory(value: str | int | None) -> int | None:
    """'4GB', '512MiB', '2e9' or a number of bytes -> bytes (None stays None)."""
    from tomopipe.sizes import parse_size

    return None if value is None else parse_size(value, "--memory-limit")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def default_memory_per_worker(n_workers: int) -> int:
    import psutil

    return int(psutil.virtual_memory().total * 0.9 / max(1, n_workers))


@contextlib.contextmanager
def _connect(address: str) -> Iterator:
    from distributed import Client

    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ServiceError(f"Dask scheduler {address}: cannot connect ({exc})") from exc
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _slurm_client(cfg: ClusterConfig) -> Iterator:
    import shutil

    from distributed import Client

    if shutil.which("sbatch") is None:
        raise ConfigError("cluster.kind: slurm, but sbatch is not on this machine's PATH: run the "
                          "Prefect worker (or tomopipe) on a SLURM submit node")
    cluster = slurm_cluster(cfg)
    try:
        # Adaptive: jobs are submitted while slabs wait and released when idle, within bounds.
        cluster.adapt(**adapt_options(cfg))
        from tomopipe.infra.scaling import install

        install(cluster, cfg)  # runs ask the cluster for workers (infra.scaling)
        with Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        cluster.close()


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int | None = None,
                memory_limit: int | str | None = None, gpus: int | None = None,
                cluster: ClusterConfig | Mapping | None = None) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` if given, else to the configured cluster.

    Never the process's default client: flows run several reconstructions on threads at once
    (backfill's concurrency), and a default client set by one and closed by another left the
    others' plain ``.compute()`` calls (Tiled's dataframe reads) asking for a client that was
    gone. Work goes to the cluster through the client object only.

    ``cluster`` (a ClusterConfig or a raw ``cluster:`` mapping) defaults to the one in
    ``$TOMOPIPE_HOME/config.yaml`` unless ``workers`` or ``gpus`` ask for a local cluster.
    """
    from distributed import Client

    if scheduler:
        with _connect(scheduler) as client:
            yield client
        return
    if cluster is None:
        cfg = configured_cluster() if workers is None and gpus is None else ClusterConfig()
    elif isinstance(cluster, ClusterConfig):
        cfg = cluster
    else:
        cfg = parse_cluster_config(cluster)
    if cfg.kind == "address":
        with _connect(cfg.address) as client:
            yield client
        return
    if cfg.kind == "slurm":
        with _slurm_client(cfg) as client:
            yield client
        return

    local = local_cluster(cfg, workers=workers, gpus=gpus, memory_limit=memory_limit)
    try:
        with Client(local, set_as_default=False) as client:
            yield client
    finally:
        local.close()


def local_cluster(cfg: ClusterConfig | None = None, *, workers: int | None = None,
                  gpus: int | None = None, memory_limit: int | str | None = None,
                  host: str | None = None, scheduler_port: int = 0,
                  dashboard_address: str = "127.0.0.1:0", preload: list[str] | None = None):
    """A cluster on this machine: ``LocalCUDACluster`` (one worker per GPU) when GPUs are
    present and dask-cuda is installed, else ``LocalCluster`` with one single-threaded worker
    process per core. Workers run under nannies, which replace a worker whose process dies.

    ``workers``/``gpus``/``memory_limit`` override the config's; ``host`` (e.g. 127.0.0.1)
    binds scheduler and workers to one interface; ``preload`` names modules workers import first.
    """
    from distributed import LocalCluster

    cfg = cfg or ClusterConfig()
    workers = workers if workers is not None else cfg.workers
    gpus = gpus if gpus is not None else cfg.gpus
    n_gpus = gpu_count() if gpus is None else gpus
    limit = parse_memory(memory_limit) or cfg.memory_limit
    where = {"dashboard_address": dashboard_address, "scheduler_port": scheduler_port}
    if host:
        where["host"] = host
    if preload:
        where["preload"] = list(preload)
    if n_gpus > 0:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            warnings.warn(f"{n_gpus} GPU(s) found but dask_cuda is not installed (pip install "
                          "'tomopipe[gpu]'); using CPU workers", stacklevel=2)
            n_gpus = 0
    if n_gpus > 0:
        n = min(workers or n_gpus, n_gpus)
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(n)),
                                memory_limit=limit or default_memory_per_worker(n), **where)
    n = workers or default_workers()
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                        memory_limit=limit or default_memory_per_worker(n), **where)


def _scheduler_expected(dask_scheduler=None):
    """On the scheduler: what its adaptive jobs will bring (set by the standing service)."""
    return getattr(dask_scheduler, "tomopipe_expected", None)


def worker_resources(client) -> tuple[int, int | None]:
    """(number of workers, smallest memory limit among them) of a connected cluster.

    An adaptive SLURM cluster with no job running yet answers with what its jobs will bring.
    """
    info = client.scheduler_info()
    workers = info.get("workers", {})
    limits = [w.get("memory_limit") for w in workers.values() if w.get("memory_limit")]
    expected = getattr(getattr(client, "cluster", None), "tomopipe_expected", None)
    if not workers and expected is None and getattr(client, "cluster", None) is None:
        # connected by address to a standing adaptive scheduler (dask_service, kind slurm)
        try:
            expected = client.run_on_scheduler(_scheduler_expected)
        except Exception:  # an older or foreign scheduler: plan from what is known
            expected = None
    if not workers and expected:
        return tuple(expected)
    return len(workers), (min(limits) if limits else None)
