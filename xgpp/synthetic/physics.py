"""Point kernels of the twin world: the true state, the truth GPP and true SIF.

Every function here works on *points* (1-D arrays of cell centres with their global indices)
and time steps, so a grid chunk and a list of flux-tower cells use the same code, and any
subset gives the same values as the whole.  Units are in each docstring.  Parameter sources
are in ``docs/twin_world.md`` and in :mod:`xgpp.synthetic.config`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from xgpp._pyrealm import UG_PER_S_TO_G_PER_DAY, quiet_pyrealm
from xgpp.io import SW_TO_PPFD, esat_magnus
from xgpp.io._time import step_days, step_range
from xgpp.synthetic.config import (
    BIOME,
    C4_CROP_LENGTH_KM,
    C4_CROSSOVER_T,
    C4_CROSSOVER_WIDTH,
    C4_NATURAL_LENGTH_KM,
    SLOPE_SPREAD,
    SLOPE_STRUCTURE_LENGTH_KM,
    WorldConfig,
)
from xgpp.synthetic.noise import SmoothField, unit_vectors, white_normal

__all__ = ["EFFICIENCY_MEAN", "Points", "Times", "seasonal_amplitude", "sif_slope_spread",
           "static_state", "time_axis", "true_state"]

#: Expectation [1] of the unobserved efficiency multiplier ``exp(sd g - sd^2 / 2)`` with
#: ``g ~ N(0, 1)``: exactly one for the log-normal with this mean-one parameterisation (its median
#: is ``exp(-sd^2 / 2)``, 0.98 at sd 0.2).  The conditional mean of GPP given everything but the
#: efficiency is ``gpp / efficiency * EFFICIENCY_MEAN``: the ``gpp_ceiling`` of the truth store.
EFFICIENCY_MEAN = 1.0

# Continents as rotated ellipses (lon centre, lat centre, lon radius, lat radius, rotation [deg]),
# a cartoon of Earth's land masses so maps are recognisable and FLUXNET's regional bias has
# somewhere to live.  Coastlines are roughened by a smooth random field.
_CONTINENTS = np.array([
    (-100, 45, 30, 18, -20), (-90, 17, 10, 6, -35), (-150, 64, 15, 6, 0), (-95, 64, 32, 9, 0),
    (-60, -12, 17, 22, 15), (-68, -38, 7, 15, 0),
    (15, 50, 20, 9, 10), (18, 63, 8, 7, 30), (-4, 40, 5, 4, 0), (-2, 54, 3, 5, 0),
    (10, 18, 28, 13, 0), (24, -8, 14, 20, 0), (45, 23, 10, 8, -30), (47, -19, 3, 7, 0),
    (90, 50, 55, 17, 0), (78, 20, 9, 9, 0), (105, 15, 10, 10, 0), (110, 68, 50, 6, 0),
    (138, 37, 3, 8, 40), (115, 0, 10, 4, 0), (140, -5, 8, 3, 0), (134, -25, 18, 10, 0),
    (-42, 72, 12, 10, 0),
], dtype=float)
_GREENLAND = (-42.0, 72.0, 12.0, 10.0)


@dataclass(frozen=True)
class Points:
    """Cell centres: ``lat``/``lon`` [degree] and global integer indices at the world resolution."""

    lat: np.ndarray
    lon: np.ndarray
    ilat: np.ndarray
    ilon: np.ndarray

    @classmethod
    def grid(cls, lat: np.ndarray, lon: np.ndarray, resolution: float) -> Points:
        """All cells of a (lat, lon) block, flattened in C order (lat slowest)."""
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        return cls.cells(la.ravel(), lo.ravel(), resolution)

    @classmethod
    def cells(cls, lat: np.ndarray, lon: np.ndarray, resolution: float) -> Points:
        """The cells containing points at ``lat``/``lon``, as their centres."""
        ilat = np.clip(np.floor((np.asarray(lat) + 90.0) / resolution), 0, round(180 / resolution) - 1)
        ilon = np.floor((np.asarray(lon) + 180.0) / resolution) % round(360 / resolution)
        ilat, ilon = ilat.astype(np.int64), ilon.astype(np.int64)
        return cls(-90.0 + (ilat + 0.5) * resolution, -180.0 + (ilon + 0.5) * resolution, ilat, ilon)

    @property
    def xyz(self) -> np.ndarray:
        """Unit vectors of the points, shape (3, n)."""
        return unit_vectors(self.lat, self.lon)


@dataclass(frozen=True)
class Times:
    """Time steps: start dates, mid-step day of year, length [d], and integer keys."""

    start: pd.DatetimeIndex
    days: np.ndarray

    @property
    def mid(self) -> pd.DatetimeIndex:
        """Middle of each step."""
        return self.start + pd.to_timedelta(self.days / 2.0, unit="D")

    @property
    def doy(self) -> np.ndarray:
        """Day of year of the middle of each step."""
        m = self.mid
        return np.asarray(m.day_of_year + m.hour / 24.0, dtype=float)

    @property
    def day_key(self) -> np.ndarray:
        """Days since 1970-01-01 of each step start: the random-stream key of a step."""
        return np.asarray((self.start - pd.Timestamp("1970-01-01")).days, dtype=np.int64)

    @property
    def year(self) -> np.ndarray:
        """Calendar year of the middle of each step (the key of interannual fields)."""
        return np.asarray(self.mid.year, dtype=np.int64)

    @property
    def decimal_year(self) -> np.ndarray:
        """Middle of each step as a decimal year."""
        m = self.mid
        return np.asarray(m.year + (m.day_of_year - 0.5) / (365.0 + m.is_leap_year), dtype=float)

    def __getitem__(self, sl: slice) -> Times:
        return Times(self.start[sl], self.days[sl])

    def __len__(self) -> int:
        return len(self.start)


def time_axis(start: str, end: str, freq: str) -> Times:
    """Step starts between ``start`` and ``end`` (inclusive) and step lengths [d].

    ``"8D"`` follows the MODIS convention (:mod:`xgpp.io._time`): 46 steps a year starting each
    1 January, the last step of a year running to 31 December (5 or 6 days).
    """
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    idx = step_range(t0, t1, freq)
    idx = idx[idx >= t0]  # the world starts at the first step that starts on or after ``start``
    return Times(idx, step_days(idx, freq))


# ----------------------------------------------------------------------------- static fields
def _continent_distance(lat: np.ndarray, lon: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """Smallest normalised ellipse radius (< 1 inside) over ``ellipses``."""
    dlon = (lon[None, :] - ellipses[:, :1] + 180.0) % 360.0 - 180.0
    dlat = lat[None, :] - ellipses[:, 1:2]
    rot = np.deg2rad(ellipses[:, 4:5])
    x = dlon * np.cos(rot) + dlat * np.sin(rot)
    y = -dlon * np.sin(rot) + dlat * np.cos(rot)
    return np.min((x / ellipses[:, 2:3]) ** 2 + (y / ellipses[:, 3:4]) ** 2, axis=0)


def static_state(points: Points, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Time-invariant true fields at ``points``.

    Returns
    -------
    dict
        ``land`` (bool), ``ice`` (bool), ``elevation`` [m], ``tmean`` annual mean air
        temperature [degC], ``moist`` aridity index alpha = AET/PET [1], ``igbp`` class number,
        ``efficiency`` unobserved physiological efficiency multiplier [1] (log-normal, mean
        :data:`EFFICIENCY_MEAN`), and from :func:`sif_slope_spread` ``c4_fraction`` [1] and
        ``sif_slope_factor`` [1] (ones unless ``cfg.slope_spread`` is on).
    """
    s, xyz = cfg.seed, points.xyz
    lat, lon = points.lat, points.lon
    coast = SmoothField(s, "coast", 600.0).static(xyz)
    land = (_continent_distance(lat, lon, _CONTINENTS) < 1.0 + 0.25 * coast) | (lat < -70.0)
    green = _continent_distance(lat, lon, np.array([(*_GREENLAND, 0.0)])) < 1.0 + 0.25 * coast
    ice = land & ((lat < -62.0) | green)

    f_elev = SmoothField(s, "elevation", 1500.0).static(xyz)
    f_mount = SmoothField(s, "mountains", 700.0).static(xyz)
    elevation = 350.0 + 350.0 * f_elev + 1800.0 * np.maximum(f_mount - 0.9, 0.0) ** 1.3
    elevation = np.where(ice, np.maximum(elevation, 0.0) + 1800.0, np.maximum(elevation, 2.0))
    elevation = np.where(land, elevation, 0.0)

    sin2 = np.sin(np.deg2rad(lat)) ** 2
    # zonal mean surface temperature: ~27 degC at the equator, ~-18 degC at the poles
    # (NCEP climatology); lapse rate 6.5 K km-1 (ICAO standard atmosphere)
    tmean = 27.0 - 45.0 * sin2 - 6.5e-3 * elevation + 2.0 * SmoothField(s, "tanom", 2000.0).static(xyz)
    alat = np.abs(lat)
    # aridity index: wet ITCZ, dry subtropical belts (Hadley cell descent), moist mid-latitude
    # storm tracks, dry polar deserts
    m_zonal = (0.20 + 0.75 * np.exp(-(lat / 15.0) ** 2) + 0.45 * np.exp(-((alat - 52.0) / 14.0) ** 2)
               - 0.25 * np.exp(-((alat - 24.0) / 7.0) ** 2))
    moist = np.clip(m_zonal + 0.22 * SmoothField(s, "moisture", 1500.0).static(xyz), 0.03, 1.0)

    igbp = classify(tmean, moist, elevation, ice, land, xyz, s)
    eff = SmoothField(s, "efficiency", cfg.efficiency_length_km).static(xyz)
    sd = cfg.efficiency_sd
    efficiency = np.exp(sd * eff - 0.5 * sd * sd)
    st = {"land": land, "ice": ice, "elevation": elevation, "tmean": tmean, "moist": moist,
          "igbp": igbp, "efficiency": efficiency}
    st.update(sif_slope_spread(points, st, cfg))
    return st


