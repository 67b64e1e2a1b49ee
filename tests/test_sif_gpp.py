"""Fitting GPP = a_k SIF + b_k per IGBP class, within the literature bounds."""

from __future__ import annotations

import numpy as np
import pytest

from xgpp.landcover import IGBP_CODES
from xgpp.sif_gpp import SLOPE_BOUNDS, fit_relation, slope_bounds


def test_recovers_known_class_relations():
    rng = np.random.default_rng(0)
    cls_ = rng.choice([1, 4, 12], 3000)
    sif = rng.uniform(0.1, 1.5, 3000)
    a = {1: 12.0, 4: 15.0, 12: 22.0}
    gpp = np.array([a[c] for c in cls_]) * sif + 0.5
    slope, icpt, info = fit_relation(sif, gpp, cls_, min_pairs=20)
    for c, v in a.items():
        assert slope[c] == pytest.approx(v, rel=1e-6) and icpt[c] == pytest.approx(0.5, abs=1e-6)
    assert set(info["per_class"]) == {"ENF", "DBF", "CRO"} and info["clipped"] == []


def test_classes_without_pairs_inherit_a_clipped_slope_with_a_refitted_intercept():
    rng = np.random.default_rng(1)
    sif = rng.uniform(0.1, 1.5, 200)
    gpp = 30.0 * sif + 1.0  # croplands only, above the natural-biome bound of 27
    slope, icpt, info = fit_relation(sif, gpp, np.full(200, 12), min_pairs=20)
    assert slope[12] == pytest.approx(30.0)  # inside the crop bound
    enf = IGBP_CODES.index("ENF")
    assert slope[enf] == SLOPE_BOUNDS["ENF"][1]
    # the inherited line passes through the pairs' means, not the unclipped intercept
    assert slope[enf] * sif.mean() + icpt[enf] == pytest.approx(gpp.mean())
    assert "ENF" in info["clipped_global"]


def test_bounds_that_exclude_every_fitted_slope_are_an_error():
    sif = np.linspace(10, 100, 100)  # SIF 100x too large: slopes ~0.1
    with pytest.raises(ValueError, match="outside its bounds"):
        fit_relation(sif, 12 * sif / 100, np.full(100, 1), min_pairs=20)
    with pytest.raises(ValueError, match="tower-date pairs"):
        fit_relation(sif[:5], sif[:5], np.ones(5), min_pairs=20)
    lo, hi = slope_bounds()
    assert lo.shape == hi.shape == (17,) and (lo < hi).all()
    assert hi[IGBP_CODES.index("CRO")] > hi[IGBP_CODES.index("GRA")]  # C4 crops highest
