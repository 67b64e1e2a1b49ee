"""The SIFTML transfer-learning variants and the pre-training cache, on the real twin world."""

from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import json
import shutil
import tempfile
import threading
import warnings

import numpy as np
import pytest
import torch
from test_samples import twin

from xgpp.models import load_model
from xgpp.models.mlp import MLP, MLPConfig, SIFInputMLP, build_seeded
from xgpp.models.outputs import unwrap
from xgpp.models.siftml import new_head, set_trainable
from xgpp.samples import SampleExclusionWarning
from xgpp.splits import SiteKFold
from xgpp.train import (
    METHODS,
    LoaderConfig,
    PhaseConfig,
    TrainConfig,
    TransferConfig,
    resolve_device,
    train,
)
from xgpp.train.context import TrainContext
from xgpp.train.losses import l2sp, mse
from xgpp.train.methods._cache import PretrainCache, PretrainCacheWarning, cache_key
from xgpp.train.methods.siftml_gppconv import gppconv_slopes, gppconv_target

torch.set_num_threads(1)

CFG = TrainConfig(
    net=MLPConfig(hidden=(24, 16)),
    pretrain=PhaseConfig(max_epochs=2, batch_size=512, lr=3e-3, patience=2,
                         samples_per_epoch=30_000),
    head=PhaseConfig(max_epochs=2, lr=3e-3, batch_size=256),
    finetune=PhaseConfig(max_epochs=2, lr=1e-3, batch_size=256),
    ec=PhaseConfig(max_epochs=3, lr=3e-3, batch_size=256),
    loader=LoaderConfig(shuffle_buffer=20_000, val_block=20.0, val_fraction=0.2,
                        max_val_samples=10_000),
    transfer=TransferConfig(l2sp_alpha=0.05, l2sp_beta=0.01, frozen_layers=1),
)
VARIANTS = ("siftml-head", "siftml-full", "sif-only-global", "siftml-l2sp", "siftml-sifinput",
            "siftml-frozen", "siftml-gppconv")


@functools.cache
def cache_dir() -> str:
    root = tempfile.mkdtemp(prefix="xgpp-pretrain-cache-")
    atexit.register(shutil.rmtree, root, True)
    return root


def fold(k: int = 0):
    return SiteKFold(k=4, seed=0).folds(twin().sites)[k]


def run(method: str, *, cache: bool = True, sites=None, **kw):
    t = twin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        return train(t.drivers, sites=t.sites if sites is None else sites, sif=t.sif,
                     method=method, split=kw.pop("split", fold()), config=CFG, device="cpu",
                     progress=False, cache_dir=cache_dir() if cache else None, **kw)


@functools.cache
def trained(method: str):
    return run(method)


def chunk():
    return twin().drivers.isel(time=slice(40, 43)).compute()


def cached_pretrained(model) -> dict[str, torch.Tensor]:
    """The pre-trained state a bundle started from, read back from the cache."""
    entry = PretrainCache(cache_dir()).path(model.provenance["pretrain_cache"]["key"])
    from safetensors.torch import load_file

    return load_file(entry)


# ------------------------------------------------------------------------ every variant
@pytest.mark.parametrize("method", VARIANTS)
def test_variant_trains_saves_loads_and_predicts_nonnegative_gpp(method, tmp_path):
    m = trained(method)
    assert m.method == method and METHODS[method].comparison == "transfer-variant"
    assert set(METHODS[method].config_sections) <= {f.name for f in
                                                     dataclasses.fields(TrainConfig)}
    assert m.provenance["history"]["pretrain"], "pre-training history copied in"
    m.save(str(tmp_path / "b"))
    loaded = load_model(str(tmp_path / "b"))
    assert loaded.kind == m.kind and loaded.sha256 == m.sha256
    x, _ = m.features(chunk(), return_mask=True)
    gpp = loaded.predict_numpy(x)
    np.testing.assert_array_equal(gpp, m.predict_numpy(x))
    assert np.isfinite(gpp).all() and gpp.min() >= 0.0 and gpp.mean() > 0.1
    used = set(m.provenance["sites"]["fit"]) | set(m.provenance["sites"]["validation"])
    assert not used & set(fold().test)


