"""Per-phase checkpoints (safetensors + JSON, no pickle) and the resume fingerprint.

Every file is written to a temporary name and renamed, so a run killed at any moment (SIGKILL
included) leaves the previous epoch's checkpoint or the new one, never a torn file; should
the JSON and tensors of a phase come from different epochs (killed between the two renames),
their CRCs disagree and the phase restarts from its beginning.  A resumed run repeats the
killed epoch from its start and ends bit-identical to an undisturbed one (docs/reliability.md).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import torch

from xgpp.errors import InputError
from xgpp.models._format import _fs, _json_default

__all__ = ["Checkpoints"]


class Checkpoints:
    """Per-phase checkpoints under ``OUT/checkpoints``; a no-op when ``out`` is None."""

    def __init__(self, out: str | None, fingerprint: dict[str, Any],
                 storage_options: dict | None = None) -> None:
        self.enabled = out is not None
        if out is None:
            return
        self.fs, root = _fs(out, storage_options)
        self.root = f"{root.rstrip('/')}/checkpoints"
        self.fs.makedirs(self.root, exist_ok=True)
        run = f"{self.root}/run.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if self.fs.exists(run):
            with self.fs.open(run, "r") as f:
                old = f.read()
            if old != text:
                diff = _first_difference(json.loads(old), json.loads(text))
                raise InputError(
                    f"{out} holds checkpoints of a different training run (first difference: "
                    f"{diff}); resuming would mix two runs. Use a new --out folder, or delete "
                    f"{self.root} to start over."
                )
        else:  # atomically: a run killed here must not leave a torn run.json behind
            tmp = f"{self.root}/.run.json.tmp"
            with self.fs.open(tmp, "w") as f:
                f.write(text)
            self.fs.mv(tmp, run)

    def load(self, phase: str) -> dict[str, Any] | None:
        """The saved state of ``phase`` (model, best, optimizer tensors, history), or None."""
        if not self.enabled or not self.fs.exists(f"{self.root}/{phase}.json"):
            return None
        from safetensors.torch import load as st_load

        with self.fs.open(f"{self.root}/{phase}.json", "r") as f:
            info = json.load(f)
        with self.fs.open(f"{self.root}/{phase}.safetensors", "rb") as f:
            tensors = st_load(f.read())
        if tensors.get("_crc") is not None and info.get("crc") != int(tensors["_crc"].item()):
            return None  # torn write: the JSON and tensors are from different epochs
        info["model"] = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        info["best"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        info["optim_tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
        return info

    def save(self, phase: str, net: torch.nn.Module, opt: torch.optim.Optimizer,
             best: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Write the state of ``phase`` atomically (temporary files, then renames)."""
        if not self.enabled:
            return
        from safetensors.torch import save as st_save

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in
                   net.state_dict().items()}
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
        opt_state = opt.state_dict()
        scalars: dict[str, Any] = {}
        for idx, st in opt_state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        crc = zlib.crc32(json.dumps(info, sort_keys=True, default=str).encode())
        tensors["_crc"] = torch.tensor(crc, dtype=torch.int64)
        info = {**info, "crc": crc, "optim_groups": opt_state["param_groups"],
                "optim_scalars": scalars}
        for name, payload, mode in ((f"{phase}.safetensors", st_save(tensors), "wb"),
                                    (f"{phase}.json", json.dumps(info, default=_json_default), "w")):
            tmp = f"{self.root}/.{name}.tmp"
            with self.fs.open(tmp, mode) as f:
                f.write(payload)
            self.fs.mv(tmp, f"{self.root}/{name}")


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path}: {a!r} (checkpoint) vs {b!r} (now)"


def _restore_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in saved["optim_tensors"].items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    for key, v in saved.get("optim_scalars", {}).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": saved["optim_groups"]})
