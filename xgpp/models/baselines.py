"""Baselines SIFTML is judged against, under the same splits.

* **EC-only**: the same :class:`~xgpp.models.mlp.MLP` trained on site GPP alone (built by
  :func:`xgpp.train.train` with ``method="ec-only"``; no code of its own).
* **SIF-only**: the SIF-pre-trained network followed by a linear SIF -> GPP conversion fitted
  at the training sites, one global slope or one slope per IGBP class (:class:`SIFLinear`).
* **P-model**: pyrealm's standard P-model with default parameters on the drivers
  (:class:`PModelBaseline`); nothing is fitted.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from xgpp._pyrealm import UG_PER_S_TO_G_PER_DAY, quiet_pyrealm
from xgpp._version import __version__
from xgpp.errors import InputError
from xgpp.models.base import OUTPUTS
from xgpp.models.features import N_IGBP, FeatureSpec, columns_from_dataset
from xgpp.models.mlp import MLP, MLPConfig
from xgpp.models.registry import register_architecture
from xgpp.variables import VARIABLES

__all__ = ["PModelBaseline", "SIFLinear", "fit_sif_slopes"]


def fit_sif_slopes(sif: np.ndarray, gpp: np.ndarray, classes: np.ndarray | None = None, *,
                   per_class: bool = True, min_samples: int = 20) -> tuple[np.ndarray, dict]:
    """Least-squares GPP/SIF slopes through the origin, global and per IGBP class.

    Parameters
    ----------
    sif : numpy.ndarray
        SIF at the training samples [mW m-2 nm-1 sr-1].
    gpp : numpy.ndarray
        EC GPP at the same samples [gC m-2 d-1].
    classes : numpy.ndarray, optional
        IGBP class number of each sample.
    per_class : bool
        Fit one slope per class with at least ``min_samples`` samples; other classes use the
        global slope.
    min_samples : int
        Fewest samples for a class slope.

    Returns
    -------
    slopes : numpy.ndarray
        ``(17,)`` slope per class [gC m-2 d-1 per mW m-2 nm-1 sr-1].
    info : dict
        ``{"global": slope, "per_class": {code: (slope, n)}}``.
    """
    from xgpp.landcover import IGBP_CODES

    ok = np.isfinite(sif) & np.isfinite(gpp)
    s, g = np.asarray(sif, np.float64)[ok], np.asarray(gpp, np.float64)[ok]
    if len(s) == 0 or not np.sum(s * s) > 0:
        raise InputError("cannot fit a SIF -> GPP slope: no training sample with finite, "
                         "non-zero SIF and GPP.")
    global_slope = float(np.sum(s * g) / np.sum(s * s))
    slopes = np.full(N_IGBP, global_slope)
    info: dict[str, Any] = {"global": global_slope, "per_class": {}}
    if per_class and classes is not None:
        c = np.asarray(classes)[ok].astype(int)
        for k in np.unique(c):
            m = c == k
            if m.sum() >= min_samples and np.sum(s[m] ** 2) > 0:
                slopes[k] = float(np.sum(s[m] * g[m]) / np.sum(s[m] ** 2))
                info["per_class"][IGBP_CODES[k]] = (slopes[k], int(m.sum()))
    return slopes, info


class SIFLinear(nn.Module):
    """SIF network followed by ``GPP = slope[igbp] * SIF``.

    Parameters
    ----------
    base : MLP
        Network whose first output is normalised SIF.
    spec : FeatureSpec
        Feature layout, to find the IGBP columns.
    with_sif : bool
        Also return normalised SIF: ``forward`` gives ``(n, 2)`` columns (SIF, GPP).

    Notes
    -----
    Buffers ``sif_mean``/``sif_std`` [mW m-2 nm-1 sr-1] undo the SIF normalisation and
    ``slopes`` ``(17,)`` [gC m-2 d-1 per mW m-2 nm-1 sr-1] convert to GPP; all are saved with the
    weights.
    """

    sif_mean: torch.Tensor  # buffers (registered in __init__)
    sif_std: torch.Tensor
    slopes: torch.Tensor

    def __init__(self, base: nn.Module, spec: FeatureSpec, *, with_sif: bool = False) -> None:
        super().__init__()
        self.base = base
        self.with_sif = bool(with_sif)
        self.igbp_mode = spec.config.igbp
        self.igbp_start = spec.igbp_slice[0] if spec.igbp_slice else -1
        self.register_buffer("sif_mean", torch.zeros(()))
        self.register_buffer("sif_std", torch.ones(()))
        self.register_buffer("slopes", torch.ones(N_IGBP))

    def sif(self, x: torch.Tensor) -> torch.Tensor:
        """SIF [mW m-2 nm-1 sr-1] of each row."""
        return self.base(x)[:, 0] * self.sif_std + self.sif_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GPP [gC m-2 d-1] ``(n, 1)``; with ``with_sif`` ``(n, 2)``: normalised SIF, GPP."""
        s = self.sif(x)
        j = self.igbp_start
        if self.igbp_mode == "onehot":
            slope = x[:, j:j + N_IGBP] @ self.slopes
        elif self.igbp_mode == "embedding":
            slope = self.slopes[x[:, j].round().long().clamp(0, N_IGBP - 1)]
        else:
            slope = self.slopes[0].expand_as(s)
        gpp = (slope * s)[:, None]
        if self.with_sif:  # (normalised SIF, GPP)
            return torch.cat([((s - self.sif_mean) / self.sif_std)[:, None], gpp], dim=1)
        return gpp