def test_thin_variants_record_the_setting_they_fix():
    cfg = {m: trained(m).provenance["config"] for m in VARIANTS}
    assert cfg["siftml-head"]["strategy"] == "head"
    assert cfg["siftml-full"]["strategy"] == "full"
    assert cfg["siftml-frozen"]["strategy"] == "frozen"
    assert cfg["sif-only-global"]["sif_conversion"] == "global"
    assert list(trained("siftml-head").provenance["history"]) == ["pretrain", "head"]
    assert list(trained("siftml-full").provenance["history"]) == ["pretrain", "full"]
    assert list(trained("siftml-frozen").provenance["history"]) == ["pretrain", "head",
                                                                    "partial"]
    conv = trained("sif-only-global").provenance["sif_conversion"]
    assert conv["per_class"] == {} and conv["global"] > 0
    slopes = unwrap(trained("sif-only-global").module).slopes
    assert torch.all(slopes == slopes[0])


def test_sif_input_bundle_predicts_chunked_as_in_memory():
    m = trained("siftml-sifinput")
    assert m.kind == "mlp-sif-input"
    sub = twin().drivers.isel(time=slice(40, 44))
    chunked = sub.chunk({"time": 2, "lat": 10, "lon": 30}).gpp.predict(m).compute()
    x, ok = m.features(sub.compute(), return_mask=True)
    got = chunked["gpp"].transpose("time", "lat", "lon").values.ravel()
    np.testing.assert_allclose(got[ok], m.predict_numpy(x)[:, 0], rtol=1e-5, atol=1e-6)
    assert np.isnan(got[~ok]).all() and chunked["gpp"].attrs["units"] == "gC m-2 d-1"


# ------------------------------------------------------------------------ L2-SP
def test_l2sp_penalty_is_zero_at_the_pretrained_weights_and_named_in_the_history():
    net = build_seeded(lambda: MLP(6, 1, MLPConfig(hidden=(8, 4))), 0)
    reference = {k: v.detach().clone() for k, v in net.named_parameters()
                 if not k.startswith("head.")}
    new_head(net, 1, seed=1)
    loss = l2sp(mse("gpp"), net, reference, alpha=0.5, beta=0.1)
    sp, head = (float(v.detach()) for v in loss.penalty())
    assert sp == 0.0  # the start of fine-tuning: at the pre-trained weights
    expect_head = 0.05 * sum(float((p.detach() ** 2).sum()) for p in net.head.parameters())
    assert head == pytest.approx(expect_head, rel=1e-6)
    with torch.no_grad():
        net.trunk[0].weight[0, 0] += 0.2
    assert float(loss.penalty()[0].detach()) == pytest.approx(0.25 * 0.04, rel=1e-4)
    x, batch = torch.randn(5, 6), {"y": torch.zeros(5, 1)}
    total, parts = loss(net(x), batch)
    assert set(parts) == {"gpp", "l2sp", "l2_head"}
    assert float(total.detach()) == pytest.approx(float(sum(parts.values()).detach()), rel=1e-6)
    w = net.trunk[0].weight
    g_total = torch.autograd.grad(total, w)[0][0, 0]
    g_mse = torch.autograd.grad(mse("gpp")(net(x), batch)[0], w)[0][0, 0]
    assert float(g_total - g_mse) == pytest.approx(0.5 * 0.2, rel=1e-4)  # pulled back

    hist = trained("siftml-l2sp").provenance["history"]
    assert all(h["parts"]["l2sp"] == 0.0 for h in hist["head"])  # feature layers frozen
    assert all(h["parts"]["l2_head"] > 0 for h in hist["head"] + hist["full"])
    assert 0 < hist["full"][0]["parts"]["l2sp"] < hist["full"][0]["parts"]["gpp"]
    assert set(hist["full"][0]["val_parts"]) == {"gpp"}  # early stopping on GPP alone


