"""Staging: the exact set of files a run references, with sizes and checksums (a Manifest)."""
