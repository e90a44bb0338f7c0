"""Files that are never half-written, output directories that one process owns, and the code's git sha.

Every file minr writes goes to a temporary name beside its destination, is fsynced, then renamed over it: a reader
sees the old file or the new one, never a part. A run directory is locked by the process that writes into it; the
lock is an `flock`, so the kernel releases it when the process dies and a killed run never blocks its `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from minr.errors import MinrError

LOCK_NAME = ".minr.lock"
_TMP = re.compile(r"^\..+\.tmp(\d+)$")


def tmp_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place (carries the writer's pid)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def writing(path: Path, size: int | None = None) -> Iterator[None]:
    """Turn the OS's refusals to write `path` (full disk, read-only file system, permissions) into one-line errors
    that name the file; the temporary file of a failed write is removed, the previous file stays intact."""
    try:
        yield
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp_path(path).unlink(missing_ok=True)
        raise MinrError(_os_message(e, path, size)) from None
    except SafetensorError as e:  # safetensors reports the OS's refusal in its own exception: "... os error 28 ..."
        with contextlib.suppress(OSError):
            tmp_path(path).unlink(missing_ok=True)
        code = re.search(r"(?:os error|code:) ?(\d+)", str(e))
        raise MinrError(_os_message(OSError(int(code.group(1)) if code else 0, str(e)), path, size)) from None


def _os_message(e: OSError, path: Path, size: int | None) -> str:
    if e.errno == errno.ENOSPC:
        need = f" (about {size / 2**20:.1f} MiB needed)" if size else ""
        return f"cannot write {path}: no space left on the device{need}; free some space or choose another place"
    if e.errno == errno.EROFS:
        return f"cannot write {path}: the file system is read-only; choose another place"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied; choose a place you can write to"
    return f"cannot write {path}: {e.strerror or e}"


def publish(tmp: Path, path: Path) -> None:
    """fsync a finished temporary file, give it the usual permissions (safetensors writes 0600), rename it."""
    with writing(path):
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    path = Path(path)
    tmp = tmp_path(path)
    with writing(path, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def finite(x: Any) -> Any:
    """A copy of a JSON-able value with NaN and infinities replaced by None (strict JSON has no NaN) and numpy
    scalars made plain Python numbers."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def to_json(obj: Any) -> str:
    """Strict JSON (non-finite numbers become null), indented, with a trailing newline."""
    return json.dumps(finite(obj), indent=2, allow_nan=False, default=str) + "\n"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), to_json(obj))


def read_json(path: Path, what: str) -> Any:
    """A JSON file that minr wrote, or a one-line error that names it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MinrError(f"{path} does not exist; is it {what}?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinrError(f"{path} is not readable JSON ({e.__class__.__name__}); was it cut short?") from None


@functools.cache
def git_sha() -> str:
    """The commit of the code that runs, with '-dirty' when it has uncommitted changes; 'unknown' outside git.
    Asked once per process: a long run that started from one commit keeps naming it while the tree changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        sha, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if sha.returncode:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# -- what a command reads and where it writes ------------------------------------------------------------------
def input_file(path: str | Path, what: str, *, look_for: str = "*") -> Path:
    """A file a command reads, or a one-line error that says what `path` is instead: missing, a folder (naming
    the files inside it that match `look_for`), or not a regular file (a device such as /dev/zero, a pipe)."""
    if not str(path).strip():
        raise MinrError(f"{what} is empty (an unset shell variable?); give a file")
    p = Path(path)
    if not p.exists():
        raise MinrError(f"{what} {p} does not exist")
    if p.is_dir():
        inside = sorted(q.name for q in p.glob(look_for) if q.is_file())[:3]
        hint = f"; it holds {', '.join(inside)}: pass one of those" if inside else ""
        raise MinrError(f"{what} {p} is a folder, not a file{hint}")
    if not p.is_file():
        raise MinrError(f"{what} {p} is not a regular file (a device, pipe or socket); give a file")
    return p


