"""MVTecDataset and helpers: splits, items, image conversions, cache, and every bad input's message."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import (
    IMAGENET_MEAN,
    MVTEC_CATEGORIES,
    OBJECT_CATEGORIES,
    OFFICIAL_COUNTS,
    TEXTURE_CATEGORIES,
    DataWarning,
    MVTecDataset,
    category_kind,
    denormalize,
    list_categories,
    normalize,
    split_train_val,
    validate_image_size,
)
from errors import DataError


@pytest.fixture
def tree(tmp_path: Path, synthetic_root: Path) -> Path:
    """A private copy of the synthetic tree, free to break."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def category_with_test_images(root: Path, synthetic_root: Path, images: dict[str, Image.Image]) -> str:
    """A category 'handmade': synthetic train/good, and ``images`` as its test/good (no ground_truth/)."""
    shutil.copytree(synthetic_root / "synth_texture" / "train", root / "handmade" / "train")
    (root / "handmade" / "test" / "good").mkdir(parents=True)
    for name, image in images.items():
        image.save(root / "handmade" / "test" / "good" / name)
    return "handmade"


# ---------------------------------------------------------------- constants and helpers


def test_official_table_matches_facts():
    assert len(MVTEC_CATEGORIES) == 15 == len(OFFICIAL_COUNTS)
    assert set(MVTEC_CATEGORIES) == set(TEXTURE_CATEGORIES) | set(OBJECT_CATEGORIES) == set(OFFICIAL_COUNTS)
    totals = [sum(counts[i] for counts in OFFICIAL_COUNTS.values()) for i in range(3)]
    assert totals == [3629, 467, 1258]


def test_category_kind():
    assert category_kind("carpet") == "texture" and category_kind("zipper") == "object"
    assert category_kind("synth_texture2") == "texture" and category_kind("synth_object") == "object"
    assert category_kind("my_parts") == "other"


@pytest.mark.parametrize("size", [32, 64, 256, 512])
def test_valid_image_sizes(size):
    validate_image_size(size)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (16, r"--image-size 16 is smaller than 32 px.*nearest valid size: 32\)"),
        (100, r"--image-size 100 is not divisible by 32.*nearest valid size: 96\)"),
        (250, r"--image-size 250 is not divisible by 32.*nearest valid size: 256\)"),
        (112, r"--image-size 112 is not divisible by 32.*nearest valid sizes: 96 or 128\)"),
    ],
)
def test_bad_image_size(size, message):
    with pytest.raises(DataError, match=message):
        validate_image_size(size)


def test_bad_image_size_in_dataset(synthetic_root):
    with pytest.raises(DataError, match=r"--image-size 100 .*nearest valid size: 96"):
        MVTecDataset(synthetic_root, "synth_object", image_size=100)


def test_split_train_val_is_deterministic_disjoint_and_stable():
    names = [f"{i:03d}.png" for i in range(100)]
    train, val = split_train_val(names)
    assert len(val) == 10 and sorted(train + val) == names and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_train_val(list(reversed(names))) == (train, val)  # listing order does not matter
    assert split_train_val(names, seed=1)[1] != val
    assert len(split_train_val(names[:20])[1]) == 4  # at least 4
    grown = split_train_val([*names, "100.png"])[1]
    assert len(set(grown) ^ set(val)) <= 2  # one new file moves at most one other


def test_split_train_val_bad_input():
    with pytest.raises(DataError, match=r"4 training images are too few to hold out 4 .*expected at least 5"):
        split_train_val(["a", "b", "c", "d"])
    with pytest.raises(DataError, match=r"--val-fraction 1.5: expected a fraction between 0 and 1"):
        split_train_val(["a"] * 10, fraction=1.5)


def test_normalize_denormalize_round_trip():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    normalized = normalize(images)
    assert normalized.dtype == torch.float32 and normalized.shape == images.shape
    assert torch.allclose(normalized[:, 0], (images[:, 0] / 255 - IMAGENET_MEAN[0]) / 0.229, atol=1e-5)
    assert torch.allclose(denormalize(normalized), images / 255, atol=1e-5)
    assert normalize(images[0]).shape == (3, 8, 8)
    with pytest.raises(TypeError, match="uint8"):
        normalize(normalized)


def test_list_categories(synthetic_root):
    assert list_categories(synthetic_root) == ["synth_object", "synth_texture"]


# ---------------------------------------------------------------- splits and items


def test_splits_counts_and_validation_names(synthetic_root):
    train = MVTecDataset(synthetic_root, "synth_object", "train", image_size=64)
    val = MVTecDataset(synthetic_root, "synth_object", "val", image_size=64)
    test = MVTecDataset(synthetic_root, "synth_object", "test", image_size=32)
    assert (len(train), len(val), len(test)) == (20, 4, 16)
    assert train.val_names == val.val_names == test.val_names  # same split whatever the split or size
    assert [Path(p).name for p in val.paths] == val.val_names
    assert not {Path(p).name for p in train.paths} & set(val.val_names)
    assert set(train.labels) == set(val.labels) == {0}
    assert test.defect_types[:5] == ["good"] * 5 and test.defect_types[5:] == sorted(test.defect_types[5:])
    assert test.labels == [int(t != "good") for t in test.defect_types]
    assert test.has_masks and test.kind == "object"


