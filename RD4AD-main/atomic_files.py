"""Files that are never half written and folders one process works in at a time: atomic writes (a temporary file
beside the target, then a rename; a full disk is one clear error), strict JSON, CSV, and the run lock.

runs.py re-exports these for every results file; checkpoint.py and the commands write through them too.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import diskspace
from errors import RDError

__all__ = ["LOCK_FILE", "TEMPORARY_SUFFIX", "RunLock", "RunLocked", "atomic_write", "atomic_write_json",
           "atomic_write_text", "read_json", "remove_stale_temporaries", "strict_json", "write_csv"]

LOCK_FILE = ".lock"
TEMPORARY_SUFFIX = ".tmp"


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], needed: int | None = None) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open`` would give it (0644 under umask 022; ``mkstemp``'s own
    0600 would hide results from colleagues on a shared server). The temporary file is removed when
    ``write`` fails or the process is interrupted; one left by a SIGKILL is removed by
    ``remove_stale_temporaries`` when its run starts again. A write that fails for lack of space (ENOSPC, a
    quota, or torch's serializer coming up short) raises ``diskspace.DiskFull`` naming the file, the ``needed``
    bytes (when the caller knows them) and the bytes free; ``path``'s previous version is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        if diskspace.is_write_failure(error):
            raise diskspace.disk_full(path, needed, 0, diskspace.free_bytes(path.parent), error) from None
        raise
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        if not diskspace.is_write_failure(error):
            Path(tmp).unlink(missing_ok=True)
            raise
        # the space the partial file holds comes back once it is gone (the writer may still hold it open until the
        # exception is collected, so it is counted here rather than read after the removal)
        partial = Path(tmp).stat() if Path(tmp).is_file() else None
        free = diskspace.free_bytes(path.parent) + (partial.st_blocks * 512 if partial else 0)
        Path(tmp).unlink(missing_ok=True)
        raise diskspace.disk_full(path, needed, partial.st_size if partial else 0, free, error) from None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when a process was killed mid-write.

    Call it only while holding the folder's run lock: another writer's temporary file is not stale.
    """
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunLocked(RDError):
    """Another process holds the lock of a run folder."""


class RunLock:
    """An exclusive OS file lock (``flock`` on ``<folder>/.lock``) held while a process works on a run.

    Released on any exit, a crash or SIGKILL included (the kernel drops it with the process). A second
    process stops at once with a message naming the holder's PID and command line.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise RunLocked(f"{self.folder} is in use by {holder}; wait for it to finish or stop it, or use "
                            f"another --results/--checkpoints folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({' '.join(sys.argv) or 'python'})\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda tmp: tmp.write_bytes(data), needed=len(data))


def strict_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None and ``<key>_note`` saying what it was, so
    that strict JSON readers (jq, browsers, other languages) accept the file; readers take None for it."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                out.setdefault(f"{key}_note", f"{value} (not representable in JSON): written as null")
                value = None
            out[key] = strict_json(value)
        return out
    if isinstance(data, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in data]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (no NaN or Infinity: see ``strict_json``), indented, keys sorted, atomically."""
    atomic_write_text(path, json.dumps(strict_json(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV file with a header line, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file this project (or its user) wrote; a damaged one is an RDError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RDError(f"{path}: not valid JSON ({error}); expected the JSON file main.py writes there (it is "
                      f"damaged or was written by something else): restore it or rerun the command that writes it") \
            from None