def seasonal_amplitude(lat: np.ndarray, moist: np.ndarray) -> np.ndarray:
    """Amplitude [K] of the seasonal temperature cycle at ``lat`` [degree] and aridity ``moist`` [1].

    Grows with latitude and with continentality (dryness): 1.5 + 16 |sin lat|^1.2 (1.2 - 0.5 alpha).
    """
    return 1.5 + 16.0 * np.abs(np.sin(np.deg2rad(lat))) ** 1.2 * (1.2 - 0.5 * moist)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def sif_slope_spread(points: Points, st: dict[str, np.ndarray],
                     cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Time-invariant within-class multiplier of the GPP/SIF slope (``cfg.slope_spread``).

    Parameters
    ----------
    points : Points
        Cells.
    st : dict
        Static state with ``land``, ``tmean`` [degC], ``moist`` [1] and ``igbp``.
    cfg : WorldConfig
        ``slope_spread`` selects the parts: ``"c3c4"``, ``"structure"``, ``"full"`` or ``"none"``.

    Returns
    -------
    dict
        ``c4_fraction`` C4 share of the cell's GPP [1] and ``sif_slope_factor`` [1], the
        multiplier of the biome slope (ones when ``slope_spread == "none"``).

    Notes
    -----
    The C4 share of a natural cell is ``c4_max x sigmoid((T_warm - 22 degC) / 2 K + 0.5 f)``
    with the warmest-month mean temperature ``T_warm = tmean + seasonal amplitude`` (Collatz
    et al. 1998 crossover) and a 1000 km field ``f``; of a crop cell ``c4_max x sigmoid(2 f_crop
    - 0.5)`` with an 800 km crop-belt field.  The slope of a C3/C4 mixture with C4 GPP share
    ``c`` is ``s_C3 / (1 - c + c / r)`` (SIF adds up over both pathways); it is divided by its
    value at the class reference share ``c4_mean`` so ``BIOME["sif_slope"]`` remains the class
    slope.  The structural factor is ``exp(sd g - sd^2 / 2)`` with a 700 km field ``g``.  All
    fields use streams of their own, so every other field of the world is unchanged.
    """
    mode = cfg.slope_spread
    igbp = st["igbp"]
    ones = np.ones(igbp.shape)
    factor, c4 = ones.copy(), np.zeros(igbp.shape)
    if mode in ("c3c4", "full"):
        xyz = points.xyz
        t_warm = st["tmean"] + seasonal_amplitude(points.lat, st["moist"])
        f_nat = SmoothField(cfg.seed, "c4_natural", C4_NATURAL_LENGTH_KM).static(xyz)
        f_crop = SmoothField(cfg.seed, "c4_crop", C4_CROP_LENGTH_KM).static(xyz)
        w_nat = _sigmoid((t_warm - C4_CROSSOVER_T) / C4_CROSSOVER_WIDTH + 0.5 * f_nat)
        w_crop = _sigmoid(2.0 * f_crop - 0.5)
        share = SLOPE_SPREAD["crop_share"][igbp]
        c4 = SLOPE_SPREAD["c4_max"][igbp] * (share * w_crop + (1.0 - share) * w_nat)
        ratio = SLOPE_SPREAD["c4_ratio"][igbp]
        ref = SLOPE_SPREAD["c4_mean"][igbp]
        factor = factor * (1.0 - ref + ref / ratio) / (1.0 - c4 + c4 / ratio)
    if mode in ("structure", "full"):
        g = SmoothField(cfg.seed, "slope_structure", SLOPE_STRUCTURE_LENGTH_KM).static(points.xyz)
        sd = SLOPE_SPREAD["structure_sd"][igbp]
        factor = factor * np.exp(sd * g - 0.5 * sd * sd)
    return {"c4_fraction": np.where(st["land"], c4, 0.0), "sif_slope_factor": factor}


def classify(tmean: np.ndarray, moist: np.ndarray, elevation: np.ndarray, ice: np.ndarray,
             land: np.ndarray, xyz: np.ndarray, seed: int) -> np.ndarray:
    """IGBP class from climate (Holdridge/Whittaker-style biome envelope on T and aridity).

    Land use (cropland, mosaics, urban) and wetlands come from smooth random fields in the
    climates where they occur.
    """
    crop = SmoothField(seed, "cropland", 500.0).static(xyz)
    wet = SmoothField(seed, "wetland", 300.0).static(xyz)
    mix = SmoothField(seed, "mixing", 400.0).static(xyz)
    urb = SmoothField(seed, "urban", 150.0).static(xyz)
    t, m = tmean, moist
    c = np.full(t.shape, 16, dtype=np.int8)  # barren
    c = np.where(m >= 0.12, 7, c)                                    # open shrubland
    c = np.where((m >= 0.22) & (t > 2), 10, c)                        # grassland
    c = np.where((m >= 0.30) & (t > 18), 9, c)                        # savanna
    c = np.where((m >= 0.45) & (t > 18), 8, c)                        # woody savanna
    c = np.where((m >= 0.65) & (t > 20), 2, c)                        # evergreen broadleaf
    c = np.where((m >= 0.30) & (m < 0.45) & (t > 12) & (t <= 20) & (mix > 0.5), 6, c)  # shrub
    c = np.where((m >= 0.45) & (t > 5) & (t <= 20), np.where(mix > 0.3, 4, 5), c)     # DBF / MF
    c = np.where((m >= 0.35) & (t > -6) & (t <= 5), np.where(mix > 0.8, 5, 1), c)     # boreal
    c = np.where((m >= 0.35) & (t > -14) & (t <= -6), 3, c)          # larch (DNF)
    c = np.where((m >= 0.15) & (t <= -6) & (c == 16), 7, c)           # tundra shrubs
    arable = (m >= 0.30) & (t > 4) & (t <= 24)
    c = np.where(arable & (crop > 0.6), 12, c)                        # cropland
    c = np.where(arable & (crop > 0.2) & (crop <= 0.6), np.where(mix > 0.0, 14, c), c)
    c = np.where((m >= 0.5) & (wet > 1.6), 11, c)                    # wetland
    c = np.where((urb > 2.3) & (t > 0) & (m > 0.2), 13, c)            # urban
    c = np.where(t < -18, 15, c)
    c = np.where(ice, 15, c)
    return np.where(land, c, 0).astype(np.int8)


# ----------------------------------------------------------------------------- dynamics
def toa_insolation(lat: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Daily-mean top-of-atmosphere shortwave [W m-2] (Duffie & Beckman 2013, eqs. 1.4.1, 1.10.3).

    ``lat`` [degree] of shape (P,), ``doy`` day of year of shape (T,); returns (T, P).
    """
    phi = np.deg2rad(lat)[None, :]
    d = doy[:, None]
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (284.0 + d) / 365.0)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    e0 = 1.0 + 0.033 * np.cos(2 * np.pi * d / 365.0)
    q = 1360.8 / np.pi * e0 * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws))
    return np.maximum(q, 0.0)


