"""File hashing with a per-process cache, and the publishers' checksums.

Hashes are cached per ``(resolved path, size, mtime_ns)`` so that loading ``train`` and then ``val``
of the same data set hashes each 30 MB file once per process, and a file that is replaced on disk is
hashed again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from pathlib import Path

from ..errors import DataCorruptError

# Published md5 of each downloadable file, keyed by (data set, file name relative to its data dir).
PUBLISHED_MD5: dict[tuple[str, str], str] = {
    # http://yann.lecun.com/exdb/mnist/ (mirrored at ossci-datasets.s3.amazonaws.com/mnist/)
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
    # https://github.com/zalandoresearch/fashion-mnist#get-the-data
    ("fmnist", "train-images-idx3-ubyte.gz"): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("fmnist", "train-labels-idx1-ubyte.gz"): "25c81989df183df01b3e8a0aad5dffbe",
    ("fmnist", "t10k-images-idx3-ubyte.gz"): "bef4ecab320f06d8554ea6380940ec79",
    ("fmnist", "t10k-labels-idx1-ubyte.gz"): "bb300cfdad3c16e7a12a480ee83cd310",
    # http://ufldl.stanford.edu/housenumbers/
    ("svhn", "train_32x32.mat"): "e26dedcc434d2e4c54c9b2d4a06d8373",
    ("svhn", "test_32x32.mat"): "eb5a983be6a315427106f1b41d7b7fe5",
    # https://www.cs.toronto.edu/~kriz/cifar.html (per-batch md5s as also listed by torchvision)
    ("cifar10", "cifar-10-python.tar.gz"): "c58f30108f718f92721af3b95e74349a",
    ("cifar10", "cifar-10-batches-py/data_batch_1"): "c99cafc152244af753f735de768cd75f",
    ("cifar10", "cifar-10-batches-py/data_batch_2"): "d4bba439e000b95fd0a9bffe97cbabec",
    ("cifar10", "cifar-10-batches-py/data_batch_3"): "54ebc095f3ab1f0389bbae665268c751",
    ("cifar10", "cifar-10-batches-py/data_batch_4"): "634d18415352ddfa80567beed471001a",
    ("cifar10", "cifar-10-batches-py/data_batch_5"): "482c414d41f54cd18b22e5b47cb7c3cb",
    ("cifar10", "cifar-10-batches-py/test_batch"): "40351d587109b95175f43aff81a1287e",
}

# sha256 of the *decompressed* payload of .gz files, accepted when the .gz itself does not match its
# published md5 because it was re-compressed. Debian's ``dataset-fashion-mnist`` ships the Fashion-MNIST
# files without the gzip FNAME header field and with another mtime: every Debian .gz is exactly
# len(original file name) + 1 bytes shorter than the published archive (identical deflate stream), so the
# payload is the publisher's. These hashes were computed from those files.
CONTENT_SHA256: dict[tuple[str, str], str] = {
    ("fmnist", "train-images-idx3-ubyte.gz"): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ("fmnist", "train-labels-idx1-ubyte.gz"): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ("fmnist", "t10k-images-idx3-ubyte.gz"): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ("fmnist", "t10k-labels-idx1-ubyte.gz"): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_lock = threading.Lock()
_hash_cache: dict[tuple[str, str, int, int], str] = {}


def _key(path: Path, kind: str) -> tuple[str, str, int, int]:
    st = path.stat()
    return (str(path.resolve()), kind, st.st_size, st.st_mtime_ns)


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of the raw bytes of ``path`` (cached per path, size and mtime)."""
    key = _key(path, algo)
    with _lock:
        hit = _hash_cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _lock:
        _hash_cache[key] = digest
    return digest


def gunzip(path: Path) -> bytes:
    """Decompress a whole .gz file; a bad or truncated archive raises DataCorruptError."""
    try:
        with open(path, "rb") as f:
            return gzip.decompress(f.read())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataCorruptError(
            f"{path}: not a valid gzip file ({exc}); delete it and put a fresh copy there"
        ) from None


def content_digest(path: Path, payload: bytes | None = None) -> str:
    """sha256 of the file's content: the decompressed payload for ``.gz`` files, raw bytes otherwise.

    Used for :attr:`Split.checksum`, so a re-compressed copy of the same data hashes the same.
    ``payload`` (the already decompressed bytes) avoids a second decompression.
    """
    if not path.name.endswith(".gz"):
        return file_digest(path, "sha256")
    key = _key(path, "content-sha256")
    with _lock:
        hit = _hash_cache.get(key)
    if hit is not None:
        return hit
    if payload is None:
        payload = gunzip(path)
    digest = hashlib.sha256(payload).hexdigest()
    with _lock:
        _hash_cache[key] = digest
    return digest


def verify_file(dataset: str, rel: str, path: Path, payload: bytes | None = None) -> None:
    """Check ``path`` against the publisher's checksum for ``(dataset, rel)``.

    Files without a published checksum pass. A ``.gz`` whose md5 differs is still accepted when its
    decompressed content matches :data:`CONTENT_SHA256`. Otherwise raise DataCorruptError naming the file.
    """
    md5 = PUBLISHED_MD5.get((dataset, rel))
    if md5 is None:
        return
    if file_digest(path, "md5") == md5:
        return
    content = CONTENT_SHA256.get((dataset, rel))
    if content is not None and content_digest(path, payload) == content:
        return
    raise DataCorruptError(
        f"{dataset}: {path} does not match the published checksum (md5 {md5}); delete it and put a "
        f"fresh copy there, or set BENCH_SKIP_CHECKSUM=1 if you use a deliberately modified file"
    )


def clear_cache() -> None:
    """Forget all cached hashes (tests use this)."""
    with _lock:
        _hash_cache.clear()


def combine(parts: list[tuple[str, str]]) -> str:
    """One sha256 over ``(name, digest)`` pairs, order-independent (sorted by name)."""
    h = hashlib.sha256()
    for name, digest in sorted(parts):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digest.encode())
        h.update(b"\n")
    return h.hexdigest()


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
