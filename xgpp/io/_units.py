"""Unit conversion of plain arrays through xgpp.variables (driven by ``units`` strings)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from xgpp.variables import normalise_units, unit_spellings

__all__ = ["canonical_spelling", "to_canonical", "normalise"]


def canonical_spelling(units: str | None, name: str) -> str | None:
    """Map a spelling that only reorders the tokens of a known one onto that known spelling.

    ``"mW m-2 sr-1 nm-1"`` (TROPOSIF) is the same unit as ``"mW m-2 nm-1 sr-1"``.
    """
    if units is None:
        return None
    units = str(units).strip()
    table = unit_spellings(name)
    if units in table:
        return units
    key = sorted(units.split())
    for known in table:
        if sorted(known.split()) == key:
            return known
    return units


def normalise(da: xr.DataArray, name: str, *, where: str = "") -> xr.DataArray:
    """:func:`xgpp.variables.normalise_units` with token-order tolerance and a located message."""
    units = canonical_spelling(da.attrs.get("units"), name)
    if units is not None:
        da = da.copy()
        da.attrs["units"] = units
    try:
        return normalise_units(da, name)
    except ValueError as err:
        loc = f"{where}: " if where else ""
        raise ValueError(f"{loc}{err}") from err


def to_canonical(values: np.ndarray, units: str | None, name: str, *,
                 where: str = "") -> np.ndarray:
    """Convert a numpy array from ``units`` to the canonical unit of variable ``name``."""
    da = xr.DataArray(np.asarray(values), name=name)
    if units is not None:
        da.attrs["units"] = units
    return np.asarray(normalise(da, name, where=where).values)
