"""Loss terms: plain and masked MSE, and the SIF-GPP physics term.

Every loss callable has the loop's signature ``loss(pred, batch) -> (total, parts)``; the
masked terms ignore rows without a label of their kind (changing an unlabelled target changes
nothing), and a batch holding no label of a kind contributes zero for that term (with the
graph intact, so ``backward`` works).
"""

from __future__ import annotations

import torch

__all__ = ["masked_mse", "mse", "physics_residual"]


def mse(part: str = "gpp", target: str = "y"):
    """MSE between ``pred`` ``(n, k)`` and ``batch[target]``, reported as part ``part``."""

    def loss(pred: torch.Tensor, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = torch.nn.functional.mse_loss(pred, batch[target])
        return value, {part: value}

    return loss


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error over rows where ``mask`` is true.

    ``sum(w * m * (pred - target)**2) / sum(w * m)``; rows with ``mask`` false add nothing
    whatever their target (NaN included).  With no labelled row the result is ``0 * pred.sum()``
    (zero, differentiable).
    """
    m = mask.to(pred.dtype)
    w = m if weight is None else m * weight.to(pred.dtype)
    err = torch.where(mask, pred - torch.where(mask, target, torch.zeros_like(target)),
                      torch.zeros_like(pred))
    denom = w.sum()
    if not bool(denom > 0):
        return pred.sum() * 0.0
    return (w * err * err).sum() / denom


def physics_residual(gpp: torch.Tensor, sif: torch.Tensor, igbp: torch.Tensor,
                     slope: torch.Tensor, intercept: torch.Tensor, scale: float
                     ) -> torch.Tensor:
    """Mean squared departure of GPP from ``a_k * SIF + b_k``, in units of ``scale``.

    Parameters
    ----------
    gpp, sif : torch.Tensor
        Predicted GPP [gC m-2 d-1] and SIF [mW m-2 nm-1 sr-1] on the same rows (physical
        units), labelled or not.
    igbp : torch.Tensor
        IGBP class number of each row (index into ``slope``/``intercept``).
    slope, intercept : torch.Tensor
        ``(17,)`` per-class ``a_k`` [gC m-2 d-1 per mW m-2 nm-1 sr-1] and ``b_k`` [gC m-2 d-1].
    scale : float
        GPP scale [gC m-2 d-1] that makes the term dimensionless (the sites' GPP std).
    """
    k = igbp.long().clamp(0, slope.numel() - 1)
    r = (gpp - (slope[k] * sif + intercept[k])) / scale
    return (r * r).mean() if r.numel() else gpp.sum() * 0.0