def true_state(times: Times, points: Points, st: dict[str, np.ndarray],
               cfg: WorldConfig) -> dict[str, np.ndarray]:
    """The true physical state, shape (T, P) per variable, and truth GPP and SIF.

    Returns
    -------
    dict
        ``tair`` [degC], ``vpd`` [Pa], ``ppfd`` [umol m-2 s-1], ``co2`` [ppm], ``patm`` [Pa],
        ``swc`` [1], ``lai`` [m2 m-2], ``fapar`` [1], ``nirv`` [1], ``cloud`` cloud fraction [1],
        ``gpp`` [gC m-2 d-1], ``sif`` [mW m-2 nm-1 sr-1].
    """
    s, xyz = cfg.seed, points.xyz
    lat = points.lat
    doy, dkey, years = times.doy, times.day_key, times.year
    hemi = np.sign(lat)[None, :]
    alat = np.abs(lat)[None, :]
    season = np.cos(2 * np.pi * (doy[:, None] - 200.0) / 365.25) * hemi  # +1 in local summer

    # moisture: monsoonal rains follow the sun in the outer tropics; interannual + weather noise
    monsoon = 0.55 * np.exp(-((alat - 14.0) / 10.0) ** 2)
    moist = st["moist"][None, :] * (1.0 + monsoon * season)
    moist = moist + 0.07 * SmoothField(s, "moist_iav", 2000.0).varying(xyz, years)
    moist = moist + 0.06 * SmoothField(s, "moist_wx", 1000.0).varying(xyz, dkey)
    moist = np.clip(moist, 0.01, 1.0)

    # temperature: seasonal amplitude grows with latitude and continentality (dryness)
    amp = seasonal_amplitude(lat, st["moist"])[None, :]
    tair = (st["tmean"][None, :] + amp * season
            + 0.8 * SmoothField(s, "t_iav", 2500.0).varying(xyz, years)
            + 1.5 * SmoothField(s, "t_wx", 1200.0).varying(xyz, dkey))

    cloud = np.clip(0.15 + 0.55 * moist + 0.12 * SmoothField(s, "cloud_wx", 800.0).varying(xyz, dkey),
                    0.02, 0.98)
    # Angstrom-Prescott-type transmissivity; PPFD = 2.04 umol J-1 x shortwave (Meek et al. 1984)
    sw = toa_insolation(lat, doy) * (0.25 + 0.50 * (1.0 - cloud))
    ppfd = SW_TO_PPFD * sw

    rh = np.clip(0.20 + 0.65 * moist + 0.05 * SmoothField(s, "rh_wx", 1000.0).varying(xyz, dkey),
                 0.05, 0.98)
    vpd = np.maximum(esat_magnus(tair) * (1.0 - rh), 1.0)

    # CO2: 399.4 ppm global mean in 2015 (NOAA GML), +2.3 ppm yr-1, NH seasonal cycle
    co2 = (399.4 + 2.3 * (times.decimal_year[:, None] - 2015.5)
           - 3.0 * np.clip(lat / 60.0, -0.3, 1.0)[None, :]
           * np.cos(2 * np.pi * (doy[:, None] - 120.0) / 365.25))
    # barometric formula, ICAO standard atmosphere (288.15 K at sea level, 6.5 K km-1)
    patm = 101325.0 * (1.0 - 0.0065 * st["elevation"] / 288.15) ** (9.80665 * 0.028963 / (8.3145 * 0.0065))
    patm = np.broadcast_to(patm[None, :], tair.shape)

    swc = np.clip(0.1 + 0.9 * moist, 0.0, 1.0)
    igbp = st["igbp"]
    lai_max = BIOME["lai_max"][igbp][None, :] * np.clip(st["moist"][None, :] / 0.5, 0.25, 1.0)
    ever = BIOME["evergreen"][igbp][None, :]
    grow = 1.0 / (1.0 + np.exp(-(tair - 5.0) / 2.5)) / (1.0 + np.exp(-(swc - 0.3) / 0.06))
    lai = lai_max * (ever + (1.0 - ever) * grow)
    fapar = 1.0 - np.exp(-0.5 * lai)  # Beer's law, k = 0.5 (spherical leaf angles)
    clump = BIOME["clumping"][igbp][None, :]
    nirv = 0.02 + 0.40 * clump * fapar

    gpp, sif = truth_gpp_sif(tair, vpd, co2, patm, fapar, ppfd, swc, st, cfg)
    # the efficiency multiplies a non-negative product, so dividing it out equals running the
    # same product with the efficiency at its expectation (to rounding)
    gpp_ceiling = gpp / st["efficiency"][None, :] * EFFICIENCY_MEAN
    return {"tair": tair, "vpd": vpd, "ppfd": ppfd, "co2": co2, "patm": patm, "swc": swc,
            "lai": lai, "fapar": fapar, "nirv": nirv, "cloud": cloud, "gpp": gpp,
            "gpp_ceiling": gpp_ceiling, "sif": sif}


