"""Data sets: MNIST, Fashion-MNIST, SVHN, CIFAR-10, GTSRB and SuperTraffic-10 as ready tensors.

``load(name, split)`` returns a :class:`Split` with ``x`` (N, C, H, W) float32 in [0, 1] and ``y``
(N,) int64. Splits:

* ``"test"``: the publisher's test set.
* ``"val"``: 10 % of the publisher's training set, picked by
  ``torch.randperm(n_train, generator=torch.Generator().manual_seed(0))``: the first ``n_train // 10``
  indices of that permutation, in ascending order. The same on every machine and every call.
* ``"train"``: the rest of the publisher's training set, in ascending order.

Where the files are looked for, first hit wins:

1. ``root=`` if given: a directory holding the files directly. It is then the *only* place looked at
   (and the download target), so an explicit root never silently falls back to other data.
2. ``$BENCH_DATA/<name>/``
3. ``platformdirs.user_cache_dir("bench")/data/<name>/`` (e.g. ``~/.cache/bench/data/<name>/``)
4. ``SYSTEM_DATA_ROOT/<debian name>/`` (``/usr/share/datasets/mnist/``, ``/usr/share/datasets/fashion-mnist/``
   from the Debian package ``dataset-fashion-mnist``). ``SYSTEM_DATA_ROOT`` is a module attribute
   (tests monkeypatch it).
5. Fashion-MNIST ``test`` only: the copy embedded in the package (``source="embedded"``).
6. A download into the user cache dir (or into ``root``), only with ``download=True`` or, when
   ``download`` is None, ``BENCH_DOWNLOAD=1``. MNIST, Fashion-MNIST, SVHN and CIFAR-10 only.

Otherwise :class:`~harness.errors.DataMissingError` says which files to put where.

Checksums: files with a published checksum (MNIST/Fashion-MNIST .gz, SVHN .mat, CIFAR-10 batches and
tarball) are verified on load. A ``.gz`` that was re-compressed (Debian's Fashion-MNIST) passes when
its decompressed content matches the known content hash. Verification is on by default and is turned
off with ``load(..., verify_checksums=False)`` or with environment variable ``BENCH_SKIP_CHECKSUM=1``
(meant for tiny test fixtures and deliberately modified files; ``verify_checksums=True`` overrides the
variable). A mismatch raises :class:`~harness.errors.DataCorruptError` naming the file. Hashes are
cached per (path, size, mtime), so a file is hashed at most once per process.

``Split.checksum`` is a sha256 over the (relative name, content sha256) pairs of the source files used,
where the content of a ``.gz`` is its decompressed payload, so a re-compressed copy (or the embedded
one) of the same data gives the same checksum. Unreadable, truncated or malformed files (bad gzip, bad
IDX magic/sizes, unreadable .mat, pickles that are invalid or try to load anything but numpy arrays)
raise DataCorruptError with the file's path.

GTSRB and SuperTraffic-10 are decoded from image folders (see :mod:`harness.datasets._traffic` for
the layouts); the decoded 32x32 crops are cached as ``.npz`` under
``user_cache_dir("bench")/decoded/``, keyed by the sha256 of the source files, so only the first load
is slow.

SuperTraffic-10 (thesis section 2.3) merges the GTSRB, DFG and BelgiumTS crops, drops crops narrower
or lower than 32 px, maps source classes to unified names (GTSRB: its 43 official names; BelgiumTS and
DFG: ``supertraffic10_classes.csv``; unmapped classes are dropped), keeps the 10 unified classes with
the most train crops (ties broken by name) and numbers them in alphabetical order (``Split.class_names``).
The three sources are looked for in ``<root or $BENCH_DATA or cache>/supertraffic10/`` (GTSRB also in
the ``gtsrb`` directories). GTSRB is required; a missing DFG or BelgiumTS raises DataMissingError
unless ``BENCH_ST10_ALLOW_PARTIAL=1``, which builds the set from the sources that are present.

Multi-label component data sets (Yao et al. 2019, section 3.3), generated offline and
deterministically by :mod:`harness.datasets._synthetic`: ``ts`` (traffic signs from four components,
from a seed alone), ``multi-fmnist`` and ``multimnist`` (two images of different classes overlaid at
36x36, built from the Fashion-MNIST / MNIST split of the same name, so they need those files). Their
``Split.y`` is ``(N, n)`` multi-hot int64 and ``num_classes`` the number of components ``n``; each
split (train / val / test) is generated from its own seed. Single-label code paths refuse them with
:func:`require_single_label`.

Importing this package loads nothing and imports neither torch nor scipy.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BenchUserError, DataCorruptError, DataMissingError
from ._names import GTSRB_CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DatasetInfo",
    "Split",
    "list_datasets",
    "get_info",
    "load",
    "find_data_dir",
    "train_val_indices",
    "require_single_label",
    "SYSTEM_DATA_ROOT",
    "EMBEDDED_DIR",
]

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
EMBEDDED_DIR = Path(__file__).with_name("embedded")
SPLITS = ("train", "val", "test")
VAL_FRACTION_DENOMINATOR = 10  # val = n_train // 10
SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set (no files are read to produce it)."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]  # empty for supertraffic10: its classes are chosen from the data
    files: tuple[str, ...]  # canonical files/directories expected in the data directory
    description: str
    #: multi-label component data set (``Split.y`` is ``(N, num_classes)`` multi-hot; see :mod:`._synthetic`)
    multilabel: bool = False
    #: generated offline from a seed (``"seed"``) or from another data set's images (its name); None = files on disk
    generated_from: str | None = None


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set, as tensors."""

    name: str  # data set name
    split: str  # "train" | "val" | "test"
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64; multi-label data sets: (N, num_classes) int64 in {0, 1}
    num_classes: int
    checksum: str  # sha256 over the source files used (see the module docstring)
    source: str  # directory loaded from, or "embedded"
    class_names: tuple[str, ...] = ()
    checksum_verified: bool = True  # False when the publishers' checksums were not checked (BENCH_SKIP_CHECKSUM=1)

    def __len__(self) -> int:
        return int(self.y.shape[0])


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"{_CIFAR_DIR}/data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = (f"{_CIFAR_DIR}/test_batch",)
_GTSRB_FILES = ("GTSRB/Final_Training/Images/", "GTSRB/Final_Test/Images/", "GT-final_test.csv")

