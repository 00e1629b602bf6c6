"""The one parser of sizes given by people: config.yaml, command-line options, flow parameters."""

from __future__ import annotations

from tomopipe.errors import ConfigError


def parse_size(value, what: str) -> int:
    """Bytes from a number or a text such as ``16GB``, ``2 GiB``, ``500M`` or ``2e9``.

    ``what`` names the setting or option in the error: ``cluster.memory: must be positive``.
    Decimal units are powers of 1000 and binary ones (KiB, MiB, GiB) powers of 1024, as
    ``dask.utils.parse_bytes`` reads them.
    """
    from dask.utils import parse_bytes

    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{what}: expected a size such as 16GB or 512MiB, got {value!r}")
    try:
        size = int(value) if isinstance(value, int | float) else int(parse_bytes(value))
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: expected a size such as 16GB or 512MiB, "
                          f"got {value!r}") from None
    if size <= 0:
        raise ConfigError(f"{what}: must be positive, got {value!r}")
    return size