def test_items(synthetic_root):
    test = MVTecDataset(synthetic_root, "synth_texture", "test", image_size=64)
    for index in (0, len(test) - 1):
        item = test[index]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
        assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, 64, 64)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"] == test.labels[index] and item["defect_type"] == test.defect_types[index]
        assert item["path"] == test.paths[index]
        assert torch.equal(item["image"], normalize(test.uint8_images()[index]))
    masks = test.uint8_masks()
    assert masks.dtype == torch.uint8 and masks.shape == (16, 1, 64, 64)
    areas = masks.flatten(1).sum(1)
    assert all((area > 0) == bool(label) for area, label in zip(areas.tolist(), test.labels))
    # grayscale texture comes out as three equal channels
    images = test.uint8_images()
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def test_data_loader_batches(synthetic_root):
    loader = torch.utils.data.DataLoader(MVTecDataset(synthetic_root, "synth_object", "test", 64), batch_size=8)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["label"].shape == (8,)
    assert len(batch["defect_type"]) == 8 and len(batch["path"]) == 8


def test_cache_serves_later_epochs_without_files(tree):
    dataset = MVTecDataset(tree, "synth_object", "test", image_size=64)
    uncached = MVTecDataset(tree, "synth_object", "test", image_size=64, cache=False)
    first = dataset.uint8_images()
    masks = dataset.uint8_masks()
    uncached.uint8_images()
    shutil.rmtree(tree / "synth_object" / "test")
    shutil.rmtree(tree / "synth_object" / "ground_truth")
    assert torch.equal(dataset.uint8_images(), first) and torch.equal(dataset.uint8_masks(), masks)
    assert dataset[3]["image"].shape == (3, 64, 64)
    with pytest.raises(DataError, match=r"cannot decode image"):
        uncached[0]


def test_working_size_resizes_images_and_masks(synthetic_root):
    dataset = MVTecDataset(synthetic_root, "synth_object", "test", image_size=32)
    assert dataset.uint8_images().shape == (16, 3, 32, 32)
    masks = dataset.uint8_masks()
    assert masks.shape == (16, 1, 32, 32) and set(masks.unique().tolist()) <= {0, 1}
    full = MVTecDataset(synthetic_root, "synth_object", "test", image_size=64).uint8_masks()
    ratio = masks.sum().item() * 4 / full.sum().item()
    assert 0.7 < ratio < 1.3  # thresholded at 0.5: the area is kept


# ---------------------------------------------------------------- image formats


def test_grayscale_palette_rgba_16bit_become_rgb(tmp_path, synthetic_root):
    palette = Image.new("P", (64, 64))
    palette.putpalette([10, 20, 30] * 256)
    sixteen = Image.fromarray(np.full((64, 64), 257 * 100, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    images = {
        "a_gray.png": Image.new("L", (64, 64), 77),
        "b_palette.png": palette,
        "c_rgba.png": Image.new("RGBA", (64, 64), (1, 2, 3, 0)),
        "d_16bit.png": sixteen,
        "e_gray_alpha.png": Image.new("LA", (64, 64), (50, 255)),
        "f_rgb.jpg": Image.new("RGB", (64, 64), (200, 100, 0)),
    }
    category = category_with_test_images(tmp_path, synthetic_root, images)
    dataset = MVTecDataset(tmp_path, category, "test", image_size=32)
    assert not dataset.has_masks
    pixels = dataset.uint8_images()[:, :, 0, 0].tolist()
    assert pixels[:5] == [[77] * 3, [10, 20, 30], [1, 2, 3], [100] * 3, [50] * 3]
    assert all(abs(a - b) <= 3 for a, b in zip(pixels[5], (200, 100, 0)))  # JPEG


def test_resize_is_antialiased(tmp_path, synthetic_root):
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    category = category_with_test_images(tmp_path, synthetic_root, {"checker.png": Image.fromarray(checker)})
    image = MVTecDataset(tmp_path, category, "test", image_size=32).uint8_images()[0].float()
    assert (image - 127.5).abs().max() <= 3  # averaged to grey, not aliased to black or white


def test_zero_one_masks_and_resize_with_threshold(tree):
    mask_path = tree / "synth_texture" / "ground_truth" / "hole" / "000_mask.png"
    block = np.zeros((64, 64), dtype=np.uint8)
    block[16:48, 16:48] = 1  # a 0/1 mask, as some user data sets store them
    Image.fromarray(block).save(mask_path)
    dataset = MVTecDataset(tree, "synth_texture", "test", image_size=32)
    mask = dataset.uint8_masks()[dataset.paths.index(str(tree / "synth_texture" / "test" / "hole" / "000.png"))]
    expected = torch.zeros((1, 32, 32), dtype=torch.uint8)
    expected[:, 8:24, 8:24] = 1
    assert torch.equal(mask, expected)


def test_no_ground_truth_means_masks_unavailable(tree):
    shutil.rmtree(tree / "synth_object" / "ground_truth")
    dataset = MVTecDataset(tree, "synth_object", "test", image_size=64)
    assert dataset.has_masks is False
    assert len(dataset) == 16 and sum(dataset.labels) == 11
    assert dataset.uint8_masks().sum() == 0 and dataset.mask_paths == [None] * 16


# ---------------------------------------------------------------- bad input: one message each


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"data root {missing} does not exist.*train/good.*main.py download"):
        MVTecDataset(missing, "bottle")


def test_missing_category_lists_those_found(synthetic_root):
    found = r"categories found: synth_object, synth_texture"
    with pytest.raises(DataError, match=rf"category 'bottle' not found in .*{found}"):
        MVTecDataset(synthetic_root, "bottle")


def test_empty_train_good(tree):
    train_dir = tree / "synth_object" / "train" / "good"
    for path in train_dir.iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"{train_dir} holds no images; expected the normal training images"):
        MVTecDataset(tree, "synth_object")


