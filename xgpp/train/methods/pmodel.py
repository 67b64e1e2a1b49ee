"""P-model baseline: pyrealm's standard P-model with default parameters (nothing is trained)."""

from __future__ import annotations

from xgpp.models.baselines import PModelBaseline
from xgpp.train.methods import register_method


@register_method("pmodel", needs_sites=False, sif_product=None,
                 description="pyrealm P-model, default parameters (no training; a site "
                             "split is accepted and ignored)")
def fit(ctx):
    """Check the drivers and return the parameter-free model."""
    model = PModelBaseline(provenance=ctx.provenance)
    model.check(ctx.drivers)
    return ctx.save(model)
