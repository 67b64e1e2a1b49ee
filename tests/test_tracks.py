"""Sounding index, held-out-track splits and mixed batches on a small twin world (4 degree, 2016)."""

from __future__ import annotations

import functools
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from xgpp.models.features import FeatureConfig, FeatureSpec, columns_from_dataset
from xgpp.tracks import (
    BATCH_KEYS,
    MixedSamples,
    TrackFold,
    TrackIndex,
    TrackSplit,
    parse_track_split,
    segment_ids,
    validation_segments,
)

CHUNKS = {"time": 23, "lat": 9, "lon": 18}  # 2 x 5 x 5 driver chunks, some without soundings


@functools.cache
def twin() -> SimpleNamespace:
    from xgpp.synthetic import make_world

    w = make_world(resolution=4.0, start="2016-01-01", end="2016-12-31", seed=0, chunks=CHUNKS)
    drivers, sif = w.drivers.persist(), w.sif_oco2.persist()
    index = TrackIndex.build(sif, drivers)
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    return SimpleNamespace(drivers=drivers, sif=sif, index=index, spec=spec,
                           lat=drivers.lat.values, lon=drivers.lon.values)


@functools.cache
def valid_inputs() -> np.ndarray:
    """Per sounding of twin().index: all inputs valid (computed from the in-memory cube)."""
    t = twin()
    ds = t.drivers[list(t.spec.inputs)].compute()
    cols = columns_from_dataset(ds, t.spec.inputs)
    ok = t.spec.valid_mask(cols).reshape(t.index.shape)
    return ok[t.index.t, t.index.y, t.index.x]


@functools.cache
def tagged() -> SimpleNamespace:
    """The OCO-2 cube with each sounding's SIF replaced by a tag: i (used) or -1 - i (held out).

    ``use`` holds out fold 0 of a 5-fold track split.
    """
    t = twin()
    fold = TrackSplit(k=5, seed=0).folds(t.index, t.lat, t.lon)[0]
    use = fold.train
    sif = t.sif.compute()
    tags = np.arange(t.index.n_soundings, dtype=np.float32)
    tags = np.where(use, tags, -1.0 - tags).astype(np.float32)
    arr = sif["sif"].values.copy()
    arr[t.index.t, t.index.y, t.index.x] = tags
    sif["sif"] = (sif["sif"].dims, arr, sif["sif"].attrs)
    return SimpleNamespace(sif=sif, use=use, fold=fold)


def sites(n: int = 97) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fake normalised site samples whose gpp is the row number (a tag)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, twin().spec.n_features)).astype(np.float32)
    return x, np.arange(n, dtype=np.float32), rng.integers(1, 17, n)


def loader(**kw) -> MixedSamples:
    t = twin()
    args = {"use": tagged().use, "sites": sites(), "sif_scale": (0.0, 1.0),
            "batch_size": 256, "shuffle_buffer": 2048, "seed": 3, **kw}
    sif = args.pop("sif", tagged().sif)
    return MixedSamples(t.drivers, sif, t.spec, t.index, **args)


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in BATCH_KEYS}


@functools.cache
def epoch0() -> dict[str, np.ndarray]:
    return concat(list(loader().iterate(0)))


# ------------------------------------------------------------------------------------ index
def test_index_holds_every_sounding_as_driver_indices():
    t = twin()
    ref = np.argwhere(t.sif["sif"].notnull().values)
    got = np.stack([t.index.t, t.index.y, t.index.x], axis=1)
    assert t.index.n_soundings == len(ref) > 1000
    np.testing.assert_array_equal(got, ref)  # same set, in (t, y, x) order
    assert got.dtype == np.int32 and t.index.chunk_id.dtype == np.int32
    # a cube starting later: time indices are on the drivers' axis, not the cube's
    late = t.sif.isel(time=slice(7, None))
    idx = TrackIndex.build(late, t.drivers)
    ref = np.argwhere(late["sif"].notnull().values)
    np.testing.assert_array_equal(idx.t, ref[:, 0] + 7)
    np.testing.assert_array_equal(idx.x, ref[:, 2])
    np.testing.assert_array_equal(idx.steps, np.arange(7, t.drivers.sizes["time"]))
    # an in-memory (numpy) cube gives the same index
    mem = TrackIndex.build(t.sif.compute(), t.drivers)
    np.testing.assert_array_equal(mem.y, t.index.y)


