"""Parsers for the publishers' file formats: IDX (.gz), SVHN .mat, CIFAR-10 python pickles.

Every parser returns ``(x, y)`` with ``x`` a uint8 numpy array in NCHW layout and ``y`` int64, and
turns any parse failure into :class:`DataCorruptError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import DataCorruptError

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _corrupt(path: Path, why: str) -> DataCorruptError:
    return DataCorruptError(f"{path}: {why}; delete it and put a fresh copy there")


def parse_idx(path: Path, payload: bytes, *, images: bool) -> np.ndarray:
    """Parse decompressed IDX bytes: images (magic 2051, N x H x W uint8) or labels (magic 2049, N)."""
    want_magic, ndim = (_IDX_IMAGES_MAGIC, 3) if images else (_IDX_LABELS_MAGIC, 1)
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise _corrupt(path, f"truncated IDX file ({len(payload)} bytes)")
    magic = struct.unpack(">i", payload[:4])[0]
    if magic != want_magic:
        kind = "image" if images else "label"
        raise _corrupt(path, f"bad IDX magic {magic} (expected {want_magic} for an {kind} file)")
    dims = struct.unpack(">" + "i" * ndim, payload[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if any(d < 0 for d in dims) or len(payload) != expected:
        raise _corrupt(path, f"IDX size mismatch: header says {dims} ({expected} bytes), file has {len(payload)}")
    arr = np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)
    return arr


def idx_pair(img_path: Path, img_payload: bytes, lbl_path: Path, lbl_payload: bytes, num_classes: int):
    """Images + labels IDX pair -> (x NCHW uint8, y int64), checked for matching counts and label range."""
    imgs = parse_idx(img_path, img_payload, images=True)
    labels = parse_idx(lbl_path, lbl_payload, images=False)
    if imgs.shape[0] != labels.shape[0]:
        raise DataCorruptError(
            f"{img_path} has {imgs.shape[0]} images but {lbl_path} has {labels.shape[0]} labels; "
            f"put a matching pair of files there"
        )
    _check_labels(lbl_path, labels, num_classes)
    return np.array(imgs[:, None, :, :]), labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(path, f"labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")


def parse_svhn_mat(path: Path):
    """SVHN cropped-digits ``*_32x32.mat``: X (32,32,3,N) uint8, y (N,1) with 10 meaning digit 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises many types (ValueError, MatReadError, OSError, ...)
        raise _corrupt(path, f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise _corrupt(path, "missing the 'X' or 'y' variable")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise _corrupt(path, f"'X' has shape {x.shape} dtype {x.dtype}, expected (32, 32, 3, N) uint8")
    y = y.reshape(-1).astype(np.int64)
    if y.shape[0] != x.shape[3]:
        raise _corrupt(path, f"{x.shape[3]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise _corrupt(path, f"labels outside 1..10 (found {y.min()}..{y.max()})")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


# --- CIFAR-10 pickles -------------------------------------------------------------------------------

def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    import codecs

    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    try:
        from numpy._core.numeric import _frombuffer  # protocol-5 pickles of arrays
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    for mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "ndarray")] = np.ndarray
        allowed[(mod, "dtype")] = np.dtype
    # Python 3 pickles of bytes at protocol <= 2 go through _codecs.encode(str, "latin1"): harmless.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers and nothing else."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if _SafeUnpickler._allowed is None:
            _SafeUnpickler._allowed = _numpy_globals()
        obj = _SafeUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return obj


def safe_unpickle(path: Path):
    """Load a pickle that may only contain builtin containers, bytes, numbers and numpy arrays."""
    try:
        data = path.read_bytes()
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise _corrupt(path, f"unsafe or invalid pickle ({exc})") from None
    except Exception as exc:  # truncated pickles raise EOFError, ValueError, KeyError, ...
        raise _corrupt(path, f"unreadable pickle ({type(exc).__name__}: {exc})") from None


def parse_cifar_batch(path: Path, num_classes: int = 10):
    """A CIFAR-10 python batch: dict with b"data" (N, 3072) uint8 row-major RGB and b"labels"."""
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise _corrupt(path, f"expected a dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise _corrupt(path, f"b'data' is not an (N, 3072) uint8 array (got {type(data).__name__} {shape})")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise _corrupt(path, "b'labels' is not a list of integers") from None
    if y.shape[0] != data.shape[0]:
        raise _corrupt(path, f"{data.shape[0]} images but {y.shape[0]} labels")
    _check_labels(path, y, num_classes)
    return data.reshape(-1, 3, 32, 32), y
