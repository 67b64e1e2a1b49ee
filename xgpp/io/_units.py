"""Unit conversion of plain arrays through xgpp.variables (driven by ``units`` strings).

Unit strings are read by cf-units (UDUNITS-2) in :func:`xgpp.variables.unit_conversion`, so any
spelling or token order of a convertible unit is accepted (``"mW m-2 sr-1 nm-1"``,
``"W/m^2/sr/um"``, ``"W m-2 sr-1 um-1"`` are all TROPOSIF/OCO-2 SIF's canonical unit).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xgpp.errors import UnitError
from xgpp.variables import get_variable, normalise_units, unit_conversion

__all__ = ["canonical_spelling", "to_canonical", "normalise"]


def canonical_spelling(units: str | None, name: str) -> str | None:
    """The canonical spelling of ``units`` when it is the canonical unit, else ``units``.

    ``"mW m-2 sr-1 nm-1"`` (TROPOSIF) and ``"W/m^2/sr/um"`` (OCO-2) are the same unit as
    ``"mW m-2 nm-1 sr-1"``; a unit that needs a conversion, or none, is returned as given
    (stripped).
    """
    if units is None:
        return None
    units = str(units).strip()
    try:
        same = unit_conversion(units, name) == (1.0, 0.0)
    except ValueError:
        return units
    return get_variable(name).units if same else units


def normalise(da: xr.DataArray, name: str, *, where: str = "") -> xr.DataArray:
    """:func:`xgpp.variables.normalise_units` with a located message (``where``: file, field)."""
    try:
        return normalise_units(da, name)
    except ValueError as err:
        loc = f"{where}: " if where else ""
        raise UnitError(f"{loc}{err}") from err


def to_canonical(values: np.ndarray, units: str | None, name: str, *,
                 where: str = "") -> np.ndarray:
    """Convert a numpy array from ``units`` to the canonical unit of variable ``name``."""
    da = xr.DataArray(np.asarray(values), name=name)
    if units is not None:
        da.attrs["units"] = units
    return np.asarray(normalise(da, name, where=where).values)
