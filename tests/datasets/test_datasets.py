"""Tests for harness.datasets on tiny fixtures written in the publishers' exact formats."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.datasets as D
from harness.errors import BenchUserError, DataCorruptError, DataMissingError

from tests.datasets.fixtures import (idx_bytes, write_bts, write_cifar, write_dfg, write_gtsrb,
                                     write_idx_dataset, write_idx_gz, write_svhn)

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data dirs, no user cache, no env switches, no in-process caches."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in ("BENCH_DATA", "BENCH_DOWNLOAD", "BENCH_SKIP_CHECKSUM", "BENCH_ST10_ALLOW_PARTIAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(D, "SYSTEM_DATA_ROOT", tmp_path / "no-system-datasets")
    D.clear_caches()
    yield
    D.clear_caches()


def load(*args, **kw):
    kw.setdefault("verify_checksums", False)
    return D.load(*args, **kw)


# --- API basics -------------------------------------------------------------------------------------

def test_registry_and_info():
    names = [i.name for i in D.list_datasets()]
    assert names == ["mnist", "fmnist", "svhn", "cifar10", "gtsrb", "supertraffic10", "ts", "multi-fmnist", "multimnist"]
    assert D.get_info("fmnist").shape == (1, 28, 28)
    assert len(D.get_info("gtsrb").class_names) == 43
    assert D.get_info("cifar10").class_names[0] == "airplane"
    with pytest.raises(BenchUserError, match="valid names: mnist, fmnist"):
        D.get_info("imagenet")


def test_bad_split_and_args(tmp_path):
    write_idx_dataset(tmp_path / "m", 10, 5)
    with pytest.raises(BenchUserError, match="unknown split 'dev'"):
        load("mnist", "dev", root=tmp_path / "m")
    with pytest.raises(BenchUserError, match="download must be"):
        load("mnist", "test", root=tmp_path / "m", download="yes")


def test_import_is_cheap_and_side_effect_free(tmp_path):
    code = "import sys, harness.datasets; print('torch' in sys.modules, 'numpy' in sys.modules)"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], env=env)
    assert out.stdout.split() == ["False", "False"]
    assert not (tmp_path / "c").exists()


# --- IDX (MNIST / Fashion-MNIST) ----------------------------------------------------------------------

def test_idx_shapes_values_and_labels(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=7)
    s = load("mnist", "test", root=tmp_path)
    assert s.x.shape == (7, 1, 28, 28) and s.x.dtype == torch.float32
    assert s.y.dtype == torch.int64 and s.y.tolist() == raw["test_labels"].tolist()
    assert 0.0 <= s.x.min() and s.x.max() <= 1.0
    assert torch.equal(s.x[:, 0], torch.from_numpy(raw["test_images"]).float() / 255)
    assert s.source == str(tmp_path) and s.split == "test" and s.num_classes == 10
    assert len(s.checksum) == 64 and s.class_names == tuple("0123456789")


def test_train_val_split_rule(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=3)
    tr, va = load("fmnist", "train", root=tmp_path), load("fmnist", "val", root=tmp_path)
    assert (len(tr), len(va)) == (45, 5)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    val_idx = sorted(perm[:5].tolist())
    train_idx = sorted(perm[5:].tolist())
    assert va.y.tolist() == raw["train_labels"][val_idx].tolist()
    assert tr.y.tolist() == raw["train_labels"][train_idx].tolist()
    assert torch.equal(va.x[:, 0], torch.from_numpy(raw["train_images"][val_idx]).float() / 255)
    assert not set(val_idx) & set(train_idx)
    D.clear_caches()
    again = load("fmnist", "val", root=tmp_path)
    assert torch.equal(again.x, va.x) and torch.equal(again.y, va.y)
    assert again.checksum == va.checksum == tr.checksum
    t_idx, v_idx = D.train_val_indices(50)
    assert v_idx.tolist() == val_idx and t_idx.tolist() == train_idx


def test_lookup_order_root_beats_env_beats_cache(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "env"
    write_idx_dataset(a, 20, 4, seed=1)
    write_idx_dataset(b / "mnist", 20, 6, seed=2)
    monkeypatch.setenv("BENCH_DATA", str(b))
    assert len(load("mnist", "test")) == 6
    assert load("mnist", "test").source == str(b / "mnist")
    assert len(load("mnist", "test", root=a)) == 4
    assert D.find_data_dir("mnist") == b / "mnist"
    monkeypatch.delenv("BENCH_DATA")
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "bench" / "data" / "mnist"
    write_idx_dataset(cache, 20, 5)
    assert len(load("mnist", "test")) == 5
    assert D.find_data_dir("mnist") == cache


def test_system_root_is_used(tmp_path, monkeypatch):
    sysroot = tmp_path / "sys"
    write_idx_dataset(sysroot / "fashion-mnist", 10, 3)
    monkeypatch.setattr(D, "SYSTEM_DATA_ROOT", sysroot)
    assert load("fmnist", "test").source == str(sysroot / "fashion-mnist")


def test_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "bd"))
    with pytest.raises(DataMissingError) as ei:
        load("mnist", "train")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "bd" / "mnist") in msg and "bench/data/mnist" in msg and "BENCH_DOWNLOAD=1" in msg
    # explicit root: only that directory, no fallback and no embedded copy
    with pytest.raises(DataMissingError, match=f"put them in {tmp_path / 'r'}/"):
        load("fmnist", "test", root=tmp_path / "r")
    # a partial directory reports only what it lacks
    write_idx_dataset(tmp_path / "p", 10, 3)
    (tmp_path / "p" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match=r"missing train-labels-idx1-ubyte.gz;"):
        load("mnist", "val", root=tmp_path / "p")


def test_download_is_opt_in(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("harness.datasets._download.download", lambda name, dest: calls.append((name, dest)))
    with pytest.raises(DataMissingError):
        load("svhn", "test")
    assert calls == []
    monkeypatch.setenv("BENCH_DOWNLOAD", "1")
    with pytest.raises(DataMissingError):  # the stub fetched nothing
        load("svhn", "test")
    assert calls == [("svhn", Path(os.environ["XDG_CACHE_HOME"]) / "bench" / "data" / "svhn")]
    with pytest.raises(DataMissingError, match="no automatic download"):
        load("gtsrb", "test", download=True)


def test_corrupt_gzip_and_idx(tmp_path):
    write_idx_dataset(tmp_path, 10, 4)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])  # truncated gzip
    with pytest.raises(DataCorruptError, match="t10k-images-idx3-ubyte.gz"):
        load("mnist", "test", root=tmp_path)
    payload = gzip.decompress(good)
    p.write_bytes(gzip.compress(payload[:-5]))  # truncated IDX inside a valid gzip
    with pytest.raises(DataCorruptError, match="size mismatch"):
        load("mnist", "test", root=tmp_path)
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + payload[4:]))  # label magic in an image file
    with pytest.raises(DataCorruptError, match="bad IDX magic 2049"):
        load("mnist", "test", root=tmp_path)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataCorruptError, match="not a valid gzip"):
        load("mnist", "test", root=tmp_path)


def test_label_count_mismatch_and_range(tmp_path):
    write_idx_dataset(tmp_path, 10, 4)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataCorruptError, match="4 images but .* 3 labels"):
        load("mnist", "test", root=tmp_path)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10], np.uint8))
    with pytest.raises(DataCorruptError, match="labels outside 0..9"):
        load("mnist", "test", root=tmp_path)


def test_checksum_verification_on_fixture(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path, 10, 4)
    with pytest.raises(DataCorruptError, match="t10k-images-idx3-ubyte.gz does not match the published checksum"):
        D.load("mnist", "test", root=tmp_path)  # default: verify
    monkeypatch.setenv("BENCH_SKIP_CHECKSUM", "1")
    assert len(D.load("mnist", "test", root=tmp_path)) == 4
    with pytest.raises(DataCorruptError):
        D.load("mnist", "test", root=tmp_path, verify_checksums=True)


def test_embedded_fmnist_test_set():
    s = D.load("fmnist", "test")  # verified: embedded files match the published content
    assert s.source == "embedded"
    assert s.x.shape == (10000, 1, 28, 28) and s.num_classes == 10
    assert sorted(torch.unique(s.y).tolist()) == list(range(10))
    assert torch.bincount(s.y).tolist() == [1000] * 10
    with pytest.raises(DataMissingError, match="train-images-idx3-ubyte.gz"):
        D.load("fmnist", "train")


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_checksums(monkeypatch):
    from harness.datasets import _checksums

    for f in D.get_info("fmnist").files:
        _checksums.verify_file("fmnist", f, REAL_FMNIST / f)  # raises on mismatch
    monkeypatch.setattr(D, "SYSTEM_DATA_ROOT", REAL_FMNIST.parent)
    real = D.load("fmnist", "test")
    embedded = D.load("fmnist", "test", root=D.EMBEDDED_DIR)
    assert real.source == str(REAL_FMNIST)
    assert real.checksum == embedded.checksum
    assert torch.equal(real.y, embedded.y)


def test_tampered_file_fails_verification(tmp_path):
    src = D.EMBEDDED_DIR
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    payload = bytearray(gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    payload[100] = (payload[100] + 1) % 10  # same size, one label changed
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DataCorruptError, match="t10k-labels-idx1-ubyte.gz does not match"):
        D.load("fmnist", "test", root=tmp_path)
    assert len(D.load("fmnist", "test", root=tmp_path, verify_checksums=False)) == 10000


# --- SVHN -------------------------------------------------------------------------------------------

def test_svhn(tmp_path):
    raw = write_svhn(tmp_path, n_train=20, n_test=6)
    s = load("svhn", "test", root=tmp_path)
    assert s.x.shape == (6, 3, 32, 32) and s.y.dtype == torch.int64
    want = raw["test_y"].reshape(-1).astype(int) % 10
    assert s.y.tolist() == want.tolist() and s.y[0] == 0
    # (32, 32, 3, N) HWC-N -> NCHW
    assert torch.equal(s.x[2], torch.from_numpy(raw["test_x"][:, :, :, 2].transpose(2, 0, 1).copy()).float() / 255)
    assert (len(load("svhn", "train", root=tmp_path)), len(load("svhn", "val", root=tmp_path))) == (18, 2)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage" * 3)
    D.clear_caches()
    with pytest.raises(DataCorruptError, match="test_32x32.mat"):
        load("svhn", "test", root=tmp_path)


# --- CIFAR-10 ---------------------------------------------------------------------------------------

def test_cifar(tmp_path):
    raw = write_cifar(tmp_path, n_per_batch=4, n_test=5)
    s = load("cifar10", "test", root=tmp_path)
    data, labels = raw["test_batch"]
    assert s.x.shape == (5, 3, 32, 32) and s.y.tolist() == labels.tolist()
    assert torch.equal(s.x, torch.from_numpy(data.reshape(5, 3, 32, 32)).float() / 255)
    tr, va = load("cifar10", "train", root=tmp_path), load("cifar10", "val", root=tmp_path)
    assert (len(tr), len(va)) == (18, 2)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    write_cifar(tmp_path, n_per_batch=2, n_test=2)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0, 1]}, f)
    with pytest.raises(DataCorruptError, match=r"test_batch: unsafe or invalid pickle \(refusing to load global (posix|os|nt)\.system\)"):
        load("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_truncated_pickle(tmp_path):
    write_cifar(tmp_path, n_per_batch=2, n_test=3)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataCorruptError, match="data_batch_3"):
        load("cifar10", "val", root=tmp_path)


def test_cifar_tarball_is_extracted(tmp_path):
    import tarfile

    src = tmp_path / "src"
    write_cifar(src, n_per_batch=2, n_test=3)
    dst = tmp_path / "dst"
    dst.mkdir()
    with tarfile.open(dst / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(load("cifar10", "test", root=dst)) == 3
    assert (dst / "cifar-10-batches-py" / "test_batch").is_file()


# --- GTSRB and SuperTraffic-10 ------------------------------------------------------------------------

def test_gtsrb(tmp_path):
    write_gtsrb(tmp_path, train=[(0, 40), (0, 20), (5, 33), (42, 50)], test=[(42, 36), (3, 10)])
    te = load("gtsrb", "test", root=tmp_path)
    assert te.x.shape == (2, 3, 32, 32) and te.y.tolist() == [42, 3] and te.num_classes == 43
    # the crop is exactly the red ROI: no blue border survives the crop + resize
    assert torch.allclose(te.x[0, 0], torch.ones(32, 32)) and te.x[0, 2].max() == 0
    tr = load("gtsrb", "train", root=tmp_path)
    assert sorted(tr.y.tolist()) == [0, 0, 5, 42]  # 4 // 10 == 0 val items
    assert len(load("gtsrb", "val", root=tmp_path)) == 0
    decoded = list((Path(os.environ["XDG_CACHE_HOME"]) / "bench" / "decoded").glob("gtsrb-*.npz"))
    assert len(decoded) == 2
    assert torch.equal(load("gtsrb", "test", root=tmp_path).x, te.x)  # from the .npz cache


def test_gtsrb_corrupt_image(tmp_path):
    write_gtsrb(tmp_path, train=[(1, 40)], test=[(1, 40)])
    (tmp_path / "GTSRB/Final_Test/Images/00000.ppm").write_bytes(b"P6\n40 40\n255\n" + b"\x00" * 10)
    with pytest.raises(DataCorruptError, match="00000.ppm"):
        load("gtsrb", "test", root=tmp_path)


def _st10_fixture(base: Path, with_dfg: bool = True):
    # GTSRB train: class c (0..10) has c+1 crops of 36 px; class 12 (Priority road) has 15 crops of
    # 20 px that must be dropped; class 13 (Yield) has 1 crop.
    train = [(c, 36) for c in range(11) for _ in range(c + 1)] + [(12, 20)] * 15 + [(13, 36)]
    test = [(10, 40), (9, 40), (12, 20), (13, 40), (0, 31), (0, 32)]
    write_gtsrb(base, train, test)
    write_bts(base, train=[(19, 40)] * 5 + [(3, 40)] * 30, test=[(19, 40), (19, 16)])  # 19 = Yield, 3 unmapped
    if with_dfg:
        write_dfg(base, train=[("II-2", 40)] * 3 + [("II-2", 20)] + [("X-99", 50)] * 20,  # II-2 = Stop
                  test=[("II-2", 40), ("II-1", 45)])  # II-1 = Yield


def test_supertraffic10_selection(tmp_path):
    _st10_fixture(tmp_path)
    tr = load("supertraffic10", "train", root=tmp_path)
    va = load("supertraffic10", "val", root=tmp_path)
    te = load("supertraffic10", "test", root=tmp_path)
    names = D.get_info("gtsrb").class_names
    # counts: speed classes 2..10 -> 3..11, Yield 1+5=6, Stop 3 (tie with class 2 at 3, loses on name),
    # Priority road 0 after the size filter, X-99 and BTS class 3 unmapped
    want = tuple(sorted([names[c] for c in range(2, 11)] + ["Yield"]))
    assert tr.class_names == te.class_names == want and tr.num_classes == 10
    assert len(tr) + len(va) == sum(range(3, 12)) + 6 == 69 and len(va) == 6
    assert tr.x.shape[1:] == (3, 32, 32) and tr.x.dtype == torch.float32
    # test: GTSRB 10, 9, Yield (class 12 too small, class 0 unselected), BTS Yield 40px (16px dropped),
    # DFG II-1 Yield (Stop unselected)
    yi = want.index("Yield")
    assert te.y.tolist() == [want.index(names[10]), want.index(names[9]), yi, yi, yi]
    assert te.checksum != tr.checksum and te.source == str(tmp_path)


def test_supertraffic10_missing_sources(tmp_path, monkeypatch):
    _st10_fixture(tmp_path, with_dfg=False)
    with pytest.raises(DataMissingError, match=r"missing DFG/train.json, DFG/JPEGImages/.*BENCH_ST10_ALLOW_PARTIAL"):
        load("supertraffic10", "train", root=tmp_path)
    monkeypatch.setenv("BENCH_ST10_ALLOW_PARTIAL", "1")
    s = load("supertraffic10", "train", root=tmp_path)
    assert "Stop" not in s.class_names and len(s.class_names) == 10
    with pytest.raises(DataMissingError, match="GTSRB/Final_Training/Images/"):
        load("supertraffic10", "train", root=tmp_path / "empty")


def test_supertraffic10_found_via_bench_data(tmp_path, monkeypatch):
    bench = tmp_path / "bd"
    _st10_fixture(bench / "supertraffic10")
    monkeypatch.setenv("BENCH_DATA", str(bench))
    assert len(load("supertraffic10", "test")) == 5
    assert D.find_data_dir("supertraffic10") == bench / "supertraffic10"


def test_idx_bytes_helper_roundtrip():
    b = idx_bytes(np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    assert b[:4] == b"\x00\x00\x08\x03" and len(b) == 16 + 6


def test_download_is_atomic_and_checked(tmp_path, monkeypatch):
    """A fetched file appears only after its md5 matched; a mismatch leaves neither the file nor a temporary one."""
    import hashlib
    import io

    from harness.datasets import _download
    from harness.errors import DataCorruptError

    payload = b"canonical bytes" * 1000
    monkeypatch.setattr(_download.urllib.request, "urlopen", lambda url, timeout=60: io.BytesIO(payload))
    dest = tmp_path / "d" / "train.gz"
    dest.parent.mkdir()
    _download._fetch("http://x/train.gz", dest, hashlib.md5(payload).hexdigest(), "fmnist")
    assert dest.read_bytes() == payload
    bad = tmp_path / "d" / "test.gz"
    with pytest.raises(DataCorruptError, match="md5"):
        _download._fetch("http://x/test.gz", bad, "0" * 32, "fmnist")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["train.gz"]
