"""Dask clusters: connect to a running scheduler, or start a local one for this process.

``LocalCUDACluster`` (one worker per GPU) when GPUs are present, ``LocalCluster`` with one
single-threaded worker process per core otherwise. dask_cuda is imported only when a GPU is
counted, because it pins its own dask version and is an optional extra.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from tomopipe.errors import ConfigError, ServiceError


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
    """'4GB', '512MiB', '2e9' or a number of bytes -> bytes."""
    if value is None or isinstance(value, int):
        return value
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(str(value))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--memory-limit {value!r}: not a size (e.g. 4GB, 512MiB)") from exc
    if n <= 0:
        raise ConfigError(f"--memory-limit {value!r}: must be positive")
    return int(n)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def default_memory_per_worker(n_workers: int) -> int:
    import psutil

    return int(psutil.virtual_memory().total * 0.9 / max(1, n_workers))


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int | None = None,
                memory_limit: int | str | None = None, gpus: int | None = None,
                ) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` if given, else to a cluster started here."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ServiceError(f"Dask scheduler {scheduler}: cannot connect ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return

    n_gpus = gpu_count() if gpus is None else gpus
    limit = parse_memory(memory_limit)
    address = ":0"  # a free port: several clusters may run on one machine
    if n_gpus > 0:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            warnings.warn(f"{n_gpus} GPU(s) found but dask_cuda is not installed (pip install "
                          "'tomopipe[gpu]'); using CPU workers", stacklevel=2)
            n_gpus = 0
    if n_gpus > 0:
        n = min(workers or n_gpus, n_gpus)
        cluster = LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=list(range(n)),
            memory_limit=limit or default_memory_per_worker(n),
            dashboard_address=address,
        )
    else:
        n = workers or default_workers()
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True,
            memory_limit=limit or default_memory_per_worker(n),
            dashboard_address=address,
        )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def worker_resources(client) -> tuple[int, int | None]:
    """(number of workers, smallest memory limit among them) of a connected cluster."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    limits = [w.get("memory_limit") for w in workers.values() if w.get("memory_limit")]
    return len(workers), (min(limits) if limits else None)
