import errno
import multiprocessing
import os

import pytest

from minr.errors import MinrError
from minr.io import atomic_write_bytes, locked_dir, remove_stale_tmp, to_json


def _hold(path, ready, release):
    with locked_dir(path):
        ready.set()
        release.wait(30)


def test_a_second_process_cannot_take_a_locked_directory(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "run", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with (
            pytest.raises(MinrError, match=rf"in use by another minr process \(pid {holder.pid}\)"),
            locked_dir(tmp_path / "run"),
        ):
            pass
    finally:
        release.set()
        holder.join(30)
    with locked_dir(tmp_path / "run"):  # released when its holder ended
        pass


def test_a_killed_holder_leaves_no_lock_and_its_temporary_files_go(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    stale = tmp_path / f".checkpoint.safetensors.tmp{holder.pid}"
    stale.write_bytes(b"x" * 100)
    holder.kill()
    holder.join(30)
    mine = tmp_path / f".results.json.tmp{os.getpid()}"
    mine.write_bytes(b"y")
    with locked_dir(tmp_path):  # the flock died with its process: --resume is never blocked
        assert not stale.exists() and mine.exists()  # a live writer's file is never touched
    assert remove_stale_tmp(tmp_path) == []


def test_full_disk_keeps_the_previous_file_and_says_how_much(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_bytes(path, b"old")
    real_open = open

    def full(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(f"tmp{os.getpid()}"):
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(MinrError, match=r"results.json: no space left on the device \(about 0.0 MiB needed\)"):
        atomic_write_bytes(path, b"new" * 10)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".*tmp*"))


def test_json_is_always_valid():
    assert (
        to_json({"a": float("nan"), "b": [float("inf"), 1.5]})
        == '{\n  "a": null,\n  "b": [\n    null,\n    1.5\n  ]\n}\n'
    )
