"""Time steps of xgpp cubes: ``"8D"`` (MODIS convention), ``"D"`` and ``"MS"``.

Every step is labelled by its START.  ``"8D"`` restarts each 1 January: 46 steps a year
(1 Jan, 9 Jan, ..., 27 Dec), the last one 5 days long (6 in leap years), as MODIS MOD15/MOD17.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xgpp.errors import InputError

__all__ = ["FREQS", "check_freq", "step_start", "step_range", "step_days", "infer_freq"]

FREQS: tuple[str, ...] = ("8D", "D", "MS")


def check_freq(freq: str) -> str:
    """Return ``freq`` if xgpp supports it, else raise an error listing the supported ones."""
    if freq not in FREQS:
        raise InputError(
            f"time step freq={freq!r} is not supported; xgpp cubes use one of {list(FREQS)} "
            "('8D' = MODIS 8-day steps from each 1 January, 'D' = daily, 'MS' = calendar months)."
        )
    return freq


def step_start(times, freq: str) -> pd.DatetimeIndex:
    """Start of the step that contains each time.

    Parameters
    ----------
    times : array-like of datetime64
        Times to label.
    freq : {"8D", "D", "MS"}
        Time step.
    """
    check_freq(freq)
    t = pd.DatetimeIndex(times)
    if freq == "D":
        return t.floor("D")
    if freq == "MS":
        return pd.DatetimeIndex(t.to_period("M").to_timestamp())
    year0 = pd.DatetimeIndex(t.to_period("Y").to_timestamp())
    doy0 = np.asarray((t.floor("D") - year0).days)
    return year0 + pd.to_timedelta((doy0 // 8) * 8, unit="D")


def step_range(start, end, freq: str) -> pd.DatetimeIndex:
    """All step starts from the step containing ``start`` to the one containing ``end``."""
    first, last = step_start([start, end], freq)
    if freq == "D":
        return pd.date_range(first, last, freq="D")
    if freq == "MS":
        return pd.date_range(first, last, freq="MS")
    starts = [
        pd.Timestamp(year=y, month=1, day=1) + pd.Timedelta(days=8 * k)
        for y in range(first.year, last.year + 1) for k in range(46)
    ]
    idx = pd.DatetimeIndex(starts)
    return idx[(idx >= first) & (idx <= last)]


def step_days(starts, freq: str) -> np.ndarray:
    """Length of each step [day], given step starts."""
    s = pd.DatetimeIndex(starts)
    if freq == "D":
        return np.ones(len(s))
    if freq == "MS":
        return np.asarray(s.days_in_month, dtype=float)
    next_year = pd.DatetimeIndex(pd.to_datetime({"year": s.year + 1, "month": 1, "day": 1}))
    end = np.minimum((s + pd.Timedelta(days=8)).values, next_year.values)
    return np.asarray((pd.DatetimeIndex(end) - s).days, dtype=float)


def infer_freq(times) -> str | None:
    """The xgpp step whose labels ``times`` are, or None if none fits."""
    t = pd.DatetimeIndex(times)
    if len(t) < 2:
        return None
    for freq in FREQS:
        if t.equals(step_range(t[0], t[-1], freq)):
            return freq
    return None
