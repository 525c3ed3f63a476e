"""Pretrained teacher weights: torchvision's weight enums, or a local file; never a silent fallback.

A teacher without its ImageNet weights makes RD meaningless, so every failure here raises a
``WeightsError`` that says which file to place under ``$TORCH_HOME/hub/checkpoints/`` (or which
``--teacher-weights`` file is wrong) and that ``--no-pretrained`` is the explicit way out.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum

from errors import WeightsError

__all__ = ["apply_state_dict", "each_download_once", "mismatched_keys", "hub_checkpoint_dir", "load_weights_enum",
           "load_weights_file", "weights_file_name"]

# A download that cannot connect must fail within seconds, not hang on a dead network.
DOWNLOAD_CONNECT_TIMEOUT_S = 5.0


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for (and caches) downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file_name(weights: WeightsEnum) -> str:
    return os.path.basename(urlparse(weights.url).path)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# url -> the error message of its failed download, while an ``each_download_once`` block is open (None: no block)
_failed_downloads: dict[str, str] | None = None


@contextmanager
def each_download_once() -> Iterator[None]:
    """Within the block, a weights file whose download failed is not tried again: the same error comes back at
    once (the demo: one try per missing file per command, not one per run, each a timeout behind some proxies)."""
    global _failed_downloads
    outer, _failed_downloads = _failed_downloads, ({} if _failed_downloads is None else _failed_downloads)
    try:
        yield
    finally:
        _failed_downloads = outer


def _advice(weights: WeightsEnum) -> str:
    target = hub_checkpoint_dir() / weights_file_name(weights)
    return (
        f"Download {weights.url} on a machine with internet access and place it at {target} "
        f"(that is $TORCH_HOME/hub/checkpoints/{weights_file_name(weights)}), or pass "
        f"--teacher-weights PATH to a local copy, or pass --no-pretrained to train on a random "
        f"teacher on purpose (results are then meaningless for anomaly detection)."
    )


def load_weights_enum(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """State dict of a torchvision weights enum, from the hub cache or a (time-limited) download."""
    cached = hub_checkpoint_dir() / weights_file_name(weights)
    if not cached.is_file() and _failed_downloads is not None and weights.url in _failed_downloads:
        raise WeightsError(_failed_downloads[weights.url])
    try:
        if cached.is_file():
            return torch.load(cached, map_location="cpu", weights_only=True)
        with _socket_timeout(DOWNLOAD_CONNECT_TIMEOUT_S):
            return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # network errors, hash mismatch, truncated or corrupt files
        reason = f"{type(error).__name__}: {error}".strip()
        where = f"the cached file {cached} is unreadable or corrupt ({reason}); delete it. " if cached.is_file() \
            else f"{weights.url} could not be downloaded ({reason}). "
        failure = WeightsError(f"Pretrained teacher weights {weights} are not available: {where}{_advice(weights)}")
        if not cached.is_file() and _failed_downloads is not None:
            _failed_downloads[weights.url] = str(failure)
        raise failure from error


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict saved with ``torch.save(model.state_dict(), path)`` (tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--teacher-weights {path}: no such file (expected a torchvision state dict .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"--teacher-weights {path}: cannot be read as a tensor-only state dict ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"--teacher-weights {path}: expected a dict of tensors (a model's state_dict())")
    return state


def mismatched_keys(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Keys that are missing, unexpected or of another shape in ``state``, each with what is wrong, sorted."""
    problems = [f"{key} (missing)" for key in expected if key not in state]
    problems += [f"{key} (unexpected)" for key in state if key not in expected]
    problems += [f"{key} (shape {tuple(state[key].shape)}, expected {tuple(value.shape)})"
                 for key, value in expected.items() if key in state and state[key].shape != value.shape]
    return sorted(problems)


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a full torchvision model's weights strictly; a mismatch names the source, the first few
    mismatching keys and how many more there are (not the thousands of lines torch would print)."""
    problems = mismatched_keys(model.state_dict(), state)
    if problems:
        shown = "; ".join(problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise WeightsError(f"weights {source} do not fit {type(model).__name__}: {shown}{more}")
    model.load_state_dict(state, strict=True)
