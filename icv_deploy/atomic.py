"""Atomic file writes: a crash never leaves a half-written file under the final name.

Write to a temporary name in the same folder, flush to disk, then `os.replace` (atomic on POSIX).
A folder cannot be replaced by one rename while it exists, so `atomic_dir` moves the old one aside to
`.NAME.old` first; a crash between the two renames is undone by the next `atomic_dir` (or `recover_dir`) on that
path, which puts `.NAME.old` back. Temporaries carry the host and process id of their writer, so the next write
to the same path removes those of writers that died (SIGKILL, power loss) and leaves a live writer's alone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writer_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{_writer_tag()}."


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(final: str | Path) -> list[Path]:
    """Remove the temporaries of `final` left by writers on this host that no longer run; return them."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    host = socket.gethostname()
    for path in final.parent.glob(glob.escape(f".{final.name}.{host}-") + "*.tmp"):
        pid = path.name[len(f".{final.name}.{host}-"):].split(".", 1)[0]
        if pid.isdigit() and not _is_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def recover_dir(final: str | Path) -> None:
    """Finish or undo an `atomic_dir` replacement that a crash interrupted.

    Killed between its two renames, `final` is missing and `.NAME.old` holds the previous contents: put them back.
    Killed after both, `.NAME.old` is a leftover: remove it. Temporaries of dead writers are removed too.
    """
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    remove_stale_temps(final)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under `folder` to disk, so that a rename after it publishes complete files."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = ""):
    """Yield a temporary path beside `final`; on success it is renamed to `final`, on error removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` (old contents removed).
    A replacement cut short by a crash is recovered first (`recover_dir`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy one file atomically: a crash leaves the old file or the new one, never half of it."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
