"""The multi-task MoE and its single-task baselines, on small real twin worlds."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from xgpp.models import ARCHITECTURES, load_model
from xgpp.models.moe import MoEConfig
from xgpp.samples import SampleExclusionWarning
from xgpp.train import METHODS, PhaseConfig, TrainConfig, train
from xgpp.train.config import MultiTaskConfig
from xgpp.train.losses import masked_mse
from xgpp.train.methods._multitask import Relation, multitask_loss

torch.set_num_threads(1)

SPLIT = "site-kfold:k=4,fold=0;tracks:k=5,fold=0"


def tiny(**multitask) -> TrainConfig:
    mt = dict(phase=PhaseConfig(max_epochs=4, batch_size=512, lr=3e-3, patience=4,
                                samples_per_epoch=20_000), min_pairs=5)
    mt.update(multitask)
    return TrainConfig(moe=MoEConfig(n_experts=3, expert_hidden=(32,), tower_hidden=(16,)),
                       multitask=MultiTaskConfig(**mt))


@functools.cache
def world():
    """4-degree, 2015-2017 world (OCO-2 from 2014-09), dask-backed like a store."""
    from xgpp.synthetic import make_world

    w = make_world(resolution=4.0, start="2015-01-01", end="2017-12-31", seed=0,
                   chunks={"time": 46, "lat": 45, "lon": 90})
    return w.drivers.persist(), w.sites.compute(), w.sif_oco2.persist()


def run(method: str, config: TrainConfig | None = None, **kw):
    drivers, sites, sif = world()
    kw.setdefault("split", SPLIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        return train(kw.pop("drivers", drivers), sites=kw.pop("sites", sites),
                     sif=kw.pop("sif", sif), method=method, config=config or tiny(),
                     device="cpu", progress=False, **kw)


@functools.cache
def trained(method: str):
    return run(method)


# ---------------------------------------------------------------------------- losses
def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {"sif": torch.randn(n, generator=g), "gpp": torch.randn(n, generator=g),
         "sif_mask": torch.rand(n, generator=g) < 0.4, "gpp_mask": torch.rand(n, generator=g) < 0.3,
         "sif_weight": torch.rand(n, generator=g) + 0.5, "igbp": torch.randint(1, 13, (n,), generator=g)}
    b["sif_weight"] = torch.where(b["sif_mask"], b["sif_weight"], torch.zeros(n))
    return b


def test_masked_losses_ignore_unlabelled_rows():
    b = _batch()
    out = torch.randn(64, 2, requires_grad=True)
    rel = Relation(np.full(17, 12.0), np.zeros(17), learnable=False)
    loss = multitask_loss(("sif", "gpp"), weights={"sif": 1.0, "gpp": 1.0}, sif_scale=(0.5, 0.3),
                          gpp_scale=(3.0, 2.0), relation=rel, physics_weight=0.1)
    t1, p1 = loss({"out": out}, b)
    g1 = torch.autograd.grad(t1, out)[0]
    changed = dict(b)  # unlabelled targets changed, NaN included: nothing may move
    changed["sif"] = torch.where(b["sif_mask"], b["sif"], torch.full((64,), float("nan")))
    changed["gpp"] = torch.where(b["gpp_mask"], b["gpp"], b["gpp"] + 100.0)
    t2, p2 = loss({"out": out}, changed)
    g2 = torch.autograd.grad(t2, out)[0]
    assert torch.isfinite(t2) and float(t1.detach()) == pytest.approx(float(t2.detach()), rel=1e-6)
    assert set(p1) == {"sif", "gpp", "physics"}
    torch.testing.assert_close(g1, g2)
    # a labelled target does move it
    moved = dict(b)
    moved["gpp"] = b["gpp"] + 1.0
    assert float(loss({"out": out}, moved)[1]["gpp"].detach()) != pytest.approx(
        float(p1["gpp"].detach()))


def test_a_batch_without_labels_of_one_kind_gives_zero_and_backpropagates():
    pred = torch.randn(10, requires_grad=True)
    val = masked_mse(pred, torch.zeros(10), torch.zeros(10, dtype=torch.bool))
    assert float(val.detach()) == 0.0
    val.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) == 0.0
    w = torch.tensor([1.0, 3.0])
    got = masked_mse(torch.tensor([1.0, 2.0]), torch.zeros(2), torch.ones(2, dtype=torch.bool), w)
    assert float(got) == pytest.approx((1 * 1 + 3 * 4) / 4)  # count-weighted


# ---------------------------------------------------------------------------- the model
def test_moe_trains_both_tasks_and_logs_every_loss_part_and_gate_use():
    m = trained("moe")
    assert list(m.outputs) == ["sif", "gpp"] and m.kind == "moe"
    hist = m.provenance["history"]["multitask"]
    assert set(hist[-1]["parts"]) == {"sif", "gpp", "physics"}
    assert set(hist[-1]["val_parts"]) == {"sif", "gpp"}
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    for task in ("sif", "gpp"):
        use = hist[-1]["gates"][task]
        assert len(use["mean"]) == 3 and sum(use["mean"]) == pytest.approx(1.0, abs=1e-6)
        # more than one expert in use by default (no collapse)
        assert use["normalised_entropy"] > 0.3 and use["max_share"] < 0.9
    assert m.extra["expert_utilisation"] == hist[-1]["gates"]
    rel = m.provenance["relation"]
    assert 5.0 <= min(rel["slope"].values()) and max(rel["slope"].values()) <= 38.0
    assert m.provenance["split_tracks"]["n_test"] > 0


def test_physics_term_pulls_the_heads_toward_the_relation():
    drivers, _, _ = world()
    chunk = drivers.isel(time=slice(60, 66)).compute()

    def residual(model):
        x, ok = model.features(chunk, return_mask=True)
        y = model.predict_numpy(x)
        cls_ = chunk["igbp"].broadcast_like(chunk["tair"]).transpose("time", "lat", "lon")
        cls_ = cls_.values.ravel()[ok].astype(int)
        a = np.array(list(model.provenance["relation"]["slope"].values()))
        b = np.array(list(model.provenance["relation"]["intercept"].values()))
        return float(np.mean((y[:, 1] - (a[cls_] * y[:, 0] + b[cls_])) ** 2))

    free = run("moe", tiny(physics_weight=0.0))
    tied = run("moe", tiny(physics_weight=5.0))
    assert residual(tied) < 0.7 * residual(free)


def test_moe_bundle_round_trips_and_predicts_both_outputs(tmp_path):
    drivers, sites, sif = world()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        m = drivers.gpp.train(sites=sites, sif=sif, method="moe", split=SPLIT, config=tiny(),
                              device="cpu", progress=False, out=str(tmp_path / "moe"))
    loaded = load_model(str(tmp_path / "moe"))
    assert loaded.id == m.id and list(loaded.outputs) == ["sif", "gpp"]
    assert loaded.extra["expert_utilisation"] == m.extra["expert_utilisation"]
    out = drivers.isel(time=slice(40, 44)).gpp.predict(loaded).compute()
    assert set(out.data_vars) == {"sif", "gpp"}
    assert float(out["gpp"].min()) >= 0.0
    assert out["sif"].attrs["units"] == "mW m-2 nm-1 sr-1"


# kind -> a method whose bundle has that kind; a new kind must add itself here
KIND_METHOD = {"mlp": "ec-only", "sif-linear": "single-task-sif", "moe": "moe",
               "mlp-sif-input": "siftml-sifinput"}


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_every_registered_kind_saves_loads_and_predicts_chunked_as_in_memory(kind, tmp_path):
    assert kind in KIND_METHOD, f"add a method that trains kind {kind!r} to KIND_METHOD"
    if KIND_METHOD[kind] == "ec-only":
        m = run("ec-only", TrainConfig(ec=PhaseConfig(max_epochs=2)), split="site-kfold:k=4,fold=0")
    elif METHODS[KIND_METHOD[kind]].sif_product == "sif_tropomi":
        from test_train_variants import trained as transfer_trained

        m = transfer_trained(KIND_METHOD[kind])
    else:
        m = trained(KIND_METHOD[kind])
    assert m.kind == kind
    m.save(str(tmp_path / kind))
    loaded = load_model(str(tmp_path / kind))
    drivers, _, _ = world()
    sub = drivers.isel(time=slice(40, 46))
    chunked = sub.chunk({"time": 2, "lat": 20, "lon": 30}).gpp.predict(loaded).compute()
    assert list(chunked.data_vars) == list(m.outputs) == list(METHODS[m.method].outputs)
    x, ok = m.features(sub.compute(), return_mask=True)
    ref = m.predict_numpy(x)
    for j, name in enumerate(m.outputs):
        got = chunked[name].transpose("time", "lat", "lon").values.ravel()
        np.testing.assert_allclose(got[ok], ref[:, j], rtol=1e-5, atol=1e-6)
        assert np.isnan(got[~ok]).all()
        assert chunked[name].attrs["units"] == m.outputs[name]["units"]


def test_single_task_baselines_see_one_task_each():
    g, s = trained("single-task-gpp"), trained("single-task-sif")
    assert list(g.outputs) == ["gpp"] and list(s.outputs) == ["sif", "gpp"]
    assert set(g.provenance["history"]["single-gpp"][-1]["parts"]) == {"gpp"}
    assert set(s.provenance["history"]["single-sif"][-1]["parts"]) == {"sif"}
    assert len(s.provenance["sif_conversion"]["per_class"]) >= 2


@pytest.mark.filterwarnings("ignore:SIF-GPP slopes")  # 50 daily steps: few, noisy pairs
def test_predict_gives_seamless_sif_where_oco2_has_a_few_per_cent():
    from xgpp.synthetic import make_world

    w = make_world(resolution=1.0, start="2016-06-01", end="2016-07-20", freq="D", seed=0,
                   chunks={"time": 25, "lat": 90, "lon": 180})
    drivers, sites, sif = w.drivers.persist(), w.sites.compute(), w.sif_oco2.persist()
    land = drivers["land_mask"].values.astype(bool)
    coverage = float(np.isfinite(sif["sif"].values)[:, land].mean())
    assert 0.005 < coverage < 0.08  # a few per cent of land pixel-steps
    m = run("moe", tiny(min_pairs=3, track_val=0.0), drivers=drivers, sites=sites, sif=sif,
            split="site-kfold:k=4,fold=0")
    pred = drivers.gpp.predict(m)["sif"].values
    valid = np.isfinite(drivers[list(m.inputs)].to_array().values).all(0) & land[None]
    assert np.isfinite(pred[valid]).mean() >= 0.99


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_training_with_clear_errors():
    drivers, sites, sif = world()
    early = drivers.sel(time=slice("2015-01-01", "2015-12-31"))
    with pytest.raises(ValueError, match="(?i)sounding"):
        run("moe", drivers=early, sif=sif.sel(time=slice("2020", "2021")))
    with pytest.raises(ValueError, match="lat"):
        run("moe", sif=sif.assign_coords(lat=sif["lat"] + 1.0))
    scaled = sif.copy()
    scaled["sif"] = sif["sif"] * 100.0  # slopes ~0.1: outside every literature bound
    with pytest.raises(ValueError, match="outside its bounds"):
        run("moe", sif=scaled)
    far = sites.assign_coords(lat=("site", np.full(sites.sizes["site"], 95.0)))
    with pytest.raises(ValueError, match="no site lies inside the driver grid"):
        run("moe", sites=far, split=None)
    with pytest.raises(ValueError, match="unknown method"):
        run("mmoe")


def test_interrupted_moe_training_resumes_to_the_same_model(tmp_path):
    cfg = tiny()
    whole = run("moe", cfg, out=str(tmp_path / "whole"))

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run("moe", cfg, out=str(tmp_path / "cut"), on_epoch_end=stop_after_two)
    resumed = run("moe", cfg, out=str(tmp_path / "cut"))
    assert resumed.id == whole.id
    assert len(resumed.provenance["history"]["multitask"]) == len(
        whole.provenance["history"]["multitask"])


def test_a_multi_output_bundle_without_its_column_order_is_refused(tmp_path):
    import json

    from xgpp.models import BundleFormatError

    trained("moe").save(str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["output_names"] == ["sif", "gpp"]  # sorted keys would say gpp, sif
    del meta["output_names"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleFormatError, match="column order"):
        load_model(str(tmp_path / "m"))


@pytest.mark.filterwarnings("ignore:SIF-GPP slopes")
def test_multitask_comparison_writes_scores_and_pictures_and_resumes(tmp_path):
    import json

    from xgpp.workflows import run_multitask_comparison

    kw = dict(resolution=5.0, years=3, seeds=(0,), split="site-kfold:k=4,fold=0;tracks:k=4,fold=0",
              config=tiny().to_dict(), progress=False)
    summary = run_multitask_comparison(str(tmp_path), **kw)
    rows = summary["methods"]
    assert set(rows) == {"moe", "single-task-gpp", "single-task-sif"}
    assert set(rows["moe"]) == {"sif_tracks.r2", "sif_tracks.rmse", "gpp_sites.r2",
                                "gpp_sites.rmse"}
    assert "sif_tracks.r2" not in rows["single-task-gpp"]
    assert 0.0 < rows["moe"]["sif_tracks.r2"]["mean"] <= 1.0
    for name in ("sif_moe.png", "gates_moe.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    first = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["method"] for r in first) == sorted(rows)  # one seed: one run per method
    again = run_multitask_comparison(str(tmp_path), **kw)  # bundles reused, same scores
    assert again == summary
    assert [r["model"] for r in json.loads((tmp_path / "results.json").read_text())] == [
        r["model"] for r in first]


def test_a_tracks_split_is_refused_by_sif_methods_that_cannot_hold_tracks_out():
    drivers, sites, sif = world()
    with pytest.raises(ValueError, match="would train on them"):
        run("siftml", sif=sif)
    m = run("ec-only", TrainConfig(ec=PhaseConfig(max_epochs=1)))
    assert m.provenance["split_ignored"] == "tracks:k=5,fold=0"


def test_resume_ignores_loader_only_settings_and_learnable_slopes_start_from_bounds(tmp_path):
    a = run("moe", tiny(), out=str(tmp_path / "m"))
    b = run("moe", tiny(cache_mib=0.0), out=str(tmp_path / "m"))  # resumes: same run
    assert a.id == b.id
    few = run("moe", tiny(slopes="learnable", min_pairs=10**6))  # too few pairs to fit
    assert few.provenance["relation_fit"]["start"] == "bounds midpoints"
    assert few.provenance["relation"]["learnable"] is True


def test_moe_without_an_igbp_feature_takes_site_classes_from_their_codes():
    from xgpp.models.features import FeatureConfig

    cfg = tiny().replace(features=FeatureConfig(igbp=None))
    m = run("moe", cfg)
    assert "igbp" not in m.spec.names and list(m.outputs) == ["sif", "gpp"]


def test_sif_normalisation_never_sees_held_out_track_segments():
    from xgpp.tracks import TrackIndex, parse_track_split

    drivers, _, sif = world()
    index = TrackIndex.build(sif, drivers)
    splitter, k = parse_track_split("tracks:k=5,fold=0")
    test = splitter.fold(index, drivers["lat"].values, drivers["lon"].values, k).test
    vals = sif["sif"].reindex(time=drivers["time"]).values.copy()
    vals[index.t[test], index.y[test], index.x[test]] *= 10.0  # only held-out soundings change
    changed = sif.copy()
    changed["sif"] = (("time", "lat", "lon"), vals[np.isin(drivers["time"].values,
                                                           sif["time"].values)],
                      sif["sif"].attrs)
    cfg = tiny(phase=PhaseConfig(max_epochs=1, samples_per_epoch=2000))
    a = run("moe", cfg)
    b = run("moe", cfg, sif=changed)
    assert a.provenance["sif_normalisation"] == b.provenance["sif_normalisation"]