def test_too_few_train_images_for_validation(tree):
    train_dir = tree / "synth_object" / "train" / "good"
    for path in sorted(train_dir.iterdir())[3:]:
        path.unlink()
    with pytest.raises(DataError, match=rf"{train_dir}: 3 training images are too few .*expected at least 5"):
        MVTecDataset(tree, "synth_object")


def test_defect_image_without_mask(tree):
    mask = tree / "synth_object" / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    image = tree / "synth_object" / "test" / "scratch" / "001.png"
    with pytest.raises(DataError, match=rf"{image}: defect image without a mask; expected {mask}"):
        MVTecDataset(tree, "synth_object", "test", image_size=64)
    MVTecDataset(tree, "synth_object", "train", image_size=64)  # the train split does not need masks


def test_mask_without_image(tree):
    image = tree / "synth_object" / "test" / "colour" / "000.png"
    image.unlink()
    mask = tree / "synth_object" / "ground_truth" / "colour" / "000_mask.png"
    with pytest.raises(DataError, match=rf"{mask}: mask without an image; expected {image}"):
        MVTecDataset(tree, "synth_object", "test", image_size=64)


def test_mask_folder_without_test_folder(tree):
    shutil.rmtree(tree / "synth_object" / "test" / "colour")
    message = r"ground_truth/colour/000_mask.png: mask without an image; expected .*test/colour/000.png"
    with pytest.raises(DataError, match=message):
        MVTecDataset(tree, "synth_object", "test", image_size=64)


def test_mask_and_image_sizes_differ(tree):
    mask = tree / "synth_texture" / "ground_truth" / "stain" / "000_mask.png"
    Image.new("L", (32, 32)).save(mask)
    message = rf"{mask}: mask is 32x32 px but its image .*000.png is 64x64 px; expected both the same size"
    with pytest.raises(DataError, match=message):
        MVTecDataset(tree, "synth_texture", "test", image_size=64)


def test_file_that_is_not_an_image(tree):
    fake = tree / "synth_texture" / "train" / "good" / "005.png"
    fake.write_text("not a png")
    with pytest.raises(DataError, match=rf"{fake}: unreadable image .*expected a PNG, JPEG, BMP or TIFF file"):
        MVTecDataset(tree, "synth_texture", "train", image_size=64)


def test_truncated_image(tree):
    truncated = tree / "synth_object" / "test" / "good" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:400])
    dataset = MVTecDataset(tree, "synth_object", "test", image_size=64)  # the header is intact
    with pytest.raises(DataError, match=rf"{truncated}: cannot decode image .*truncated or damaged"):
        dataset.uint8_images()


def test_junk_files_are_ignored_with_a_warning(tree):
    train_dir = tree / "synth_object" / "train" / "good"
    (train_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tree / "synth_object" / "test" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(DataWarning, match=rf"{train_dir}: ignoring 2 non-image entries: .DS_Store, Thumbs.db"):
        dataset = MVTecDataset(tree, "synth_object", "train", image_size=64)
    assert len(dataset) == 20
    with pytest.warns(DataWarning) as caught:
        assert len(MVTecDataset(tree, "synth_object", "test", image_size=64)) == 16
    assert any(str(w.message).endswith("test: ignoring 1 files: .DS_Store") for w in caught)


def test_clean_tree_gives_no_warning(synthetic_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MVTecDataset(synthetic_root, "synth_texture", "test", image_size=64)


def test_bad_split(synthetic_root):
    with pytest.raises(DataError, match=r"split 'validation': expected one of train, val, test"):
        MVTecDataset(synthetic_root, "synth_texture", "validation")