# ------------------------------------------------------------------------ frozen layers
def test_frozen_layers_keep_their_pretrained_weights_exactly():
    m = trained("siftml-frozen")
    net = unwrap(m.module)
    pre = cached_pretrained(m)
    assert torch.equal(net.trunk[0].weight, pre["trunk.0.weight"])
    assert torch.equal(net.trunk[0].bias, pre["trunk.0.bias"])
    assert not torch.equal(net.trunk[2].weight, pre["trunk.2.weight"])  # fine-tuned
    # the same pre-training as the SIF-only baseline's network
    base = unwrap(trained("sif-only-global").module).base
    assert torch.equal(base.trunk[0].weight, net.trunk[0].weight)
    full = unwrap(trained("siftml-full").module)
    assert not torch.equal(full.trunk[0].weight, pre["trunk.0.weight"])
    with pytest.raises(ValueError, match="frozen_layers=3.*2 hidden layers"):
        CFG.replace(transfer=TransferConfig(frozen_layers=3))
    probe = build_seeded(lambda: MLP(6, 1, MLPConfig(hidden=(8, 4, 4))), 0)
    trainable = set(map(id, set_trainable(probe, "partial", frozen_layers=2)))
    assert {id(p) for p in probe.trunk[4].parameters()} <= trainable
    assert not {id(p) for p in probe.trunk[2].parameters()} & trainable


# ------------------------------------------------------------------------ SIF as input
def test_sif_input_module_uses_the_frozen_sif_branch():
    m = trained("siftml-sifinput")
    module = copy.deepcopy(unwrap(m.module))
    assert isinstance(module, SIFInputMLP)
    pre = cached_pretrained(m)
    for k, v in module.sif_net.state_dict().items():
        assert torch.equal(v, pre[k]), f"SIF branch {k} moved in training"
    x = torch.from_numpy(m.features(chunk(), return_mask=True)[0][:500])
    with torch.inference_mode():
        before = module(x).clone()
    with torch.no_grad():
        module.sif_net.head.bias += 1.0  # a different SIF estimate ...
    with torch.inference_mode():
        after = module(x)
    assert (after - before).abs().max() > 1e-3  # ... changes the GPP
    module.train()
    assert module.gpp_net.training and not module.sif_net.training


# ------------------------------------------------------------------------ GPP-converted SIF
def context(sites, k: int = 0) -> TrainContext:
    t = twin()
    return TrainContext(method="siftml-gppconv", drivers=t.drivers, sites=sites, sif=t.sif,
                        config=CFG, fold=fold(k), split=None, seed=0,
                        device=resolve_device("cpu"), out=None, storage_options=None,
                        client=None, provenance={})


def test_gppconv_slopes_come_from_the_training_sites_only():
    sites = twin().sites
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        slopes, rec = gppconv_slopes(context(sites))
        test = list(fold().test)
        scaled_test = sites.copy()
        scaled_test["gpp"] = sites["gpp"].where(~sites.site.isin(test), sites["gpp"] * 3.0)
        slopes_t, _ = gppconv_slopes(context(scaled_test))
        scaled_train = sites.copy()
        scaled_train["gpp"] = sites["gpp"].where(sites.site.isin(test), sites["gpp"] * 2.0)
        slopes_2, _ = gppconv_slopes(context(scaled_train))
        other = gppconv_target(context(sites, 1), *gppconv_slopes(context(sites, 1)))
    assert not set(rec["sites"]) & set(test) and set(rec["sites"]) <= set(fold().train)
    assert rec["n_samples"] > 100 and len(rec["conversion"]["per_class"]) >= 2
    np.testing.assert_array_equal(slopes, slopes_t)  # held-out GPP changes nothing
    np.testing.assert_allclose(slopes_2, 2 * slopes, rtol=1e-9)
    m = trained("siftml-gppconv")
    assert m.provenance["gppconv"]["sites"] == rec["sites"]
    assert m.provenance["pretrain_cache"]["key"] != trained(
        "siftml-head").provenance["pretrain_cache"]["key"]  # its own pre-training
    assert "gpp_from_sif" in m.provenance["history"]["pretrain"][-1]["parts"]
    assert other.key["sites"] != rec["sites"]  # another fold, another cache key