def output_location(
    path: str | Path, *, what: str = "--out", inputs: Iterable[str | Path] = (), folder: bool = True
) -> Path:
    """Check where a command will write before it writes anything, and return it as a Path. Refused: an empty
    value (an unset shell variable would otherwise mean the current directory), an input itself (a checkpoint,
    a dataset folder), a place inside an input folder (whatever is written there joins the data), a file where a
    folder is wanted and a folder where a file is wanted, and a place under an existing file."""
    kind = "folder" if folder else "file"
    if not str(path).strip():
        raise MinrError(f"{what} is empty (an unset shell variable?); give the {kind} to write")
    p = Path(path).expanduser()
    here = p.resolve()
    for given in inputs:
        src = Path(given).expanduser().resolve()
        if here == src:
            raise MinrError(
                f"{what} {p} is also an input of this command; choose another {what} so it is not overwritten"
            )
        if src.is_dir() and src in here.parents:
            raise MinrError(
                f"{what} {p} lies inside {src}, an input folder of this command (a dataset): what is written there "
                f"would become part of it; choose a {what} outside it"
            )
    if folder and p.exists() and not p.is_dir():
        raise MinrError(f"{what} {p} is a file, not a folder; give a folder for the outputs (created if missing)")
    if not folder and p.is_dir():
        raise MinrError(f"{what} {p} is a folder; give the name of the file to write")
    blocker = next((a for a in here.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise MinrError(f"{what} {p}: {blocker} is a file, so nothing can be created under it; choose another {what}")
    return p


def _missing(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what a `mkdir -p` would create."""
    out = []
    for p in (path, *path.parents):
        if p.exists():
            break
        out.append(p)
    return out


def _listing(folder: Path) -> set[str]:
    return {q.name for q in folder.iterdir()} if folder.is_dir() else set()


def _undo(created: list[Path], lock: Path | None, before: set[str]) -> None:
    """Undo what a failed command created, as long as it wrote nothing else: its lock file (when the folder holds
    no new name but it), then the folders it created (deepest first; rmdir refuses a non-empty one)."""
    with contextlib.suppress(OSError):
        if lock is not None and _listing(lock.parent) - before <= {LOCK_NAME}:
            lock.unlink()
        for p in created:
            p.rmdir()


@contextlib.contextmanager
def created_only(folder: Path) -> Iterator[None]:
    """If the block fails, remove what it created under `folder` (and `folder` itself if it created it), and
    nothing that was there before: a failed download leaves the user's folder as it found it."""
    before = set(folder.rglob("*")) if folder.exists() else set()
    made = _missing(folder)
    try:
        yield
    except BaseException:
        if folder.exists():
            for p in sorted(set(folder.rglob("*")) - before, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        _undo(made, None, set())
        raise


# -- owning an output directory -------------------------------------------------------------------------------
@contextlib.contextmanager
def locked_dir(path: str | Path, what: str = "--out", *, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Create `path` (checked by `output_location` against the command's `inputs`) and hold an exclusive lock on
    it while the block runs; a second process gets a one-line error naming the holder's pid. Leftover temporary
    files of dead writers are removed first. A block that fails before writing anything leaves no trace: its lock
    file and the folders it created are removed again (what was there before, and what it wrote, stay)."""
    path = output_location(path, what=what, inputs=inputs)
    created, lock, before = _missing(path), path / LOCK_NAME, _listing(path)
    fresh_lock = LOCK_NAME not in before
    fd = _lock(path, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_tmp(path)
        yield path
    except BaseException:
        _undo(created, lock if fresh_lock else None, before)
        raise
    finally:
        os.close(fd)  # releases the lock


def _lock(path: Path, what: str) -> int:
    """An fd holding the flock of `path`'s lock file. The lock file is checked to be still the one locked: a
    process that removed it (a failed run cleaning up) must not leave two holders of two different files."""
    for _ in range(5):
        with writing(path / LOCK_NAME):
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MinrError(
                f"{what} {path} is in use by another minr process (pid {holder}); wait for it or choose another {what}"
            ) from None
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path / LOCK_NAME).st_ino:
                return fd
        os.close(fd)
    raise MinrError(f"{what} {path}: its lock file keeps disappearing; is another program removing it?")


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete temporary files (`.NAME.tmp<pid>`) left by writers that no longer run; never touch a live one's."""
    removed = []
    for p in folder.rglob(".*.tmp*"):
        m = _TMP.match(p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
