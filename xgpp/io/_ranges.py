"""Plausibility of values read from files: unit mistakes refused, impossible values found.

The ranges are data in :mod:`xgpp.variables`: each canonical variable's ``bounds`` (plausible)
and ``limits`` (physically possible), and :data:`xgpp.variables.UNIT_SLIPS` (common unit
mistakes).  Two rules, applied per file and variable in canonical units:

* a file whose **median** lies outside ``bounds`` is in another unit than its ``units``
  attribute says: :class:`~xgpp.errors.UnitError` naming the file, the field, the median and
  the likely mistake (kelvin labelled degC, SIF 1000 times too large...);
* values outside ``limits`` (and infinities) are impossible: sounding and site readers drop
  and count them (:func:`screen` returns their mask); gridded readers refuse the file when
  the chunk is computed (:func:`screened`, lazy: no hidden ``.compute()``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xgpp.errors import InputError, UnitError
from xgpp.variables import UNIT_SLIPS, UnitSlip, get_variable

__all__ = ["likely_slip", "screen", "screened"]


def likely_slip(median: float, name: str) -> UnitSlip | None:
    """The unit mistake of :data:`~xgpp.variables.UNIT_SLIPS` that best explains ``median``.

    A slip that, undone, puts ``median`` inside the variable's ``bounds``: the first such slip
    specific to the variable's unit (kelvin labelled degC), else, of the generic factors, the
    one that puts it nearest the middle of the bounds; None when none does.
    """
    var = get_variable(name)
    lo, hi = var.bounds
    generic = []
    for slip in UNIT_SLIPS:
        if slip.units is not None and var.units not in slip.units:
            continue
        fixed = median * slip.scale + slip.offset
        if lo <= fixed <= hi:
            if slip.units is not None:
                return slip
            generic.append((abs(fixed - (lo + hi) / 2), slip))
    return min(generic, key=lambda f: f[0])[1] if generic else None


def _u(units: str) -> str:
    return "" if units == "1" else f" {units}"


def _refuse_median(finite: np.ndarray, name: str, where: str, units: str | None) -> None:
    if not finite.size:
        return
    var = get_variable(name)
    lo, hi = var.bounds
    median = float(np.median(finite))
    if lo <= median <= hi:
        return
    slip = likely_slip(median, name)
    found = f" (converted from the file's units {units!r})" if units else ""
    hint = (f"They look like {slip.label}: corrected, the median would be "
            f"{median * slip.scale + slip.offset:.4g}{_u(var.units)}."
            if slip else "No common unit mistake explains it.")
    raise UnitError(
        f"{where}: {name} ({var.long_name}) has median {median:.4g}{_u(var.units)}{found}, "
        f"outside the plausible range {lo:g}..{hi:g}{_u(var.units)}; the data are not in the unit their "
        f"'units' attribute says. {hint} Fix the file's 'units' attribute (or the data)."
    )


def _impossible(values: np.ndarray, name: str) -> np.ndarray:
    limits = get_variable(name).limits
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values)
        if limits is not None:
            bad |= (values < limits[0]) | (values > limits[1])
    return bad


def screen(values: np.ndarray, name: str, *, where: str, units: str | None = None) -> np.ndarray:
    """Check canonical ``values`` of variable ``name``; return the mask of impossible values.

    Raises :class:`~xgpp.errors.UnitError` when the median of the finite values lies outside
    the variable's ``bounds`` (``where``: file and field, for the message; ``units``: the
    file's unit attribute).  The mask marks infinities and values outside ``limits``; the
    caller drops and counts them.
    """
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    _refuse_median(finite, name, where, units)
    return _impossible(values, name)


def _check_block(block: np.ndarray, name: str, scale: float, offset: float, where: str,
                 units: str | None) -> np.ndarray:
    if not block.size:
        return block
    values = np.asarray(block, dtype=float) * scale + offset
    finite = values[np.isfinite(values)]
    _refuse_median(finite, name, where, units)
    bad = _impossible(values, name)
    if bad.any():
        var = get_variable(name)
        lo, hi = var.limits or (-np.inf, np.inf)
        example = values[bad].flat[0]
        raise InputError(
            f"{where}: {name} has {int(bad.sum())} of {values.size} value(s) outside the "
            f"physically possible range {lo:g}..{hi:g}{_u(var.units)} (e.g. {example:.4g}); the "
            "file is damaged or mislabelled. Mask them (the variable's _FillValue) or "
            "re-download the file."
        )
    return block


def screened(da: xr.DataArray, name: str, *, where: str, scale: float = 1.0,
             offset: float = 0.0, units: str | None = None) -> xr.DataArray:
    """``da`` with the checks of :func:`screen` run on each chunk when it is computed.

    ``value * scale + offset`` is the canonical value (``da`` itself is returned unchanged).
    Impossible values raise :class:`~xgpp.errors.InputError` rather than being dropped (NaN
    stays missing).  Lazy for dask arrays; numpy arrays are checked now.
    """
    args = (name, float(scale), float(offset), where, units)
    if da.chunks is None:
        _check_block(np.asarray(da.values), *args)
        return da
    return da.copy(data=da.data.map_blocks(_check_block, *args, dtype=da.dtype))
