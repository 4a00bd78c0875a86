"""Claims: lock files that let several ``bench sweep`` processes share one results directory.

A sweep takes a job (or a result file's budget check) by creating ``<file>.lock`` with ``O_EXCL``
before it starts the work and removes it when the work ends. A second sweep started on the same
plan (another core, another session, another machine on a shared disk) finds the lock and goes on
with the next job, so two processes never compute the same shard; each re-reads before every job
which jobs are finished, so one that the other finished meanwhile is skipped too.

A lock holds ``{"pid", "host", "time"}``; its owner rewrites its modification time every
:data:`HEARTBEAT_S` seconds from a daemon thread while the work runs. A lock is *stale*, and is
taken over, when its owner is gone: on the same host its pid no longer exists, or on any host its
heartbeat is older than :data:`STALE_S` (a process killed with SIGKILL, a machine that went away).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from harness.errors import BenchUserError

HEARTBEAT_S = 30.0
STALE_S = 300.0


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the work that writes ``path``."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def holder(lock: Path, *, clock=time.time) -> str | None:
    """Who holds ``lock`` (a short description), or None when it is absent or stale."""
    try:
        age = clock() - lock.stat().st_mtime
        info = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}  # half-written by its owner a moment ago, or corrupt: judged by its age alone
        try:
            age = clock() - lock.stat().st_mtime
        except OSError:
            return None
    if age > STALE_S:
        return None
    pid, host = info.get("pid"), info.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
        return None
    return f"pid {pid} on {host}" if pid is not None else "another process"


def neighbours(root: str | os.PathLike) -> list[int]:
    """The pids of the other live processes on this host that hold a lock under ``root`` (other sweep
    processes working on the same results directory), sorted."""
    me, host, pids = os.getpid(), socket.gethostname(), set()
    for lock in Path(root).rglob("*.lock"):
        try:
            info = json.loads(lock.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            continue
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and pid != me and info.get("host") == host and holder(lock) is not None:
            pids.add(pid)
    return sorted(pids)


class Claim:
    """A held lock; :meth:`release` (or leaving the ``with`` block) removes it."""

    def __init__(self, lock: Path):
        self.lock = lock
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim:{lock.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            self.lock.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take(path: str | os.PathLike) -> Claim | str:
    """Claim the work that writes ``path``: a :class:`Claim`, or why not (the lock's holder)."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchUserError(f"cannot create the lock file {lock} ({exc.strerror or exc}); the results directory must be writable") from None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            who = holder(lock)
            if who is not None:
                return f"running in another sweep ({who}; its lock: {lock})"
            # stale: its owner is gone. Move it aside atomically first, so that of two processes that
            # both judged it stale only one removes it (the other moves nothing, or moves aside the
            # fresh lock of the first: it then finds that lock live and puts it back)
            aside = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                continue
            who = holder(aside)
            if who is not None:
                try:
                    os.link(aside, lock)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return f"running in another sweep ({who}; its lock: {lock})"
            aside.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise BenchUserError(f"cannot create the lock file {lock} ({exc.strerror or exc}); the results directory must be writable") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
        return Claim(lock)
    return f"its lock {lock} keeps changing hands"
