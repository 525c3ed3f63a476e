"""Shared test set-up: put RD4AD-main/ on the import path and keep torch to the machine's cores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_DIR = REPO_ROOT / "RD4AD-main"
sys.path.insert(0, str(CODE_DIR))
os.environ.setdefault("MPLBACKEND", "Agg")
# One intra-op thread per test process: on a 2-core machine shared with anything else, torch's second
# thread gets descheduled and small ops (BatchNorm, elementwise) slow down 5-50x; one thread is steadier.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("RD_TEST_THREADS", "1"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MVTec-format tree shared by the tests (read-only: copy it to break it).

    64 px, synth_texture (grayscale) and synth_object (RGB), 24 train and 16 test images each.
    """
    from synth import generate

    root = tmp_path_factory.mktemp("synthetic_mvtec")
    generate(root, categories=2, image_size=64, n_train=24, n_test=16, seed=0)
    return root
