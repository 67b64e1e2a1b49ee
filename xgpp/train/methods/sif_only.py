"""SIF-only baseline: the SIF-pre-trained network times a SIF -> GPP slope from the sites."""

from __future__ import annotations

import numpy as np
import torch

from xgpp.models.base import OUTPUTS
from xgpp.models.baselines import SIFLinear, fit_sif_slopes
from xgpp.models.bundle import TorchModel
from xgpp.models.outputs import NonNegative
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import release
from xgpp.train.methods._pretrain import pretrained_mlp


def sif_conversion(ctx, net: torch.nn.Module, sif_scale: tuple[float, float], *,
                   with_sif: bool = False) -> tuple[SIFLinear, dict]:
    """``GPP = slope[igbp] * SIF`` on a trained SIF network, slopes fitted at the sites.

    Every training site (fitting and validation) contributes the network's SIF and its GPP.
    """
    cfg, s = ctx.config, ctx.site_split
    module = SIFLinear(release(net), ctx.spec, with_sif=with_sif)
    module.sif_mean.fill_(sif_scale[0])
    module.sif_std.fill_(sif_scale[1])
    with torch.inference_mode():
        sif_sites = module.sif(torch.from_numpy(np.concatenate([s.x_fit, s.x_val]))).numpy()
    slopes, info = fit_sif_slopes(
        sif_sites, np.concatenate([s.y_fit, s.y_val])[:, 0], np.concatenate([s.cls_fit, s.cls_val]),
        per_class=cfg.sif_conversion == "igbp", min_samples=cfg.min_class_samples)
    module.slopes.copy_(torch.from_numpy(slopes.astype(np.float32)))
    return module, info


@register_method("sif-only", needs_sites=True, sif_product="sif_tropomi",
                 description="SIF network + linear SIF -> GPP slope (global or per IGBP class) "
                             "fitted at the training sites",
                 config_sections=("features", "net", "pretrain", "loader", "sif_conversion",
                                  "min_class_samples", "site_window", "igbp_from", "sif_var"))
def fit(ctx):
    """Pre-train on SIF, then fit ``GPP = slope[igbp] * SIF`` at every training site."""
    cfg = ctx.config
    net, sif_scale = pretrained_mlp(ctx)
    ctx.provenance["history"] = ctx.history
    module, info = sif_conversion(ctx, net, sif_scale)
    # GPP >= 0: the same softplus floor as the trained methods (slopes are fitted on the raw
    # SIF; the floor only changes predictions where slope * SIF < ~2 gC m-2 d-1)
    floored = NonNegative(module, [1.0], [0.0], [0]).eval()
    model = TorchModel(floored, ctx.spec, outputs={"gpp": dict(OUTPUTS["gpp"])},
                       output_scale=[1.0], output_offset=[0.0], kind="sif-linear",
                       net=cfg.net, method=ctx.method,
                       provenance={**ctx.provenance, "sif_conversion": info},
                       extra={"n_out_base": 1, "conversion": info})
    return ctx.save(model)
