"""User-facing errors: each message names the file or flag at fault and what was expected.

`main.py` prints these without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "RDError", "WeightsError"]


class RDError(Exception):
    """Base class of the errors a user can fix (bad path, bad flag, bad file)."""


class DataError(RDError):
    """The data on disk is missing, incomplete or not in the MVTec AD layout."""


class WeightsError(RDError):
    """Pretrained teacher weights could not be loaded."""


class CheckpointError(RDError):
    """A checkpoint or run directory cannot be used as asked."""
