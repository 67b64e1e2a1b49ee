"""The ``xgpp`` command line end to end, as a user runs it: a real process, real stores."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from test_predict import _model

import xgpp
from xgpp.predict import predict
from xgpp.samples import SampleExclusionWarning
from xgpp.synthetic import make_world, write_world


def xgpp_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XGPP_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "xgpp.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    world = make_world(resolution=6.0, start="2019-01-01", end="2019-12-31", n_sites=10,
                       chunks={"time": 12, "lat": 15, "lon": 20})
    write_world(str(root / "world"), world, progress=False)
    model = _model(world.drivers)
    model.save(str(root / "model"))
    return root, world, model


def test_predict_command_writes_a_complete_store_with_its_catalog(world_and_model):
    root, world, model = world_and_model
    out = root / "pred"
    res = xgpp_cli("predict", "--catalog", str(root / "world" / "catalog.yaml"),
                   "--model", str(root / "model"), "--out", str(out), "--cluster", "none",
                   "--precision", "bfloat16", "--batch-size", "500", "--start", "2019-03-01",
                   "--bbox", "-60,-30,60,60")
    assert res.returncode == 0, res.stderr
    got = xgpp.open_cube("prediction", catalog=str(out / "catalog.yaml"))
    assert got.attrs["xgpp_complete"] is True and got.attrs["xgpp_precision"] == "bfloat16"
    assert got.attrs["xgpp_model_sha256"] == model.sha256
    assert got.time.values[0] >= np.datetime64("2019-03-01") > world.drivers.time.values[0]
    assert got.lon.min() >= -60 and got.lon.max() <= 60 and got.lat.max() <= 60
    sub = world.drivers.sel(time=got.time, lat=got.lat, lon=got.lon)
    expect = predict(sub, model)["gpp"].values
    np.testing.assert_allclose(got["gpp"].values, expect, atol=0.05 * np.nanmax(expect))
    assert np.isfinite(got["gpp"].values).sum() == np.isfinite(expect).sum() > 0


def test_bad_input_is_one_clear_line_not_a_traceback(world_and_model):
    root, _, _ = world_and_model
    cat = str(root / "world" / "catalog.yaml")
    bad_device = xgpp_cli("predict", "--catalog", cat, "--model", str(root / "model"),
                          "--out", str(root / "x"), "--cluster", "none", "--device", "tpu")
    assert bad_device.returncode == 2
    assert "xgpp: error: InputError: device='tpu'" in bad_device.stderr
    assert "Traceback" not in bad_device.stderr
    line = [ln for ln in bad_device.stderr.splitlines() if "device='tpu'" in ln]
    assert len(line) == 1 and line[0].startswith("xgpp: error:") and "XGPP_DEBUG=1" in line[0]
    no_model = xgpp_cli("predict", "--catalog", cat, "--model", str(root / "missing"),
                        "--out", str(root / "x"), "--cluster", "none")
    assert no_model.returncode == 2 and "missing" in no_model.stderr
    assert "Traceback" not in no_model.stderr
    usage = xgpp_cli("predict", "--catalog")
    assert usage.returncode == 2 and "requires an argument" in usage.stderr


def test_interrupted_store_is_not_presented_as_complete(world_and_model):
    root, _, model = world_and_model
    out = root / "pred_partial"
    res = xgpp_cli("predict", "--catalog", str(root / "world" / "catalog.yaml"),
                   "--model", str(root / "model"), "--out", str(out), "--cluster", "none")
    assert res.returncode == 0, res.stderr
    import zarr

    group = zarr.open_group(str(out / "prediction.zarr"), mode="r+")
    group.attrs.update({"xgpp_complete": False, "xgpp_done_slabs": [0]})
    rerun = xgpp_cli("predict", "--catalog", str(root / "world" / "catalog.yaml"),
                     "--model", str(root / "model"), "--out", str(out), "--cluster", "none")
    assert rerun.returncode == 0, rerun.stderr
    back = xr.open_zarr(str(out / "prediction.zarr"), consolidated=False)
    assert back.attrs["xgpp_complete"] is True
    assert back.attrs["xgpp_done_slabs"] == list(range(len(back.chunks["time"])))


def test_train_help_lists_the_registry_and_moe_trains_and_predicts_from_the_shell(
        world_and_model, tmp_path):
    import json

    from xgpp.train import METHODS

    root, _, _ = world_and_model
    helptext = " ".join(xgpp_cli("train", "--help").stdout.split())
    assert all(name in helptext for name in METHODS)
    catalog = str(root / "world" / "catalog.yaml")
    bad = xgpp_cli("train", "--catalog", catalog, "--out", str(tmp_path / "x"),
                   "--method", "mmoe")
    assert bad.returncode == 2 and "unknown method='mmoe'" in bad.stderr
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({
        "moe": {"n_experts": 2, "expert_hidden": [16], "tower_hidden": [8]},
        "multitask": {"min_pairs": 3, "phase": {"max_epochs": 2, "batch_size": 256,
                                                "samples_per_epoch": 4000}}}))
    res = xgpp_cli("train", "--catalog", catalog, "--out", str(tmp_path / "moe"),
                   "--method", "moe", "--sif-product", "sif_oco2", "--config", str(cfg),
                   "--split", "tracks:k=4,fold=0", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    res = xgpp_cli("predict", "--catalog", catalog, "--model", str(tmp_path / "moe"),
                   "--out", str(tmp_path / "pred"), "--cluster", "none")
    assert res.returncode == 0, res.stderr
    out = xr.open_zarr(tmp_path / "pred" / "prediction.zarr", consolidated=False)
    # both outputs (the store lists its arrays in the file system's order)
    assert sorted(out.data_vars) == ["gpp", "sif"] and out.attrs["xgpp_complete"] is True
    assert float(out["gpp"].min()) >= 0.0 and np.isfinite(out["sif"].values).any()


def test_predict_command_with_several_models_writes_the_ensemble_mean_and_spread(
        world_and_model, tmp_path):
    root, world, model = world_and_model
    other = _model(world.drivers, seed=1)
    other.save(str(tmp_path / "model1"))
    out = tmp_path / "pred"
    res = xgpp_cli("predict", "--catalog", str(root / "world" / "catalog.yaml"),
                   "--model", str(root / "model"), "--model", str(tmp_path / "model1"),
                   "--out", str(out), "--cluster", "none")
    assert res.returncode == 0, res.stderr
    got = xgpp.open_cube("prediction", catalog=str(out / "catalog.yaml"))
    assert sorted(got.data_vars) == ["gpp", "gpp_std"] and got.attrs["xgpp_complete"] is True
    expect = predict(world.drivers, [model, other])
    for name in ("gpp", "gpp_std"):
        np.testing.assert_allclose(got[name].values, expect[name].values, rtol=1e-5, atol=1e-5)
    assert float(got["gpp_std"].max()) > 0.0  # two different networks disagree somewhere
    import yaml

    meta = yaml.safe_load((out / "catalog.yaml").read_text())["metadata"]
    assert meta["model"] == [model.id, other.id]


def test_train_command_reuses_the_pretraining_cache_given_by_cache_dir(world_and_model, tmp_path):
    import json

    from xgpp.train import train_from_catalog

    root, _, _ = world_and_model
    catalog = str(root / "world" / "catalog.yaml")
    tiny = {"net": {"hidden": [16]},
            "pretrain": {"max_epochs": 1, "batch_size": 512, "samples_per_epoch": 4000},
            "head": {"max_epochs": 1}, "finetune": {"max_epochs": 1},
            "loader": {"shuffle_buffer": 4000, "val_block": 30.0, "max_val_samples": 2000}}
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny))
    cache = tmp_path / "cache"
    split = "site-kfold:k=5,fold=0"
    with warnings.catch_warnings():  # a few towers sit in cells with a missing input
        warnings.simplefilter("ignore", SampleExclusionWarning)
        first = train_from_catalog(catalog, method="siftml", split=split, config=str(cfg),
                                   out=str(tmp_path / "siftml"), device="cpu", progress=False,
                                   cache_dir=str(cache))
    assert first.provenance["pretrain_cache"]["hit"] is False
    assert len(list(cache.glob("pretrain-*.safetensors"))) == 1
    # another fine-tuning of the same pre-training, from the shell: read from the cache
    res = xgpp_cli("train", "--catalog", catalog, "--out", str(tmp_path / "head"),
                   "--method", "siftml-head", "--split", split, "--config", str(cfg),
                   "--device", "cpu", "--cache-dir", str(cache))
    assert res.returncode == 0, res.stderr
    head = xgpp.load_model(str(tmp_path / "head"))
    assert head.provenance["pretrain_cache"] == first.provenance["pretrain_cache"] | {"hit": True}
    # nothing was pre-trained again: the pre-training history is the cached one
    assert head.provenance["history"]["pretrain"] == first.provenance["history"]["pretrain"]
    assert len(list(cache.glob("pretrain-*.safetensors"))) == 1


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    from xgpp.cli import _is_user_error, _one_line
    from xgpp.errors import NotFoundError, ServiceError, UnitError, UnknownOptionError

    for exc in (UnitError("units 'furlongs'"), NotFoundError("no variable 'vpd'"),
                UnknownOptionError("unknown TrainConfig field(s) ['x']"),
                ServiceError("no Dask scheduler answered"), ValueError("zarr: bad"),
                FileNotFoundError("no catalog at x"), ImportError("pip install 'xgpp[cloud]'")):
        assert _is_user_error(exc), exc
    for exc in (TypeError("unsupported operand"), AttributeError("'NoneType' has no 'x'"),
                NameError("name 'y' is not defined"), AssertionError(), KeyError("lat"),
                IndexError("list index"), RuntimeError("internal"), ZeroDivisionError()):
        assert not _is_user_error(exc), exc
    line = _one_line(NotFoundError("dataset has no variable 'vpd';\n it has ['tair']."))
    assert "\n" not in line
    assert line.startswith("xgpp: error: NotFoundError: dataset has no variable 'vpd'; it has")


def test_predict_command_with_coarser_chunks_writes_the_same_prediction(world_and_model):
    root, world, model = world_and_model
    cat = str(root / "world" / "catalog.yaml")
    res = xgpp_cli("predict", "--catalog", cat, "--model", str(root / "model"), "--out",
                   str(root / "coarse"), "--cluster", "none", "--chunks", "time=24, lat=-1")
    assert res.returncode == 0, res.stderr
    import zarr

    stored = zarr.open_array(str(root / "coarse" / "prediction.zarr" / "gpp"), mode="r")
    assert stored.chunks == (24, world.drivers.sizes["lat"], 20)
    got = xgpp.open_cube("prediction", catalog=str(root / "coarse" / "catalog.yaml"))
    expect = predict(world.drivers, model)["gpp"].values
    np.testing.assert_allclose(got["gpp"].values, expect, rtol=1e-5, atol=1e-6, equal_nan=True)
    for bad, says in [("time:24", "'time:24' is not DIM=SIZE"),
                      ("time=two", "'time=two' is not DIM=SIZE"),
                      ("depth=3", "dimension 'depth'")]:
        run = xgpp_cli("predict", "--catalog", cat, "--model", str(root / "model"), "--out",
                       str(root / "bad"), "--cluster", "none", "--chunks", bad)
        assert run.returncode == 2 and says in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