def test_index_lists_exactly_the_driver_chunks_with_soundings():
    t = twin()
    idx = t.index
    assert idx.chunk_sizes == CHUNKS
    assert idx.n_chunks_total == 2 * 5 * 5
    mask = t.sif["sif"].notnull().values
    want = []
    for it in range(2):
        for iy in range(5):
            for ix in range(5):
                block = mask[it * 23:(it + 1) * 23, iy * 9:(iy + 1) * 9, ix * 18:(ix + 1) * 18]
                if block.any():
                    want.append(((it * 5 + iy) * 5 + ix,
                                 (slice(it * 23, min(46, it * 23 + 23)),
                                  slice(iy * 9, iy * 9 + 9), slice(ix * 18, ix * 18 + 18))))
    assert 0 < len(want) < idx.n_chunks_total  # some chunks hold none
    assert idx.chunk_keys.tolist() == [k for k, _ in want]
    assert idx.chunks == [s for _, s in want]
    assert idx.n_chunks == len(want)
    for k, (ts, ys, xs) in zip(idx.chunk_keys, idx.chunks, strict=True):
        inside = ((idx.t >= ts.start) & (idx.t < ts.stop) & (idx.y >= ys.start)
                  & (idx.y < ys.stop) & (idx.x >= xs.start) & (idx.x < xs.stop))
        np.testing.assert_array_equal(inside, idx.chunk_id == k)


def test_index_summary_and_coverage():
    t = twin()
    s = t.index.summary()
    json.dumps(s)
    assert s["product"] == "sif_oco2" and s["n_soundings"] == t.index.n_soundings
    assert s["time_range"] == ["2016-01-01", "2016-12-26"]
    land = int((t.drivers["land_mask"].values > 0).sum())
    assert s["coverage_basis"] == "land pixel-steps"
    assert s["coverage"] == pytest.approx(t.index.n_soundings / (land * 46))
    no_land = TrackIndex.build(t.sif, t.drivers.drop_vars("land_mask"))
    assert no_land.coverage_basis == "pixel-steps"
    assert no_land.coverage == pytest.approx(t.index.n_soundings / (46 * 45 * 90))


def test_index_window_keeps_only_its_steps():
    t = twin()
    idx = TrackIndex.build(t.sif, t.drivers, time=slice("2016-03-01", "2016-05-31"))
    times = t.drivers.time.values[idx.t]
    assert times.min() >= np.datetime64("2016-03-01") and times.max() <= np.datetime64(
        "2016-05-31")
    ref = t.sif["sif"].sel(time=slice("2016-03-01", "2016-05-31")).notnull().values.sum()
    assert idx.n_soundings == ref > 0


def test_index_rejects_a_cube_on_another_grid_or_time_axis():
    t = twin()
    with pytest.raises(ValueError, match=r"'lat' axis \(44 cells.*regrid one onto the other"):
        TrackIndex.build(t.sif.isel(lat=slice(1, None)), t.drivers)
    with pytest.raises(ValueError, match=r"'lon' axis"):
        TrackIndex.build(t.sif.assign_coords(lon=t.sif.lon + 1.0), t.drivers)
    shifted = t.sif.assign_coords(time=t.sif.time.values + np.timedelta64(1, "D"))
    with pytest.raises(ValueError, match=r"46 of 46 sif_oco2 time steps .* not on the driver "
                                         r"cube's time axis \(2016-01-01..2016-12-26"):
        TrackIndex.build(shifted, t.drivers)
    with pytest.raises(KeyError, match="'xco2'"):
        TrackIndex.build(t.sif, t.drivers, var="xco2")


