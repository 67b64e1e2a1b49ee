"""The experiment: does each method do what the study claims, on twin worlds whose truth is known.

``xgpp experiment --out DIR`` (:func:`run_experiment`) generates the named twin-world variants,
plans one run per (world, method, split, seed, SIF scale) (:func:`plan_runs`), runs each in its
own process (resumable: finished runs are skipped, failed ones reported and retried on a
rerun), scores every run against the held-out sites and the whole true field, and writes
``metrics.json``, ``metrics.csv``, ``report.md`` and a self-contained ``report.html`` with the
figures.  Layout: :mod:`~xgpp.experiment.config`, :mod:`~xgpp.experiment.plan`,
:mod:`~xgpp.experiment.worker` (one run), :mod:`~xgpp.experiment.runner`,
:mod:`~xgpp.experiment.summary` (tables, claims, report), :mod:`~xgpp.experiment.figures`.
"""

from __future__ import annotations

from xgpp.experiment.config import QUICK_TRAIN, ExperimentConfig
from xgpp.experiment.plan import Run, fold_for_seed, plan_runs
from xgpp.experiment.runner import run_experiment

__all__ = ["QUICK_TRAIN", "ExperimentConfig", "Run", "fold_for_seed", "plan_runs",
           "run_experiment"]
