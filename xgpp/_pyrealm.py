"""One door to pyrealm for the whole package: its notices silenced in one place, under one lock.

pyrealm 2.0 announces its new phi0 default on every P-model fit, and numpy flags an internal
``where`` without ``out`` in its J_max limitation; neither is actionable.  ``catch_warnings``
swaps a process-global filter list (Python 3.11), so callers in dask threads (twin-world
generation, the P-model baseline) take turns here instead of racing on it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import numpy as np

__all__ = ["UG_PER_S_TO_G_PER_DAY", "quiet_pyrealm"]

#: pyrealm GPP [ug C m-2 s-1] -> [gC m-2 d-1]
UG_PER_S_TO_G_PER_DAY = 86400e-6
_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_pyrealm(*, all_warnings: bool = False) -> Iterator[None]:
    """Run pyrealm with its routine notices silenced (or every warning, ``all_warnings=True``)."""
    with _LOCK, warnings.catch_warnings(), np.errstate(all="ignore"):
        if all_warnings:
            warnings.simplefilter("ignore")
        else:
            warnings.filterwarnings("ignore", message=r"(?s).*new default for the quantum")
            warnings.filterwarnings("ignore", message=r".*'where' used without 'out'")
        yield
