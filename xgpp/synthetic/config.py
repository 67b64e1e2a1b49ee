"""Configuration of the twin world: every parameter with its source, fixed before any model runs.

All parameters are data.  Named variants change a few of them so experiments can report
robustness across worlds rather than one world.  Nothing here is tuned to favour a method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

__all__ = ["BIOME", "VARIANTS", "WorldConfig"]

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
            raise TypeError(f"unknown WorldConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
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
}

_FREQS = ("8D", "D", "MS")


def validate_config(cfg: WorldConfig) -> None:
    """Raise a clear error for a config that cannot describe a world."""
    import pandas as pd

    res = float(cfg.resolution)
    if not res > 0 or abs(180.0 / res - round(180.0 / res)) > 1e-9:
        raise ValueError(
            f"resolution={cfg.resolution!r} degree does not divide 180: the grid must tile the "
            "globe exactly. Use e.g. 0.25, 0.5, 1, 2, 2.5, 4 or 5."
        )
    try:
        start, end = pd.Timestamp(cfg.start), pd.Timestamp(cfg.end)
    except (ValueError, TypeError) as err:
        raise ValueError(f"start={cfg.start!r} / end={cfg.end!r} are not ISO dates") from err
    if end < start:
        raise ValueError(f"end={cfg.end!r} is before start={cfg.start!r}; swap them.")
    if cfg.freq not in _FREQS:
        raise ValueError(f"freq={cfg.freq!r} is not supported; use one of {list(_FREQS)}.")
    if cfg.sif_slope not in ("biome", "uniform"):
        raise ValueError(f"sif_slope={cfg.sif_slope!r}; expected 'biome' or 'uniform'.")
    missing = {"time", "lat", "lon"} - set(cfg.chunks)
    if missing or any(int(v) < 1 for v in cfg.chunks.values()):
        raise ValueError(f"chunks={cfg.chunks!r} must give positive sizes for time, lat and lon.")
    if cfg.n_sites < 0:
        raise ValueError(f"n_sites={cfg.n_sites} must be >= 0.")
