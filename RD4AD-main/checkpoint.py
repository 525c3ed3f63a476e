"""Checkpoints of the trainable parts (bottleneck + student, and an RD++ model's projection) with the metadata needed
to rebuild them. An RD4AD checkpoint has exactly the keys it had before RD++ existed; an RD++ one adds ``method``
("rdpp") and ``projection``.

The frozen teacher is not stored: a pretrained one is rebuilt from its weights id (the torchvision enum
or ``file:PATH``), a random one (``--no-pretrained``) from its seed. The SHA-256 of the teacher's weights
is stored instead and checked on loading, so a changed weights file (or a torch whose random init
differs) is refused instead of silently pairing a student with another teacher than it was trained on.

Saved atomically; read with ``torch.load(weights_only=True)`` so a file holding pickled code is refused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from atomic_files import atomic_write
from backbone_facts import DEFAULT_METHOD
from backbones import build_model
from errors import CheckpointError
from rd_model import ReverseDistillation
from rdpp import RevisitedReverseDistillation
from system_info import library_versions

__all__ = ["FORMAT", "FORMAT_VERSION", "checkpoint_bytes", "load_into", "model_from_checkpoint", "read_checkpoint",
           "save_checkpoint", "teacher_digest"]

FORMAT = "rd4ad-swappable-backbones/checkpoint"
FORMAT_VERSION = 2  # 1: a random teacher was stored whole; still read
REQUIRED_KEYS = ("backbone", "image_size", "teacher_weights", "model_knobs", "bottleneck", "student",
                 "training_state")
# torch.save's zip archive: per tensor a record (header, name, 64-byte alignment) and its pickle entry; plus the
# metadata and the history (a few hundred bytes per epoch), well within the fixed part for thousands of epochs
_BYTES_PER_TENSOR, _FIXED_BYTES = 512, 2**20


def checkpoint_bytes(payload: Any) -> int:
    """An upper estimate of the bytes ``torch.save(payload)`` writes: its tensors' bytes plus the archive's records
    and metadata (meta-device tensors count as real ones: a checkpoint's size is known without building it)."""
    tensors: list[torch.Tensor] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(payload)
    return sum(t.numel() * t.element_size() for t in tensors) + _BYTES_PER_TENSOR * len(tensors) + _FIXED_BYTES


def teacher_digest(model: ReverseDistillation) -> str:
    """SHA-256 of the teacher's weights and buffers (names, dtypes, shapes and bytes), and of its
    ``code_revision`` where a teacher class declares one (a change of what it computes with the same weights)."""
    digest = hashlib.sha256()
    revision = getattr(model.teacher, "code_revision", None)
    if revision is not None:
        digest.update(f"code_revision|{revision}|".encode())
    for name, tensor in model.teacher.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: ReverseDistillation, *, backbone: str, image_size: int,
                    teacher_weights: str, model_knobs: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None, teacher_seed: int | None = None,
                    teacher_sha256: str | None = None) -> None:
    """Write bottleneck + student weights, metadata and optional training state (optimiser, epoch).

    ``teacher_seed``: the seed a random teacher was built after (``build_model`` right after
    ``torch.manual_seed(seed)``); without it a random teacher is stored whole. ``teacher_sha256``
    saves hashing the frozen teacher again at every checkpoint of a run.
    """
    store_teacher = teacher_weights == "random" and teacher_seed is None
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "image_size": int(image_size),
        "teacher_weights": teacher_weights,
        "model_knobs": dict(model_knobs or {}),
        "versions": library_versions(),
        "bottleneck": model.bottleneck.state_dict(),
        "student": model.student.state_dict(),
        "teacher": model.teacher.state_dict() if store_teacher else None,
        "teacher_seed": teacher_seed,
        "teacher_sha256": teacher_sha256 or teacher_digest(model),
        "training_state": training_state or {},
    }
    if isinstance(model, RevisitedReverseDistillation):
        payload |= {"method": model.method, "projection": model.projection.state_dict()}
    atomic_write(path, lambda tmp: torch.save(payload, tmp), needed=checkpoint_bytes(payload))


