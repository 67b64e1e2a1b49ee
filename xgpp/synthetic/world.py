"""Assemble the twin world into lazy, dask-backed xarray Datasets and write it to Zarr.

Each store is built from a dask graph whose tasks generate one chunk from scratch with the
point kernels in :mod:`xgpp.synthetic.physics`; no task depends on another, so a 0.25-degree,
20-year world streams to storage chunk by chunk with memory bounded by a few chunks.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from xgpp._version import __version__
from xgpp.errors import UnknownOptionError
from xgpp.landcover import flag_attrs
from xgpp.synthetic.config import VARIANTS, WorldConfig
from xgpp.synthetic.observe import observe_drivers, observe_oco2, observe_tropomi
from xgpp.synthetic.physics import Points, Times, static_state, time_axis, true_state
from xgpp.synthetic.sites import place_sites, site_gpp
from xgpp.variables import DRIVERS, attrs_for

__all__ = ["CEILING_ATTRS", "PRODUCTS", "SLOPE_FACTOR_ATTRS", "World", "make_world"]

#: The stores of a world, in the order they are written.
PRODUCTS: tuple[str, ...] = ("drivers", "truth", "sif_tropomi", "sif_oco2", "sites")
_CORE = (*DRIVERS, "gpp", "gpp_ceiling")

#: Attributes of the truth store's ``gpp_ceiling``.
CEILING_ATTRS: dict[str, str] = {
    "long_name": "driver ceiling of GPP: truth with the unobserved efficiency at its expectation",
    "units": "gC m-2 d-1",
    "description": (
        "The best any model of the observed drivers could do: truth GPP from the noise-free "
        "true state with the unobserved physiological efficiency field (log-normal, mean one) "
        "replaced by its expectation 1, i.e. gpp / efficiency * E[efficiency], the conditional "
        "mean of GPP given everything else. Optimistic: it also assumes error-free drivers and "
        "exact knowledge of every other process (biome efficiency, soil-moisture stress, light "
        "saturation). SIF sees the efficiency field, so SIF-based models may exceed this "
        "ceiling; a model that memorises location near dense towers can partly learn the "
        "efficiency field too. See docs/twin_world.md."
    ),
    "comment": "never seen by models",
}
#: Attributes of the truth store's ``sif_slope_factor``.
SLOPE_FACTOR_ATTRS: dict[str, str] = {
    "long_name": "within-class multiplier of the biome GPP/SIF slope",
    "units": "1",
    "description": (
        "Time-invariant pixel factor on BIOME['sif_slope'] from the C3/C4 mixture and canopy "
        "structure (WorldConfig.slope_spread); 1 on land when slope_spread is 'none'. Applied "
        "to SIF only: GPP is unchanged. See docs/twin_world.md."
    ),
    "comment": "never seen by models",
}


@dataclass(frozen=True)
class World:
    """A twin world: its config and one lazy Dataset per product."""

    config: WorldConfig
    drivers: xr.Dataset
    truth: xr.Dataset
    sif_tropomi: xr.Dataset
    sif_oco2: xr.Dataset
    sites: xr.Dataset

    @property
    def datasets(self) -> dict[str, xr.Dataset]:
        """Products by store name."""
        return {name: getattr(self, name) for name in PRODUCTS}

    def __repr__(self) -> str:
        c = self.config
        return (f"<xgpp World {c.variant!r} seed={c.seed} {c.resolution} deg {c.start}..{c.end} "
                f"{c.freq}: {self.drivers.sizes['time']} steps, {self.sites.sizes['site']} sites>")


# ----------------------------------------------------------------------------- block kernels
@functools.lru_cache(maxsize=8)
def _config(cfg_json: str) -> WorldConfig:
    return WorldConfig.from_dict(json.loads(cfg_json))


@functools.lru_cache(maxsize=16)
def _times(cfg_json: str, product: str) -> Times:
    cfg = _config(cfg_json)
    times = time_axis(cfg.start, cfg.end, cfg.freq)
    first = {"sif_tropomi": cfg.tropomi_start, "sif_oco2": cfg.oco2_start}.get(product)
    if first is not None:
        times = times[slice(int(np.searchsorted(times.start, pd.Timestamp(first))), None)]
    return times


def _grid(cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    r = cfg.resolution
    nlat, nlon = round(180 / r), round(360 / r)
    return -90.0 + (np.arange(nlat) + 0.5) * r, -180.0 + (np.arange(nlon) + 0.5) * r


def _block(cfg_json: str, product: str, t0: int, t1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Generate one chunk of a product: array (variable, time, lat, lon) float32.

    A chunk without time steps (a product whose window starts after the world's record) is an
    empty array: the physics is never run on zero steps (pyrealm cannot reduce empty arrays).
    """
    nvar = len(_CORE) if product == "core" else 2
    if t1 <= t0:
        return np.empty((nvar, 0, y1 - y0, x1 - x0), dtype=np.float32)
    cfg = _config(cfg_json)
    lat, lon = _grid(cfg)
    lat, lon = lat[y0:y1], lon[x0:x1]
    times = _times(cfg_json, product)[slice(t0, t1)]
    pts = Points.grid(lat, lon, cfg.resolution)
    st = static_state(pts, cfg)
    state = true_state(times, pts, st, cfg)
    if product == "core":
        obs = observe_drivers(state, times, pts, st["land"], cfg)
        obs["gpp"] = state["gpp"]
        obs["gpp_ceiling"] = state["gpp_ceiling"]
        names = _CORE
    elif product == "sif_tropomi":
        obs, names = observe_tropomi(state, times, pts, st["land"], cfg), ("sif", "sif_count")
    else:
        obs, names = observe_oco2(state, times, lat, lon, st["land"], cfg), ("sif", "sif_count")
    shape = (len(times), len(lat), len(lon))
    return np.stack([obs[n].reshape(shape) for n in names]).astype(np.float32)


