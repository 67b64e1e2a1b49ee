"""Failure modes (docs/reliability.md): a worker killed during a prediction, a training run
killed mid-epoch, and prediction and world writes killed part-way, each with real processes
killed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import xgpp
from xgpp.catalog import IncompleteStoreWarning
from xgpp.errors import IncompleteStoreError, XgppError
from xgpp.models import MLP, OUTPUTS, FeatureConfig, FeatureSpec, MLPConfig, TorchModel
from xgpp.predict import write_prediction
from xgpp.synthetic import make_world, write_world

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SLABS = 12  # time slabs of the small cubes below (a year of 8-day steps in chunks of 4)


def _model(drivers: xr.Dataset) -> TorchModel:
    torch.manual_seed(0)
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    net = MLPConfig(hidden=(16, 16))
    return TorchModel(MLP(spec.n_features, 1, net), spec, outputs={"gpp": OUTPUTS["gpp"]},
                      output_scale=[3.0], output_offset=[2.0], net=net)


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """A driver store (46 steps in 12 slabs of 4, one chunk in space) and a model saved."""
    root = tmp_path_factory.mktemp("reliability")
    world = make_world(resolution=10.0, start="2019-01-01", end="2019-12-31", n_sites=10,
                       chunks={"time": 4, "lat": 18, "lon": 36})
    src = str(root / "drivers.zarr")
    world.drivers.to_zarr(src, zarr_format=3, consolidated=False)
    model = _model(world.drivers)
    model.save(str(root / "model"))
    return src, str(root / "model")


def _attrs(url: str) -> dict:
    """The store's attributes, or {} while it does not exist or is being rewritten."""
    try:
        return dict(zarr.open_group(url, mode="r").attrs)
    except Exception:  # noqa: BLE001 - a zarr.json caught mid-write reads as nothing yet
        return {}


