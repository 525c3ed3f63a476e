"""Shared test set-up: put RD4AD-main/ on the import path and keep torch to the machine's cores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_DIR = REPO_ROOT / "RD4AD-main"
sys.path.insert(0, str(CODE_DIR))
os.environ.setdefault("MPLBACKEND", "Agg")
