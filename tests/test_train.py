"""Training on the real twin world (5 degree, 2018-2020), tiny networks and few epochs."""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from test_samples import twin, twin_store

from xgpp.models import TorchModel, load_model
from xgpp.models.baselines import PModelBaseline
from xgpp.models.mlp import MLPConfig
from xgpp.samples import SampleExclusionWarning, site_samples
from xgpp.splits import SiteKFold
from xgpp.train import LoaderConfig, PhaseConfig, TrainConfig, train, train_from_catalog

torch.set_num_threads(1)

TINY = TrainConfig(
    net=MLPConfig(hidden=(32, 32)),
    pretrain=PhaseConfig(max_epochs=3, batch_size=512, lr=3e-3, patience=3,
                         samples_per_epoch=40_000),
    head=PhaseConfig(max_epochs=4, lr=3e-3, batch_size=256),
    finetune=PhaseConfig(max_epochs=3, lr=1e-3, batch_size=256),
    ec=PhaseConfig(max_epochs=8, lr=3e-3, batch_size=256),
    loader=LoaderConfig(shuffle_buffer=20_000, val_block=20.0, val_fraction=0.2,
                        max_val_samples=20_000),
)


def fold():
    return SiteKFold(k=4, seed=0).folds(twin().sites)[0]


def run(method: str, *, sif=None, **kw):
    """Train quietly (site QC warnings are expected on the twin world and tested elsewhere)."""
    t = twin()
    kw.setdefault("split", fold())
    kw.setdefault("config", TINY)
    kw.setdefault("device", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        return train(t.drivers, sites=t.sites, sif=t.sif if sif is None else sif, method=method,
                     progress=False, **kw)


@functools.cache
def trained(method: str):
    return run(method)


@functools.cache
def site_data():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        return site_samples(twin().drivers, twin().sites)


def rmse(model, site_ids) -> float:
    s = site_data()
    sub = s.isel(sample=np.flatnonzero(np.isin(s.site.values, list(site_ids))))
    x, ok = model.features(sub, return_mask=True)
    return float(np.sqrt(np.mean((model.predict_numpy(x)[:, 0] - sub["gpp"].values[ok]) ** 2)))


def test_pretraining_lowers_sif_error():
    m = trained("sif-only")
    hist = m.provenance["history"]["pretrain"]
    # normalised MSE on held-out pixel blocks: predicting the mean scores ~1
    assert hist[-1]["val_loss"] < 0.3
    assert len(hist) >= 2 and hist[-1]["val_loss"] < hist[0]["val_loss"]  # (0.051 -> 0.033)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert m.provenance["sif_normalisation"]["std"] > 0


def test_finetuning_lowers_site_gpp_error_vs_converted_sif_model():
    siftml, sif_only = trained("siftml"), trained("sif-only")
    fit = siftml.provenance["sites"]["fit"]
    assert sif_only.provenance["sites"]["fit"] == fit
    assert rmse(siftml, fit) < rmse(sif_only, fit)
    # held-out sites: both must beat the climatological mean by a wide margin
    s = site_data()
    test = list(fold().test)
    y = s["gpp"].values[np.isin(s.site.values, test)]
    assert rmse(siftml, test) < 0.8 * y.std()


def test_split_never_leaks_test_sites_into_training():
    f = fold()
    for method in ("siftml", "sif-only"):
        sites = trained(method).provenance["sites"]
        used = set(sites["fit"]) | set(sites["validation"])
        assert not used & set(f.test)
        assert used <= set(f.train)
        assert trained(method).provenance["split"] == f.to_dict()


def test_rescaling_the_sif_product_gives_the_same_model():
    sif = twin().sif.copy()
    sif["sif"] = sif["sif"] * 2.5
    a, b = trained("siftml"), run("siftml", sif=sif)
    s = site_data().isel(sample=slice(0, 2000))
    x = a.features(s, return_mask=True)[0]
    np.testing.assert_allclose(a.predict_numpy(x), b.predict_numpy(x), atol=2e-3, rtol=1e-3)


def test_resuming_from_a_checkpoint_continues_rather_than_restarts(tmp_path):
    out = str(tmp_path / "model")
    seen = []

    def interrupt(record):
        seen.append((record["phase"], record["epoch"]))
        if record["phase"] == "head" and record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("siftml", out=out, on_epoch_end=interrupt)
    assert seen[-1] == ("head", 2)
    resumed = []
    model = run("siftml", out=out, on_epoch_end=lambda r: resumed.append((r["phase"],
                                                                          r["epoch"])))
    assert resumed[0] == ("head", 3)  # neither pre-training nor the first head epochs rerun
    assert model.sha256 == trained("siftml").sha256  # same as the uninterrupted run
    assert [h["epoch"] for h in model.provenance["history"]["head"]] == [1, 2, 3, 4]
    assert load_model(out).sha256 == model.sha256
    with pytest.raises(ValueError, match="different training run.*seed"):
        run("siftml", out=out, seed=1)


def test_ec_only_learns_site_gpp():
    m = run("ec-only")
    hist = m.provenance["history"]["ec"]
    assert min(h["val_loss"] for h in hist) < hist[0]["val_loss"]
    assert m.method == "ec-only" and m.outputs["gpp"]["units"] == "gC m-2 d-1"
    s = site_data()
    y = s["gpp"].values[np.isin(s.site.values, list(fold().test))]
    assert rmse(m, fold().test) < y.std()


def test_pmodel_baseline_predicts_plausible_gpp():
    m = run("pmodel")
    assert isinstance(m, PModelBaseline)
    s = site_data()
    x, ok = m.features(s, return_mask=True)
    gpp = m.predict_numpy(x)[:, 0]
    assert np.isfinite(gpp).all() and (gpp >= 0).all()
    assert 0.5 < gpp.mean() < 15
    r = np.corrcoef(gpp, s["gpp"].values[ok])[0, 1]
    assert r > 0.5


def test_train_from_catalog_writes_a_loadable_bundle(tmp_path):
    out = str(tmp_path / "ec")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        m = train_from_catalog(twin_store(), method="ec-only", split="site-kfold:k=4,fold=0",
                               out=out, config=TINY.to_dict(), progress=False, device="cpu")
    loaded = load_model(out)
    assert isinstance(loaded, TorchModel) and loaded.sha256 == m.sha256
    assert loaded.provenance["catalog"] == twin_store()
    assert set(loaded.provenance["split"]["test"]) == set(fold().test)
    x = m.features(site_data().isel(sample=slice(0, 500)), return_mask=True)[0]
    np.testing.assert_array_equal(m.predict_numpy(x), loaded.predict_numpy(x))


def test_config_round_trips_through_json():
    cfg = TINY.replace(strategy="head")
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(TypeError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="partial")


def test_bad_arguments_are_clear_errors():
    t = twin()
    with pytest.raises(ValueError, match="method="):
        train(t.drivers, sites=t.sites, method="lstm", progress=False)
    with pytest.raises(ValueError, match="pass sif="):
        train(t.drivers, sites=t.sites, method="siftml", progress=False)
    with pytest.raises(ValueError, match="pass sites="):
        train(t.drivers, method="ec-only", progress=False)
    with pytest.raises(ValueError, match="fold 9"):
        train(t.drivers, sites=t.sites, method="ec-only", split="site-kfold:k=4,fold=9",
              progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            train(t.drivers, sites=t.sites, method="ec-only", device="cuda", progress=False)


@pytest.mark.requires_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_gpu_matches_cpu_closely():
    cpu = run("ec-only")
    gpu = run("ec-only", device="cuda")
    x = cpu.features(site_data().isel(sample=slice(0, 500)), return_mask=True)[0]
    np.testing.assert_allclose(cpu.predict_numpy(x), gpu.predict_numpy(x, device="cuda"),
                               atol=0.3)
