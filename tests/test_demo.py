"""Issue 5: the demo, the main job, end to end (1 epoch, 1 seed), without pretrained weights."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from torchvision.models import WeightsEnum

import demo

PORTFOLIO = Path(__file__).resolve().parents[1] / "RD4AD-main" / "RD_Model_Comparison_Portfolio.md"


def test_demo_falls_back_loudly_and_writes_the_report(tmp_path, monkeypatch, capsys):
    """No cached weights and no network: the report warns, and each weights file is tried once (issue 20: the
    preflight's try, not one more per run)."""
    tries: Counter[str] = Counter()

    def offline(weights, *args, **kwargs):
        tries[weights.url] += 1
        raise OSError(f"{weights.url}: unreachable (test: no network)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: every file must be downloaded
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    portfolio = tmp_path / "portfolio.md"
    shutil.copy(PORTFOLIO, portfolio)
    path = demo.run_demo(tmp_path / "data", tmp_path / "results", tmp_path / "checkpoints", tmp_path / "report",
                         epochs=1, seeds="0", image_size=64, device="cpu", portfolio=str(portfolio))

    console = capsys.readouterr().out
    assert len(tries) == len(demo.FAIR_PAIR) and set(tries.values()) == {1}, tries  # 4 runs, 1 try per file
    assert "PRETRAINED TEACHER WEIGHTS UNAVAILABLE" in console and "RANDOM TEACHERS" in console
    text = path.read_text()
    assert text.index("WARNING: RANDOM TEACHERS") < text.index("## Metrics per category")
    for backbone in demo.FAIR_PAIR:
        assert f"| {backbone} |" in text
    assert (tmp_path / "report" / "figures" / "gallery_synth_object.png").is_file()
    assert "WARNING: RANDOM TEACHERS" in portfolio.read_text()
