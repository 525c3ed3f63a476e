"""Checkpoints of the trainable parts (bottleneck + student) with the metadata needed to rebuild them.

A pretrained teacher is rebuilt from its weights id; a random teacher (``--no-pretrained``) has no
such id, so its weights are stored too.

Saved atomically; read with ``torch.load(weights_only=True)`` so a file holding pickled code is refused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from backbones import build_model
from errors import CheckpointError
from rd_model import ReverseDistillation
from runs import atomic_write
from system_info import library_versions

__all__ = ["FORMAT", "FORMAT_VERSION", "load_into", "model_from_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "rd4ad-swappable-backbones/checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: ReverseDistillation, *, backbone: str, image_size: int,
                    teacher_weights: str, model_knobs: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None) -> None:
    """Write bottleneck + student weights, metadata and optional training state (optimiser, epoch)."""
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
        "teacher": model.teacher.state_dict() if teacher_weights == "random" else None,
        "training_state": training_state or {},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike, expected_backbone: str | None = None,
                    expected_image_size: int | None = None) -> dict[str, Any]:
    """Load and check a checkpoint; tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; run `main.py train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} refused: it is not a tensor-only checkpoint of this project "
            f"(it may hold pickled Python objects or code, or be truncated): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an RD checkpoint of this project (format {FORMAT!r} expected)")
    if expected_backbone is not None and payload["backbone"] != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {payload['backbone']!r} RD model; it cannot be loaded into "
            f"a {expected_backbone!r} model")
    if expected_image_size is not None and payload["image_size"] != expected_image_size:
        raise CheckpointError(
            f"checkpoint {path} was trained at --image-size {payload['image_size']}, not {expected_image_size}; "
            f"evaluate at the training size")
    return payload


def load_into(model: ReverseDistillation, payload: dict[str, Any]) -> None:
    """Copy a checkpoint's trainable weights into a model built for the same backbone."""
    model.bottleneck.load_state_dict(payload["bottleneck"])
    model.student.load_state_dict(payload["student"])
    if payload.get("teacher") is not None:
        model.teacher.load_state_dict(payload["teacher"])


def model_from_checkpoint(path: str | os.PathLike, expected_backbone: str | None = None,
                          expected_image_size: int | None = None) -> tuple[ReverseDistillation, dict[str, Any]]:
    """Rebuild the RD model a checkpoint was trained with (same teacher weights) and load it."""
    payload = read_checkpoint(path, expected_backbone, expected_image_size)
    weights_id: str = payload["teacher_weights"]
    weights_path = weights_id.removeprefix("file:") if weights_id.startswith("file:") else None
    model = build_model(payload["backbone"], pretrained=weights_id != "random", weights_path=weights_path,
                        **payload["model_knobs"])
    load_into(model, payload)
    return model, payload
