"""The registry of reconstruction backends and the choice of one by name ("auto": the fastest)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from tomopipe.tasks.recon.astra_backend import AstraBackend
from tomopipe.tasks.recon.base import Backend
from tomopipe.tasks.recon.fourier import FourierBackend
from tomopipe.tasks.recon.gpu_fourier import GpuFourierBackend
from tomopipe.tasks.recon.params import ALGORITHMS
from tomopipe.tasks.recon.tomopy_backend import TomopyBackend

from tomopipe.errors import ConfigError

# name -> factory; kept in registration order.
BACKENDS: dict[str, Callable[[], Backend]] = {
    "gpu-fourier": GpuFourierBackend,
    "fourier": FourierBackend,
    "astra-cuda": partial(AstraBackend, cuda=True),
    "astra": AstraBackend,
    "tomopy": TomopyBackend,
}

# Preference for "auto", fastest first, per algorithm.
AUTO_ORDER = {
    "fbp": ("gpu-fourier", "astra-cuda", "fourier", "tomopy", "astra"),
    "sirt": ("astra-cuda", "astra", "tomopy"),
    "cgls": ("astra-cuda", "astra"),
}


def available_backends(algorithm: str | None = None) -> list[str]:
    """Names of the backends usable here (optionally: that do ``algorithm``)."""
    names = []
    for name, make in BACKENDS.items():
        backend = make()
        if backend.available() and (algorithm is None or algorithm in backend.algorithms):
            names.append(name)
    return names


def get_backend(name: str = "auto", algorithm: str = "fbp", **options) -> Backend:
    """A ready backend. ``options`` go to its constructor (e.g. nthreads=1 on Dask workers)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm: unknown {algorithm!r}; "
                          f"choose one of {', '.join(ALGORITHMS)}")
    if name == "auto":
        for candidate in AUTO_ORDER[algorithm]:
            backend = _make(candidate, options)
            if backend.available():
                return backend
        raise ConfigError(f"backend: no backend available for {algorithm!r} "
                          f"(available: {', '.join(available_backends()) or 'none'})")
    if name not in BACKENDS:
        raise ConfigError(f"backend: unknown {name!r}; known: auto, {', '.join(BACKENDS)}; "
                          f"available here: {', '.join(available_backends(algorithm))}")
    backend = _make(name, options)
    if not backend.available():
        raise ConfigError(f"backend: {name!r} is not available on this machine; available for "
                          f"{algorithm!r}: {', '.join(available_backends(algorithm)) or 'none'}")
    if algorithm not in backend.algorithms:
        raise ConfigError(f"backend: {name!r} does not do {algorithm!r} (it does "
                          f"{', '.join(backend.algorithms)}); available for {algorithm!r}: "
                          f"{', '.join(available_backends(algorithm)) or 'none'}")
    return backend


def _make(name: str, options: dict) -> Backend:
    """Build backend ``name`` with the options its constructor takes (others are for others)."""
    make = BACKENDS[name]
    accepted = inspect.signature(make).parameters
    return make(**{k: v for k, v in options.items() if k in accepted})
