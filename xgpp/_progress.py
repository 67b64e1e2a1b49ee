"""Compute dask collections with a progress bar on whichever scheduler is active."""

from __future__ import annotations

import sys
from typing import Any

import dask

__all__ = ["active_client", "compute_with_progress"]


def active_client() -> Any | None:
    """The current ``distributed.Client``, or None when none is active (threaded scheduler)."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(*collections: Any, progress: bool = True, label: str = "") -> tuple:
    """``dask.compute(*collections)``, showing progress on the local or distributed scheduler."""
    client = active_client()
    if label and progress:
        print(label, file=sys.stderr, flush=True)
    if client is not None:
        futures = client.compute(list(collections))
        if progress:
            from distributed import progress as dist_progress

            dist_progress(futures)
            print(file=sys.stderr)
        return tuple(client.gather(futures))
    if not progress:
        return dask.compute(*collections)
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, dt=0.5):
        return dask.compute(*collections)
