"""SIFTML: transfer learning from satellite SIF to eddy-covariance GPP.

Method (Guan, Ma, Zeng & Lin, EGU 2026; precursor SIFEC-TL, Ma, Guan et al. 2025, IJAEO
139:104503):

1. **Pre-train** an MLP on every valid grid pixel to predict SIF from the drivers and static
   features.  SIF is normalised per source domain, ``(SIF - mean) / std`` with the mean and
   standard deviation of that SIF product, so rescaling the product (a different retrieval
   window or calibration) leaves the pre-trained network unchanged.
2. **Fine-tune** on EC GPP at the training sites, by strategy:

   ``"head"``    a new linear head on frozen feature layers;
   ``"full"``    a new head and all layers trained at the lower fine-tuning learning rate;
   ``"both"``    ``"head"`` first, then ``"full"`` from there;
   ``"frozen"``  ``"head"`` first, then every layer but the first ``frozen_layers`` hidden
                 layers (phase ``"partial"``).

The training loop lives in :mod:`xgpp.train`; this module holds the strategy table and the
network surgery it needs.
"""

from __future__ import annotations

from torch import nn

from xgpp.models.mlp import MLP, build_seeded

__all__ = ["STRATEGIES", "new_head", "set_trainable"]

#: strategy -> fine-tuning phases in order; each phase names which parameters train
STRATEGIES: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "full": ("full",),
    "both": ("head", "full"),
    "frozen": ("head", "partial"),
}


def new_head(net: MLP, n_out: int = 1, *, seed: int = 0) -> MLP:
    """Replace the network's head by a freshly initialised linear layer.

    The weights come from a local generator seeded by ``seed`` (torch's default ``Linear``
    initialisation), so torch's global random state is neither read nor changed.
    """
    n_in = net.head.in_features
    head = build_seeded(lambda: nn.Linear(n_in, n_out), seed)
    net.head = head.to(net.head.weight.device)
    return net


def set_trainable(net: MLP, phase: str, *, frozen_layers: int = 0) -> list[nn.Parameter]:
    """Freeze or unfreeze parameters for ``phase`` and return those that train.

    ``"head"`` trains the head only; ``"partial"`` every parameter but those of the first
    ``frozen_layers`` hidden layers (and the IGBP embedding feeding them); every other phase
    (``"full"``, ``"pretrain"``, ``"ec"``) trains all parameters.
    """
    for p in net.parameters():
        p.requires_grad_(True)
    if phase == "head":
        frozen = net.feature_parameters()
    elif phase == "partial":
        frozen = net.first_layers_parameters(frozen_layers)
    else:
        frozen = []
    for p in frozen:
        p.requires_grad_(False)
    return [p for p in net.parameters() if p.requires_grad]
