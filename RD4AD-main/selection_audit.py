"""``train --audit-test``: the test set scored at each synthetic-validation epoch, into an audit file of its own.

It answers one question after the fact: did the synthetic-validation AUPRO that picks the epoch rank the epochs
as the test AUPRO would have? The rows go to ``selection_audit.csv`` (why_files.py) and nowhere else: not into
history.csv, the checkpoints or anything selection (synthval.py), thresholds (evaluate.py) or ``tune`` read. The
scoring is the synthetic validation's: eval mode (no BatchNorm statistic moves), no gradient, under a forked
RNG, after the epoch's history row is complete; the next epoch's ``train()`` restores the mode, so training
goes on bit-identically with or without the audit (tests/test_why_audit.py checks the weights).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

import metrics
import why_files
from evaluate import score_images
from rd_model import ReverseDistillation, image_scores
from recipe import FastPath, TrainConfig, open_split

__all__ = ["TestSetAudit", "discard"]


class TestSetAudit:
    """The audit of one training run (rank 0 only): the test split held as uint8, scored when asked."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, config: TrainConfig, start_epoch: int) -> None:
        self.config = config
        with torch.random.fork_rng(devices=[]):
            test_set = open_split(config, "test")
            self.images, self.masks = test_set.uint8_images(), test_set.uint8_masks()[:, 0]
            self.labels, self.has_masks = np.asarray(test_set.labels), test_set.has_masks
        earlier = why_files.read_audit(config.run_dir)  # a resumed run keeps the epochs its checkpoint holds
        self.rows: list[dict[str, Any]] = [] if earlier is None else \
            [row for row in earlier.to_dict("records") if row["epoch"] <= start_epoch]

    def record(self, epoch: int, model: ReverseDistillation, fast: FastPath, device: torch.device,
               history_row: Mapping[str, Any]) -> None:
        """Score the test split with ``model`` as it is after ``epoch`` and rewrite the audit file."""
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            maps = score_images(model, self.images, fast, device, self.config.batch_size, f"audit {self.config.key}")
            row = {"epoch": epoch, "synth_aupro": history_row.get("synth_aupro"),
                   "test_image_auroc": metrics.image_auroc(image_scores(maps).cpu(), self.labels)}
            if self.has_masks:
                pixel = metrics.pixel_metrics(maps, self.masks.to(device))
                row |= {"test_pixel_auroc": pixel["pixel_auroc"], "test_aupro": pixel["aupro"]}
        del maps
        self.rows.append(row)
        why_files.write_audit(self.config.run_dir, self.rows)


def discard(config: TrainConfig) -> None:
    """Remove a run's audit file (``train --restart``: it belonged to the training that is discarded)."""
    (config.run_dir / why_files.AUDIT_FILE).unlink(missing_ok=True)
