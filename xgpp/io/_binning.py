"""Lazy binning of scattered soundings onto a (time, lat, lon) cube: one dask task per step.

Each output time step is one ``dask.delayed`` call that reads only the files of that step, one at
a time, and accumulates ``(sum, count)`` per grid cell with :func:`numpy.bincount`.  Only the
gridded result of a step is ever held in memory, never all soundings of the archive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import InputError, UnitError
from xgpp.io._grid import Grid
from xgpp.io._paths import basename
from xgpp.io._time import step_range, step_start
from xgpp.variables import attrs_for

__all__ = ["Points", "binned_cube", "check_lengths", "date_from_name", "decode_cf_time",
           "one_file_per_day"]

log = logging.getLogger("xgpp.io")

_CF_UNITS = {"milliseconds": "ms", "millisecond": "ms", "ms": "ms", "seconds": "s", "second": "s",
             "s": "s", "minutes": "min", "hours": "h", "days": "D"}

#: per-step sounding statistics, in the order :func:`_bin_step` counts them
_STAT_NAMES = {"read": "soundings read",
               "rejected": "soundings rejected by quality/cloud/fill filters",
               "outside": "soundings outside the grid"}


@dataclass
class Points:
    """Soundings of one file after filtering.

    Attributes
    ----------
    lat, lon : numpy.ndarray
        Sounding centres [degree_north], [degree_east].
    values : dict of str to numpy.ndarray
        Canonical variable name to values in canonical units (NaN = not usable).
    n_read : int
        Soundings in the file.
    n_rejected : int
        Soundings removed by quality, cloud or fill-value filters.
    """

    lat: np.ndarray
    lon: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    n_read: int = 0
    n_rejected: int = 0


def decode_cf_time(values: np.ndarray, units: str, *, where: str = "") -> pd.DatetimeIndex:
    """Decode ``"<unit> since <date>"`` numbers into datetimes."""
    m = re.match(r"\s*(\w+)\s+since\s+(.+)$", str(units))
    if not m or m.group(1).lower() not in _CF_UNITS:
        raise UnitError(
            f"{where}: time units {units!r} are not of the CF form '<unit> since <date>' with "
            f"unit in {sorted(set(_CF_UNITS))}."
        )
    ref = pd.Timestamp(m.group(2).strip().replace("UTC", "").strip())
    ref = ref.tz_localize(None) if ref.tzinfo else ref
    step = pd.to_timedelta(np.asarray(values, dtype=float), unit=_CF_UNITS[m.group(1).lower()])
    return pd.DatetimeIndex(ref + step)


def date_from_name(url: str, patterns: Sequence[str]) -> pd.Timestamp | None:
    """Date encoded in a file name by one of ``patterns`` (regex with groups Y, m, d), or None."""
    name = basename(url)
    for pat in patterns:
        m = re.search(pat, name)
        if m:
            y, mo, d = (int(g) for g in m.groups())
            y = y + 2000 if y < 100 else y
            try:
                return pd.Timestamp(year=y, month=mo, day=d)
            except ValueError:
                continue
    return None


def check_lengths(url: str, **arrays: np.ndarray) -> None:
    """Refuse a file whose per-sounding fields do not have one value per sounding."""
    sizes = {k: int(np.size(v)) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"{basename(url)}: per-sounding fields differ in length {sizes}; each "
                         "must hold one value per sounding. The file is damaged; re-download it.")


def one_file_per_day(dates: dict[str, pd.Timestamp], what: str) -> None:
    """Refuse two daily files of one date (two versions of a day would count it twice)."""
    seen: dict[pd.Timestamp, str] = {}
    for url, day in sorted(dates.items()):
        if day in seen:
            raise InputError(
                f"{what} files {basename(seen[day])} and {basename(url)} are both dated "
                f"{day.date()}; a daily product has one file per day (two versions or "
                "processings of one day?) and its soundings would count twice. Keep one."
            )
        seen[day] = url


def _bin_step(urls: list[str], reader: Callable[[str], Points], grid: Grid,
              names: tuple[str, ...], label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ncell = grid.shape[0] * grid.shape[1]
    sums = np.zeros((len(names), ncell))
    counts = np.zeros((len(names), ncell))
    stats = np.zeros(3, dtype=np.int64)  # read, rejected, outside the grid
    for url in urls:
        pts = reader(url)
        idx = grid.flat_index(pts.lat, pts.lon)
        inside = idx >= 0
        stats += [pts.n_read, pts.n_rejected, int((~inside).sum())]
        for k, name in enumerate(names):
            v = pts.values[name]
            ok = inside & np.isfinite(v)
            sums[k] += np.bincount(idx[ok], weights=v[ok], minlength=ncell)
            counts[k] += np.bincount(idx[ok], minlength=ncell)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, np.nan)
    log.info("binned step %s from %d file(s): %d soundings read, %d rejected by filters, "
             "%d outside the grid", label, len(urls), *stats)
    shape = (len(names), *grid.shape)
    return (means.reshape(shape).astype(np.float32),
            counts[0].reshape(grid.shape).astype(np.int32), stats)


def binned_cube(files_by_step: dict[pd.Timestamp, list[str]], reader: Callable[[str], Points],
                grid: Grid, names: tuple[str, ...], freq: str, *,
                count_name: str = "sif_count") -> xr.Dataset:
    """Lazy ``(time, lat, lon)`` cube of per-cell means of ``names`` and the count of ``names[0]``.

    Steps without files are all-NaN with a zero count.  Per-step sounding statistics travel as
    lazy coordinates ``n_soundings_read``, ``n_soundings_rejected`` and ``n_soundings_outside``.
    """
    times = step_range(min(files_by_step), max(files_by_step), freq)
    nlat, nlon = grid.shape
    means, counts, stats = [], [], []
    for t in times:
        urls = files_by_step.get(t)
        if urls:
            d = dask.delayed(_bin_step, nout=3, pure=True)(
                urls, reader, grid, names, str(t.date()),
                dask_key_name=f"xgpp-bin-{'-'.join(names)}-{t.date()}-{dask.base.tokenize(urls)}",
            )
            means.append(da.from_delayed(d[0], (len(names), nlat, nlon), dtype=np.float32))
            counts.append(da.from_delayed(d[1], (nlat, nlon), dtype=np.int32))
            stats.append(da.from_delayed(d[2], (3,), dtype=np.int64))
        else:
            means.append(da.full((len(names), nlat, nlon), np.nan, dtype=np.float32,
                                 chunks=(len(names), nlat, nlon)))
            counts.append(da.zeros((nlat, nlon), dtype=np.int32, chunks=(nlat, nlon)))
            stats.append(da.zeros(3, dtype=np.int64, chunks=3))
    mean = da.stack(means, axis=1)
    count = da.stack(counts, axis=0)
    stat = da.stack(stats, axis=1)
    coords = {"time": ("time", times.values, {"long_name": "start of the time step"}),
              **grid.coords()}
    for k, (label, long_name) in enumerate(_STAT_NAMES.items()):
        coords[f"n_soundings_{label}"] = ("time", stat[k], {"long_name": long_name, "units": "1"})
    data = {name: (("time", "lat", "lon"), mean[k], attrs_for(name))
            for k, name in enumerate(names)}
    data[count_name] = (("time", "lat", "lon"), count, attrs_for("sif_count"))
    return xr.Dataset(data, coords=coords)


def group_by_step(dates: dict[str, pd.Timestamp], freq: str) -> dict[pd.Timestamp, list[str]]:
    """Group file URLs by the step start of their dates."""
    out: dict[pd.Timestamp, list[str]] = {}
    urls = list(dates)
    starts = step_start([dates[u] for u in urls], freq)
    for url, s in zip(urls, starts, strict=True):
        out.setdefault(pd.Timestamp(s), []).append(url)
    return out
