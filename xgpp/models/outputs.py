"""Output layers that respect physics: GPP is never negative.

:class:`NonNegative` wraps any module whose outputs are normalised (``physical = z * scale +
offset``) and passes the chosen columns through a softplus *in physical units*::

    gpp = softplus(z * scale + offset; beta) = log(1 + exp(beta * gpp_raw)) / beta

then back to normalised units, so :class:`~xgpp.models.TorchModel`'s scale and offset still
apply.  ``beta`` [per gC m-2 d-1] sets how sharp the floor is: with the default 10 the layer is
the identity (to float precision) above about 2 gC m-2 d-1, and a raw prediction of 0 becomes
ln 2 / 10 = 0.07 gC m-2 d-1.  The same layer runs in training (the loss sees the constrained
output, with a gradient everywhere, unlike a clamp) and in prediction (it is part of the
saved module).  :func:`xgpp.models.registry.build_module` rewraps a bundle's module from its
``model.json["nonnegative"]`` record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xgpp.errors import InputError

__all__ = ["DEFAULT_SHARPNESS", "NonNegative", "unwrap"]

#: softplus ``beta`` [per gC m-2 d-1] of the GPP floor
DEFAULT_SHARPNESS = 10.0


class NonNegative(nn.Module):
    """Make output columns non-negative in physical units (softplus floor at 0).

    Parameters
    ----------
    inner : torch.nn.Module
        Maps features to normalised outputs ``(n, n_out)``.
    scale, offset : sequence of float
        Per output column: physical = normalised * scale + offset.
    columns : sequence of int
        Columns to constrain (e.g. GPP's).
    sharpness : float
        Softplus ``beta`` in physical units.
    """

    scale: torch.Tensor   # buffers (registered in __init__)
    offset: torch.Tensor
    mask: torch.Tensor

    def __init__(self, inner: nn.Module, scale: Sequence[float], offset: Sequence[float],
                 columns: Sequence[int], sharpness: float = DEFAULT_SHARPNESS) -> None:
        super().__init__()
        if len(scale) != len(offset):
            raise InputError(f"{len(scale)} scales but {len(offset)} offsets.")
        if not sharpness > 0:
            raise InputError(f"sharpness={sharpness} must be > 0 (softplus beta).")
        bad = [c for c in columns if not 0 <= int(c) < len(scale)]
        if bad:
            raise InputError(f"columns {bad} out of range for {len(scale)} outputs.")
        self.inner = inner
        self.columns = tuple(int(c) for c in columns)
        self.sharpness = float(sharpness)
        mask = torch.zeros(len(scale), dtype=torch.bool)
        mask[list(self.columns)] = True
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(list(offset), dtype=torch.float32))
        self.register_buffer("mask", mask)

    def constrain(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the floor to normalised outputs ``z`` ``(n, n_out)``."""
        phys = z * self.scale + self.offset
        floored = torch.nn.functional.softplus(phys, beta=self.sharpness, threshold=20.0)
        return torch.where(self.mask, (floored - self.offset) / self.scale, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised outputs with the constrained columns non-negative in physical units."""
        return self.constrain(self.inner(x))

    def forward_with_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For mixture-of-experts modules: constrained outputs and the gate weights."""
        out, gates = self.inner.forward_with_gates(x)  # type: ignore[operator]  # (nn.Module)
        return self.constrain(out), gates

    def record(self) -> dict[str, Any]:
        """The ``model.json["nonnegative"]`` record that rebuilds this wrapper."""
        return {"columns": list(self.columns), "sharpness": self.sharpness,
                "scale": self.scale.tolist(), "offset": self.offset.tolist()}

    @classmethod
    def from_record(cls, inner: nn.Module, record: dict[str, Any]) -> NonNegative:
        """Inverse of :meth:`record`."""
        return cls(inner, record["scale"], record["offset"], record["columns"],
                   record.get("sharpness", DEFAULT_SHARPNESS))


def unwrap(module: nn.Module) -> nn.Module:
    """The architecture inside any :class:`NonNegative` wrapper."""
    while isinstance(module, NonNegative):
        module = module.inner
    return module
