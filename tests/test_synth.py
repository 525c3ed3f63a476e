"""The synthetic MVTec-format generator: layout, determinism, exact masks, visible defects, CLI."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
from errors import DataError
from synth import DEFECTS, category_names, generate, render_item


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_category_names_alternate_texture_and_object():
    assert category_names(5) == ["synth_texture", "synth_object", "synth_texture2", "synth_object2", "synth_texture3"]


def test_layout_counts_and_modes(synthetic_root):
    assert sorted(p.name for p in synthetic_root.iterdir()) == ["synth_object", "synth_texture"]
    for name, kind, mode in (("synth_texture", "texture", "L"), ("synth_object", "object", "RGB")):
        folder = synthetic_root / name
        assert len(list((folder / "train" / "good").glob("*.png"))) == 24
        test_types = sorted(p.name for p in (folder / "test").iterdir())
        assert test_types == sorted(("good", *DEFECTS[kind]))
        assert len(DEFECTS[kind]) >= 3
        assert sum(len(list(d.glob("*.png"))) for d in (folder / "test").iterdir()) == 16
        assert sorted(p.name for p in (folder / "ground_truth").iterdir()) == sorted(DEFECTS[kind])
        for defect in DEFECTS[kind]:
            images = sorted(p.stem for p in (folder / "test" / defect).glob("*.png"))
            masks = sorted(p.name for p in (folder / "ground_truth" / defect).glob("*.png"))
            assert images and masks == [f"{stem}_mask.png" for stem in images]
        with Image.open(folder / "train" / "good" / "000.png") as image:
            assert image.mode == mode and image.size == (64, 64)


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    generate(tmp_path / "a", seed=3)
    generate(tmp_path / "b", seed=3)
    generate(tmp_path / "c", seed=4)
    a, b, c = (tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_masks_are_exactly_the_altered_pixels(synthetic_root):
    """Files on disk match render_item, and each mask is exactly where the defect image differs."""
    for index, name in enumerate(category_names(2)):
        kind = name.removeprefix("synth_")
        for defect in DEFECTS[kind]:
            for number in range(3):
                normal, image, mask = render_item(kind, index, "test", defect, number, 64, 0)
                folder = synthetic_root / name
                assert np.array_equal(np.asarray(Image.open(folder / "test" / defect / f"{number:03d}.png")), image)
                on_disk = np.asarray(Image.open(folder / "ground_truth" / defect / f"{number:03d}_mask.png"))
                assert set(np.unique(on_disk)) <= {0, 255}
                changed = (image != normal) if image.ndim == 2 else (image != normal).any(axis=2)
                assert np.array_equal(on_disk == 255, changed) and np.array_equal(mask, changed)
                # reasonably sized: visible at 64 px, far from the whole image
                assert 12 <= changed.sum() <= 0.1 * changed.size, (name, defect, number, changed.sum())


def test_defects_are_visibly_anomalous():
    """Every defect pixel changes by a large step (>= 40 grey levels in some channel on average)."""
    for index, kind in enumerate(("texture", "object")):
        for defect in DEFECTS[kind]:
            for number in range(3):
                normal, image, mask = render_item(kind, index, "test", defect, number, 64, 0)
                step = np.abs(image.astype(int) - normal.astype(int))
                step = step if step.ndim == 2 else step.max(axis=2)
                assert step[mask].mean() >= 40, (kind, defect, number, step[mask].mean())


def test_normal_images_vary(synthetic_root):
    for name in category_names(2):
        images = [np.asarray(Image.open(p)) for p in sorted((synthetic_root / name / "train" / "good").glob("*.png"))]
        assert len({image.tobytes() for image in images}) == len(images)


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    generate(tmp_path)
    assert time.perf_counter() - start < 4.0  # < 2 s on an idle core; slack for a shared machine


def test_rerun_replaces_own_output_refuses_foreign_folder(tmp_path):
    generate(tmp_path, n_train=30)
    generate(tmp_path)  # a smaller second run leaves no stale files
    assert len(list((tmp_path / "synth_texture" / "train" / "good").glob("*.png"))) == 24
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "synth_texture").mkdir()
    with pytest.raises(DataError, match=r"other/synth_texture exists and was not written by synth"):
        generate(tmp_path / "other")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"categories": 0}, r"--n-categories 0: expected at least 1"),
        ({"image_size": 16}, r"--image-size 16: expected at least 32"),
        ({"n_train": 4}, r"--train 4: expected at least 5"),
        ({"n_test": 3}, r"--test 3: expected at least 4"),
        ({"seed": -1}, r"--seed -1: expected a non-negative"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate(tmp_path, **kwargs)


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["main.py"])  # main.main rewrites sys.argv; restored after the test
    return main.main(list(argv))


def test_cli(tmp_path, capsys, monkeypatch):
    code = run_cli(monkeypatch, "synth", "--data-root", str(tmp_path), "--n-categories", "3", "--image-size", "32",
                   "--train", "6", "--test", "5", "--seed", "1")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth_object", "synth_texture", "synth_texture2"]
    assert "synth_texture2" in capsys.readouterr().out
    assert run_cli(monkeypatch, "synth", "--out", str(tmp_path), "--test", "2") == 2  # the old spelling still works
    err = capsys.readouterr().err
    assert "--test 2: expected at least 4" in err and "--out is the old spelling of --data-root" in err
