"""Strings of any numpy or pandas dtype (``<U``, object, bytes, numpy 2 ``StringDType``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_str"]


def as_str(values: Any) -> np.ndarray:
    """``values`` as a numpy ``<U`` array, whatever string dtype they come in.

    Zarr v3 object strings come back from ``xr.open_zarr`` as numpy 2's ``StringDType``,
    which ``astype(str)`` refuses; bytes are decoded as UTF-8.
    """
    a = np.asarray(values)
    if a.dtype.kind == "U":
        return a
    if a.dtype.kind == "S":
        return np.char.decode(a, "utf-8")
    flat = [v.decode() if isinstance(v, bytes) else str(v) for v in a.ravel().tolist()]
    return np.asarray(flat, dtype=str).reshape(a.shape)
