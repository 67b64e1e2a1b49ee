"""Model inputs: which variables, which derived static features, and their normalisation.

A :class:`FeatureSpec` turns *columns* (a dict of equal-length 1-D arrays: one per dataset
variable, plus ``lat``/``lon``) into a float32 feature matrix.  The same kernel serves grid
pre-training batches, site samples and prediction, so a model sees identical features in all
three.  Normalisation statistics are computed by streaming per-chunk sums (dask reductions),
never by loading a cube.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from xgpp.errors import InputError, NotFoundError
from xgpp.landcover import IGBP_CODES
from xgpp.variables import DRIVERS, VARIABLES

__all__ = [
    "ConstantFeatureWarning",
    "FeatureConfig",
    "FeatureSpec",
    "columns_from_dataset",
    "streaming_moments",
]

N_IGBP = len(IGBP_CODES)


class ConstantFeatureWarning(UserWarning):
    """A model input has zero variance in the data its statistics came from."""


@dataclass(frozen=True)
class FeatureConfig:
    """Which inputs a model takes (FLUXCOM-like static features are optional).

    Attributes
    ----------
    drivers : tuple of str
        Time-varying canonical variables (see :data:`xgpp.variables.DRIVERS`).
    igbp : {"onehot", "embedding", None}
        Encoding of the static IGBP class: 17 one-hot columns, one class-index column fed to
        an ``nn.Embedding``, or not used.
    latlon : bool
        Add sin/cos of latitude and longitude (4 columns, radians).
    elevation : bool
        Add normalised surface elevation [m].
    """

    drivers: tuple[str, ...] = DRIVERS
    igbp: str | None = "onehot"
    latlon: bool = True
    elevation: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "drivers", tuple(self.drivers))
        unknown = [d for d in self.drivers if d not in VARIABLES]
        if unknown:
            raise InputError(f"unknown driver(s) {unknown}; canonical variables are "
                             f"{sorted(VARIABLES)}.")
        if self.igbp not in ("onehot", "embedding", None):
            raise InputError(f"FeatureConfig.igbp={self.igbp!r}; use 'onehot', 'embedding' "
                             "or None.")
        if not self.drivers:
            raise InputError("FeatureConfig needs at least one driver.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["drivers"] = list(self.drivers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "drivers": tuple(d.get("drivers", DRIVERS))})

    @property
    def scaled(self) -> tuple[str, ...]:
        """Inputs normalised by mean and std: the drivers, then ``elevation`` if used."""
        return tuple(self.drivers) + (("elevation",) if self.elevation else ())

    @property
    def inputs(self) -> tuple[str, ...]:
        """Dataset variables needed (drivers, then static ones)."""
        static = (("igbp",) if self.igbp else ()) + (("elevation",) if self.elevation else ())
        return tuple(self.drivers) + static


def streaming_moments(ds: xr.Dataset, names: tuple[str, ...] | list[str]) -> dict[str, tuple]:
    """Mean and standard deviation of each variable by per-chunk sums (one pass, lazy-safe).

    Parameters
    ----------
    ds : xarray.Dataset
        Dask-backed or in-memory data.
    names : sequence of str
        Variables to summarise; NaNs are ignored.

    Returns
    -------
    dict
        ``name -> (mean, std, count)`` in the variable's units (float64).

    Raises
    ------
    ValueError
        If a variable has no finite value.
    """
    import dask

    parts = []
    for n in names:
        x = ds[n].astype("float64")
        parts.append((x.sum(skipna=True).data, (x * x).sum(skipna=True).data,
                      x.notnull().sum().data))
    from xgpp._chunks import naming_unreadable

    with naming_unreadable(ds, list(names)):
        computed = dask.compute(*parts)
    out = {}
    for n, (s, ss, c) in zip(names, computed, strict=True):
        s, ss, c = float(s), float(ss), int(c)
        if c == 0:
            raise InputError(
                f"variable {n!r} is all-NaN (0 finite values of {ds[n].size}); a model cannot "
                "learn from it. Fix the input or drop it from FeatureConfig.drivers."
            )
        mean = s / c
        var = max(ss / c - mean * mean, 0.0)
        out[n] = (mean, float(np.sqrt(var)), c)
    return out


def columns_from_dataset(ds: xr.Dataset, names: tuple[str, ...] | list[str]) -> dict:
    """Flatten a gridded or sample dataset into columns (1-D arrays of equal length).

    Gridded data (``time``, ``lat``, ``lon``) are stacked in ``(time, lat, lon)`` order; static
    ``(lat, lon)`` fields and the ``lat``/``lon`` coordinates are broadcast.  Sample data (one
    ``sample`` dimension) are taken as they are.

    Parameters
    ----------
    ds : xarray.Dataset
        In-memory (or small) dataset.
    names : sequence of str
        Variables to return; ``lat`` and ``lon`` are always added.

    Returns
    -------
    dict
        ``name -> 1-D numpy array``.
    """
    if "sample" in ds.dims:
        cols = {n: np.asarray(ds[n].values).reshape(-1) for n in names}
        cols["lat"] = np.asarray(ds["lat"].values, np.float32).reshape(-1)
        cols["lon"] = np.asarray(ds["lon"].values, np.float32).reshape(-1)
        return cols
    nt = ds.sizes.get("time", 1)
    ny, nx = ds.sizes["lat"], ds.sizes["lon"]
    shape = (nt, ny, nx)
    cols = {}
    for n in names:
        da = ds[n]
        order = [d for d in ("time", "lat", "lon") if d in da.dims]
        arr = np.asarray(da.transpose(*order).values)
        if "time" not in da.dims and "time" in ds.dims:
            arr = np.broadcast_to(arr[None], shape)
        cols[n] = arr.reshape(-1)
    lat = np.asarray(ds["lat"].values, np.float32)
    lon = np.asarray(ds["lon"].values, np.float32)
    cols["lat"] = np.broadcast_to(lat[None, :, None], shape).reshape(-1)
    cols["lon"] = np.broadcast_to(lon[None, None, :], shape).reshape(-1)
    return cols


@dataclass(frozen=True)
class FeatureSpec:
    """A :class:`FeatureConfig` plus its normalisation statistics.

    Attributes
    ----------
    config : FeatureConfig
    mean, std : dict
        Per normalised input (drivers and elevation), in the variable's canonical units.
    """

    config: FeatureConfig
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    # ---- construction
    @classmethod
    def fit(cls, config: FeatureConfig, drivers: xr.Dataset, *, stacklevel: int = 2
            ) -> FeatureSpec:
        """Compute normalisation statistics from a (lazy) driver cube by streaming.

        Constant inputs warn (:class:`ConstantFeatureWarning`) and get ``std = 1``; all-NaN
        inputs raise ``ValueError``.
        """
        names = list(config.scaled)
        missing = [n for n in names + (["igbp"] if config.igbp else []) if n not in drivers]
        if missing:
            raise NotFoundError(f"driver dataset lacks {missing} needed by the feature config; it has "
                           f"{sorted(map(str, drivers.data_vars))}.")
        moments = streaming_moments(drivers, names)
        mean, std = {}, {}
        for n, (m, s, _) in moments.items():
            if not s > 1e-12 * max(1.0, abs(m)):
                warnings.warn(
                    f"input {n!r} is constant ({m:.6g} {VARIABLES[n].units}) in the training "
                    "cube: it carries no information and is only centred (std set to 1).",
                    ConstantFeatureWarning, stacklevel=stacklevel + 1,
                )
                s = 1.0
            mean[n], std[n] = m, s
        return cls(config, mean, std)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"config": self.config.to_dict(), "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(FeatureConfig.from_dict(d["config"]), dict(d["mean"]), dict(d["std"]))

    # ---- description
    @property
    def inputs(self) -> tuple[str, ...]:
        """Dataset variables needed."""
        return self.config.inputs

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the feature columns, in order."""
        c = self.config
        out = list(c.scaled)
        if c.latlon:
            out += ["sin_lat", "cos_lat", "sin_lon", "cos_lon"]
        if c.igbp == "onehot":
            out += [f"igbp_{code}" for code in IGBP_CODES]
        elif c.igbp == "embedding":
            out.append("igbp_class")
        return tuple(out)

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return len(self.names)

    @property
    def igbp_slice(self) -> tuple[int, int] | None:
        """Column range ``(start, stop)`` of the IGBP encoding, or None."""
        if not self.config.igbp:
            return None
        start = self.n_features - (N_IGBP if self.config.igbp == "onehot" else 1)
        return start, self.n_features

    @property
    def embed_column(self) -> int | None:
        """Column of the IGBP class index fed to an embedding (``igbp="embedding"``), or None."""
        sl = self.igbp_slice
        return sl[0] if self.config.igbp == "embedding" and sl is not None else None

    # ---- the kernel
    def valid_mask(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Rows where every input is finite (and the IGBP class is a known class)."""
        n = len(next(iter(cols.values())))
        ok = np.ones(n, bool)
        for name in self.config.scaled:
            ok &= np.isfinite(cols[name])
        if self.config.igbp:
            cls_ = cols["igbp"]
            if np.issubdtype(np.asarray(cls_).dtype, np.floating):
                ok &= np.isfinite(cls_)
                cls_ = np.where(np.isfinite(cls_), cls_, -1)
            ok &= (cls_ >= 0) & (cls_ < N_IGBP)
        return ok

    def scale_into(self, name: str, col: np.ndarray, out: np.ndarray) -> None:
        """Write input ``name``'s normalised column ``(col - mean) / std`` into ``out``.

        The arithmetic :meth:`transform` does for each scaled input (float32, the same two
        operations), so a feature matrix assembled column by column has its bits.
        """
        np.subtract(np.asarray(col, np.float32), np.float32(self.mean[name]), out=out)
        out *= np.float32(1.0 / self.std[name])

    def transform(self, cols: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Columns -> normalised float32 feature matrix ``(n, n_features)``.

        Rows with any non-finite input give NaN (or an undefined one-hot) in the output; use
        :meth:`valid_mask` to select rows first.
        """
        c = self.config
        n = len(next(iter(cols.values())))
        x = out if out is not None else np.empty((n, self.n_features), np.float32)
        j = 0
        for name in c.scaled:
            self.scale_into(name, cols[name], x[:, j])
            j += 1
        if c.latlon:
            lat = np.deg2rad(np.asarray(cols["lat"], np.float32))
            lon = np.deg2rad(np.asarray(cols["lon"], np.float32))
            x[:, j], x[:, j + 1] = np.sin(lat), np.cos(lat)
            x[:, j + 2], x[:, j + 3] = np.sin(lon), np.cos(lon)
            j += 4
        if c.igbp == "onehot":
            cls_ = np.asarray(cols["igbp"])
            cls_ = np.clip(np.nan_to_num(cls_, nan=0), 0, N_IGBP - 1).astype(np.intp)
            x[:, j:j + N_IGBP] = 0.0
            x[np.arange(n), j + cls_] = 1.0
        elif c.igbp == "embedding":
            x[:, j] = np.asarray(cols["igbp"], np.float32)
        return x

    def check(self, ds: xr.Dataset, *, where: str = "dataset") -> None:
        """Raise a clear error when ``ds`` lacks an input or has the wrong units or dims."""
        for name in self.inputs:
            var = VARIABLES[name]
            if name not in ds:
                raise NotFoundError(
                    f"{where} has no variable {name!r} ({var.long_name} [{var.units}]), which "
                    f"this model needs; it has {sorted(map(str, ds.data_vars))}. Inputs: "
                    f"{list(self.inputs)}."
                )
            units = ds[name].attrs.get("units")
            if units != var.units:
                raise InputError(
                    f"variable {name!r} in {where} has units {units!r}, expected {var.units!r}."
                    f" Convert with xgpp.variables.normalise_units(ds[{name!r}])."
                )
            dims = set(ds[name].dims)
            ok = (dims == {"sample"}) if "sample" in ds.dims else (
                {"lat", "lon"} <= dims <= {"time", "lat", "lon"})
            if not ok:
                expected = ("sample",) if "sample" in ds.dims else var.dims
                raise InputError(
                    f"variable {name!r} in {where} has dims {tuple(ds[name].dims)}, expected "
                    f"{expected}. Transpose or rename its dimensions."
                )
        for coord in ("lat", "lon"):
            if coord not in ds.variables:
                raise NotFoundError(f"{where} has no {coord!r} coordinate; xgpp grids use 'lat' "
                               "[degree_north] and 'lon' [degree_east].")
