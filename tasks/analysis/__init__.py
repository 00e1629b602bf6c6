"""What a reconstruction finds, as plain functions on arrays (``sample``, ``convergence``), the
decisions an agent takes from it (``decisions``), and the Bluesky documents that carry both
(``documents``). ``volume_io`` reads a published volume; ``prefect_tasks`` wraps the rest."""