# config=None: the "net" record is the base network's (an MLPConfig or a MoEConfig dict)
@register_architecture("sif-linear", config=None,
                       description="SIF network + per-IGBP linear SIF -> GPP conversion")
def _build_sif_linear(meta: dict[str, Any]) -> nn.Module:
    from xgpp.models.registry import ARCHITECTURES

    spec = FeatureSpec.from_dict(meta["features"])
    base_kind = meta.get("base_kind", "mlp")
    if base_kind == "mlp":
        base = MLP(spec.n_features, int(meta["n_out_base"]), MLPConfig.from_dict(meta["net"]),
                   embed_column=spec.embed_column)
    else:  # any registered SIF network, e.g. the single-task MoE
        base = ARCHITECTURES[base_kind].build(meta)
    return SIFLinear(base, spec, with_sif=bool(meta.get("with_sif", False)))


# --------------------------------------------------------------------------------------------
# P-model
# --------------------------------------------------------------------------------------------
#: pyrealm's lowest temperature [degC]; below it GPP is set to 0 (frozen canopy).
PMODEL_TMIN = -25.0


class PModelBaseline:
    """pyrealm 2.0 standard P-model (default parameters) as an xgpp model.

    Inputs are used as given in canonical units (tair [degC], vpd [Pa], co2 [ppm], patm [Pa],
    fapar [1], ppfd [umol m-2 s-1]) after clipping to pyrealm's accepted ranges (vpd, ppfd >= 0,
    fapar in [0, 1]); cells colder than -25 degC get GPP 0.  pyrealm returns GPP in
    ug C m-2 s-1, converted with x 86400e-6 to gC m-2 d-1.
    """

    kind = "pmodel"
    method = "pmodel"
    inputs: tuple[str, ...] = ("tair", "vpd", "co2", "patm", "fapar", "ppfd")
    outputs = {"gpp": dict(OUTPUTS["gpp"])}
    module = None

    def __init__(self, provenance: dict[str, Any] | None = None,
                 xgpp_version: str = __version__) -> None:
        self.provenance = dict(provenance or {})
        self.xgpp_version = xgpp_version

    @property
    def input_units(self) -> dict[str, str]:
        """Canonical unit of each input."""
        return {n: VARIABLES[n].units for n in self.inputs}

    @functools.cached_property
    def sha256(self) -> str:
        """Hash of the (parameter-free) model definition."""
        import pyrealm

        text = json.dumps({"kind": self.kind, "pyrealm": pyrealm.__version__,
                           "tmin": PMODEL_TMIN}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def id(self) -> str:
        """Short identifier."""
        return f"pmodel-{self.sha256[:12]}"

    def __repr__(self) -> str:
        return f"<xgpp PModelBaseline {self.id}: {list(self.inputs)} -> ['gpp']>"

    def check(self, ds: xr.Dataset) -> None:
        """Raise a clear error when an input is missing or in the wrong units or dims."""
        from xgpp.models.features import FeatureConfig

        spec = FeatureSpec(FeatureConfig(drivers=self.inputs, igbp=None, latlon=False,
                                         elevation=False))
        spec.check(ds)

    def features(self, ds: xr.Dataset, *, return_mask: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Raw inputs ``(n, 6)`` float32 in canonical units (not normalised)."""
        cols = columns_from_dataset(ds, self.inputs)
        x = np.stack([np.asarray(cols[n], np.float32) for n in self.inputs], axis=1)
        if not return_mask:
            return x
        valid = np.asarray(np.isfinite(x).all(axis=1))
        return x[valid], valid

    def predict_numpy(self, features: np.ndarray, *, device: str = "cpu",
                      batch_size: int | None = None, precision: str = "float32") -> np.ndarray:
        """GPP ``(n, 1)`` [gC m-2 d-1] from :meth:`features` rows.

        The P-model runs in numpy float64 on the CPU: ``device`` and ``precision`` are ignored,
        and ``batch_size`` (default 1 000 000) bounds pyrealm's temporaries.
        """
        from pyrealm.pmodel import PModel, PModelEnvironment

        batch_size = batch_size or 1_000_000
        x = np.asarray(features, np.float64)
        out = np.zeros((x.shape[0], 1), np.float32)
        for i in range(0, x.shape[0], batch_size):
            b = x[i:i + batch_size]
            warm = b[:, 0] >= PMODEL_TMIN
            if not warm.any():
                continue
            b = b[warm]
            with quiet_pyrealm():
                env = PModelEnvironment(
                    tc=b[:, 0], vpd=np.clip(b[:, 1], 0.0, 10000.0), co2=b[:, 2], patm=b[:, 3],
                    fapar=np.clip(b[:, 4], 0.0, 1.0), ppfd=np.clip(b[:, 5], 0.0, 3000.0),
                )
                gpp = PModel(env).gpp * UG_PER_S_TO_G_PER_DAY
            # GPP >= 0 (pyrealm's light-use model gives none below; clamped for safety)
            res = np.where(np.isfinite(gpp), np.maximum(gpp, 0.0), np.nan).astype(np.float32)
            out[i:i + len(warm), 0][warm] = res
        return out

    def metadata(self) -> dict[str, Any]:
        """The JSON record written as ``model.json``."""
        from xgpp.models._format import _metadata_header, versions

        return {**_metadata_header(self),
                "pmodel": {"tmin_degC": PMODEL_TMIN, "parameters": "pyrealm defaults"},
                "provenance": {**self.provenance, "versions": versions()}}

    def save(self, path: str, *, storage_options: dict | None = None) -> str:
        """Write ``model.json`` (the P-model has no weights)."""
        from xgpp.models._format import _fs, write_metadata

        fs, root = _fs(path, storage_options)
        fs.makedirs(root, exist_ok=True)
        write_metadata(fs, root, self.metadata())  # sealed: an edited model.json is refused
        return str(path)

    @classmethod
    def from_bundle(cls, meta: dict[str, Any], fs: Any, root: str) -> PModelBaseline:
        """Rebuild from ``model.json``."""
        return cls(provenance=meta.get("provenance", {}),
                   xgpp_version=meta.get("xgpp_version", "unknown"))
