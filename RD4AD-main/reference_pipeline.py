"""The original RD4AD pipeline, written as the official code runs it: the benchmark's reference path.

Naive on purpose, so that ``main.py bench`` can time the fast path against it in the same run: the
teacher runs with autograd, images are normalised one by one on the host into NCHW float32 batches,
the optimiser is default Adam with a ``loss.item()`` every step, and anomaly maps are made per image
on the CPU and blurred with ``scipy.ndimage.gaussian_filter`` (docs/reproduction.md#3-scoring).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dataset import IMAGENET_MEAN, IMAGENET_STD
from rd_model import ANOMALY_MAP_SIGMA, ReverseDistillation, distillation_loss
from system_info import synchronize

__all__ = ["host_batch", "naive_maps", "naive_model", "naive_train_step"]


def host_batch(images: torch.Tensor, indices: list[int] | torch.Tensor) -> torch.Tensor:
    """The naive input pipeline: each uint8 image converted and normalised on the host (ToTensor +
    Normalize of a DataLoader), stacked into a contiguous NCHW float32 batch."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return torch.stack([(images[int(i)].float() / 255.0 - mean) / std for i in indices])


def naive_model(model: ReverseDistillation) -> ReverseDistillation:
    """A copy in NCHW whose teacher requires gradients (the original code's wasted teacher backward)."""
    copied = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    copied.teacher.requires_grad_(True)
    return copied


def naive_train_step(model: ReverseDistillation, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     indices: torch.Tensor, device: torch.device) -> float:
    """One step of the original loop: host batch, teacher with autograd, loss.item() every step."""
    batch = host_batch(images, indices).to(device)
    teacher = model.teacher(batch)
    student = model.student(model.bottleneck(teacher))
    loss, _ = distillation_loss(teacher, student)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def naive_maps(model: ReverseDistillation, batch: torch.Tensor, grad: bool) -> tuple[list[np.ndarray], float]:
    """Per-image CPU anomaly maps of a host batch blurred with scipy (float64, as the original), and the
    seconds spent in the network's forward."""
    device = next(model.parameters()).device
    started = time.perf_counter()
    with torch.set_grad_enabled(grad):
        teacher = model.teacher(batch.to(device))
        student = model.student(model.bottleneck(teacher))
    synchronize(device)
    forward_s = time.perf_counter() - started
    size = batch.shape[-2:]
    maps = []
    for i in range(len(batch)):
        amap = np.zeros(tuple(size))
        for t, s in zip(teacher, student, strict=True):
            distance = 1 - F.cosine_similarity(t[i:i + 1].detach().float().cpu(), s[i:i + 1].detach().float().cpu())
            amap += F.interpolate(distance[:, None], size=tuple(size), mode="bilinear",
                                  align_corners=True)[0, 0].numpy()
        maps.append(gaussian_filter(amap, sigma=ANOMALY_MAP_SIGMA))
    return maps, forward_s
