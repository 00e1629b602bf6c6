"""The simulated beamline used by the demo and the tests: a real Bluesky RunEngine runs
``tomo_scan`` (plans.py) on simulated devices (devices.py) whose camera writes HDF5 frames of
the analytic phantom (optics.py); run.py puts them together (``simulate``)."""
