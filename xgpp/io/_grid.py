"""Regular lat/lon grids in xgpp's convention and binning of points onto them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from xgpp.errors import InputError

__all__ = ["Grid", "check_axis", "make_grid", "GridLike"]

GridLike = float | int | xr.Dataset | xr.DataArray


@dataclass(frozen=True, eq=False)
class Grid:
    """Cell centres of a regular grid: ``lat`` ascending in -90..90, ``lon`` ascending in -180..180.

    Attributes
    ----------
    lat, lon : numpy.ndarray
        Cell centres [degree_north], [degree_east].
    """

    lat: np.ndarray
    lon: np.ndarray

    @property
    def dlat(self) -> float:
        """Cell height [degree]."""
        return float(self.lat[1] - self.lat[0]) if self.lat.size > 1 else 180.0

    @property
    def dlon(self) -> float:
        """Cell width [degree]."""
        return float(self.lon[1] - self.lon[0]) if self.lon.size > 1 else 360.0

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_lat, n_lon)``."""
        return (self.lat.size, self.lon.size)

    def flat_index(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Flat cell index of each point, -1 where the point lies outside the grid.

        Parameters
        ----------
        lat, lon : numpy.ndarray
            Point coordinates [degree_north], [degree_east]; longitudes in 0..360 are wrapped.
        """
        lat = np.asarray(lat, dtype=float)
        lon = (np.asarray(lon, dtype=float) + 180.0) % 360.0 - 180.0
        lat0 = self.lat[0] - self.dlat / 2
        lon0 = self.lon[0] - self.dlon / 2
        with np.errstate(invalid="ignore"):
            i = np.floor((lat - lat0) / self.dlat)
            j = np.floor((lon - lon0) / self.dlon)
            # the north pole and the date line belong to the last cell of a global grid
            i = np.where((lat == lat0 + self.dlat * self.lat.size), self.lat.size - 1, i)
            j = np.where((lon == lon0 + self.dlon * self.lon.size), self.lon.size - 1, j)
            ok = (i >= 0) & (i < self.lat.size) & (j >= 0) & (j < self.lon.size)
        idx = np.where(ok, i * self.lon.size + j, -1)
        return np.nan_to_num(idx, nan=-1).astype(np.int64)

    def coords(self) -> dict[str, xr.DataArray]:
        """``lat``/``lon`` coordinates with CF attributes."""
        return {
            "lat": xr.DataArray(self.lat, dims="lat", attrs={
                "units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}),
            "lon": xr.DataArray(self.lon, dims="lon", attrs={
                "units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}),
        }


def _check_regular(values: np.ndarray, name: str, where: str) -> None:
    if values.size < 2:
        return
    step = np.diff(values)
    if np.any(step <= 0) or not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
        raise InputError(
            f"{where}: coordinate {name!r} must be regularly spaced and ascending (cell centres); "
            f"found spacings from {step.min():.6g} to {step.max():.6g} degree. "
            "Pass xgpp.io.harmonize(ds) first to flip or sort it, or give grid as a resolution."
        )


def check_axis(values: np.ndarray, name: str, where: str) -> None:
    """Refuse a file's ``lat``/``lon`` that is not a regular axis of cell centres.

    Order does not matter (readers flip and sort); longitudes are wrapped to -180..180 first, so
    a regional 0..360 subset across the prime meridian is regular.  Duplicates, gaps, uneven
    spacing, NaN and latitudes beyond +-90 raise :class:`~xgpp.errors.InputError` naming
    ``where`` (the file) and the coordinate.
    """
    v = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(v).all():
        raise InputError(f"{where}: coordinate {name!r} holds {int((~np.isfinite(v)).sum())} "
                         "NaN/infinite value(s); the file is damaged. Re-download it.")
    if name == "lat" and v.size and (v.min() < -90 or v.max() > 90):
        raise InputError(f"{where}: coordinate 'lat' spans {v.min():.6g}..{v.max():.6g}, outside "
                         "-90..90 degree_north; is it in radians or projected metres?")
    if name == "lon":
        v = (v + 180.0) % 360.0 - 180.0
    v = np.sort(v)
    if v.size < 2:
        return
    step = np.diff(v)
    if np.any(step <= 0):
        dup = v[1:][step <= 0][0]
        raise InputError(f"{where}: coordinate {name!r} holds {dup:.6g} twice; each cell centre "
                         "must appear once on a regular grid.")
    if not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
        gap = int(np.argmax(np.abs(step - np.median(step))))
        raise InputError(
            f"{where}: coordinate {name!r} is not regularly spaced: spacings range from "
            f"{step.min():.6g} to {step.max():.6g} degree (e.g. {v[gap]:.6g} -> "
            f"{v[gap + 1]:.6g}; a gap or a missing row). xgpp reads regular lat/lon grids only; "
            "re-download the file or regrid it onto a regular grid first."
        )


def make_grid(grid: GridLike, *, where: str = "grid") -> Grid:
    """Build a :class:`Grid` from a resolution [degree] or a Dataset/DataArray with lat/lon.

    A resolution builds the global grid with cell centres at ``-90 + res/2 ... 90 - res/2`` and
    ``-180 + res/2 ... 180 - res/2``; it must divide 180.
    """
    if isinstance(grid, xr.Dataset | xr.DataArray):
        names = {"lat": ("lat", "latitude"), "lon": ("lon", "longitude")}
        found = {}
        for key, options in names.items():
            hit = [n for n in options if n in grid.coords]
            if not hit:
                raise InputError(
                    f"{where}: the target has no {key!r} coordinate (looked for {list(options)}; "
                    f"it has {sorted(map(str, grid.coords))}). Pass a dataset with lat/lon cell "
                    "centres or a resolution in degrees."
                )
            found[key] = np.asarray(grid[hit[0]].values, dtype=float)
        lat, lon = found["lat"], found["lon"]
        _check_regular(lat, "lat", where)
        _check_regular(lon, "lon", where)
        if lat.min() < -90 or lat.max() > 90 or lon.min() < -180 or lon.max() > 180:
            raise InputError(
                f"{where}: target lat/lon must be cell centres with lat in -90..90 and lon in "
                f"-180..180; found lat {lat.min()}..{lat.max()}, lon {lon.min()}..{lon.max()}. "
                "Run xgpp.io.harmonize on the target first."
            )
        return Grid(lat=lat, lon=lon)
    try:
        res = float(grid)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{where}: expected a resolution in degrees (e.g. 0.5) or an xarray Dataset whose "
            f"lat/lon to use, got {type(grid).__name__}."
        ) from err
    n = 180.0 / res if res > 0 else np.nan
    if not np.isfinite(n) or abs(n - round(n)) > 1e-6:
        raise InputError(
            f"{where}: resolution {res!r} degree must be positive and divide 180 exactly "
            "(e.g. 0.05, 0.1, 0.25, 0.5, 1)."
        )
    nlat = round(n)
    lat = -90.0 + res * (np.arange(nlat) + 0.5)
    lon = -180.0 + res * (np.arange(2 * nlat) + 0.5)
    return Grid(lat=lat, lon=lon)
