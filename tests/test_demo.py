"""Issue 5: the demo, the main job, end to end (1 epoch, 1 seed), without pretrained weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import backbones
import demo
from errors import WeightsError

PORTFOLIO = Path(__file__).resolve().parents[1] / "RD4AD-main" / "RD_Model_Comparison_Portfolio.md"


def test_demo_falls_back_loudly_and_writes_the_report(tmp_path, monkeypatch, capsys):
    def offline(weights):
        raise WeightsError(f"{weights} unavailable (test: no network)")

    monkeypatch.setattr(backbones, "load_weights_enum", offline)
    portfolio = tmp_path / "portfolio.md"
    shutil.copy(PORTFOLIO, portfolio)
    path = demo.run_demo(tmp_path / "data", tmp_path / "results", tmp_path / "checkpoints", tmp_path / "report",
                         epochs=1, seeds="0", image_size=64, device="cpu", portfolio=str(portfolio))

    console = capsys.readouterr().out
    assert "PRETRAINED TEACHER WEIGHTS UNAVAILABLE" in console and "RANDOM TEACHERS" in console
    text = path.read_text()
    assert text.index("WARNING: RANDOM TEACHERS") < text.index("## Metrics per category")
    for backbone in demo.FAIR_PAIR:
        assert f"| {backbone} |" in text
    assert (tmp_path / "report" / "figures" / "gallery_synth_object.png").is_file()
    assert "WARNING: RANDOM TEACHERS" in portfolio.read_text()