def _wait(cond, what: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _data(url: str) -> xr.Dataset:
    return xr.open_zarr(url, consolidated=False).compute()


# --------------------------------------------------------------------------- worker loss
def _slow_kernel(seconds: float) -> None:
    """On a worker: make each chunk's model call take ``seconds`` longer (a slower model)."""
    import xgpp.predict as P

    original = P._predict_block

    def slow(*a, **k):
        time.sleep(seconds)
        return original(*a, **k)

    P._predict_block = slow


def test_prediction_survives_a_killed_worker(tmp_path, cube):
    """SIGKILL one of two worker processes part-way: the write completes, bit-identical."""
    src, model_dir = cube
    model = xgpp.load_model(model_dir)
    fresh = str(tmp_path / "fresh.zarr")
    write_prediction(xgpp.open_cube(src), model, fresh, progress=False)  # undisturbed

    url = str(tmp_path / "killed.zarr")
    with xgpp.cluster("local", n_workers=2, threads_per_worker=1,
                      memory_limit="1GiB", dashboard_address=":0") as client:
        client.run(_slow_kernel, 0.2)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        seen: dict = {}

        def kill_part_way():
            _wait(lambda: len(_attrs(url).get("xgpp_done_slabs", [])) >= 2, "two slabs")
            seen["done_at_kill"] = len(_attrs(url)["xgpp_done_slabs"])
            os.kill(victim, signal.SIGKILL)  # only a worker of this test's cluster

        killer = threading.Thread(target=kill_part_way)
        killer.start()
        write_prediction(xgpp.open_cube(src), model, url, progress=False)
        killer.join()
        after = set(client.run(os.getpid).values())
    assert seen["done_at_kill"] < SLABS, "the worker died after the write had finished"
    assert victim not in after  # it really died (the nanny started a new one)
    attrs = _attrs(url)
    assert attrs["xgpp_complete"] is True and attrs["xgpp_done_slabs"] == list(range(SLABS))
    a, b = _data(url), _data(fresh)
    xr.testing.assert_equal(a, b)  # values bit for bit (NaN where NaN), coordinates too
    assert a["gpp"].notnull().sum() > 0


# --------------------------------------------------------------------------- training
_TRAIN_SCRIPT = """
import json, os, sys, time, warnings
import torch
torch.set_num_threads(1)
import xgpp.train.loop as L
from xgpp.train import train_from_catalog

log, delay = os.environ.get("XGPP_TEST_LOG"), float(os.environ.get("XGPP_TEST_DELAY", "0"))
to_device, phase_seed = L._to_device, L.phase_seed

def logged_seed(seed, phase, epoch):
    if log:
        with open(log, "a") as f:
            f.write(f"epoch {phase} {epoch}\\n")
    return phase_seed(seed, phase, epoch)

def slow(batch, device):
    time.sleep(delay)
    if log:
        with open(log, "a") as f:
            f.write("batch\\n")
    return to_device(batch, device)

L.phase_seed, L._to_device = logged_seed, slow
warnings.simplefilter("ignore")
config = json.loads(sys.argv[3])
model = train_from_catalog(sys.argv[1], method="ec-only", split="site-kfold:k=4,fold=0",
                           out=sys.argv[2], config=config, seed=3, progress=False,
                           device="cpu")
print("SHA", model.sha256)
"""
_TRAIN_CONFIG = {"ec": {"max_epochs": 6, "lr": 3e-3, "batch_size": 64, "patience": 6},
                 "net": {"hidden": [16, 16]}}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world") / "w")
    write_world(root, resolution=10.0, start="2019-01-01", end="2019-12-31", n_sites=24,
                chunks={"time": 23, "lat": 18, "lon": 36}, progress=False)
    return root


def _train(script, catalog, out, env):
    proc = subprocess.run([sys.executable, str(script), catalog, out,
                           json.dumps(_TRAIN_CONFIG)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split("SHA")[-1].strip()


def test_training_killed_mid_epoch_resumes_to_the_same_model(tmp_path, small_world):
    """SIGKILL mid-epoch after the first checkpoint; the same command resumes from it and
    ends with the bit-identical model (same sha256 of weights and metadata) of an
    undisturbed run: every epoch's batches and torch seed derive from (seed, phase, epoch),
    and a checkpoint holds the weights, best weights and optimizer state of its epoch."""
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    catalog = f"{small_world}/catalog.yaml"
    from xgpp.train import train_from_catalog

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the script
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the twin world's site QC warnings
            reference = train_from_catalog(
                catalog, method="ec-only", split="site-kfold:k=4,fold=0",
                out=str(tmp_path / "undisturbed"), config=_TRAIN_CONFIG, seed=3,
                progress=False, device="cpu").sha256
    finally:
        torch.set_num_threads(threads)

    out, log = str(tmp_path / "killed"), tmp_path / "log.txt"
    ckpt = os.path.join(out, "checkpoints", "ec.json")
    env = {**ENV, "XGPP_TEST_LOG": str(log), "XGPP_TEST_DELAY": "0.01"}
    proc = subprocess.Popen([sys.executable, str(script), catalog, out,
                             json.dumps(_TRAIN_CONFIG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: os.path.exists(ckpt), "the first checkpoint", timeout=180)
        # a few batches into the next epoch
        _wait(lambda: log.read_text().splitlines()[-3:] == ["batch"] * 3, "next batches")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(ckpt) as f:
        saved = json.load(f)
    lines = log.read_text().splitlines()
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith("epoch"))
    assert not saved["done"] and saved["epoch"] < 6
    # killed inside the epoch after the checkpointed one: it had begun and not been saved
    assert lines[last_epoch] == f"epoch ec {saved['epoch']}" and len(lines) > last_epoch + 1

    log.unlink()
    resumed = _train(script, catalog, out, {**env, "XGPP_TEST_DELAY": "0"})
    epochs = [line for line in log.read_text().splitlines() if line.startswith("epoch")]
    assert epochs[0] == f"epoch ec {saved['epoch']}"  # resumed there, no epoch before rerun
    assert resumed == reference  # bit-identical: tolerance zero
    assert xgpp.load_model(out).sha256 == reference


# --------------------------------------------------------------------------- interrupted writes
_PREDICT_SCRIPT = """
import sys, time, xgpp
import xgpp.predict as P
original = P._predict_block
def slow(*a, **k):
    time.sleep(0.3)
    return original(*a, **k)
P._predict_block = slow
P.write_prediction(xgpp.open_cube(sys.argv[1]), xgpp.load_model(sys.argv[2]), sys.argv[3],
                   progress=False)
"""


def test_interrupted_prediction_is_refused_then_finished_without_recomputing(
        tmp_path, cube, monkeypatch):
    src, model_dir = cube
    url = str(tmp_path / "p.zarr")
    script = tmp_path / "predict.py"
    script.write_text(_PREDICT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), src, model_dir, url], env=ENV)
    try:
        _wait(lambda: len(_attrs(url).get("xgpp_done_slabs", [])) >= 3, "three slabs")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    attrs = _attrs(url)
    done = set(attrs["xgpp_done_slabs"])
    assert attrs["xgpp_complete"] is False and 3 <= len(done) < SLABS
    missing = sorted(set(range(SLABS)) - done)

    # refused, saying which slabs are missing and how to finish
    with pytest.raises(IncompleteStoreError, match="re-run the same prediction") as err:
        xgpp.open_cube(url)
    assert isinstance(err.value, ValueError) and isinstance(err.value, XgppError)
    assert err.value.missing == [(4 * i, min(4 * i + 4, 46)) for i in missing]
    assert f"[{4 * missing[0]}:" in str(err.value)
    with pytest.warns(IncompleteStoreWarning, match="unfinished store"):
        part = xgpp.open_cube(url, allow_incomplete=True)
    assert part.attrs["xgpp_complete"] is False

    # the same call finishes it, computing only the missing slabs (spy on the real kernel)
    import xgpp.predict as P

    computed = []
    original = P._predict_block

    def spy(*a, block_info=None, **k):
        computed.append(block_info[0]["array-location"][0][0])
        return original(*a, block_info=block_info, **k)

    monkeypatch.setattr(P, "_predict_block", spy)
    model = xgpp.load_model(model_dir)
    write_prediction(xgpp.open_cube(src), model, url, progress=False)
    assert sorted(computed) == [4 * i for i in missing]  # no finished slab recomputed
    monkeypatch.undo()
    fresh = str(tmp_path / "fresh.zarr")
    write_prediction(xgpp.open_cube(src), model, fresh, progress=False)
    xr.testing.assert_equal(xgpp.open_cube(url).compute(), _data(fresh))


_WORLD_SCRIPT = """
import sys, time
import xgpp.synthetic.write as W
original = W._write_marker
def slow(*a):
    time.sleep(0.15)
    return original(*a)
W._write_marker = slow
W.write_world(sys.argv[1], resolution=10.0, start="2019-01-01", end="2019-12-31", n_sites=10,
              chunks={"time": 4, "lat": 18, "lon": 36}, progress=False)
"""


def test_interrupted_world_write_is_refused_then_finished_without_recomputing(
        tmp_path, monkeypatch):
    root = str(tmp_path / "w")
    script = tmp_path / "world.py"
    script.write_text(_WORLD_SCRIPT)
    progress = os.path.join(root, ".xgpp-progress", "drivers")
    proc = subprocess.Popen([sys.executable, str(script), root], env=ENV)
    try:
        _wait(lambda: os.path.isdir(progress) and len(os.listdir(progress)) >= 3,
              "three driver slabs")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(os.path.join(root, "catalog.yaml"))
    before = {name: set(os.listdir(os.path.join(root, ".xgpp-progress", name)))
              for name in os.listdir(os.path.join(root, ".xgpp-progress"))}
    assert "complete" not in before["drivers"] and len(before["drivers"]) >= 3
    assert _attrs(f"{root}/drivers.zarr")["xgpp_complete"] is False

    # the store and the folder are refused, naming the missing slabs and the fix
    with pytest.raises(IncompleteStoreError, match=r"time slab\(s\) missing.*write_world"):
        xgpp.open_cube(f"{root}/drivers.zarr")
    with pytest.raises(IncompleteStoreError, match="catalog.yaml.*write_world"):
        xgpp.open_cube("drivers", catalog=root)
    with pytest.warns(IncompleteStoreWarning):
        xgpp.open_cube(f"{root}/drivers.zarr", allow_incomplete=True)

    # the same call finishes it: only slabs without a marker are written (spy on the markers)
    import xgpp.synthetic.write as W

    written = []
    original = W._write_marker

    def spy(url, opts, path, run, done):
        written.append(path.split(".xgpp-progress/")[1])
        return original(url, opts, path, run, done)

    monkeypatch.setattr(W, "_write_marker", spy)
    world = write_world(root, resolution=10.0, start="2019-01-01", end="2019-12-31",
                        n_sites=10, chunks={"time": 4, "lat": 18, "lon": 36}, progress=False)
    again = {(p.split("/")[0], p.split("/")[1]) for p in written}
    finished = {(n, s) for n, slabs in before.items() for s in slabs}
    assert not again & finished, "a finished slab was written again"
    assert ("drivers", str(SLABS - 1)) in again | finished
    assert os.path.exists(os.path.join(root, "catalog.yaml"))
    assert not os.path.exists(os.path.join(root, ".xgpp-progress"))
    for name in world.datasets:  # the progress attributes are gone from every store
        attrs = zarr.open_group(f"{root}/{name}.zarr", mode="r").attrs
        assert "world_config" in attrs and not {"xgpp_complete", "xgpp_progress"} & set(attrs)
    for name, ds in world.datasets.items():
        back = xgpp.open_cube(name, catalog=root)  # complete: opens without a word
        xr.testing.assert_identical(back.compute(), xgpp.catalog._plain_strings(ds.compute()))
    # once complete, the same call computes nothing
    written.clear()
    write_world(root, world, progress=False)
    assert written == []


def test_stores_of_other_writers_are_not_checked(tmp_path):
    """A store without xgpp's completeness attribute opens as before (no warning)."""
    url = str(tmp_path / "plain.zarr")
    xr.Dataset({"a": ("time", np.arange(3.0))}).to_zarr(url, zarr_format=3, consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xgpp.open_cube(url)["a"].size == 3