#: daily-mean APAR [umol m-2 s-1] at which canopy light use starts to saturate (tanh model,
#: Jassby & Platt 1976); chosen so that mid-summer clear-sky APAR loses ~20 % efficiency,
#: the canopy-scale curvature seen in daily EC light responses (Ruimy et al. 1995).
LIGHT_SATURATION = 700.0


def truth_gpp_sif(tair: np.ndarray, vpd: np.ndarray, co2: np.ndarray, patm: np.ndarray,
                  fapar: np.ndarray, ppfd: np.ndarray, swc: np.ndarray,
                  st: dict[str, np.ndarray], cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """True GPP [gC m-2 d-1] and SIF [mW m-2 nm-1 sr-1].

    GPP is the pyrealm P-model (Stocker et al. 2020, GMD 13:1545; Wang et al. 2017) on the true
    state, times processes a plain P-model run does not see: soil-moisture stress (Stocker et
    al. 2020 beta, pyrealm), a biome-dependent quantum-efficiency modifier (MOD17 BPLUT), the
    unobserved spatial efficiency field, and canopy light saturation.  SIF follows absorbed
    light and photosynthetic activity: it is GPP divided by a biome GPP/SIF slope, without the
    light-saturation loss and with half the water-stress loss (fluorescence yield responds less
    than photochemistry to saturation and stress; Porcar-Castell et al. 2014, J. Exp. Bot.
    65:4065), so the SIF-GPP relationship changes with biome and conditions.  With
    ``cfg.slope_spread`` on, the biome slope is multiplied by the static
    ``st["sif_slope_factor"]`` (C3/C4 mixture, canopy structure): GPP is unchanged.
    """
    from pyrealm.pmodel import PModel, PModelEnvironment
    from pyrealm.pmodel.functions import calc_soilmstress_stocker

    land = st["land"] & ~st["ice"]
    cols = np.flatnonzero(land)
    gpp = np.where(st["land"][None, :], 0.0, np.nan) * np.ones_like(tair)
    sif = gpp.copy()
    if cols.size:
        sel = (slice(None), cols)
        # the generator's own inputs: pyrealm's notices and bounds warnings say nothing new
        with quiet_pyrealm(all_warnings=True):
            env = PModelEnvironment(tc=np.clip(tair[sel], -25, 60), vpd=vpd[sel], co2=co2[sel],
                                    patm=patm[sel], fapar=fapar[sel], ppfd=ppfd[sel])
            p_gpp = np.nan_to_num(PModel(env).gpp, nan=0.0) * UG_PER_S_TO_G_PER_DAY
            alpha = np.broadcast_to(st["moist"][cols][None, :], p_gpp.shape)
            beta = calc_soilmstress_stocker(soilm=swc[sel], meanalpha=alpha)
        beta = np.clip(beta, 0.0, 1.0)
        igbp = st["igbp"][cols]
        apar = np.maximum(fapar[sel] * ppfd[sel], 1e-6)
        x = apar / LIGHT_SATURATION
        light = np.tanh(x) / x
        eps = BIOME["eps_rel"][igbp][None, :] * st["efficiency"][cols][None, :]
        g = np.maximum(p_gpp * beta * eps * light, 0.0)
        slope = (BIOME["sif_slope"][igbp] if cfg.sif_slope == "biome"
                 else np.full(igbp.shape, 14.0))[None, :]
        if cfg.slope_spread != "none":  # within-class spread (pixel property, SIF only)
            slope = slope * st["sif_slope_factor"][cols][None, :]
        gpp[sel] = g
        sif[sel] = g / slope / light / np.sqrt(np.maximum(beta, 0.05))
    return gpp, sif


def obs_noise(seed: int, stream: str, times: Times, points: Points) -> np.ndarray:
    """White N(0, 1) noise, shape (T, P), keyed by step and global cell."""
    return white_normal(seed, stream, times.day_key[:, None], points.ilat[None, :], points.ilon[None, :])
