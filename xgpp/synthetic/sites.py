"""Eddy-covariance sites of the twin world: FLUXNET's spatial bias, records, EC errors."""

from __future__ import annotations

import numpy as np

from xgpp.landcover import IGBP_CODES
from xgpp.synthetic.config import WorldConfig
from xgpp.synthetic.noise import stream_id
from xgpp.synthetic.physics import Points, Times, static_state, true_state

__all__ = ["REGIONS", "place_sites", "site_gpp"]

# Share of sites per region, approximating the FLUXNET2015 release (212 sites; Pastorello et al.
# 2020, Sci. Data 7:225): dense in temperate North America and Europe, sparse in the tropics,
# Africa and boreal Asia.  (name, country-code prefix, lat0, lat1, lon0, lon1, share)
REGIONS: list[tuple[str, str, float, float, float, float, float]] = [
    ("temperate North America", "US", 25, 55, -130, -60, 0.36),
    ("Europe", "EU", 35, 70, -10, 40, 0.30),
    ("East Asia", "CN", 20, 50, 100, 145, 0.08),
    ("Australia", "AU", -45, -10, 110, 155, 0.06),
    ("boreal North America", "CA", 55, 72, -170, -60, 0.05),
    ("South America", "BR", -40, 12, -82, -34, 0.05),
    ("Africa", "ZA", -35, 35, -18, 52, 0.04),
    ("boreal Asia", "RU", 50, 75, 40, 180, 0.03),
    ("South and Southeast Asia", "MY", -10, 30, 60, 130, 0.03),
]
_NOT_VEGETATED = (0, 13, 15, 16)
# EC error model (8-day means): footprint representativeness as a fixed multiplicative site
# factor (sd 15 %, Chen et al. 2011, AFM 151:1385 footprint-vs-cell mismatch) and random error
# growing with the flux (Hollinger & Richardson 2005, Tree Physiol. 25:873; Richardson et al.
# 2006): sd = 0.25 + 0.10 x GPP [gC m-2 d-1], including partitioning uncertainty.
FOOTPRINT_SD = 0.15
ERROR_BASE, ERROR_REL = 0.25, 0.10


def place_sites(cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Tower ids, exact ``lat``/``lon`` [degree] and footprint IGBP codes, deterministic by seed."""
    rng = np.random.default_rng([cfg.seed, stream_id("sites")])
    shares = np.array([r[-1] for r in REGIONS])
    counts = np.floor(shares * cfg.n_sites).astype(int)
    counts[np.argsort(-shares)[: cfg.n_sites - counts.sum()]] += 1
    ids: list[str] = []
    lats: list[float] = []
    lons: list[float] = []
    codes: list[str] = []
    for (_, cc, la0, la1, lo0, lo1, _), n in zip(REGIONS, counts, strict=True):
        if not cfg.tropical_sites:
            la0, la1 = (max(la0, 23.5), la1) if la1 > 23.5 else (la0, min(la1, -23.5))
            if la0 >= la1:
                continue
        got = 0
        for _attempt in range(200):
            if got >= n:
                break
            # uniform on the sphere inside the box
            z = rng.uniform(np.sin(np.deg2rad(la0)), np.sin(np.deg2rad(la1)), 256)
            lat = np.rad2deg(np.arcsin(z))
            lon = rng.uniform(lo0, lo1, 256)
            pts = Points.cells(lat, lon, cfg.resolution)
            st = static_state(pts, cfg)
            ok = st["land"] & ~np.isin(st["igbp"], _NOT_VEGETATED)
            if not cfg.tropical_sites:
                ok &= np.abs(lat) >= 23.5
            for k in np.flatnonzero(ok)[: n - got]:
                code = _footprint_class(lat[k], lon[k], int(st["igbp"][k]), cfg, rng)
                ids.append(f"{cc}-{len(ids) + 1:03d}")
                lats.append(lat[k])
                lons.append(lon[k])
                codes.append(code)
                got += 1
    return {"site": np.array(ids), "lat": np.array(lats, dtype=float),
            "lon": np.array(lons, dtype=float), "igbp": np.array(codes)}


def _footprint_class(lat: float, lon: float, cell_class: int, cfg: WorldConfig,
                     rng: np.random.Generator) -> str:
    """IGBP class of the tower footprint: the cell's class, or (20 %) a neighbouring cell's."""
    if rng.uniform() < 0.8:
        return IGBP_CODES[cell_class]
    r = cfg.resolution
    dl = np.array([-r, 0, r])
    nla, nlo = np.meshgrid(np.clip(lat + dl, -89.9, 89.9), (lon + dl + 180) % 360 - 180, indexing="ij")
    st = static_state(Points.cells(nla.ravel(), nlo.ravel(), r), cfg)
    veg = [c for c in st["igbp"] if c not in _NOT_VEGETATED]
    return IGBP_CODES[int(rng.choice(veg))] if veg else IGBP_CODES[cell_class]


def site_gpp(cfg: WorldConfig, sites: dict[str, np.ndarray], times: Times) -> np.ndarray:
    """EC GPP [gC m-2 d-1], shape (site, time): cell truth x footprint factor + EC error, with gaps.

    Each site has its own record (start 1991-2020 as in FLUXNET, length 2 + Gamma(2, 3) years,
    mean 8) clipped to the world, 8 % random missing steps, and in 30 % of sites a long gap of
    1-5 months (instrument failure).
    """
    n = len(sites["site"])
    if n == 0:
        return np.zeros((0, len(times)))
    pts = Points.cells(sites["lat"], sites["lon"], cfg.resolution)
    st = static_state(pts, cfg)
    gpp = true_state(times, pts, st, cfg)["gpp"].T  # (site, time)
    rng = np.random.default_rng([cfg.seed, stream_id("site_records")])
    factor = np.exp(FOOTPRINT_SD * rng.standard_normal(n) - 0.5 * FOOTPRINT_SD**2)
    obs = gpp * factor[:, None]
    obs = obs + (ERROR_BASE + ERROR_REL * obs) * rng.standard_normal(obs.shape)
    t = times.decimal_year
    y0, y1 = t[0], t[-1]
    for i in range(n):
        length = 2.0 + rng.gamma(2.0, 3.0)
        start = rng.uniform(max(1991.0, y0 - length + 1.0), max(y1 - 1.0, y0))
        rec = (t >= start) & (t <= start + length)
        rec &= rng.uniform(size=t.size) > 0.08
        if rng.uniform() < 0.3 and t.size > 8:
            k = rng.integers(0, t.size)
            rec[k: k + int(rng.integers(4, 20))] = False
        obs[i, ~rec] = np.nan
    return obs
