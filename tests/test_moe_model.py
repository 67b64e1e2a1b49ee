"""The multi-gate mixture of experts: shapes, gates, temperature, utilisation, gradients, registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import xgpp.models.moe  # noqa: F401 - registers "moe" before build_module imports xgpp.models
from xgpp.models.features import FeatureConfig, FeatureSpec
from xgpp.models.moe import GateStats, MMoE, MoEConfig, gate_utilisation
from xgpp.models.registry import ARCHITECTURES, build_module

torch.set_num_threads(1)

SMALL = MoEConfig(n_experts=3, expert_hidden=(16, 8), tower_hidden=(4,))


def model(n_in=6, tasks=("sif", "gpp"), config=SMALL, seed=0, **kw):
    torch.manual_seed(seed)
    return MMoE(n_in, tasks, config, **kw)


def inputs(n=32, n_in=6, seed=1):
    return torch.randn(n, n_in, generator=torch.Generator().manual_seed(seed))


def spec(igbp="onehot"):
    cfg = FeatureConfig(drivers=("tair", "vpd", "fapar"), igbp=igbp, latlon=True,
                        elevation=True)
    return FeatureSpec(cfg, mean={n: 1.0 for n in cfg.scaled}, std={n: 2.0 for n in cfg.scaled})


# ---- forward


def test_output_shape_and_task_order():
    m = model()
    x = inputs()
    out = m(x)
    assert out.shape == (32, 2) and m.tasks == ("sif", "gpp")
    # by hand: column i is tower_i applied to gate_i's mixture of the experts
    experts = torch.stack([e(x) for e in m.experts], dim=1)
    for i, t in enumerate(m.tasks):
        g = torch.softmax(m.gates[t](x), dim=-1)
        mix = (g[:, :, None] * experts).sum(1)
        torch.testing.assert_close(out[:, i], m.towers[t](mix)[:, 0])
    # the same weights with the tasks listed the other way round swap the columns
    flipped = model(tasks=("gpp", "sif"), seed=5)
    flipped.load_state_dict(m.state_dict())
    torch.testing.assert_close(flipped(x), out.flip(1))


def test_gates_are_a_softmax_of_shape_tasks_samples_experts():
    m = model(tasks=("sif", "gpp", "nee"))
    out, gates = m.forward_with_gates(inputs(n=10))
    assert out.shape == (10, 3) and gates.shape == (3, 10, 3)
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 10))
    torch.testing.assert_close(m(inputs(n=10)), out)


def test_higher_temperature_gives_flatter_gates_on_the_same_weights():
    sharp = model(config=MoEConfig(**{**SMALL.to_dict(), "temperature": 0.5}))
    flat = model(config=MoEConfig(**{**SMALL.to_dict(), "temperature": 4.0}), seed=3)
    flat.load_state_dict(sharp.state_dict())
    x = inputs(n=64)
    _, g_sharp = sharp.forward_with_gates(x)
    _, g_flat = flat.forward_with_gates(x)
    logits = sharp.gates["gpp"](x)
    torch.testing.assert_close(g_flat[1], torch.softmax(logits / 4.0, dim=-1))
    torch.testing.assert_close(g_sharp[1], torch.softmax(logits / 0.5, dim=-1))
    u_sharp, u_flat = gate_utilisation(g_sharp, sharp.tasks), gate_utilisation(g_flat, flat.tasks)
    for t in sharp.tasks:
        assert u_flat[t]["sample_entropy"] > u_sharp[t]["sample_entropy"]


def test_default_initialisation_uses_more_than_one_expert():
    torch.manual_seed(0)
    m = MMoE(20)  # default config: 4 experts, tasks sif and gpp
    assert m.n_experts == 4 and m.tasks == ("sif", "gpp")
    _, gates = m.forward_with_gates(torch.randn(512, 20))
    util = gate_utilisation(gates, m.tasks)
    for t in m.tasks:
        assert util[t]["normalised_entropy"] > 0.5
        assert util[t]["max_share"] < 0.9
        assert len(util[t]["mean"]) == 4 and util[t]["n"] == 512


# ---- utilisation


def test_gate_stats_over_batches_equals_utilisation_of_the_concatenation():
    m = model()
    with torch.no_grad():
        _, g1 = m.forward_with_gates(inputs(n=7, seed=2))
        _, g2 = m.forward_with_gates(inputs(n=13, seed=3) * 3)
    stats = GateStats(m.tasks)
    stats.update(g1)
    stats.update(g2.numpy())  # ndarrays are accepted too
    got, want = stats.result(), gate_utilisation(torch.cat([g1, g2], dim=1), m.tasks)
    assert got.keys() == want.keys() == {"sif", "gpp"}
    for t in m.tasks:
        assert got[t]["n"] == want[t]["n"] == 20
        np.testing.assert_allclose(got[t]["mean"], want[t]["mean"], rtol=1e-12)
        for k in ("entropy", "normalised_entropy", "sample_entropy", "max_share"):
            assert got[t][k] == pytest.approx(want[t][k], rel=1e-12)
    json.dumps(got)  # JSON-ready
    # different batches give a different record, and reset forgets them
    assert gate_utilisation(g1, m.tasks)["sif"]["mean"] != got["sif"]["mean"]
    stats.reset()
    with pytest.raises(ValueError, match="no samples"):
        stats.result()
    stats.update(g1)
    assert stats.result() == gate_utilisation(g1, m.tasks)


def test_gate_stats_see_collapse_onto_one_expert():
    n, e = 50, 4
    collapsed = torch.zeros(2, n, e)
    collapsed[:, :, 2] = 1.0
    collapsed[1, :, 2] = 0.999  # nearly, for the second task
    collapsed[1, :, 0] = 0.001
    util = gate_utilisation(collapsed, ("sif", "gpp"))
    assert util["sif"]["normalised_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert util["sif"]["max_share"] == pytest.approx(1.0)
    assert util["sif"]["mean"] == [0.0, 0.0, 1.0, 0.0]
    assert util["sif"]["sample_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert util["gpp"]["normalised_entropy"] < 0.01 and util["gpp"]["max_share"] > 0.99
    # uniform use: normalised entropy 1
    util = gate_utilisation(torch.full((1, n, e), 1 / e), ("gpp",))["gpp"]
    assert util["normalised_entropy"] == pytest.approx(1.0)
    assert util["entropy"] == pytest.approx(math.log(e))
    assert util["sample_entropy"] == pytest.approx(math.log(e))
    # hard but varied choices: the mean is uniform, each sample's gate is not
    hard = torch.eye(e).repeat(n // e + 1, 1)[:48][None]
    util = gate_utilisation(hard, ("gpp",))["gpp"]
    assert util["normalised_entropy"] == pytest.approx(1.0)
    assert util["sample_entropy"] == pytest.approx(0.0, abs=1e-12)


def test_gate_stats_reject_mismatched_shapes():
    stats = GateStats(("sif", "gpp"))
    with pytest.raises(ValueError, match="expected"):
        stats.update(torch.ones(3, 4, 2) / 2)
    stats.update(torch.ones(2, 4, 2) / 2)
    with pytest.raises(ValueError, match="experts"):
        stats.update(torch.ones(2, 4, 3) / 3)


@pytest.mark.requires_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gate_stats_on_cuda_match_cpu():
    m = model()
    x = inputs(n=40)
    _, gates = m.forward_with_gates(x)
    stats = GateStats(m.tasks)
    stats.update(gates.cuda())
    stats.update(gates[:, :5].cuda())
    want = gate_utilisation(torch.cat([gates, gates[:, :5]], dim=1).detach(), m.tasks)
    got = stats.result()
    for t in m.tasks:
        np.testing.assert_allclose(got[t]["mean"], want[t]["mean"], rtol=1e-6)
        assert got[t]["sample_entropy"] == pytest.approx(want[t]["sample_entropy"], rel=1e-6)


# ---- gradients


def _grads(m):
    return {name: (p.grad.abs().sum().item() if p.grad is not None else 0.0)
            for name, p in m.named_parameters()}


def test_gradients_reach_every_expert_gate_and_tower():
    m = model()
    out = m(inputs())
    (out ** 2).sum().backward()
    g = _grads(m)
    assert all(v > 0 for v in g.values()), [k for k, v in g.items() if v == 0]
    for prefix in [f"experts.{i}." for i in range(3)] + ["gates.sif.", "gates.gpp.",
                                                          "towers.sif.", "towers.gpp."]:
        assert any(k.startswith(prefix) for k in g), prefix


def test_a_loss_on_one_task_leaves_the_other_tower_untouched():
    m = model()
    out = m(inputs())
    (out[:, 1] ** 2).sum().backward()  # gpp only
    g = _grads(m)
    for k, v in g.items():
        if k.startswith(("towers.sif.", "gates.sif.")):
            assert v == 0, k
        else:
            assert v > 0, k


# ---- IGBP embedding


def test_igbp_embedding_column():
    s = spec("embedding")
    j = s.embed_column
    assert j == s.n_features - 1
    m = model(n_in=s.n_features, embed_column=j)
    assert m.width_in == s.n_features - 1 + SMALL.embed_dim
    x = inputs(n=8, n_in=s.n_features)
    x[:, j] = torch.tensor([0, 1, 2, 3, 4, 5, 16, 30], dtype=torch.float32)  # 30 is clamped
    out, gates = m.forward_with_gates(x)
    assert out.shape == (8, 2) and gates.shape == (2, 8, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert m.embedding.weight.grad.abs().sum() > 0
    x2 = x.clone()
    x2[:, j] = 7.0
    assert not torch.allclose(m(x2), out)  # the class matters
    x3 = x.clone()
    x3[-1, j] = 16.0
    torch.testing.assert_close(m(x3)[-1], out[-1])  # out-of-range classes clamp to the last
    assert any(p is m.embedding.weight for p in m.feature_parameters())
    assert not any(p is m.gates["sif"].weight for p in m.feature_parameters())


# ---- configuration


@pytest.mark.parametrize(("kw", "field"), [
    ({"n_experts": 0}, "n_experts"),
    ({"n_experts": 2.5}, "n_experts"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"activation": "swish"}, "activation"),
    ({"expert_hidden": ()}, "expert_hidden"),
    ({"expert_hidden": (8, 0)}, "expert_hidden"),
    ({"tower_hidden": "32"}, "tower_hidden"),
    ({"dropout": 1.0}, "dropout"),
    ({"embed_dim": 0}, "embed_dim"),
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=f"MoEConfig.{field}="):
        MoEConfig(**kw)


def test_config_round_trip_and_unknown_keys():
    cfg = MoEConfig(n_experts=6, expert_hidden=[32, 16], tower_hidden=(), activation="gelu",
                    dropout=0.1, embed_dim=3, temperature=2)
    assert cfg.expert_hidden == (32, 16) and cfg.tower_hidden == () and cfg.temperature == 2.0
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["expert_hidden"] == [32, 16]
    assert MoEConfig.from_dict(d) == cfg
    assert MoEConfig.from_dict({}) == MoEConfig()
    with pytest.raises(TypeError, match=r"hidden.*known fields.*n_experts"):
        MoEConfig.from_dict({**d, "hidden": [8]})
    m = MMoE(5, ("gpp",), cfg)  # an empty tower is one linear layer
    assert m(inputs(n=4, n_in=5)).shape == (4, 1) and len(m.towers["gpp"]) == 1


@pytest.mark.parametrize("tasks", [("sif", "sif"), ("sif", ""), "sif", (), ("a.b",),
                                   ("sif", 3)])
def test_task_names_must_be_unique_non_empty_strings(tasks):
    with pytest.raises(ValueError, match="task"):
        MMoE(4, tasks, SMALL)


# ---- registry


@pytest.mark.parametrize("igbp", ["onehot", "embedding"])
def test_registry_builds_the_moe_kind(igbp):
    s = spec(igbp)
    cfg = MoEConfig(n_experts=2, expert_hidden=(8,), tower_hidden=(4,), temperature=1.5)
    meta = json.loads(json.dumps({"features": s.to_dict(), "net": cfg.to_dict(),
                                  "tasks": ["sif", "gpp"], "n_out": 2}))
    assert ARCHITECTURES["moe"].config is MoEConfig
    built = build_module("moe", meta)
    assert isinstance(built, MMoE) and built.tasks == ("sif", "gpp")
    assert built.config == cfg and built.embed_column == s.embed_column
    reference = model(n_in=s.n_features, config=cfg, seed=11, embed_column=s.embed_column)
    built.load_state_dict(reference.state_dict())  # strict: same keys and shapes
    x = inputs(n=5, n_in=s.n_features)
    if s.embed_column is not None:
        x[:, s.embed_column] = 3.0
    torch.testing.assert_close(built(x), reference(x))
