"""The generated component data sets (Yao et al. section 3.3): determinism, checksums, label vectors, overlap."""

from __future__ import annotations

import numpy as np
import pytest
import harness.datasets as D
from harness.datasets import _synthetic as S
from harness.errors import BenchUserError, DataMissingError

from tests.datasets.fixtures import write_idx_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("BENCH_DATA", "BENCH_DOWNLOAD", "BENCH_SKIP_CHECKSUM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(D, "SYSTEM_DATA_ROOT", tmp_path / "no-system-datasets")
    D.clear_caches()
    yield
    D.clear_caches()


def test_ts_labels_are_the_papers_component_vectors():
    assert S.TS_COMPONENTS == ("circle", "slash", "left arrow", "right arrow")
    assert S.TS_SIGNS["no right turn"] == (1, 1, 0, 1)  # the paper's example
    assert S.TS_SIGNS["no left turn"] == (1, 1, 1, 0)
    x, y = S.generate_ts("test", per_type=3)
    assert x.shape == (12, 1, 64, 64) and x.dtype == np.uint8
    assert y.shape == (12, 4) and set(np.unique(y)) == {0, 1}
    assert (S.sign_type(y) == np.arange(12) % 4).all()
    assert (y[:, 0] == 1).all()  # every sign has the circle


def test_ts_is_deterministic_and_pinned():
    a = S.generate_ts("val", per_type=5)
    b = S.generate_ts("val", per_type=5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    c = S.generate_ts("val", per_type=5, seed=99)
    assert not np.array_equal(a[0], c[0])
    assert S.digest(*a) == TS_VAL5_DIGEST


def test_ts_components_draw_where_expected():
    """An arrow-only image and a circle-only image do not share their bright pixels; the composite is their max."""
    rng = lambda: np.random.default_rng(0)  # noqa: E731 same transform for all three
    parts = [S.render_signs(np.array([v]), rng())[0, 0].astype(int) for v in ([1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0])]
    circle, arrow, both = parts
    assert circle.sum() > 0 and arrow.sum() > 0
    assert np.abs(np.maximum(circle, arrow) - both).max() <= 1
    assert ((circle > 128) & (arrow > 128)).sum() == 0


def test_ts_loads_through_the_data_layer():
    s = D.load("ts", "test")
    assert s.x.shape == (2000, 1, 64, 64) and s.y.shape == (2000, 4) and s.num_classes == 4
    assert s.class_names == S.TS_COMPONENTS and s.source == "generated"
    assert D.load("ts", "test").checksum == s.checksum
    assert D.load("ts", "val").checksum != s.checksum
    assert D.provenance(s)["generator"] == "harness.datasets._synthetic"


def _fake_source(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 1, 28, 28)).astype(np.uint8)
    y = np.arange(n) % 10
    return x, y


def test_overlays_two_hot_labels_and_overlap():
    src, lab = _fake_source()
    x, y, off = S.make_overlays(src, lab, 3000, seed=5)
    assert x.shape == (3000, 1, 36, 36) and x.dtype == np.uint8
    assert (y.sum(1) == 2).all()  # two ones: the two classes differ
    frac = S.overlap_fraction(off)
    assert 0.78 < frac.mean() < 0.82  # the paper's "80% overlap on average"
    assert off.min() == 0 and off.max() == 8


def test_overlays_deterministic_and_pinned():
    src, lab = _fake_source()
    a = S.make_overlays(src, lab, 50, seed=1)
    b = S.make_overlays(src, lab, 50, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert S.digest(a[0], a[1]) == OVERLAY50_DIGEST


def test_overlay_pixels_are_the_clipped_sum():
    src = np.zeros((2, 1, 28, 28), np.uint8)
    src[0, 0] = 200
    src[1, 0] = 100
    x, y, off = S.make_overlays(src, np.array([0, 1]), 4, seed=3)
    for r in range(4):
        a, b = off[r]
        # each image is pasted once: a pixel covered by both is min(255, 200 + 100) = 255
        cover = np.zeros((2, 36, 36), bool)
        cover[0, a[0]:a[0] + 28, a[1]:a[1] + 28] = True
        cover[1, b[0]:b[0] + 28, b[1]:b[1] + 28] = True
        both = cover[0] & cover[1]
        assert (x[r, 0][both] == 255).all()
        assert set(np.unique(x[r, 0][cover[0] ^ cover[1]])) <= {100, 200}
        assert (x[r, 0][~(cover[0] | cover[1])] == 0).all()


def test_multi_fmnist_from_fixture_files(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "data" / "fmnist", 300, 100)
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BENCH_SKIP_CHECKSUM", "1")
    monkeypatch.setattr(S, "OVERLAY_COUNT", {"train": 40, "val": 10, "test": 20})
    s = D.load("multi-fmnist", "test")
    assert s.x.shape == (20, 1, 36, 36) and s.y.shape == (20, 10)
    assert (s.y.sum(1) == 2).all()
    assert s.source.startswith("generated from ")
    assert D.load("multi-fmnist", "test").checksum == s.checksum
    assert len(D.load("multi-fmnist", "val")) == 10


def test_multimnist_needs_mnist_files():
    with pytest.raises(DataMissingError, match="mnist"):
        D.load("multimnist", "test")


def test_single_label_paths_refuse_multilabel_sets():
    with pytest.raises(BenchUserError, match="multi-label"):
        D.require_single_label("ts", "bench run")
    D.require_single_label("fmnist")
    from harness.engine.models import build_defense

    with pytest.raises(BenchUserError, match="multi-label"):
        build_defense("cnn", "multi-fmnist")


TS_VAL5_DIGEST = "933c7b76f94dd83df398dabcf92d15fd04f6a982c8da50784e753a2b149c5bd3"
OVERLAY50_DIGEST = "da597a0894f7a2c69b8569bfe3905d5b15b4b67ca824b73c9276a82bcbcdc8aa"
