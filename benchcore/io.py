"""Atomic file writing: the one function every file bench writes goes through; file hashing.

A crash (or a kill) during a write leaves either the old file or the new one, never a torn file:
the content goes to a temporary file in the same folder, is flushed and fsynced, gets normal
permissions (``0666 & ~umask``, not ``mkstemp``'s 0600) and replaces the target with ``os.replace``.

A kill (SIGKILL, a session's end) between the write and the replace leaves the temporary file
behind. Its name starts with a dot and, for text and bytes, ends in ``.tmp``, so a folder scan
for ``*.json`` never reads it as a result; :func:`data_files` is the scan every reader uses (it also
skips the temporary files of writers that need the target's suffix, see :func:`atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    ``data``: the bytes, the text (UTF-8), or a function ``write(tmp_path)`` that writes the file
    itself (for libraries that only write to a path: ``numpy.savez``, ``matplotlib``'s ``savefig``,
    ``safetensors``' ``save_file``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a writer function keeps the target's suffix (numpy.savez appends ".npz" otherwise, matplotlib
    # picks the format from it); text and bytes get a plain ".tmp" that no "*.json" scan matches
    suffix = ".tmp" + path.suffix if callable(data) else ".tmp"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def data_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """``folder.glob(pattern)``, sorted, without hidden files: the temporary file a killed
    :func:`atomic_write` left behind (``.name.XXXX.tmp.json``) is not data."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern) if not any(part.startswith(".") for part in p.relative_to(root).parts))


def dumps_json(obj: Any) -> str:
    """The JSON text bench writes: indent 1, keys in insertion order, no NaN, a final newline."""
    return json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (:func:`dumps_json`) atomically."""
    return atomic_write(path, dumps_json(obj))


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks): what model cards and manifests record."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
