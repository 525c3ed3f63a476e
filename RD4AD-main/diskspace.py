"""Disk space: a write that fails for lack of space becomes one clear error, and the free space is known before.

A full disk shows itself in two ways: ``OSError`` ENOSPC (or EDQUOT, a quota) from a plain write, and, from
``torch.save``, a ``RuntimeError`` of its zip writer that only says that fewer bytes reached the file than it
wrote (``unexpected pos 23661312 vs 23661208``). ``runs.atomic_write`` turns both into ``DiskFull``: the file,
the bytes it needed and the bytes free, in one paragraph (``main.py`` prints it and exits with status 2).
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from errors import RDError

__all__ = ["DiskFull", "NO_SPACE_ERRNOS", "TORCH_SHORT_WRITE", "disk_full", "existing_folder", "format_bytes",
           "file_system", "free_bytes", "is_write_failure", "same_file_system"]

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what torch's zip writer (caffe2's PyTorchStreamWriter) says when a write comes up short: it never names the errno
TORCH_SHORT_WRITE = ("unexpected pos", "failed writing file", "file write failed")


class DiskFull(RDError):
    """A file could not be written for lack of space (or quota); nothing was written, its previous version is kept."""


def existing_folder(path: str | os.PathLike) -> Path:
    """The nearest folder that exists at or above ``path`` (where a file there would be written)."""
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes a user may still write on the file system that holds ``path`` (or would hold it)."""
    return shutil.disk_usage(existing_folder(path)).free


def file_system(path: str | os.PathLike) -> int:
    """The device id of the file system that holds ``path`` (or would hold it): equal ids share space and speed."""
    return existing_folder(path).stat().st_dev


def same_file_system(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths (existing or not) would be written to one file system: their space is then shared."""
    return file_system(first) == file_system(second)


def format_bytes(count: float) -> str:
    """``1.02 GB (1,018,431,488 bytes)``: decimal units, and the exact count."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.3g} {unit} ({int(count):,} bytes)"
    return f"{int(count):,} bytes"


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` says that data did not reach the disk: ENOSPC/EDQUOT, or a short write of torch's writer."""
    if isinstance(error, OSError):
        return error.errno in NO_SPACE_ERRNOS
    return isinstance(error, RuntimeError) and any(text in str(error) for text in TORCH_SHORT_WRITE)


def disk_full(path: str | os.PathLike, needed: int | None, written: int, free: int, error: BaseException) -> RDError:
    """The one-paragraph error of a failed write of ``path`` (its temporary file removed): ``needed`` bytes (None:
    unknown; more than the ``written`` ones that had gone out) against the ``free`` ones. ``DiskFull`` unless the
    space was there after all (a short write for another reason), which the message then says."""
    path = Path(path)
    need = format_bytes(needed) if needed is not None else f"more than {format_bytes(written)}"
    kept = (f"the previous {path.name} is unchanged" if path.is_file() else f"no {path.name} was left behind")
    advice = (f"Nothing was written ({kept}, no temporary file is left). Free space on that disk, or point the "
              f"command's output folder (--results, --checkpoints, --out) at another one, and run it again (training "
              f"resumes from its last checkpoint).")
    if needed is not None and free >= needed and not (isinstance(error, OSError) and error.errno == errno.ENOSPC):
        reason = "quota exceeded" if isinstance(error, OSError) and error.errno == errno.EDQUOT else \
            f"the write came up short ({str(error).splitlines()[0].strip()})"
        return RDError(f"{path}: could not be written: {reason}; it needs {need} and {format_bytes(free)} are free "
                       f"on {existing_folder(path)}. {advice}")
    return DiskFull(f"{path}: the disk is full: writing it needs {need} and {format_bytes(free)} are free on "
                    f"{existing_folder(path)}. {advice}")