# ------------------------------------------------------------------------ the cache
def test_cache_hit_gives_the_same_model_as_no_cache_and_skips_pretraining():
    first = trained("siftml-frozen")  # pre-trained or read from the cache
    phases = []
    hit = run("siftml-frozen", on_epoch_end=lambda r: phases.append(r["phase"]))
    assert hit.provenance["pretrain_cache"] == {"hit": True,
                                                "key": first.provenance["pretrain_cache"]["key"]}
    assert "pretrain" not in phases and "partial" in phases
    plain = run("siftml-frozen", cache=False)
    assert "pretrain_cache" not in plain.provenance
    x, _ = plain.features(chunk(), return_mask=True)
    np.testing.assert_allclose(hit.predict_numpy(x), plain.predict_numpy(x), rtol=0, atol=1e-6)
    assert hit.sha256 == plain.sha256 == first.sha256
    assert hit.provenance["history"]["pretrain"] == json.loads(json.dumps(
        plain.provenance["history"]["pretrain"]))
    # no pickle, no temporary left behind; the (empty) lock file serialises concurrent runs
    assert {p.suffix for p in __import__("pathlib").Path(cache_dir()).iterdir()} == {
        ".safetensors", ".lock"}


def test_cache_lock_serialises_processes(tmp_path):
    """A second process asking for a key waits while the first holds it."""
    import subprocess
    import sys
    import time

    cache = PretrainCache(str(tmp_path / "c"))
    held = tmp_path / "held"
    code = ("import pathlib, sys, time; from xgpp.train.methods._cache import PretrainCache\n"
            "with PretrainCache(sys.argv[1]).lock('k'):\n"
            "    pathlib.Path(sys.argv[2]).touch(); time.sleep(1.5)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "c"), str(held)])
    deadline = time.monotonic() + 60
    while not held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.exists(), "the holder never took the lock"
    t0 = time.perf_counter()
    with cache.lock("k"):
        waited = time.perf_counter() - t0
    holder.wait(timeout=30)
    assert holder.returncode == 0
    assert waited > 0.2
    with cache.lock("other"):  # another key is not blocked
        pass


def test_cache_entries_are_verified_and_written_atomically(tmp_path):
    cache = PretrainCache(str(tmp_path / "c"))
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    fp = {"seed": 0, "data": [1, 2]}
    key = cache_key(fp)
    assert cache.load(key, fp) is None
    errors = []

    def store():
        try:
            cache.store(key, state, fp, {"history": [{"epoch": 1}]})
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=store) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    got, record = cache.load(key, fp)
    assert torch.equal(got["w"], state["w"]) and record["history"] == [{"epoch": 1}]
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"pretrain-{key}.safetensors"]
    with pytest.warns(PretrainCacheWarning, match="another run"):
        assert cache.load(key, {"seed": 1}) is None
    path = tmp_path / "c" / f"pretrain-{key}.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.warns(PretrainCacheWarning, match="unreadable"):
        assert cache.load(key, fp) is None


def test_new_head_leaves_the_global_torch_rng_alone():
    net = build_seeded(lambda: MLP(6, 1, MLPConfig(hidden=(8,))), 0)
    state = torch.random.get_rng_state()
    a = new_head(copy.deepcopy(net), 2, seed=5).head.weight
    b = new_head(copy.deepcopy(net), 2, seed=5).head.weight
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == (2, 8)
    torch.manual_seed(5)
    assert torch.equal(a, torch.nn.Linear(8, 2).weight)  # torch's own initialisation


def test_transfer_config_round_trips_and_checks_values():
    again = TrainConfig.from_dict(json.loads(json.dumps(CFG.to_dict())))
    assert again == CFG and again.transfer.frozen_layers == 1
    with pytest.raises(ValueError, match="l2sp_alpha"):
        TransferConfig(l2sp_alpha=-1.0)
    with pytest.raises(ValueError, match="frozen_layers"):
        TransferConfig(frozen_layers=-1)
