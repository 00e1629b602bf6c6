"""tomopipe: event-driven tomography reconstruction, from Bluesky runs to OME-Zarr volumes."""

__version__ = "0.1.0"
