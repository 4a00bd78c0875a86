"""Opt-in downloads from the publishers' URLs (only with ``download=True`` or ``BENCH_DOWNLOAD=1``).

Each file is fetched to a temporary file (:func:`benchcore.io.atomic_write`), its md5 is checked against
the published value and only then renamed into place. The CIFAR-10 tarball is extracted (``tarfile`` "data" filter) after its check.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from benchcore.io import atomic_write

from ..errors import DataCorruptError, DataMissingError
from ._checksums import PUBLISHED_MD5

_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

URLS: dict[str, dict[str, str]] = {
    "mnist": {f: _MNIST + f for f in _IDX},
    "fmnist": {f: _FMNIST + f for f in _IDX},
    "svhn": {f: "http://ufldl.stanford.edu/housenumbers/" + f for f in ("train_32x32.mat", "test_32x32.mat")},
    "cifar10": {"cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
}


def can_download(name: str) -> bool:
    """Whether :func:`download` knows the publisher's URLs for ``name``."""
    return name in URLS


def _fetch(url: str, dest: Path, md5: str | None, name: str) -> None:
    def fetch_and_check(tmp: str) -> None:  # inside the atomic write: a failed check leaves no file
        h = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DataMissingError(f"{name}: download of {url} failed ({exc}); put {dest.name} in {dest.parent}/ by hand") from None
        if md5 is not None and h.hexdigest() != md5:
            raise DataCorruptError(f"{name}: {url} downloaded with md5 {h.hexdigest()}, expected {md5}; try again later")

    atomic_write(dest, fetch_and_check)


def download(name: str, dest_dir: Path) -> None:
    """Fetch all of ``name``'s files into ``dest_dir`` (skipping ones already there) and verify them."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for fname, url in URLS[name].items():
        dest = dest_dir / fname
        if name == "cifar10" and (dest_dir / "cifar-10-batches-py" / "test_batch").is_file():
            continue
        if not dest.is_file():
            _fetch(url, dest, PUBLISHED_MD5.get((name, fname)), name)
        if fname.endswith(".tar.gz"):
            extract_tar(dest, dest_dir)


def extract_tar(archive: Path, dest_dir: Path) -> None:
    """Extract a tarball safely (no absolute paths, links or devices outside ``dest_dir``)."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(dest_dir, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataCorruptError(f"{archive}: cannot extract ({exc}); delete it and put a fresh copy there") from None