_DIGITS = tuple(str(i) for i in range(10))

_INFOS: dict[str, DatasetInfo] = {
    i.name: i
    for i in (
        DatasetInfo("mnist", 10, (1, 28, 28), _DIGITS, _IDX_FILES, "MNIST handwritten digits, 60k train / 10k test."),
        DatasetInfo(
            "fmnist", 10, (1, 28, 28),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            _IDX_FILES,
            "Fashion-MNIST (Zalando), 60k train / 10k test; the test set is embedded in the package.",
        ),
        DatasetInfo("svhn", 10, (3, 32, 32), _DIGITS, ("train_32x32.mat", "test_32x32.mat"),
                    "SVHN cropped digits (format 2), 73,257 train / 26,032 test; label 10 is digit 0."),
        DatasetInfo(
            "cifar10", 10, (3, 32, 32),
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            _CIFAR_TRAIN + _CIFAR_TEST,
            "CIFAR-10 python version, 50k train / 10k test (cifar-10-python.tar.gz is extracted if present).",
        ),
        DatasetInfo("gtsrb", 43, (3, 32, 32), GTSRB_CLASS_NAMES, _GTSRB_FILES,
                    "German Traffic Sign Recognition Benchmark, ROI crops resized to 32x32 RGB, 43 classes."),
        DatasetInfo(
            "supertraffic10", 10, (3, 32, 32), (),
            _GTSRB_FILES + ("BelgiumTSC_Training/Training/", "BelgiumTSC_Testing/Testing/",
                            "DFG/train.json", "DFG/test.json", "DFG/JPEGImages/"),
            "GTSRB + DFG + BelgiumTS crops >= 32 px, the 10 most frequent unified classes, 32x32 RGB.",
        ),
        DatasetInfo(
            "ts", 4, (1, 64, 64), ("circle", "slash", "left arrow", "right arrow"), (),
            "Yao et al. traffic signs (multi-label): 4 components, 4 sign types, 64x64, generated from a seed.",
            multilabel=True, generated_from="seed",
        ),
        DatasetInfo(
            "multi-fmnist", 10, (1, 36, 36),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            _IDX_FILES,
            "Two Fashion-MNIST items of different classes overlaid at 36x36, ~80% overlap (multi-label, two ones).",
            multilabel=True, generated_from="fmnist",
        ),
        DatasetInfo(
            "multimnist", 10, (1, 36, 36), _DIGITS, _IDX_FILES,
            "Yao et al. / Sabour et al. multiMNIST: two MNIST digits of different classes overlaid at 36x36 (multi-label).",
            multilabel=True, generated_from="mnist",
        ),
    )
}

