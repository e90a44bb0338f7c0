"""Files that are never half-written, output directories that one process owns, and the code's git sha.

Every file minr writes goes to a temporary name beside its destination, is fsynced, then renamed over it: a reader
sees the old file or the new one, never a part. A run directory is locked by the process that writes into it; the
lock is an `flock`, so the kernel releases it when the process dies and a killed run never blocks its `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
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


def git_sha() -> str:
    """The commit of the code that runs, with '-dirty' when it has uncommitted changes; 'unknown' outside git."""
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


# -- owning an output directory -------------------------------------------------------------------------------
@contextlib.contextmanager
def locked_dir(path: str | Path, what: str = "--out") -> Iterator[Path]:
    """Create `path` and hold an exclusive lock on it while the block runs; a second process gets a one-line error
    naming the holder's pid. Leftover temporary files of dead writers are removed first."""
    path = Path(path)
    with writing(path / LOCK_NAME):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise MinrError(
                f"{what} {path} is in use by another minr process (pid {holder}); wait for it or choose another {what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_tmp(path)
        yield path
    finally:
        os.close(fd)  # releases the lock


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