def test_index_window_without_soundings_is_named():
    t = twin()
    with pytest.raises(ValueError, match=r"sif_oco2.*2016-01-01..2016-12-26.*no sounding in "
                                         r"time=slice\('1990', '1991'\).*Widen the window"):
        TrackIndex.build(t.sif, t.drivers, time=slice("1990", "1991"))
    empty = t.sif.copy()
    empty["sif"] = t.sif["sif"] * np.nan
    with pytest.raises(ValueError, match=r"no sounding in the whole record"):
        TrackIndex.build(empty, t.drivers)


# ------------------------------------------------------------------------------- segments
def _tiny_index(points: list[tuple[int, int, int]], shape=(3, 18, 36)) -> TrackIndex:
    t, y, x = (np.array(a, np.int32) for a in zip(*sorted(points), strict=True))
    return TrackIndex(t, y, x, chunk_sizes={"time": 3, "lat": 18, "lon": 36}, shape=shape,
                      time=np.arange(shape[0]).astype("datetime64[D]"),
                      steps=np.arange(shape[0]), product="test", var="sif", window=None)


def test_segments_are_connected_pieces_cut_by_latitude():
    lat = -90 + 5 * (np.arange(18) + 0.5)  # 5-degree grid
    lon = -180 + 5 * (np.arange(36) + 0.5)
    track = [(0, y, 10 + (y - 4) // 3) for y in range(4, 14)]  # diagonal track, 50 degrees
    blob = [(0, 2, 30), (0, 3, 31)]  # diagonal neighbours: one component
    later = [(1, y, 10 + (y - 4) // 3) for y in range(4, 14)]  # same cells, next step
    idx = _tiny_index(track + blob + later)
    ids = segment_ids(idx, lat, lon, segment=20.0)
    assert ids.dtype == np.int64
    by = {p: i for p, i in zip(zip(idx.t, idx.y, idx.x, strict=True), ids, strict=True)}
    bins = np.floor((lat + 90) / 20).astype(int)
    for a in track:
        for b in track:
            assert (by[a] == by[b]) == (bins[a[1]] == bins[b[1]])
    assert by[(0, 2, 30)] == by[(0, 3, 31)]
    assert by[(0, 2, 30)] not in {by[p] for p in track}
    assert not {by[p] for p in later} & {by[p] for p in track + blob}
    assert sorted(set(ids.tolist())) == list(range(len(set(ids.tolist()))))


def test_segments_never_span_two_steps_and_are_latitude_bounded():
    t = twin()
    ids = segment_ids(t.index, t.lat, t.lon, segment=10.0)
    assert len(ids) == t.index.n_soundings
    steps_per_segment = np.array([len(np.unique(t.index.t[ids == i]))
                                  for i in np.unique(ids)[:400]])
    assert (steps_per_segment == 1).all()
    import pandas as pd

    df = pd.DataFrame({"id": ids, "t": t.index.t, "bin": np.floor(
        (t.lat[t.index.y] + 90) / 10).astype(int)})
    assert (df.groupby("id")["t"].nunique() == 1).all()
    assert (df.groupby("id")["bin"].nunique() == 1).all()
    assert df["id"].nunique() < t.index.n_soundings  # pieces hold several soundings
    with pytest.raises(ValueError, match="lat/lon have shapes"):
        segment_ids(t.index, t.lat[1:], t.lon)


def test_folds_partition_soundings_by_whole_segments():
    t = twin()
    split = TrackSplit(k=4, segment=10.0, seed=1)
    folds = split.folds(t.index, t.lat, t.lon)
    assert [f.fold for f in folds] == [0, 1, 2, 3] and all(f.k == 4 for f in folds)
    tests = np.stack([f.test for f in folds])
    np.testing.assert_array_equal(tests.sum(axis=0), 1)  # each sounding in exactly one fold
    ids = segment_ids(t.index, t.lat, t.lon, segment=10.0)
    for f in folds:
        held = np.unique(ids[f.test])
        assert not np.isin(ids[f.train], held).any()  # no held-out segment partly in training
        assert 0.15 < f.n_test / t.index.n_soundings < 0.35
        d = f.to_dict()
        json.dumps(d)
        assert d == {"name": f"tracks:k=4,fold={f.fold},segment=10,seed=1", "k": 4,
                     "fold": f.fold, "segment": 10.0, "seed": 1, "n_test": f.n_test,
                     "n_train": t.index.n_soundings - f.n_test}
    again = split.folds(t.index, t.lat, t.lon)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))
    other = TrackSplit(k=4, segment=10.0, seed=2).folds(t.index, t.lat, t.lon)
    assert not np.array_equal(folds[0].test, other[0].test)
    assert isinstance(split.fold(t.index, t.lat, t.lon, 2), TrackFold)
    with pytest.raises(ValueError, match="fold=4 is out of range for k=4"):
        split.fold(t.index, t.lat, t.lon, 4)


def test_parse_track_split():
    assert parse_track_split("tracks:k=5,fold=0,segment=10,seed=0") == (TrackSplit(), 0)
    assert parse_track_split("tracks") == (TrackSplit(), 0)
    assert parse_track_split("tracks:fold=2, segment=2.5") == (TrackSplit(segment=2.5), 2)
    with pytest.raises(ValueError, match="unknown option 'blocks'"):
        parse_track_split("tracks:blocks=3")
    with pytest.raises(ValueError, match="k='five'.*not an integer"):
        parse_track_split("tracks:k=five")
    with pytest.raises(ValueError, match="fold=5 .* out of range for k=5"):
        parse_track_split("tracks:fold=5")
    with pytest.raises(ValueError, match="k=1 must be an integer >= 2"):
        parse_track_split("tracks:k=1")
    with pytest.raises(ValueError, match="segment=-1.0 must be a positive"):
        parse_track_split("tracks:segment=-1")
    with pytest.raises(ValueError, match="not a track split"):
        parse_track_split("site-kfold:k=5")
    with pytest.raises(ValueError, match="not key=value"):
        parse_track_split("tracks:k")


def test_validation_segments_pick_whole_segments():
    t = twin()
    ids = segment_ids(t.index, t.lat, t.lon)
    val = validation_segments(ids, 0.2, seed=0)
    assert val.dtype == bool and val.shape == ids.shape
    picked = np.unique(ids[val])
    assert not np.isin(ids[~val], picked).any()
    assert len(picked) == round(0.2 * len(np.unique(ids)))
    np.testing.assert_array_equal(val, validation_segments(ids, 0.2, seed=0))
    assert not np.array_equal(val, validation_segments(ids, 0.2, seed=1))
    assert not validation_segments(ids, 0.0, seed=0).any()
    with pytest.raises(ValueError, match=r"fraction=1.0 must be in \[0, 1\)"):
        validation_segments(ids, 1.0, seed=0)


# --------------------------------------------------------------------------------- loader
def test_batches_have_the_documented_keys_dtypes_and_shapes():
    ms = loader()
    batches = list(ms.iterate(0))
    nf = twin().spec.n_features
    dtypes = {"x": np.float32, "sif": np.float32, "sif_mask": np.bool_,
              "sif_weight": np.float32, "gpp": np.float32, "gpp_mask": np.bool_,
              "igbp": np.int64}
    sizes = [len(b["x"]) for b in batches]
    assert len(sizes) > 1 and sizes[:-1] == [256] * (len(sizes) - 1), sizes  # only the last
    assert 0 < sizes[-1] <= 256                                           # batch may be short
    for b, n in zip(batches, sizes, strict=True):
        assert set(b) == set(BATCH_KEYS)
        assert b["x"].shape == (n, nf)
        for k, dt in dtypes.items():
            assert b[k].dtype == dt, k
            if k != "x":
                assert b[k].shape == (n,), k
        assert np.isfinite(b["x"]).all()
        assert not (b["sif_mask"] & b["gpp_mask"]).any()
        assert (b["sif"][~b["sif_mask"]] == 0).all() and (b["sif_weight"][~b["sif_mask"]] == 0).all()
        assert (b["gpp"][~b["gpp_mask"]] == 0).all()
        assert ((b["igbp"] >= 1) & (b["igbp"] < 17)).all()  # land classes only
    assert ms.n_used == int(tagged().use.sum())
    assert ms.n_chunks == len(np.unique(twin().index.chunk_id[tagged().use]))


def test_every_used_sounding_is_a_track_row_exactly_once_per_epoch():
    e = epoch0()
    tags = e["sif"][e["sif_mask"]]
    assert (tags >= 0).all()  # held-out soundings (negative tags) never appear
    use, ok = tagged().use, valid_inputs()
    assert (use & ~ok).any()  # some used soundings have gaps in their inputs: they are dropped
    want = np.flatnonzero(use & ok)
    np.testing.assert_array_equal(np.sort(tags.astype(np.int64)), want)


def test_held_out_soundings_never_feed_the_loader():
    t = twin()
    test = tagged().fold.test
    ms = loader(use=test)  # now the other way round: only the held-out ones
    e = concat(list(ms.iterate(0)))
    tags = e["sif"][e["sif_mask"]]
    assert (tags < 0).all()
    np.testing.assert_array_equal(np.sort((-1 - tags).astype(np.int64)),
                                  np.flatnonzero(test & valid_inputs()))
    assert t.index.n_soundings > ms.n_used


def test_label_proportions_over_an_epoch():
    for props in ((0.5, 0.25, 0.25), (0.6, 0.1, 0.3)):
        e = epoch0() if props == (0.5, 0.25, 0.25) else concat(list(
            loader(proportions=props).iterate(0)))
        n = len(e["x"])
        track, site = e["sif_mask"].mean(), e["gpp_mask"].mean()
        unl = 1 - track - site
        for got, want in zip((track, site, unl), props, strict=True):
            assert got == pytest.approx(want, rel=0.05), (props, got)
        assert n > 5000
    # site rows cycle through a permutation of the site samples
    e = epoch0()
    counts = np.bincount(e["gpp"][e["gpp_mask"]].astype(int), minlength=97)
    assert counts.max() - counts.min() <= 1


def test_count_weights_are_relative_to_the_mean_count():
    t = twin()
    e = epoch0()
    ids = e["sif"][e["sif_mask"]].astype(np.int64)
    count = t.sif["sif_count"].values[t.index.t, t.index.y, t.index.x]
    mean = count[tagged().use].mean()
    np.testing.assert_allclose(e["sif_weight"][e["sif_mask"]], count[ids] / mean, rtol=1e-5)
    flat = concat(list(loader(weight="none").iterate(0)))
    assert (flat["sif_weight"][flat["sif_mask"]] == 1).all()
    no_count = concat(list(loader(sif=tagged().sif.drop_vars("sif_count")).iterate(0)))
    assert (no_count["sif_weight"][no_count["sif_mask"]] == 1).all()


def test_normalised_sif_and_zero_site_share():
    t = twin()
    ms = MixedSamples(t.drivers, t.sif, t.spec, t.index, use=np.ones(t.index.n_soundings, bool),
                      sif_scale=(0.5, 0.25), proportions=(0.8, 0.0, 0.2), batch_size=4096)
    e = concat(list(ms.iterate(0)))
    assert not e["gpp_mask"].any()
    phys = t.sif["sif"].values[t.index.t, t.index.y, t.index.x][valid_inputs()]
    np.testing.assert_allclose(np.sort(e["sif"][e["sif_mask"]]), np.sort((phys - 0.5) / 0.25),
                               rtol=1e-5, atol=1e-5)


def test_epochs_are_deterministic_by_seed_and_epoch():
    ms = loader()
    a, b = epoch0(), concat(list(ms.iterate(0)))
    for k in BATCH_KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    c = concat(list(ms.iterate(1)))
    assert c["sif_mask"].sum() == a["sif_mask"].sum()
    assert not np.array_equal(a["sif"], c["sif"])
    d = concat(list(loader(seed=4).iterate(0)))
    assert not np.array_equal(a["sif"], d["sif"])
    # without a shuffle buffer too
    ms0 = loader(shuffle_buffer=0)
    e0, e1 = concat(list(ms0.iterate(0))), concat(list(ms0.iterate(0)))
    np.testing.assert_array_equal(e0["x"], e1["x"])
    assert e0["sif_mask"].sum() == a["sif_mask"].sum()


def test_chunks_without_used_soundings_are_never_loaded():
    t = twin()
    keys = t.index.chunk_keys
    chosen = keys[::3]
    use = np.isin(t.index.chunk_id, chosen)
    ms = loader(use=use, workers=2, prefetch=2)
    assert ms.n_chunks == len(chosen)
    seen: list[int] = []
    lock = threading.Lock()
    original = ms.load_chunk

    def counting(key):
        with lock:
            seen.append(int(key))
        return original(key)

    ms.load_chunk = counting
    e = concat(list(ms.iterate(0)))
    assert sorted(seen) == sorted(chosen.tolist())  # each chunk with used soundings once
    assert e["sif_mask"].sum() == (use & valid_inputs()).sum()
    seen.clear()
    assert len(list(ms.iterate(1, max_batches=2))) == 2
    assert set(seen) <= set(chosen.tolist())


def test_loader_stops_cleanly_after_max_batches():
    ms = loader(batch_size=64)

    def ours() -> list[threading.Thread]:  # dask keeps its own per-thread pools: not counted
        return [t for t in threading.enumerate() if t.name.startswith(("xgpp-mixed",
                                                                          "xgpp-track"))]

    batches = ms.iterate(0, max_batches=3)
    assert len(next(batches)["x"]) == 64
    assert ours()  # the producer and its loading threads run while the epoch is consumed
    assert len(list(batches)) == 2
    for _ in range(50):
        if not ours():
            break
        threading.Event().wait(0.05)
    assert not ours()


def test_loader_validates_its_arguments():
    t = twin()
    use = tagged().use
    with pytest.raises(ValueError, match=r"sites=None; pass sites=\(x, gpp, igbp\)"):
        loader(sites=None)
    with pytest.raises(ValueError, match="three non-negative shares"):
        loader(proportions=(0.5, -0.1, 0.6))
    with pytest.raises(ValueError, match="track share must be > 0"):
        loader(proportions=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="one value per sounding"):
        loader(use=use[1:])
    with pytest.raises(ValueError, match="selects none"):
        loader(use=np.zeros_like(use))
    with pytest.raises(ValueError, match=rf"x \(n, {t.spec.n_features}\)"):
        loader(sites=(np.zeros((4, 3), np.float32), np.zeros(4, np.float32), np.ones(4)))
    with pytest.raises(ValueError, match="weight='area'"):
        loader(weight="area")
    with pytest.raises(ValueError, match="'lat' axis"):
        loader(sif=t.sif.isel(lat=slice(1, None)))
    assert loader(sites=None, proportions=(2, 0, 1)).proportions == pytest.approx(
        (2 / 3, 0.0, 1 / 3))


def test_track_arrays_return_physical_sif_at_the_soundings():
    t = twin()
    ms = MixedSamples(t.drivers, t.sif, t.spec, t.index, use=tagged().use, sites=None,
                      sif_scale=(0.5, 0.25), proportions=(1, 0, 1))
    test = tagged().fold.test
    arr = ms.track_arrays(test)
    want = np.flatnonzero(test & valid_inputs())
    assert set(arr) == {"x", "sif", "count", "igbp", "t", "y", "x_idx"}
    np.testing.assert_array_equal(arr["t"], t.index.t[want])
    np.testing.assert_array_equal(arr["y"], t.index.y[want])
    np.testing.assert_array_equal(arr["x_idx"], t.index.x[want])
    cube = t.sif.compute()
    np.testing.assert_array_equal(arr["sif"], cube["sif"].values[arr["t"], arr["y"],
                                                                  arr["x_idx"]])
    np.testing.assert_array_equal(arr["count"], cube["sif_count"].values[arr["t"], arr["y"],
                                                                          arr["x_idx"]])
    np.testing.assert_array_equal(arr["igbp"], t.drivers["igbp"].values[arr["y"], arr["x_idx"]])
    cols = columns_from_dataset(t.drivers[list(t.spec.inputs)].compute(), t.spec.inputs)
    flat = (arr["t"].astype(int) * 45 + arr["y"]) * 90 + arr["x_idx"]
    np.testing.assert_allclose(arr["x"], t.spec.transform({k: v[flat] for k, v in cols.items()}),
                               rtol=1e-6)
    # capped by a seeded subsample of the valid rows
    few = ms.track_arrays(test, max_samples=300)
    assert len(few["sif"]) == 300 and all(len(v) == 300 for v in few.values())
    assert np.isin(few["t"] * 10**6 + few["y"] * 1000 + few["x_idx"],
                   arr["t"] * 10**6 + arr["y"] * 1000 + arr["x_idx"]).all()
    again = ms.track_arrays(test, max_samples=300)
    np.testing.assert_array_equal(few["sif"], again["sif"])
    assert len(ms.track_arrays(test, max_samples=10**6)["sif"]) == len(want)


def test_index_and_loader_from_zarr_stores(tmp_path):
    import xarray as xr

    t = twin()
    paths = {}
    for name, ds in (("drivers", t.drivers), ("sif_oco2", t.sif)):
        enc = {v: {"chunks": tuple(c[0] for c in ds[v].chunks)} for v in ds.data_vars}
        ds.to_zarr(tmp_path / f"{name}.zarr", mode="w", zarr_format=3, consolidated=False,
                   encoding=enc)
        paths[name] = tmp_path / f"{name}.zarr"
    drivers = xr.open_zarr(paths["drivers"], consolidated=False)
    sif = xr.open_zarr(paths["sif_oco2"], consolidated=False)
    idx = TrackIndex.build(sif, drivers)
    np.testing.assert_array_equal(idx.chunk_id, t.index.chunk_id)
    ms = MixedSamples(drivers, sif, t.spec, idx, use=tagged().use, sites=sites(),
                      sif_scale=(0.0, 1.0), batch_size=512)
    e = concat(list(ms.iterate(0)))
    phys = t.sif["sif"].values[t.index.t, t.index.y, t.index.x][tagged().use & valid_inputs()]
    np.testing.assert_allclose(np.sort(e["sif"][e["sif_mask"]]), np.sort(phys), rtol=1e-6)


def test_row_cache_gives_the_same_batches_and_skips_decoding_in_later_epochs():
    cached, plain = loader(cache_mib=256.0), loader(cache_mib=0.0)
    loads = {"cached": 0, "plain": 0}
    for name, ms in (("cached", cached), ("plain", plain)):
        original = ms.load_chunk

        def counting(key, _orig=original, _name=name):
            loads[_name] += 1
            return _orig(key)

        ms.load_chunk = counting
    for epoch in (0, 1):
        a, b = concat(list(cached.iterate(epoch))), concat(list(plain.iterate(epoch)))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    n = cached.n_chunks
    assert loads == {"cached": n, "plain": 2 * n}  # epoch 1 decoded nothing with the cache
    assert 0 < cached.cached_mib < 256 and plain.cached_mib == 0
    e0, e1 = concat(list(cached.iterate(0))), concat(list(cached.iterate(1)))
    unl0 = np.sort(e0["x"][~e0["sif_mask"] & ~e0["gpp_mask"]][:, 0])
    unl1 = np.sort(e1["x"][~e1["sif_mask"] & ~e1["gpp_mask"]][:, 0])
    assert not np.array_equal(unl0, unl1)  # unlabelled rows are redrawn every epoch
