"""Claims (lock files) that let several sweep processes share one results directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from harness.store import claims


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(path, *, pid: int, host: str | None = None, age: float = 0.0) -> None:
    lock = claims.lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": time.time()}))
    t = time.time() - age
    os.utime(lock, (t, t))


def test_a_claim_excludes_a_second_until_released(tmp_path):
    target = tmp_path / "shards" / "shard-0-of-2.json"
    first = claims.take(target)
    assert isinstance(first, claims.Claim) and claims.lock_path(target).is_file()
    second = claims.take(target)
    assert isinstance(second, str) and f"pid {os.getpid()}" in second and "another sweep" in second
    first.release()
    assert not claims.lock_path(target).exists()
    with claims.take(target) as third:
        assert isinstance(third, claims.Claim)
    assert not claims.lock_path(target).exists()
    assert not target.exists()  # a claim never writes the work's own file


def test_locks_of_gone_owners_are_taken_over_and_live_ones_are_not(tmp_path):
    target = tmp_path / "r.json"
    _write_lock(target, pid=_dead_pid())  # same host, process gone
    got = claims.take(target)
    assert isinstance(got, claims.Claim)
    assert json.loads(claims.lock_path(target).read_text())["pid"] == os.getpid()
    got.release()

    parent = os.getppid()  # alive
    _write_lock(target, pid=parent)
    assert f"pid {parent}" in claims.take(target)
    _write_lock(target, pid=parent, host="elsewhere")  # another machine's pid cannot be checked: its heartbeat decides
    assert "on elsewhere" in claims.take(target)
    _write_lock(target, pid=parent, host="elsewhere", age=claims.STALE_S + 5)  # no heartbeat for too long
    got = claims.take(target)
    assert isinstance(got, claims.Claim)
    got.release()
    assert not list(tmp_path.glob("*.stale"))


def test_a_held_claim_keeps_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    target = tmp_path / "r.json"
    with claims.take(target) as held:
        old = time.time() - claims.STALE_S - 60
        os.utime(held.lock, (old, old))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and held.lock.stat().st_mtime <= old + 1:
            time.sleep(0.02)
        assert held.lock.stat().st_mtime > time.time() - 5  # refreshed: not stale to another process
        assert isinstance(claims.take(target), str)


def test_an_unwritable_place_is_a_user_error(tmp_path):
    import pytest

    from harness.errors import BenchUserError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchUserError, match="cannot create the lock file"):
        claims.take(blocker / "shard-0-of-1.json")  # its folder would be a file