def read_checkpoint(path: str | os.PathLike, expected_backbone: str | None = None,
                    expected_image_size: int | None = None, expected_method: str | None = None) -> dict[str, Any]:
    """Load and check a checkpoint; tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; run `main.py train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} refused: it is not a tensor-only checkpoint of this project "
            f"(it may hold pickled Python objects or code, or be truncated): "
            f"{(str(error).strip().splitlines() or [type(error).__name__])[0][:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an RD checkpoint of this project (format {FORMAT!r} expected)")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} has this project's format tag but lacks {', '.join(missing)}: it is "
                              f"damaged or was not written by `main.py train`; train the run again (--restart)")
    if expected_backbone is not None and payload["backbone"] != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {payload['backbone']!r} RD model; it cannot be loaded into "
            f"a {expected_backbone!r} model")
    method = payload.get("method", DEFAULT_METHOD)
    if method != DEFAULT_METHOD and "projection" not in payload:
        raise CheckpointError(f"checkpoint {path} is an {method!r} checkpoint without its projection weights: it is "
                              f"damaged; train the run again (--restart)")
    if expected_method is not None and method != expected_method:
        raise CheckpointError(f"checkpoint {path} holds a {method!r} model, not a {expected_method!r} one "
                              f"(--method); its run folder belongs to the other method")
    if expected_image_size is not None and payload["image_size"] != expected_image_size:
        raise CheckpointError(
            f"checkpoint {path} was trained at --image-size {payload['image_size']}, not {expected_image_size}; "
            f"evaluate at the training size")
    return payload


def load_into(model: ReverseDistillation, payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Copy a checkpoint's trainable weights into a model built for the same backbone and teacher, and check
    that the teacher is the one the checkpoint was trained with."""
    try:
        model.bottleneck.load_state_dict(payload["bottleneck"])
        model.student.load_state_dict(payload["student"])
        if isinstance(model, RevisitedReverseDistillation) != ("projection" in payload):
            raise RuntimeError(f"a {payload.get('method', DEFAULT_METHOD)!r} checkpoint into a "
                               f"{getattr(model, 'method', DEFAULT_METHOD)!r} model")
        if "projection" in payload:
            model.projection.load_state_dict(payload["projection"])
        if payload.get("teacher") is not None:
            model.teacher.load_state_dict(payload["teacher"])
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).splitlines()[0][:300]
        raise CheckpointError(f"{path}: its weights do not fit a {payload.get('backbone')!r} RD model built with "
                              f"knobs {payload.get('model_knobs')} ({first})") from None
    expected = payload.get("teacher_sha256")
    if expected is not None and teacher_digest(model) != expected:
        raise CheckpointError(
            f"{path}: the teacher rebuilt from {payload['teacher_weights']!r} is not the one this checkpoint was "
            f"trained with (SHA-256 of its weights differs): the weights file changed, the teacher's code changed "
            f"(its code_revision, e.g. the Swin teacher's masked padding: retrain such runs with --restart), or this "
            f"torch ({torch.__version__}) initialises a random teacher differently from the one that trained it "
            f"({payload.get('versions', {}).get('torch', 'unknown')})")


def model_from_checkpoint(path: str | os.PathLike, expected_backbone: str | None = None,
                          expected_image_size: int | None = None, expected_method: str | None = None
                          ) -> tuple[ReverseDistillation, dict[str, Any]]:
    """Rebuild the RD (or RD++) model a checkpoint was trained with (same teacher weights) and load it."""
    payload = read_checkpoint(path, expected_backbone, expected_image_size, expected_method)
    weights_id: str = payload["teacher_weights"]
    weights_path = weights_id.removeprefix("file:") if weights_id.startswith("file:") else None
    with torch.random.fork_rng(devices=[]):
        if payload.get("teacher_seed") is not None:
            torch.manual_seed(int(payload["teacher_seed"]))  # the random teacher's initial state, as training built it
        model = build_model(payload["backbone"], pretrained=weights_id != "random", weights_path=weights_path,
                            method=payload.get("method", DEFAULT_METHOD), **payload["model_knobs"])
    load_into(model, payload, path)
    return model, payload