def _static_block(cfg_json: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    cfg = _config(cfg_json)
    lat, lon = _grid(cfg)
    pts = Points.grid(lat[y0:y1], lon[x0:x1], cfg.resolution)
    st = static_state(pts, cfg)
    shape = (y1 - y0, x1 - x0)
    return np.stack([st["igbp"].reshape(shape), st["land"].reshape(shape),
                     np.where(st["land"], st["elevation"], np.nan).reshape(shape)]).astype(np.float32)


def _static_truth_block(cfg_json: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Static true fields of the truth store: array (1, lat, lon) float32, NaN over ocean."""
    cfg = _config(cfg_json)
    lat, lon = _grid(cfg)
    pts = Points.grid(lat[y0:y1], lon[x0:x1], cfg.resolution)
    st = static_state(pts, cfg)
    shape = (y1 - y0, x1 - x0)
    factor = np.where(st["land"], st["sif_slope_factor"], np.nan).reshape(shape)
    return factor[None].astype(np.float32)


def _chunks(n: int, size: int) -> tuple[int, ...]:
    size = max(1, min(size, n)) if n else 1
    return tuple([size] * (n // size) + ([n % size] if n % size else [])) or (0,)


def _bounds(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(chunks)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _stacked(cfg: WorldConfig, product: str, nvar: int) -> tuple[da.Array, Times]:
    cfg_json = cfg.to_json()
    times = _times(cfg_json, "core" if product == "core" else product)
    lat, lon = _grid(cfg)
    tc = _chunks(len(times), cfg.chunks["time"])
    yc, xc = _chunks(len(lat), cfg.chunks["lat"]), _chunks(len(lon), cfg.chunks["lon"])
    name = f"xgpp-world-{product}-" + tokenize(cfg_json, product)
    dsk = {}
    for i, (t0, t1) in enumerate(_bounds(tc)):
        for j, (y0, y1) in enumerate(_bounds(yc)):
            for k, (x0, x1) in enumerate(_bounds(xc)):
                dsk[(name, 0, i, j, k)] = (_block, cfg_json, product, t0, t1, y0, y1, x0, x1)
    return da.Array(dsk, name, chunks=((nvar,), tc, yc, xc), dtype=np.float32), times


def _static(cfg: WorldConfig, kind: str = "drivers") -> da.Array:
    """Static fields, one task per (lat, lon) chunk: the drivers' three or the truth's one."""
    cfg_json = cfg.to_json()
    lat, lon = _grid(cfg)
    yc, xc = _chunks(len(lat), cfg.chunks["lat"]), _chunks(len(lon), cfg.chunks["lon"])
    func, nvar = (_static_block, 3) if kind == "drivers" else (_static_truth_block, 1)
    name = f"xgpp-world-static-{kind}-" + tokenize(cfg_json, kind)
    dsk = {(name, 0, j, k): (func, cfg_json, y0, y1, x0, x1)
           for j, (y0, y1) in enumerate(_bounds(yc)) for k, (x0, x1) in enumerate(_bounds(xc))}
    return da.Array(dsk, name, chunks=((nvar,), yc, xc), dtype=np.float32)


# ----------------------------------------------------------------------------- datasets
def _coords(cfg: WorldConfig, times: Times) -> dict[str, Any]:
    lat, lon = _grid(cfg)
    return {
        "time": ("time", times.start.values, {"long_name": "start of time step", "standard_name": "time"}),
        "lat": ("lat", lat, {"long_name": "latitude of cell centre", "units": "degrees_north",
                             "standard_name": "latitude", "axis": "Y"}),
        "lon": ("lon", lon, {"long_name": "longitude of cell centre", "units": "degrees_east",
                             "standard_name": "longitude", "axis": "X"}),
    }


def _global_attrs(cfg: WorldConfig, product: str, title: str) -> dict[str, Any]:
    return {
        "title": f"xgpp twin world: {title}",
        "Conventions": "CF-1.10",
        "source": "xgpp.synthetic (observing-system simulation experiment; see docs/twin_world.md)",
        "product": product,
        "xgpp_version": __version__,
        "world_config": cfg.to_json(),
        "time_step": cfg.freq,
    }


def _drivers_truth(cfg: WorldConfig) -> tuple[xr.Dataset, xr.Dataset]:
    core, times = _stacked(cfg, "core", len(_CORE))
    dims = ("time", "lat", "lon")
    coords = _coords(cfg, times)
    drivers = xr.Dataset(
        {n: (dims, core[i], attrs_for(n)) for i, n in enumerate(DRIVERS)}, coords=coords,
        attrs=_global_attrs(cfg, "drivers", "driver cube as observation products give it"),
    )
    static = _static(cfg)
    drivers["igbp"] = (("lat", "lon"), static[0].astype(np.int8), flag_attrs())
    drivers["land_mask"] = (("lat", "lon"), static[1].astype(np.int8), attrs_for("land_mask"))
    drivers["elevation"] = (("lat", "lon"), static[2], attrs_for("elevation"))
    gpp_attrs = {**attrs_for("gpp"), "comment": "true GPP of the twin world (never seen by models)"}
    truth = xr.Dataset({"gpp": (dims, core[len(DRIVERS)], gpp_attrs),
                        "gpp_ceiling": (dims, core[len(DRIVERS) + 1], CEILING_ATTRS)},
                       coords=coords,
                       attrs=_global_attrs(cfg, "truth", "true gross primary productivity"))
    truth["sif_slope_factor"] = (("lat", "lon"), _static(cfg, "truth")[0], SLOPE_FACTOR_ATTRS)
    return drivers, truth


#: First date of each satellite product's record, by the WorldConfig field holding it.
_WINDOW_FIELD = {"sif_tropomi": "tropomi_start", "sif_oco2": "oco2_start"}


def _sif(cfg: WorldConfig, product: str, label: str) -> xr.Dataset:
    """A SIF product; an EMPTY store (0 time steps) when the record ends before its window.

    The empty store has the grid, variables and attributes of a full one, so readers of the
    world (``xr.open_zarr``, :func:`xgpp.open_cube` through the catalog) open it unchanged;
    its attributes ``time_steps = 0`` and ``empty_store`` say why it holds nothing.
    """
    arr, times = _stacked(cfg, product, 2)
    dims = ("time", "lat", "lon")
    window_start = str(getattr(cfg, _WINDOW_FIELD[product]))
    attrs = {**_global_attrs(cfg, product, label), "product_window_start": window_start}
    if len(times) == 0:
        attrs["time_steps"] = 0
        attrs["empty_store"] = (
            f"the world's record {cfg.start}..{cfg.end} ends before the {label} window, which "
            f"starts {window_start} (WorldConfig.{_WINDOW_FIELD[product]}): this store holds 0 "
            "time steps on the world's grid. Make a world whose end is on or after that date to "
            "get observations."
        )
    ds = xr.Dataset(
        {"sif": (dims, arr[0], {**attrs_for("sif"), "comment": f"{label}, 740 nm, daily-corrected"}),
         "sif_count": (dims, arr[1], attrs_for("sif_count"))},
        coords=_coords(cfg, times), attrs=attrs,
    )
    if len(times) == 0:
        # dask chunks of size 0 give Zarr no chunk shape: store the world's chunking instead
        lat, lon = _grid(cfg)
        zchunks = (int(cfg.chunks["time"]), min(int(cfg.chunks["lat"]), len(lat)),
                   min(int(cfg.chunks["lon"]), len(lon)))
        for v in ("sif", "sif_count"):
            ds[v].encoding["chunks"] = zchunks
    return ds


def _sites(cfg: WorldConfig) -> xr.Dataset:
    sites = place_sites(cfg)
    times = time_axis(cfg.start, cfg.end, cfg.freq)
    data = da.from_delayed(dask.delayed(site_gpp, pure=True)(cfg, sites, times),
                           shape=(len(sites["site"]), len(times)), dtype=float).astype(np.float32)
    ds = xr.Dataset(
        {"gpp": (("site", "time"), data,
                 {**attrs_for("gpp"), "comment": "EC tower GPP: footprint truth with EC error",
                  "gpp_variable": "GPP_NT_VUT_REF (synthetic)"})},
        # object (variable-length UTF-8) strings: Zarr v3 has a stable spec for them, not for
        # fixed-width unicode
        coords={"site": ("site", sites["site"].astype(object), {"long_name": "site id"}),
                "time": _coords(cfg, times)["time"],
                "lat": ("site", sites["lat"], {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("site", sites["lon"], {"units": "degrees_east", "standard_name": "longitude"}),
                "igbp": ("site", sites["igbp"].astype(object), {"long_name": "IGBP class code of the footprint"})},
        attrs=_global_attrs(cfg, "sites", "eddy-covariance site records"),
    )
    return ds


def make_world(resolution: float = 1.0, start: str = "2017-01-01", end: str = "2020-12-31",
               freq: str = "8D", seed: int | None = None, variant: str = "default",
               chunks: dict[str, int] | None = None, **overrides: Any) -> World:
    """Build a twin world: lazily generated, dask-backed Datasets whose true GPP is known.

    Parameters
    ----------
    resolution : float
        Grid spacing [degree]; must divide 180.
    start, end : str
        First and last date (inclusive).
    freq : {"8D", "D", "MS"}
        Time step; ``"8D"`` follows MODIS (46 steps a year from each 1 January).
    seed : int, optional
        Seed of all random fields (default: the variant's, else 0).
    variant : str
        One of :data:`xgpp.synthetic.VARIANTS`.
    chunks : dict, optional
        Store chunk sizes, default ``{"time": 46, "lat": 90, "lon": 90}``.
    **overrides
        Any other :class:`WorldConfig` field.

    Returns
    -------
    World
        ``drivers``, ``truth``, ``sif_tropomi``, ``sif_oco2`` and ``sites`` Datasets.
    """
    if variant not in VARIANTS:
        raise UnknownOptionError(f"unknown world variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    fields: dict[str, Any] = {"resolution": float(resolution), "start": str(start), "end": str(end),
                              "freq": freq, "variant": variant, **VARIANTS[variant], **overrides}
    if seed is not None:
        fields["seed"] = int(seed)
    if chunks is not None:
        fields["chunks"] = {"time": 46, "lat": 90, "lon": 90, **chunks}
    cfg = WorldConfig(**fields)
    drivers, truth = _drivers_truth(cfg)
    return World(cfg, drivers, truth, _sif(cfg, "sif_tropomi", "TROPOMI-like SIF"),
                 _sif(cfg, "sif_oco2", "OCO-2-like SIF"), _sites(cfg))
