"""Configuration of the twin world: every parameter with its source, fixed before any model runs.

All parameters are data.  Named variants change a few of them so experiments can report
robustness across worlds rather than one world.  Nothing here is tuned to favour a method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from xgpp.errors import InputError, UnknownOptionError

__all__ = ["BIOME", "SLOPE_SPREAD", "SLOPE_SPREAD_MODES", "VARIANTS", "WorldConfig"]

# Per-IGBP-class parameters, indexed by class number (0 water ... 16 barren).
# lai_max       : seasonal maximum LAI [m2 m-2]; typical MODIS MCD15 biome maxima
#                 (Myneni et al. 2002, RSE 83:214; Asner et al. 2003, GEB 12:191, table 2).
# evergreen     : fraction of lai_max kept outside the growing season [1] (physical argument:
#                 evergreen canopies keep most foliage; deciduous ones drop it).
# eps_max       : MOD17 maximum light-use efficiency [gC MJ-1] from the Collection 6 BPLUT
#                 (Running & Zhao 2015, MOD17 User's Guide); used only as a *relative*
#                 biome-dependent quantum-efficiency modifier (divided by its land mean).
# sif_slope     : GPP/SIF slope [gC m-2 d-1 per mW m-2 nm-1 sr-1] for daily-corrected SIF near
#                 740 nm.  Values follow the biome spread reported for OCO-2 and TROPOMI
#                 (Li et al. 2018, GCB 24:3990, 757 nm slopes scaled by the 740/757 ratio of
#                 about 1.5; Turner et al. 2020, Biogeosciences 17:405; Li & Xiao 2022,
#                 RSE 268:112748): cropland and broadleaf forests highest, grass and shrubs
#                 lowest, spanning roughly 10-18.
# clumping      : canopy clumping/escape-fraction factor for NIRv and SIF [1] (Zeng et al.
#                 2019, RSE 232:111209: f_esc ~ NIRv/fAPAR, lower in dense clumped forests).
BIOME: dict[str, np.ndarray] = {
    #                        WAT  ENF  EBF  DNF  DBF   MF  CSH  OSH  WSA  SAV  GRA  WET  CRO  URB  CVM  SNO  BSV
    "lai_max":   np.array([0.0, 4.5, 6.0, 3.5, 5.0, 5.0, 2.0, 0.9, 3.0, 2.0, 2.0, 3.0, 3.5, 1.0, 3.0, 0.0, 0.2]),
    "evergreen": np.array([0.0, .75, .90, .10, .15, .45, .50, .30, .35, .20, .10, .30, .05, .30, .20, 0.0, 0.0]),
    "eps_max":   np.array([0.0, .962, 1.268, 1.086, 1.165, 1.051, 1.281, .841, 1.239, 1.206, .860, 1.0,
                           1.044, .9, 1.044, 0.0, .841]),
    "sif_slope": np.array([14., 13.5, 16.0, 13.5, 15.5, 14.5, 12.0, 10.5, 13.0, 12.0, 11.0, 12.5,
                           17.5, 13.0, 15.5, 12.0, 10.5]),
    "clumping":  np.array([1.0, .70, .75, .80, .85, .78, .90, .95, .88, .92, 1.0, .95, 1.0, 1.0, .95,
                           1.0, 1.0]),
}
# Land-mean of eps_max over vegetated classes, so the biome modifier averages to about 1.
BIOME["eps_rel"] = np.where(BIOME["eps_max"] > 0, BIOME["eps_max"] / 1.08, 0.0)

# Within-class spread of the GPP/SIF slope (``WorldConfig.slope_spread``; off in the default
# world).  Per IGBP class, indexed like BIOME.  Sources and what is assumption: docs/twin_world.md.
# c4_max        : C4 share [1] of the class's GPP where conditions fully favour C4: natural
#                 vegetation in a warm climate, cropland in the core of a C4 crop belt (maize,
#                 sugarcane, sorghum).  C4 is near-universally herbaceous (Still et al. 2003,
#                 GBC 17:1006; Powell & Still 2009, Proc. XIV SBSR 2935), so forests are 0 and the woody classes scale
#                 with their herbaceous share.  Where the pixel sits between C3 and C4 conditions
#                 is set by the crossover temperature below and by smooth random fields.
# c4_mean       : reference C4 share [1] at which the pixel slope equals BIOME["sif_slope"], so
#                 the biome slopes keep meaning "class-mean slope".  Set to the class mean of
#                 the pixel C4 share in the 1-degree worlds of seeds 0 and 1 (averaged,
#                 rounded), before any model ran on the variant (urban: c4_max / 2).  The C4
#                 share of vegetated land is then 17.6 % (seed 0), as published (Still et al.
#                 2003: 18.8 of 106.2 million km2, 17.7 %; Luo et al. 2024, Nat. Commun.
#                 doi:10.1038/s41467-024-45606-3: 17.1-17.7 %); its share of GPP, 16 %, is below the published 23 %
#                 (Still) and 19.5 % (Luo) and was left so (not tuned).
# c4_ratio      : GPP/SIF slope of C4 over C3 vegetation [1]: 1.81 = 35.78 / 19.73, the FLUXNET
#                 GPP vs CSIF slopes of C4 and C3 cropland in SMUrF (Wu et al. 2021, GMD
#                 14:3633; repository wde0924/SMUrF, data/GPP-CSIF_stat_Wu.txt); higher C4
#                 slopes also at OCO-2 tower sites (Li et al. 2018, GCB 24:3990, as summarised by
#                 Zhang et al. 2018, GCB, doi:10.1111/gcb.14427).  Used for C4 grasses too.
# structure_sd  : within-class sd [1] of the log of a structural slope factor (canopy
#                 clumping, leaf angle, hence the SIF escape fraction; Zeng et al. 2019, RSE
#                 232:111209; Dechant et al. 2020, RSE 241:111733).  An assumption of this
#                 world (no published per-class sd was found): larger in forests, whose
#                 clumping differs most between classes (BIOME["clumping"] 0.70-0.85), smaller
#                 in grass and crop canopies.
# crop_share    : share [1] of the class's area under crops (its C4 share follows the crop
#                 belt field, the rest the climate): cropland 1, cropland/natural mosaic 0.5.
SLOPE_SPREAD: dict[str, np.ndarray] = {
    #                           WAT  ENF  EBF  DNF  DBF   MF  CSH  OSH  WSA  SAV  GRA  WET  CRO  URB  CVM  SNO  BSV
    "c4_max":       np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, .15, .35, .45, .75, .90, .30, .70, .10, .60, 0.0, .35]),
    "c4_mean":      np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, .08, .12, .40, .66, .45, .09, .31, .05, .28, 0.0, .23]),
    "c4_ratio":     np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.81, 1.81, 1.81, 1.81, 1.81, 1.81, 1.81, 1.81,
                              1.81, 1.0, 1.81]),
    "structure_sd": np.array([0.0, .15, .15, .15, .15, .15, .10, .10, .12, .10, .08, .10, .08, .10, .10,
                              0.0, .10]),
    "crop_share":   np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5,
                              0.0, 0.0]),
}
#: Crossover mean temperature [degC] of the warmest month above which C4 grasses outperform C3
#: at present CO2 (quantum-yield crossover ~22 degC; Collatz, Berry & Clark 1998, Oecologia
#: 114:441); the transition is smoothed over C4_CROSSOVER_WIDTH [K].
C4_CROSSOVER_T, C4_CROSSOVER_WIDTH = 22.0, 2.0
#: Correlation lengths [km] of the C4 fields (natural, crop belts) and of the structural factor.
C4_NATURAL_LENGTH_KM, C4_CROP_LENGTH_KM, SLOPE_STRUCTURE_LENGTH_KM = 1000.0, 800.0, 700.0
#: WorldConfig.slope_spread values: no spread, the C3/C4 mixture only, the structural factor
#: only, or both.
SLOPE_SPREAD_MODES = ("none", "c3c4", "structure", "full")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines one twin world.  Same config, same bytes.

    Attributes
    ----------
    resolution : float
        Grid spacing [degree]; must divide 180.
    start, end : str
        First and last date of the record (ISO dates, inclusive).
    freq : str
        Time step: ``"8D"`` (MODIS convention, 46 steps a year from each 1 January), ``"D"`` or
        ``"MS"`` (calendar months).
    seed : int
        Seed of every random field; worlds with different seeds are independent.
    variant : str
        Name of the variant in :data:`VARIANTS` this config came from.
    chunks : dict
        Chunk sizes of the stores (``time``, ``lat``, ``lon``), as analysis-ready cubes.
    n_sites : int
        Number of eddy-covariance sites.
    sif_slope : str
        ``"biome"`` (biome-dependent GPP/SIF slope) or ``"uniform"`` (one slope everywhere).
    tropical_sites : bool
        Whether sites may be placed between 23.5 S and 23.5 N.
    tropomi_start, oco2_start : str
        First dates of the TROPOMI-like (2018-04-30 launch of routine L2 data) and OCO-2-like
        (2014-09-06 first science data) records.
    efficiency_sd : float
        Standard deviation [1] of the log of the unobserved, spatially structured
        physiological efficiency (species composition, nutrients).  0.2 gives site-to-site LUE
        differences of about +-20 %, the spread of calibrated site LUE within a biome
        (Horn & Schulz 2011, Biogeosciences 8:999).
    efficiency_length_km : float
        Correlation length [km] of that efficiency field.
    slope_spread : str
        Within-class spread of the GPP/SIF slope, one of :data:`SLOPE_SPREAD_MODES`:
        ``"none"`` (default: the slope is a function of the IGBP class alone), ``"c3c4"`` (a
        regional C3/C4 mixture in herbaceous classes and crops), ``"structure"`` (a smooth
        log-normal canopy-structure factor) or ``"full"`` (both).  Time-invariant, applied to
        SIF only; the true GPP is unchanged.  Table and sources: :data:`SLOPE_SPREAD`.
    """

    resolution: float = 1.0
    start: str = "2017-01-01"
    end: str = "2020-12-31"
    freq: str = "8D"
    seed: int = 0
    variant: str = "default"
    chunks: dict[str, int] = field(default_factory=lambda: {"time": 46, "lat": 90, "lon": 90})
    n_sites: int = 200
    sif_slope: str = "biome"
    tropical_sites: bool = True
    tropomi_start: str = "2018-04-30"
    oco2_start: str = "2014-09-06"
    efficiency_sd: float = 0.2
    efficiency_length_km: float = 800.0
    slope_spread: str = "none"

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Return the config as a JSON string (stored in every store's attributes)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``TypeError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UnknownOptionError(f"unknown WorldConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> WorldConfig:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


#: Named variants: overrides applied on top of the defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "uniform_slope": {"sif_slope": "uniform"},
    "no_tropical_sites": {"tropical_sites": False},
    "seed1": {"seed": 1},
    "slope_spread": {"slope_spread": "full"},
}

