"""Observation operators: how products see the true state.

Models never see the truth.  Meteorology arrives as a reanalysis would give it (a spatially
structured bias plus noise), vegetation indices with noise and cloud gaps, SIF as TROPOMI-like
full-coverage composites with cloud gaps and retrieval noise, or as OCO-2-like narrow tracks.
"""

from __future__ import annotations

import numpy as np

from xgpp.synthetic.config import WorldConfig
from xgpp.synthetic.noise import SmoothField, white_uniform
from xgpp.synthetic.physics import Points, Times, obs_noise

__all__ = ["observe_drivers", "observe_oco2", "observe_tropomi"]

# Reanalysis-like errors at 8-day / grid-cell scale, of the size ERA5 shows against station
# data (Hersbach et al. 2020, QJRMS 146:1999; Tarek et al. 2020): (bias sd, noise sd).
DRIVER_ERRORS = {
    "tair": (0.8, 0.7),    # K
    "vpd": (0.10, 0.12),   # relative (log-normal)
    "ppfd": (0.05, 0.06),  # relative
    "swc": (0.06, 0.05),   # absolute, index units
    "fapar": (0.03, 0.04),  # absolute; MODIS fAPAR uncertainty ~0.05-0.1 (Fensholt et al. 2004)
    "lai": (0.08, 0.10),   # relative
    "nirv": (0.005, 0.01),  # absolute
}


