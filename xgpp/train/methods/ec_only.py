"""EC-only baseline: the SIFTML network trained on site GPP alone."""

from __future__ import annotations

from xgpp.models.siftml import set_trainable
from xgpp.train.losses import mse
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import gpp_model, new_mlp, nonnegative_gpp


@register_method("ec-only", needs_sites=True, sif_product=None,
                 description="the SIFTML network trained on site GPP alone",
                 config_sections=("features", "net", "ec", "val_sites", "site_window",
                                  "igbp_from"))
def fit(ctx):
    """Train the MLP from scratch on the fitting sites' GPP."""
    cfg = ctx.config
    site_val = ctx.site_split.val_batch()
    net = new_mlp(ctx)
    floored = nonnegative_gpp(ctx, net)  # GPP >= 0, in training as in prediction
    ctx.history["ec"] = ctx.run_phase("ec", floored, cfg.ec, params=set_trainable(net, "ec"),
                                      batches=ctx.site_batches("ec", cfg.ec), val=site_val,
                                      loss=mse("gpp"))
    return ctx.save(gpp_model(ctx, floored))
