"""Errors a user can act on. Each names the input and what is wrong with it."""


class TomopipeError(Exception):
    """Base class: the message is shown to the user as one line, without a traceback."""


class InputError(TomopipeError):
    """A file, document or array that cannot be used as given.

    ``source`` names the input (a file path, a run uid), ``where`` the part of it (a dataset,
    a document field) and ``fault`` what is wrong.
    """

    def __init__(self, source: str, fault: str, where: str | None = None):
        self.source, self.fault, self.where = str(source), fault, where
        parts = [self.source] + ([where] if where else []) + [fault]
        super().__init__(": ".join(parts))

    def __reduce__(self):
        # Errors cross process boundaries (Dask workers, Prefect results): rebuild from the parts.
        return (type(self), (self.source, self.fault, self.where))


class ConfigError(TomopipeError):
    """Bad configuration: names the setting (and file) and what is wrong."""


class PlanError(TomopipeError):
    """A reconstruction that cannot fit the memory it is given."""


class ServiceError(TomopipeError):
    """A service (Prefect, Tiled, the document bus, Globus) that cannot be reached or refused."""


class PathEscapeError(InputError):
    """A path from a document that resolves outside the configured data roots."""
