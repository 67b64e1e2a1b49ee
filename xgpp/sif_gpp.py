"""The SIF-GPP relationship as data: per-IGBP-class slope bounds, and fitting ``GPP = a*SIF + b``.

The multi-task MoE ties its two heads together with a physics term that penalises departure of
predicted GPP from ``GPP = a_k * SIF + b_k`` for IGBP class ``k`` (:mod:`xgpp.train.losses`).
The slopes are either fitted where EC towers and SIF soundings coincide (training sites and
training tracks only), or learnt within the bounds below.

Slope bounds [gC m-2 d-1 per mW m-2 nm-1 sr-1, daily-corrected SIF near 740 nm]
-------------------------------------------------------------------------------
Published per-biome GPP/SIF slopes differ by about a factor of two between biomes, with C4
crops highest: OCO-2 against flux towers gives a near-universal slope across biomes but the
highest values for C4 croplands (Li et al. 2018, Global Change Biology 24:3990; C4 maize about
1.5-2x C3 crops, also Liu et al. 2017 and Wood et al. 2017 at crop sites), and TROPOMI
gives biome slopes within about +-30 % of the mean (Turner et al. 2020, Biogeosciences
17:405; Li & Xiao 2022).  Near 740 nm (about 1.5x the 757 nm radiance) that literature spans
roughly 10-18 for natural biomes and up to about 25 for C4 crops.  The bounds below take
that span and widen it by half on each side (down to 5, up to 27; 38 for crops), so that
they exclude only slopes no study supports; croplands and the crop mosaic get the C4 upper end.  They are a plausibility
check and the box of the learnable slopes, not a prior tuned to any world.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from xgpp.errors import InputError
from xgpp.landcover import IGBP_CODES

__all__ = ["SLOPE_BOUNDS", "fit_relation", "slope_bounds"]

#: IGBP code -> (lowest, highest) plausible GPP/SIF slope (see the module docstring)
SLOPE_BOUNDS: dict[str, tuple[float, float]] = {
    "WAT": (5.0, 27.0), "ENF": (5.0, 27.0), "EBF": (5.0, 27.0), "DNF": (5.0, 27.0),
    "DBF": (5.0, 27.0), "MF": (5.0, 27.0), "CSH": (5.0, 27.0), "OSH": (5.0, 27.0),
    "WSA": (5.0, 27.0), "SAV": (5.0, 27.0), "GRA": (5.0, 27.0), "WET": (5.0, 27.0),
    "CRO": (5.0, 38.0), "URB": (5.0, 27.0), "CVM": (5.0, 38.0), "SNO": (5.0, 27.0),
    "BSV": (5.0, 27.0),
}


def slope_bounds() -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` arrays of shape ``(17,)`` by IGBP class number."""
    lo = np.array([SLOPE_BOUNDS[c][0] for c in IGBP_CODES])
    hi = np.array([SLOPE_BOUNDS[c][1] for c in IGBP_CODES])
    return lo, hi


def fit_relation(sif: np.ndarray, gpp: np.ndarray, classes: np.ndarray, *,
                 min_pairs: int = 20, bounds: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Least-squares ``GPP = a_k * SIF + b_k`` per IGBP class from co-located pairs.

    Parameters
    ----------
    sif : numpy.ndarray
        SIF soundings at tower cells and dates [mW m-2 nm-1 sr-1].
    gpp : numpy.ndarray
        The towers' GPP on those dates [gC m-2 d-1].
    classes : numpy.ndarray
        IGBP class number of each pair (the tower's).
    min_pairs : int
        Fewest pairs for a class fit; other classes get the fit over all pairs.
    bounds : (low, high), optional
        Slope bounds by class (default :func:`slope_bounds`).  A fitted slope outside its
        class bounds is clipped to them (with a warning); if *every* fitted slope lies
        outside, the bounds and the data disagree and ``ValueError`` is raised.

    Returns
    -------
    slope, intercept : numpy.ndarray
        ``(17,)`` per class.
    info : dict
        ``{"global": (a, b, n), "per_class": {code: (a, b, n)}, "clipped": [codes],
        "clipped_global": [codes]}`` (classes whose own or inherited slope was clipped).
    """
    ok = np.isfinite(sif) & np.isfinite(gpp)
    s, g = np.asarray(sif, np.float64)[ok], np.asarray(gpp, np.float64)[ok]
    c = np.asarray(classes)[ok].astype(int)
    lo, hi = bounds if bounds is not None else slope_bounds()
    if len(s) < max(3, min_pairs):
        raise InputError(
            f"cannot fit the SIF-GPP relation: only {len(s)} tower-date pairs have a SIF "
            f"sounding at the tower's cell (need {max(3, min_pairs)}). Use a longer record or "
            "a training window where the SIF product and the tower records overlap, lower "
            "config.multitask.min_pairs, or use slopes='learnable'.")

    def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        xm, ym = x.mean(), y.mean()
        var = np.sum((x - xm) ** 2)
        a = float(np.sum((x - xm) * (y - ym)) / var) if var > 0 else float(ym / max(xm, 1e-9))
        return a, float(ym - a * xm)

    a0, b0 = ols(s, g)
    slope, intercept = np.full(len(lo), a0), np.full(len(lo), b0)
    info: dict[str, Any] = {"global": (a0, b0, int(len(s))), "per_class": {}, "clipped": []}
    fitted = []
    for k in np.unique(c):
        m = c == k
        if m.sum() >= min_pairs:
            slope[k], intercept[k] = ols(s[m], g[m])
            info["per_class"][IGBP_CODES[k]] = (slope[k], intercept[k], int(m.sum()))
            fitted.append(k)
    fitted = fitted or list(range(len(lo)))
    outside = [k for k in fitted if not lo[k] <= slope[k] <= hi[k]]
    if len(outside) == len(fitted):
        found = {IGBP_CODES[k]: round(float(slope[k]), 2) for k in fitted}
        raise InputError(
            f"every fitted SIF-GPP slope lies outside its bounds: fitted {found}, bounds "
            f"{ {IGBP_CODES[k]: (float(lo[k]), float(hi[k])) for k in fitted} } "
            "[gC m-2 d-1 per mW m-2 nm-1 sr-1]. Check the SIF units and scale (740 nm "
            "daily-corrected), or widen xgpp.sif_gpp.SLOPE_BOUNDS.")
    for k in outside:
        info["clipped"].append(IGBP_CODES[k])
        old = slope[k]
        slope[k] = float(np.clip(old, lo[k], hi[k]))
        m = c == k
        intercept[k] = float(g[m].mean() - slope[k] * s[m].mean())
    if outside:
        warnings.warn(f"SIF-GPP slopes of {info['clipped']} were outside their literature "
                      "bounds and were clipped to them.", UserWarning, stacklevel=2)
    # classes without enough pairs: the fit over all pairs, its slope clipped to the class
    # bounds and the intercept refitted for that slope (through the pairs' means)
    rest = np.setdiff1d(np.arange(len(lo)), fitted)
    slope[rest] = np.clip(a0, lo[rest], hi[rest])
    intercept[rest] = g.mean() - slope[rest] * s.mean()
    info["clipped_global"] = [IGBP_CODES[k] for k in rest if slope[k] != a0]
    return slope, intercept, info