_SYSTEM_NAMES = {"mnist": "mnist", "fmnist": "fashion-mnist"}
_PART_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {"train": _IDX_FILES[:2], "test": _IDX_FILES[2:]},
    "fmnist": {"train": _IDX_FILES[:2], "test": _IDX_FILES[2:]},
    "svhn": {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
    "cifar10": {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST},
}


def list_datasets() -> list[DatasetInfo]:
    """All known data sets, in a fixed order."""
    return [get_info(n) for n in _INFOS]


def get_info(name: str) -> DatasetInfo:
    """Static facts about ``name``; an unknown name raises BenchUserError listing the valid ones."""
    info = _INFOS.get(name) if isinstance(name, str) else None
    if info is None:
        raise BenchUserError(f"unknown data set {name!r}; valid names: {', '.join(_INFOS)}")
    return info


# --- look-up ----------------------------------------------------------------------------------------

def _cache_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("bench"))


def _user_cache_dir(name: str) -> Path:
    return _cache_root() / "data" / name


def _candidates(name: str, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    out = []
    env = os.environ.get("BENCH_DATA")
    if env:
        out.append(Path(env).expanduser() / name)
    out.append(_user_cache_dir(name))
    if name in _SYSTEM_NAMES:
        out.append(Path(SYSTEM_DATA_ROOT) / _SYSTEM_NAMES[name])
    return out


def _missing_in(name: str, part: str, d: Path) -> list[str]:
    """Files of ``name``'s ``part`` that directory ``d`` lacks ([] means usable)."""
    if name == "gtsrb":
        from . import _traffic

        return _traffic.missing_paths(d, "gtsrb", part)
    files = _PART_FILES[name][part]
    missing = [f for f in files if not (d / f).is_file()]
    if name == "cifar10" and missing and (d / "cifar-10-python.tar.gz").is_file():
        return []  # extracted on first load
    return missing


def _parts_for(split: str | None) -> tuple[str, ...]:
    return ("train", "test") if split is None else (("test",) if split == "test" else ("train",))


def find_data_dir(name: str, split: str | None = None, *, root: str | os.PathLike | None = None) -> Path | None:
    """First directory in the look-up order that holds ``name``'s files for ``split``.

    ``split=None`` asks for a directory with all of the data set's files. Returns None when no
    directory qualifies (the embedded Fashion-MNIST test set is not a directory and is not returned).
    """
    info = get_info(name)
    if split is not None:
        _check_split(split)
    if info.generated_from == "seed":
        return None
    if info.generated_from is not None:
        return find_data_dir(info.generated_from, split, root=root)
    if name == "supertraffic10":
        from . import _traffic

        for d in _candidates(name, root):
            if all(not _traffic.missing_paths(d, s, p) for s in _traffic.SOURCES for p in _parts_for(split)):
                return d
        return None
    for d in _candidates(name, root):
        if all(not _missing_in(name, p, d) for p in _parts_for(split)):
            return d
    return None


def _where_text(name: str, root: str | os.PathLike | None) -> str:
    if root is not None:
        return f"{Path(root).expanduser()}/"
    env = os.environ.get("BENCH_DATA")
    first = f"{Path(env).expanduser() / name}/" if env else f"$BENCH_DATA/{name}/"
    return f"{first} or {_user_cache_dir(name)}/"


def _missing_error(name: str, part: str, root, cands: list[Path]) -> DataMissingError:
    from ._download import can_download

    lists = [_missing_in(name, part, d) for d in cands]
    missing = min(lists, key=len) if lists else []
    hint = ""
    if can_download(name):
        hint = " (or run with BENCH_DOWNLOAD=1 where the network allows)"
    if name == "fmnist" and root is None:
        hint = " (or apt install dataset-fashion-mnist, or run with BENCH_DOWNLOAD=1 where the network allows)"
    what = ", ".join(missing) + (" (or cifar-10-python.tar.gz)" if name == "cifar10" else "")
    return DataMissingError(f"{name}: missing {what}; put them in {_where_text(name, root)}{hint}")


def _want_download(download: bool | None) -> bool:
    if download is None:
        from ._checksums import env_flag

        return env_flag("BENCH_DOWNLOAD")
    return bool(download)


def _locate(name: str, part: str, root, download: bool | None) -> Path | str:
    cands = _candidates(name, root)
    for d in cands:
        if not _missing_in(name, part, d):
            return d
    if name == "fmnist" and part == "test" and root is None:
        return "embedded"
    if _want_download(download):
        from ._download import can_download, download as fetch

        if not can_download(name):
            raise DataMissingError(
                f"{name}: no automatic download is available; put {', '.join(get_info(name).files)} "
                f"in {_where_text(name, root)}"
            )
        dest = Path(root).expanduser() if root is not None else _user_cache_dir(name)
        fetch(name, dest)
        if not _missing_in(name, part, dest):
            return dest
    raise _missing_error(name, part, root, cands)


# --- reading ----------------------------------------------------------------------------------------

_memo_lock = threading.Lock()
_memo: OrderedDict[tuple, tuple] = OrderedDict()
_MEMO_SIZE = 4


def _stat_sig(paths: list[Path]) -> tuple:
    sig = []
    for p in paths:
        try:
            st = p.stat()
            sig.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((str(p), -1, -1))
    return tuple(sig)


def _memoized(key: tuple, build):
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    value = build()
    with _memo_lock:
        _memo[key] = value
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return value


def clear_caches() -> None:
    """Drop the in-process caches of decoded arrays and file hashes."""
    from . import _checksums

    with _memo_lock:
        _memo.clear()
    _checksums.clear_cache()


def _read_idx(name: str, part: str, d: Path, verify: bool):
    from . import _checksums, _formats

    img_rel, lbl_rel = _PART_FILES[name][part]
    img_path, lbl_path = d / img_rel, d / lbl_rel
    img_payload = _checksums.gunzip(img_path)
    lbl_payload = _checksums.gunzip(lbl_path)
    if verify:
        _checksums.verify_file(name, img_rel, img_path, img_payload)
        _checksums.verify_file(name, lbl_rel, lbl_path, lbl_payload)
    x, y = _formats.idx_pair(img_path, img_payload, lbl_path, lbl_payload, get_info(name).num_classes)
    checksum = _checksums.combine([
        (img_rel, _checksums.content_digest(img_path, img_payload)),
        (lbl_rel, _checksums.content_digest(lbl_path, lbl_payload)),
    ])
    return x, y, checksum


def _read_svhn(part: str, d: Path, verify: bool):
    from . import _checksums, _formats

    (rel,) = _PART_FILES["svhn"][part]
    path = d / rel
    if verify:
        _checksums.verify_file("svhn", rel, path)
    x, y = _formats.parse_svhn_mat(path)
    return x, y, _checksums.combine([(rel, _checksums.content_digest(path))])


def _read_cifar(part: str, d: Path, verify: bool):
    import numpy as np

    from . import _checksums, _formats

    rels = _PART_FILES["cifar10"][part]
    if any(not (d / r).is_file() for r in rels):
        from ._download import extract_tar

        tar = d / "cifar-10-python.tar.gz"
        if verify:
            _checksums.verify_file("cifar10", tar.name, tar)
        try:
            extract_tar(tar, d)
        except DataCorruptError as exc:
            if os.access(d, os.W_OK):
                raise
            raise DataMissingError(f"cifar10: {d}/ is read-only; extract {tar.name} there by hand ({exc})") from None
        missing = [r for r in rels if not (d / r).is_file()]
        if missing:
            raise DataCorruptError(f"{tar}: does not contain {', '.join(missing)}; put a fresh copy there")
    xs, ys, parts = [], [], []
    for rel in rels:
        path = d / rel
        if verify:
            _checksums.verify_file("cifar10", rel, path)
        x, y = _formats.parse_cifar_batch(path)
        xs.append(x)
        ys.append(y)
        parts.append((rel, _checksums.content_digest(path)))
    return np.concatenate(xs), np.concatenate(ys), _checksums.combine(parts)


def _decode_dir() -> Path:
    return _cache_root() / "decoded"


def _read_gtsrb(part: str, d: Path):
    import numpy as np

    from . import _traffic

    p = _traffic.read_part(d, "gtsrb", part)
    checksum = _traffic.part_checksum(p)
    x = _traffic.decode_cached(p.crops, f"gtsrb-{part}-{_traffic.DECODE_VERSION}-{checksum[:24]}", _decode_dir())
    y = np.array([int(c.source_class) for c in p.crops], dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= 43):
        raise DataCorruptError(f"{d}: GTSRB class ids outside 0..42 ({y.min()}..{y.max()})")
    return x, y, checksum


def _read(name: str, part: str, d: Path, verify: bool):
    files = [d / f for f in _PART_FILES.get(name, {}).get(part, ())]
    key = (name, part, str(d), verify, _stat_sig(files))

    def build():
        if name in ("mnist", "fmnist"):
            return _read_idx(name, part, d, verify)
        if name == "svhn":
            return _read_svhn(part, d, verify)
        if name == "cifar10":
            return _read_cifar(part, d, verify)
        if name == "gtsrb":
            return _read_gtsrb(part, d)
        raise AssertionError(name)  # pragma: no cover

    if name == "gtsrb":
        return build()  # image folders: the .npz decode cache makes re-reads cheap enough
    return _memoized(key, build)


def _load_st10(part: str, root, verify: bool):
    import numpy as np

    from . import _checksums, _traffic

    st_cands = _candidates("supertraffic10", root)
    gt_cands = [] if root is not None else _candidates("gtsrb", None)
    found: dict[str, Path] = {}
    for src in _traffic.SOURCES:
        for d in st_cands + (gt_cands if src == "gtsrb" else []):
            if not _traffic.missing_paths(d, src, "train") and not _traffic.missing_paths(d, src, part):
                found[src] = d
                break
    absent = [s for s in _traffic.SOURCES if s not in found]
    partial_ok = _checksums.env_flag("BENCH_ST10_ALLOW_PARTIAL")
    if "gtsrb" in absent or (absent and not partial_ok):
        missing = []
        base = st_cands[0]
        for src in absent:
            for p in dict.fromkeys(("train", part)):
                missing += [m for m in _traffic.missing_paths(base, src, p) if m not in missing]
        extra = "" if "gtsrb" in absent else " (or set BENCH_ST10_ALLOW_PARTIAL=1 to build it from the sources present)"
        raise DataMissingError(
            f"supertraffic10: missing {', '.join(missing)}; put them in {_where_text('supertraffic10', root)}{extra}"
        )
    table = _traffic.load_class_table()
    train_parts = [_traffic.read_part(found[s], s, "train") for s in _traffic.SOURCES if s in found]
    classes = _traffic.select_classes(train_parts, table)
    if len(classes) < 10:
        raise DataCorruptError(
            f"supertraffic10: only {len(classes)} mapped classes with crops >= 32 px in "
            f"{', '.join(str(found[s]) for s in found)}; check the data or {_traffic.CLASS_TABLE}"
        )
    index = {c: i for i, c in enumerate(classes)}
    parts = train_parts if part == "train" else [_traffic.read_part(found[s], s, "test") for s in _traffic.SOURCES if s in found]
    xs, ys, sums = [], [], []
    for p in parts:
        kept = [
            c for c in p.crops
            if table.get((p.source, c.source_class)) in index
            and c.width >= _traffic.ST10_MIN_SIZE and c.height >= _traffic.ST10_MIN_SIZE
        ]
        ck = _traffic.part_checksum(p, kept)
        xs.append(_traffic.decode_cached(kept, f"st10-{p.source}-{p.part}-{_traffic.DECODE_VERSION}-{ck[:24]}", _decode_dir()))
        ys.append(np.array([index[table[(p.source, c.source_class)]] for c in kept], dtype=np.int64))
        sums.append((f"{p.source}/{p.part}", ck))
    if part == "test":  # the class choice depends on the train annotations
        for p in train_parts:
            sums += [(f"{p.source}/train/{f.name}", _checksums.file_digest(f)) for f in p.annotation_files]
    sums.append(("classes", _checksums.file_digest(_traffic.CLASS_TABLE)))
    dirs = list(dict.fromkeys(str(found[s]) for s in found))
    x = np.concatenate(xs) if xs else np.empty((0, 3, 32, 32), np.uint8)
    return x, np.concatenate(ys), _checksums.combine(sums), os.pathsep.join(dirs), classes


# --- public entry point -----------------------------------------------------------------------------

def require_single_label(name: str, what: str = "this command") -> None:
    """Raise a one-line BenchUserError when ``name`` is a multi-label (component) data set.

    Single-label code paths (``bench run`` / ``train`` / ``calibrate``, the Defense contract's
    ``(N,)`` labels) call this; multi-label data sets are used by ``bench decompose``.
    """
    info = get_info(name)
    if info.multilabel:
        raise BenchUserError(f"data set {name!r} is multi-label (component vectors of {info.num_classes} components), "
                             f"{what} needs single-label data; use `bench decompose` for it")


def _load_generated(info: DatasetInfo, split: str, root, download, verify):
    """A generated split (:mod:`._synthetic`): ``ts`` from its seed, overlays from the source data set's split."""
    from . import _synthetic as S

    if info.name == "ts":
        key = ("ts", split)
        x, y = _memoized(key, lambda: S.generate_ts(split))
        return x, y, S.digest(x, y), "generated"
    src = load(info.generated_from, split, root=root, download=download, verify_checksums=verify)
    key = (info.name, split, src.checksum, src.source)

    def build():
        import numpy as np

        imgs = np.rint(src.x.numpy() * 255).astype(np.uint8)
        x, y, _ = S.make_overlays(imgs, src.y.numpy(), S.OVERLAY_COUNT[split], seed=S.OVERLAY_SEEDS[split], num_classes=info.num_classes)
        return x, y

    x, y = _memoized(key, build)
    return x, y, S.digest(x, y, extra=src.checksum), f"generated from {src.source}"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise BenchUserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")


def train_val_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) index tensors for a publisher training set of ``n`` items, both ascending.

    ``val`` is the first ``n // 10`` entries of ``randperm(n)`` under ``manual_seed(0)``.
    """
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = n // VAL_FRACTION_DENOMINATOR
    return torch.sort(perm[n_val:]).values, torch.sort(perm[:n_val]).values


def load(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    verify_checksums: bool | None = None,
) -> Split:
    """Load ``split`` ("train", "val" or "test") of data set ``name`` as float32 tensors in [0, 1].

    ``root``: a directory holding the data set's files directly (then the only place looked at).
    ``download``: allow fetching missing files from the publisher (None: follow ``BENCH_DOWNLOAD``).
    ``verify_checksums``: check published checksums (None: yes unless ``BENCH_SKIP_CHECKSUM=1``).
    See the module docstring for the look-up order, split rule and checksum policy.
    Raises BenchUserError (bad name/split), DataMissingError or DataCorruptError.
    """
    import numpy as np
    import torch

    from ._checksums import env_flag

    info = get_info(name)
    _check_split(split)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise BenchUserError(f"root must be a directory path, got {type(root).__name__}")
    if download is not None and not isinstance(download, bool):
        raise BenchUserError(f"download must be True, False or None, got {download!r}")
    verify = (not env_flag("BENCH_SKIP_CHECKSUM")) if verify_checksums is None else bool(verify_checksums)
    part = "test" if split == "test" else "train"

    class_names = info.class_names
    if info.generated_from is not None:  # generated per split (train / val / test each from its own seed)
        x, y, checksum, source = _load_generated(info, split, root, download, verify)
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
        yt = torch.from_numpy(np.array(y, dtype=np.int64, copy=True))
        return Split(name, split, xt, yt, info.num_classes, checksum, source, tuple(class_names), checksum_verified=verify)
    if name == "supertraffic10":
        x, y, checksum, source, class_names = _load_st10(part, root, verify)
    else:
        where = _locate(name, part, root, download)
        d = EMBEDDED_DIR if where == "embedded" else where
        x, y, checksum = _read(name, part, d, verify)
        source = "embedded" if where == "embedded" else str(d)

    if x.shape[1:] != info.shape:
        raise DataCorruptError(f"{name}: {source} holds images of shape {x.shape[1:]}, expected {info.shape}")
    if part == "train":
        train_idx, val_idx = train_val_indices(len(y))
        idx = (train_idx if split == "train" else val_idx).numpy()
        x, y = x[idx], y[idx]
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    yt = torch.from_numpy(np.array(y, dtype=np.int64, copy=True))
    return Split(name, split, xt, yt, info.num_classes, checksum, source, tuple(class_names), checksum_verified=verify)


def provenance(split: Split) -> dict:
    """Where a split came from, for result manifests and model cards: source directory (or the
    embedded copy), its files with sizes and content sha256, the combined checksum and whether the
    publishers' checksums were verified (``BENCH_SKIP_CHECKSUM=1`` turns that off)."""
    from . import _checksums

    part = "test" if split.split == "test" else "train"
    info = get_info(split.name)
    if info.generated_from is not None:
        return {"dataset": split.name, "split": split.split, "size": len(split), "source": split.source, "files": [],
                "generator": "harness.datasets._synthetic", "checksum": split.checksum, "checksum_verified": bool(split.checksum_verified)}
    d = EMBEDDED_DIR if split.source == "embedded" else Path(split.source)
    files = []
    for rel in _PART_FILES.get(split.name, {}).get(part, ()):
        path = d / rel
        if path.is_file():
            files.append({"name": rel, "size_bytes": path.stat().st_size, "sha256": _checksums.content_digest(path)})
    return {
        "dataset": split.name,
        "split": split.split,
        "size": len(split),
        "source": split.source if split.source == "embedded" else str(Path(split.source).resolve()),
        "files": files,
        "checksum": split.checksum,
        "checksum_verified": bool(split.checksum_verified),
    }