def observe_drivers(state: dict[str, np.ndarray], times: Times, points: Points,
                    land: np.ndarray, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Driver products as observed, shape (T, P); NaN over ocean and in vegetation-index gaps."""
    s, xyz = cfg.seed, points.xyz
    out: dict[str, np.ndarray] = {}

    def bias(name: str) -> np.ndarray:
        return SmoothField(s, "bias_" + name, 1500.0).static(xyz)[None, :]

    def noise(name: str) -> np.ndarray:
        return obs_noise(s, "noise_" + name, times, points)

    b, n = DRIVER_ERRORS["tair"]
    out["tair"] = state["tair"] + b * bias("tair") + n * noise("tair")
    for name in ("vpd", "ppfd"):
        b, n = DRIVER_ERRORS[name]
        out[name] = state[name] * np.exp(b * bias(name) + n * noise(name))
    b, n = DRIVER_ERRORS["swc"]
    out["swc"] = np.clip(state["swc"] + b * bias("swc") + n * noise("swc"), 0.0, 1.0)
    out["co2"] = state["co2"].copy()
    out["patm"] = np.array(state["patm"], dtype=float, copy=True)

    # vegetation indices: noise, and cloud-contamination gaps after compositing (2-6 % of pixels)
    b, n = DRIVER_ERRORS["fapar"]
    out["fapar"] = np.clip(state["fapar"] + b * bias("fapar") + n * noise("fapar"), 0.0, 1.0)
    b, n = DRIVER_ERRORS["lai"]
    out["lai"] = np.maximum(state["lai"] * np.exp(b * bias("lai") + n * noise("lai")), 0.0)
    b, n = DRIVER_ERRORS["nirv"]
    out["nirv"] = state["nirv"] + b * bias("nirv") + n * noise("nirv")
    gap_p = 0.02 + 0.06 * np.clip((state["cloud"] - 0.6) / 0.35, 0.0, 1.0)
    gap = white_uniform(s, "vi_gap", times.day_key[:, None], points.ilat[None, :],
                        points.ilon[None, :]) < gap_p
    for name in ("fapar", "lai", "nirv"):
        out[name] = np.where(gap, np.nan, out[name])
    ocean = ~land[None, :]
    return {k: np.where(ocean, np.nan, v) for k, v in out.items()}


def observe_tropomi(state: dict[str, np.ndarray], times: Times, points: Points,
                    land: np.ndarray, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """TROPOMI-like gridded SIF composites: ``sif`` [mW m-2 nm-1 sr-1] and ``sif_count``.

    Clear-sky retrievals per cell and step scale with cell area, step length and clear fraction
    (about 30 per 0.5-degree cell and 8 days in clear sky, from TROPOMI's 7 x 3.5 km2 pixels and
    cloud-fraction < 0.2 filtering; Guanter et al. 2021, ESSD 13:5423), and whole steps are lost
    under persistent overcast.  Single-retrieval noise
    0.5 mW m-2 nm-1 sr-1 (ibid.), averaged over the count.  Cells with fewer than 3 retrievals
    are gaps.
    """
    s = cfg.seed
    area = (cfg.resolution / 0.5) ** 2 * np.cos(np.deg2rad(points.lat))[None, :]
    clear = np.clip(1.0 - state["cloud"], 0.0, 1.0)
    lam = 30.0 * area * (times.days[:, None] / 8.0) * clear ** 2
    u = white_uniform(s, "tropomi_count", times.day_key[:, None], points.ilat[None, :], points.ilon[None, :])
    count = np.floor(lam + u)  # stochastic rounding keeps the expected count
    noise = obs_noise(s, "tropomi_noise", times, points)
    sif = state["sif"] + 0.5 * noise / np.sqrt(np.maximum(count, 1.0))
    # persistent overcast: cloud systems are larger than cells, so a whole step can be lost
    # whatever the resolution; chance = cloud fraction ** (clear-sky chances, one per 2 days)
    overcast = white_uniform(s, "tropomi_overcast", times.day_key[:, None], points.ilat[None, :],
                             points.ilon[None, :]) < state["cloud"] ** (times.days[:, None] / 2.0)
    count = np.where(overcast, 0.0, count)
    ok = (count >= 3) & land[None, :]
    return {"sif": np.where(ok, sif, np.nan), "sif_count": np.where(land[None, :], count, 0.0)}


# OCO-2: sun-synchronous, 98.2 deg inclination, 233 orbits per 16-day repeat, 13:36 ascending
# node, 8 footprints across a ~10 km swath, ~2.25 km along track (Crisp et al. 2017, AMT 10:59).
_ORBITS_PER_DAY = 233.0 / 16.0
_INCLINATION = np.deg2rad(98.2)
_PERIOD_MIN = 1440.0 / _ORBITS_PER_DAY


def track_longitudes(lat: np.ndarray, day_keys: np.ndarray) -> np.ndarray:
    """Longitudes [degree] of OCO-2-like daytime ground tracks crossing ``lat``.

    Returns shape (len(day_keys), orbits per day, len(lat)).
    """
    n_orb = int(np.ceil(_ORBITS_PER_DAY))
    orbit = day_keys[:, None] * _ORBITS_PER_DAY + np.arange(n_orb)[None, :]
    lon_eq = (-orbit * 360.0 / _ORBITS_PER_DAY) % 360.0  # 24.7 deg west per orbit
    phi = np.deg2rad(lat)
    u = np.arcsin(np.clip(np.sin(phi) / np.sin(_INCLINATION), -1, 1))  # argument of latitude
    dlon = np.rad2deg(np.arctan2(np.cos(_INCLINATION) * np.sin(u), np.cos(u)))
    dlon -= np.rad2deg(u) / 360.0 * _PERIOD_MIN * 0.25  # Earth turns 0.25 deg per minute
    lon = lon_eq[:, :, None] + dlon[None, None, :]
    return (lon + 180.0) % 360.0 - 180.0


def observe_oco2(state: dict[str, np.ndarray], times: Times, lat: np.ndarray, lon: np.ndarray,
                 land: np.ndarray, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """OCO-2-like sparse SIF: soundings only where a track crosses a cell; NaN elsewhere.

    ``state`` arrays are (T, P) over the grid block ``lat`` x ``lon`` (C order).  Returns
    ``sif`` and ``sif_count`` (T, P).  A track crossing yields about 8 footprints per 2.25 km
    along track, times the clear-sky fraction; single-sounding noise 0.5 mW m-2 nm-1 sr-1
    (Sun et al. 2018, RSE 209:808) plus a sub-cell representativeness error of 15 % because the
    10 km swath samples a sliver of the cell.
    """
    res, s = cfg.resolution, cfg.seed
    nlat, nlon = len(lat), len(lon)
    ilon0 = int(np.floor((lon[0] + 180.0) / res))
    crossings = np.zeros((len(times), nlat, nlon))
    for ti in range(len(times)):
        ndays = int(round(times.days[ti]))
        keys = times.day_key[ti] + np.arange(ndays)
        tl = track_longitudes(lat, keys)  # (D, O, nlat)
        jl = np.floor((tl + 180.0) / res).astype(np.int64) - ilon0
        inside = (jl >= 0) & (jl < nlon) & (np.abs(lat)[None, None, :] < 80.0)
        d, o, i = np.nonzero(inside)
        np.add.at(crossings[ti], (i, jl[d, o, i]), 1.0)
    crossings = crossings.reshape(len(times), -1)  # type: ignore[assignment]  # (steps, cells)
    per_track = 8.0 * res * 111.0 / 2.25
    clear = np.clip(1.0 - state["cloud"], 0.0, 1.0)
    ilat = np.floor((lat + 90.0) / res).astype(np.int64)
    gi, gj = np.meshgrid(ilat, ilon0 + np.arange(nlon), indexing="ij")
    pts = Points(np.repeat(lat, nlon), np.tile(lon, nlat), gi.ravel(), gj.ravel())
    u = white_uniform(s, "oco2_count", times.day_key[:, None], pts.ilat[None, :], pts.ilon[None, :])
    count = np.floor(crossings * per_track * clear ** 2 + u) * (crossings > 0)
    n1 = obs_noise(s, "oco2_noise", times, pts)
    n2 = obs_noise(s, "oco2_repr", times, pts)
    sif = state["sif"] * (1.0 + 0.15 * n2) + 0.5 * n1 / np.sqrt(np.maximum(count, 1.0))
    ok = (count >= 5) & land[None, :]
    return {"sif": np.where(ok, sif, np.nan), "sif_count": np.where(land[None, :], count, 0.0)}