_FREQS = ("8D", "D", "MS")


def validate_config(cfg: WorldConfig) -> None:
    """Raise a clear error for a config that cannot describe a world."""
    import pandas as pd

    res = float(cfg.resolution)
    if not res > 0 or abs(180.0 / res - round(180.0 / res)) > 1e-9:
        raise InputError(
            f"resolution={cfg.resolution!r} degree does not divide 180: the grid must tile the "
            "globe exactly. Use e.g. 0.25, 0.5, 1, 2, 2.5, 4 or 5."
        )
    try:
        start, end = pd.Timestamp(cfg.start), pd.Timestamp(cfg.end)
    except (ValueError, TypeError) as err:
        raise InputError(f"start={cfg.start!r} / end={cfg.end!r} are not ISO dates") from err
    if end < start:
        raise InputError(f"end={cfg.end!r} is before start={cfg.start!r}; swap them.")
    if cfg.freq not in _FREQS:
        raise InputError(f"freq={cfg.freq!r} is not supported; use one of {list(_FREQS)}.")
    if cfg.sif_slope not in ("biome", "uniform"):
        raise InputError(f"sif_slope={cfg.sif_slope!r}; expected 'biome' or 'uniform'.")
    if cfg.slope_spread not in SLOPE_SPREAD_MODES:
        raise InputError(f"slope_spread={cfg.slope_spread!r} is not a within-class slope spread; "
                         f"expected one of {list(SLOPE_SPREAD_MODES)} (see SLOPE_SPREAD).")
    missing = {"time", "lat", "lon"} - set(cfg.chunks)
    if missing or any(int(v) < 1 for v in cfg.chunks.values()):
        raise InputError(f"chunks={cfg.chunks!r} must give positive sizes for time, lat and lon.")
    if cfg.n_sites < 0:
        raise InputError(f"n_sites={cfg.n_sites} must be >= 0.")
