"""Loss terms: plain and masked MSE, the SIF-GPP physics term, and the L2-SP penalty.

Every loss callable has the loop's signature ``loss(pred, batch) -> (total, parts)``; the
masked terms ignore rows without a label of their kind (changing an unlabelled target changes
nothing), and a batch holding no label of a kind contributes zero for that term (with the
graph intact, so ``backward`` works).  :func:`l2sp` wraps any of them with a penalty on the
weights themselves (it reads the network, not the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from xgpp.errors import InputError, NotFoundError

__all__ = ["L2SP", "l2sp", "masked_mse", "mse", "physics_residual"]


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


class L2SP:
    """The L2-SP penalty: fine-tuning pulled toward the pre-trained weights.

    Li, Grandvalet & Davoine (2018), "Explicit inductive bias for transfer learning with
    convolutional networks", ICML.
    ``alpha / 2 * sum ||w - w0||^2`` over the parameters shared with the pre-trained network
    (``w0`` its weights) plus ``beta / 2 * sum ||w||^2`` over the new ones (the head), summed
    over every element (weights and biases), in units of the loss it is added to.

    Parameters
    ----------
    net : torch.nn.Module
        The network being fine-tuned (its parameters are read on every call).
    reference : mapping of str to torch.Tensor
        Pre-trained value of each shared parameter, by ``net.named_parameters()`` name.
    alpha, beta : float
        Weights of the two terms (>= 0).
    new_prefix : str
        Names starting with it are the new parameters (``"head."``); every other parameter
        must be in ``reference``.
    """

    def __init__(self, net: torch.nn.Module, reference: Mapping[str, torch.Tensor], *,
                 alpha: float, beta: float, new_prefix: str = "head.") -> None:
        if alpha < 0 or beta < 0:
            raise InputError(f"L2-SP weights must be >= 0; got alpha={alpha}, beta={beta}.")
        self.alpha, self.beta = float(alpha), float(beta)
        self.shared: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.new: list[torch.nn.Parameter] = []
        for name, p in net.named_parameters():
            if name.startswith(new_prefix):
                self.new.append(p)
            elif name in reference:
                ref = reference[name]
                if ref.shape != p.shape:
                    raise InputError(f"L2-SP reference {name!r} has shape {tuple(ref.shape)}, "
                                     f"the parameter {tuple(p.shape)}.")
                self.shared.append((p, ref.detach().clone().to(p.device, p.dtype)))
            else:
                raise NotFoundError(f"parameter {name!r} is neither new ({new_prefix!r}...) nor in "
                               f"the pre-trained reference ({sorted(reference)[:4]}...).")

    def penalty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha / 2 ||w_shared - w0||^2, beta / 2 ||w_new||^2)`` as differentiable scalars."""
        params = [p for p, _ in self.shared] + self.new
        zero = params[0].new_zeros(()) if params else torch.zeros(())
        sp = sum((((p - r) ** 2).sum() for p, r in self.shared), zero)
        new = sum(((p ** 2).sum() for p in self.new), zero)
        return 0.5 * self.alpha * sp, 0.5 * self.beta * new

    def __call__(self, base: Callable) -> Callable:
        """``base`` (a loop loss) plus the penalty, reported as parts ``l2sp`` and ``l2_head``."""

        def loss(pred, batch):
            total, parts = base(pred, batch)
            sp, new = self.penalty()
            return total + sp + new, {**parts, "l2sp": sp, "l2_head": new}

        return loss


def l2sp(base: Callable, net: torch.nn.Module, reference: Mapping[str, torch.Tensor], *,
         alpha: float, beta: float, new_prefix: str = "head.") -> Callable:
    """``base`` loss plus the :class:`L2SP` penalty of ``net`` toward ``reference``.

    The returned loss has the loop's signature and reports the parts of ``base`` plus
    ``"l2sp"`` (the pull toward the pre-trained weights) and ``"l2_head"`` (the new head's
    weight decay); its ``penalty`` attribute is :meth:`L2SP.penalty`.
    """
    reg = L2SP(net, reference, alpha=alpha, beta=beta, new_prefix=new_prefix)
    loss = reg(base)
    loss.penalty = reg.penalty  # type: ignore[attr-defined]
    return loss
