"""Shared by the benchmarks: the twin world on disk, the default trained models, peak memory.

The models are the ones a user gets: :func:`default_model` trains through the real training
path (:func:`xgpp.train.train_from_catalog`, the method registry) with ``TrainConfig()``'s
features and architecture (``ec-only`` and ``siftml``: the 31-feature 128-128-64 SiLU MLP
behind the GPP floor; ``moe``: the default MMoE), shortening only epoch counts and samples per
epoch, so training takes seconds to a minute.  Speed depends on the architecture and the
features, not on how well the weights are trained.  Worlds and bundles are cached under
``benchmarks/results/data`` (git-ignored) and reused by later runs.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import psutil

DATA = Path(__file__).parent / "results" / "data"

#: the study's three model families, by training method
METHODS = ("ec-only", "siftml", "moe")


class PeakMemory:
    """Peak RSS [bytes] of this process (unless ``children_only``) plus its children, sampled
    every 50 ms; ``growth`` is the peak above the RSS at entry."""

    def __init__(self, children_only: bool = False, interval: float = 0.05) -> None:
        self.peak, self._stop = 0, threading.Event()
        self.children_only = children_only
        self.interval = interval

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0 if self.children_only else me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> PeakMemory:
        self.base = self._rss()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        """Peak RSS above the RSS at entry [bytes]."""
        return self.peak - self.base


def world(resolution: float = 0.5, years: int = 2, start_year: int = 2019) -> Path:
    """Folder of a twin world (every product and ``catalog.yaml``), written once and reused."""
    from xgpp.synthetic import write_world

    path = DATA / f"world_{resolution:g}deg_{start_year}_{years}y"
    if not (path / "catalog.yaml").exists():
        t0 = time.perf_counter()
        print(f"writing twin world {resolution:g} deg, {years} years -> {path} ...", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the world's own QC warnings say nothing here
            write_world(str(path), resolution=resolution, start=f"{start_year}-01-01",
                        end=f"{start_year + years - 1}-12-31", seed=0, progress=False)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def short_config(method: str):
    """``TrainConfig()`` with only epochs and samples per epoch cut (architecture, features,
    batch sizes and loaders are the defaults a user gets)."""
    from xgpp.train import TrainConfig

    cfg = TrainConfig()
    if method == "ec-only":
        return cfg.replace(ec=replace(cfg.ec, max_epochs=3))
    if method == "siftml":
        return cfg.replace(pretrain=replace(cfg.pretrain, max_epochs=1, samples_per_epoch=200_000),
                           head=replace(cfg.head, max_epochs=2),
                           finetune=replace(cfg.finetune, max_epochs=2))
    if method == "moe":
        mt = cfg.multitask
        return cfg.replace(multitask=replace(mt, phase=replace(mt.phase, max_epochs=1,
                                                               samples_per_epoch=65_536)))
    raise ValueError(f"no short config for method {method!r}; benchmarks use {METHODS}.")


def default_model(world_path: Path, method: str = "ec-only"):
    """The bundle ``xgpp train --method METHOD`` makes on ``world_path`` (short epochs), cached."""
    import xgpp
    from xgpp.train import train_from_catalog

    out = DATA / "models" / world_path.name / method
    if not (out / "model.json").exists():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # site QC warnings of the twin world
            train_from_catalog(str(world_path / "catalog.yaml"), method=method,
                               config=short_config(method).to_dict(), out=str(out),
                               progress=False, device="cpu")
        print(f"trained {method} on {world_path.name} in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return xgpp.load_model(str(out))


def describe(model) -> str:
    """One line: method, architecture, feature count."""
    net = model.net.to_dict() if hasattr(model.net, "to_dict") else dict(model.net)
    arch = {k: v for k, v in net.items() if k in ("hidden", "activation", "n_experts",
                                                   "expert_hidden", "tower_hidden")}
    return f"{model.method} ({model.kind}, {model.spec.n_features} features, {arch})"
