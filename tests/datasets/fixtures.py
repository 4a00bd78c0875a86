"""Writers for tiny data-set fixtures in the publishers' exact on-disk formats.

Each writer puts the canonical file names into a directory and returns the arrays it wrote, so tests
(here and elsewhere) can call the real ``harness.datasets.load(..., root=dir, verify_checksums=False)``
and compare.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialize a uint8 array as IDX: magic 2051 for (N, H, W) images, 2049 for (N,) labels."""
    arr = np.asarray(arr, dtype=np.uint8)
    magic = {3: 2051, 1: 2049}[arr.ndim]
    return struct.pack(">i", magic) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.tobytes()


def write_idx_gz(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` as a gzip-compressed IDX file."""
    Path(path).write_bytes(gzip.compress(idx_bytes(arr)))
    return Path(path)


def write_idx_dataset(dir, n_train, n_test, shape=(28, 28), num_classes=10, seed=0) -> dict[str, np.ndarray]:
    """Write the four MNIST-named IDX .gz files into ``dir``; returns the uint8 images / labels written."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": rng.integers(0, num_classes, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, num_classes, n_test, dtype=np.uint8),
    }
    for key, arr in out.items():
        write_idx_gz(d / IDX_NAMES[key], arr)
    return out


def write_svhn(dir, n_train, n_test, seed=0) -> dict[str, np.ndarray]:
    """Write ``train_32x32.mat`` / ``test_32x32.mat`` (X (32,32,3,N) uint8, y (N,1) in 1..10)."""
    import scipy.io

    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # make sure the "10 means 0" rule is exercised
        scipy.io.savemat(d / f"{part}_32x32.mat", {"X": x, "y": y})
        out[f"{part}_x"], out[f"{part}_y"] = x, y
    return out


def write_cifar(dir, n_per_batch, n_test, seed=0) -> dict[str, np.ndarray]:
    """Write ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (dicts with bytes keys)."""
    d = Path(dir) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"img%d.png" % i for i in range(n)]}, f, protocol=2)
        out[name] = (data, np.array(labels))
    return out


def _write_ppm(path: Path, size: tuple[int, int], roi: tuple[int, int, int, int], inside=(255, 0, 0), outside=(0, 0, 255)):
    from PIL import Image

    w, h = size
    img = Image.new("RGB", (w, h), outside)
    x1, y1, x2, y2 = roi
    img.paste(Image.new("RGB", (x2 - x1 + 1, y2 - y1 + 1), inside), (x1, y1))
    img.save(path, format="PPM")


_CSV_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _write_class_folders(base: Path, samples: list[tuple[int, int]], prefix: str = "") -> None:
    """``samples``: (class id, roi side) pairs; writes <5-digit>/GT-<class>.csv + ppm images."""
    by_class: dict[int, list[int]] = {}
    for cls, side in samples:
        by_class.setdefault(cls, []).append(side)
    for cls, sides in by_class.items():
        sub = base / f"{cls:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, side in enumerate(sides):
            name = f"{prefix}{i:05d}_{i:05d}.ppm"
            size = (side + 4, side + 4)
            roi = (2, 2, side + 1, side + 1)  # inclusive corners: exactly `side` pixels
            _write_ppm(sub / name, size, roi)
            rows.append([name, size[0], size[1], *roi, cls])
        with open(sub / f"GT-{cls:05d}.csv", "w", newline="") as f:
            wr = csv.writer(f, delimiter=";")
            wr.writerow(_CSV_HEADER)
            wr.writerows(rows)


def write_gtsrb(dir, train: list[tuple[int, int]], test: list[tuple[int, int]]) -> None:
    """GTSRB official layout; ``train``/``test`` are (class id, ROI side in px) per image."""
    d = Path(dir)
    _write_class_folders(d / "GTSRB/Final_Training/Images", train)
    test_dir = d / "GTSRB/Final_Test/Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (cls, side) in enumerate(test):
        name = f"{i:05d}.ppm"
        size, roi = (side + 4, side + 4), (2, 2, side + 1, side + 1)
        _write_ppm(test_dir / name, size, roi)
        rows.append([name, size[0], size[1], *roi, cls])
    with open(d / "GT-final_test.csv", "w", newline="") as f:
        wr = csv.writer(f, delimiter=";")
        wr.writerow(_CSV_HEADER)
        wr.writerows(rows)


def write_bts(dir, train: list[tuple[int, int]], test: list[tuple[int, int]]) -> None:
    """BelgiumTS classification layout; (class id, ROI side) per image."""
    d = Path(dir)
    _write_class_folders(d / "BelgiumTSC_Training/Training", train)
    _write_class_folders(d / "BelgiumTSC_Testing/Testing", test)


def write_dfg(dir, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> None:
    """DFG layout with COCO json; (category name, box side) per annotation, 3 boxes per scene jpg."""
    from PIL import Image

    d = Path(dir) / "DFG"
    (d / "JPEGImages").mkdir(parents=True, exist_ok=True)
    names = sorted({c for c, _ in train + test})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    for part, anns_in in (("train", train), ("test", test)):
        images, anns = [], []
        for k in range(0, len(anns_in), 3):
            chunk = anns_in[k:k + 3]
            img_id = len(images) + 1
            fname = f"{part}_{img_id:04d}.jpg"
            Image.new("RGB", (200, 80), (0, 128, 0)).save(d / "JPEGImages" / fname, quality=90)
            images.append({"id": img_id, "file_name": fname, "width": 200, "height": 80})
            for j, (cat, side) in enumerate(chunk):
                anns.append({"id": len(anns) + 1, "image_id": img_id, "bbox": [5 + 65 * j, 5, side, side],
                             "category_id": cat_id[cat]})
        (d / f"{part}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
