"""The dataset layer: MVTec, VisA and split-file layouts, splits, items, image and mask conversions, cache,
and every bad input's message."""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from categories import (
    MVTEC_CATEGORIES,
    OBJECT_CATEGORIES,
    OFFICIAL_COUNTS,
    TEXTURE_CATEGORIES,
    VISA_CATEGORIES,
    VISA_GROUPS,
    VISA_OFFICIAL_COUNTS,
    category_group,
    category_kind,
    group_order,
    validate_category,
)
from dataset import (
    IMAGENET_MEAN,
    AnomalyDataset,
    DataWarning,
    MVTecDataset,
    data_provenance,
    denormalize,
    detect_format,
    list_categories,
    mask_values,
    normalize,
    read_split_csv,
    holdout_draw,
    split_train_val,
)
from errors import DataError, RDError
from rd_model import validate_image_size
from visa_tree import SPLIT_HEADER, VISA_HEADER, write_split_csv, write_visa_tree


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


def test_visa_tables_match_facts():
    assert len(VISA_CATEGORIES) == 12 == len(VISA_OFFICIAL_COUNTS) and set(VISA_CATEGORIES) == set(VISA_OFFICIAL_COUNTS)
    totals = [sum(counts[i] for counts in VISA_OFFICIAL_COUNTS.values()) for i in range(3)]
    assert totals == [8659, 962, 1200]  # 9,621 normal and 1,200 anomalous images in all
    assert sum(map(len, VISA_GROUPS.values())) == 12


def test_category_group_and_order():
    assert [category_group(name) for name in ("pcb3", "capsules", "macaroni2", "pipe_fryum", "cashew")] == [
        "complex structure", "multiple instances", "multiple instances", "single instance", "single instance"]
    assert category_group("carpet") == "texture" and category_group("my_parts") == "other"
    assert category_kind("pcb1") == category_group("pcb1")
    assert group_order("mvtec") == ("texture", "object", "other")
    assert group_order("visa") == ("complex structure", "multiple instances", "single instance", "other")
    assert group_order() == ("texture", "object", "complex structure", "multiple instances", "single instance",
                             "scene", "loco object", "other")
    assert group_order("mvtec_loco") == ("loco object", "other") and category_group("walnuts") == "scene"


@pytest.mark.parametrize("name", ["../other/cat", "..", ".", "", "  ", "a/b", "a\\b", "/abs"])
def test_category_must_be_a_plain_folder_name(synthetic_root, name):
    with pytest.raises(DataError, match=r"category .*(not a plain folder name|expected a folder name)"):
        validate_category(name)
    with pytest.raises(DataError, match=r"category .*(not a plain folder name|expected a folder name)"):
        MVTecDataset(synthetic_root, name)


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
    with pytest.raises(RDError, match=message):
        validate_image_size(size)


def test_the_dataset_takes_any_size_the_model_checks_its_own(synthetic_root):
    """The multiple of 32 is the model's constraint (rd_model.validate_image_size), not the data's."""
    assert MVTecDataset(synthetic_root, "synth_object", "test", image_size=48).uint8_images().shape[-2:] == (48, 48)
    for bad in (0, -1, 4.5):
        with pytest.raises(DataError, match="positive whole number"):
            MVTecDataset(synthetic_root, "synth_object", image_size=bad)


def test_split_train_val_is_deterministic_disjoint_and_follows_the_rule():
    names = [f"{i:03d}.png" for i in range(100)]
    train, val = split_train_val(names)
    assert sorted(train + val) == names and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_train_val(list(reversed(names))) == (train, val)  # listing order does not matter
    assert split_train_val(names, seed=1)[1] != val
    # the rule, computed by hand: held out when the first 64 bits of SHA-256("seed/name") / 2^64 < fraction
    by_hand = [n for n in names if int(hashlib.sha256(f"0/{n}".encode()).hexdigest()[:16], 16) / 2**64 < 0.1]
    assert val == by_hand and 4 <= len(val) < 25


def test_the_hold_out_moves_no_image_when_others_are_added_or_removed():
    """The issue's case: adding zzz.png to 105 names used to move 047.png into validation."""
    names = [f"{i:03d}.png" for i in range(105)]
    train, val = split_train_val(names)
    grown_train, grown_val = split_train_val([*names, "zzz.png"])
    assert [n for n in grown_val if n != "zzz.png"] == val and [n for n in grown_train if n != "zzz.png"] == train
    for removed in (val[0], train[0], train[-1]):  # one validation image, two training images
        kept = [n for n in names if n != removed]
        smaller_train, smaller_val = split_train_val(kept)
        assert smaller_val == [n for n in val if n != removed] and smaller_train == [n for n in train if n != removed]
    assert all((holdout_draw(n) < 0.1) == (n in val) for n in names)  # membership: the name's own draw only


def test_small_categories_keep_validation_and_training_images():
    names = [f"{i}.png" for i in range(6)]
    by_draw = sorted(names, key=holdout_draw)
    # too few draws below the fraction: the min_val names of lowest draw are held out
    assert sum(holdout_draw(n) < 0.01 for n in names) == 0
    assert split_train_val(names, 0.01, min_val=1) == (sorted(by_draw[1:]), [by_draw[0]])
    assert split_train_val(names, 0.01) == (sorted(by_draw[4:]), sorted(by_draw[:4]))
    # every draw below the fraction: the name of highest draw still trains
    assert max(map(holdout_draw, names)) < 0.999
    assert split_train_val(names, 0.999, min_val=1) == ([by_draw[-1]], sorted(by_draw[:-1]))


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
    assert list_categories(synthetic_root, "mvtec") == ["synth_object", "synth_texture"]


def test_list_categories_ignores_files_and_hidden_folders(tree):
    for name in ("license.txt", "readme.txt", "mvtec_anomaly_detection.tar.xz"):  # MVTec's archive, top level
        (tree / name).write_text("x")
    (tree / ".extract-abc").mkdir()
    (tree / ".ipynb_checkpoints").mkdir()
    assert list_categories(tree) == ["synth_object", "synth_texture"]


def test_folder_without_train_good_is_an_error_under_all(tree):
    (tree / "notes").mkdir()
    with pytest.raises(DataError, match=rf"{tree / 'notes'} is not an MVTec-format category: it has no "
                                        rf"train/good/ folder \(1 such folder\(s\) in {tree}: notes\)"):
        list_categories(tree)
    shutil.move(tree / "synth_object", tree / "notes" / "synth_object")  # a data root one level too high
    with pytest.raises(DataError, match=rf"did you mean --data-root {tree / 'notes'}\?"):
        list_categories(tree)


# ---------------------------------------------------------------- splits and items


def test_splits_counts_and_validation_names(synthetic_root):
    train = MVTecDataset(synthetic_root, "synth_object", "train", image_size=64)
    val = MVTecDataset(synthetic_root, "synth_object", "val", image_size=64)
    test = MVTecDataset(synthetic_root, "synth_object", "test", image_size=32)
    assert (len(train) + len(val), len(test)) == (24, 16) and len(val) >= 4
    assert val.val_names == split_train_val([f"{i:03d}.png" for i in range(24)])[1]  # the rule, on the file names
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
    assert len(dataset) == 24 - len(dataset.val_names)
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


# ---------------------------------------------------------------- masks: any non-zero pixel is a defect


def test_mask_with_defect_pixels_of_100_is_not_empty(tree):
    """The bug this guards against: a mask whose defect pixels are 100 used to load as empty."""
    mask_path = tree / "synth_texture" / "ground_truth" / "hole" / "000_mask.png"
    image_path = str(tree / "synth_texture" / "test" / "hole" / "000.png")
    reference = MVTecDataset(tree, "synth_texture", "test", image_size=32).uint8_masks()
    binary = np.asarray(Image.open(mask_path)) > 0
    grey = np.where(binary, 100, 0).astype(np.uint8)
    grey[binary & (np.indices(binary.shape).sum(axis=0) % 2 == 0)] = 255  # values 0, 100 and 255
    Image.fromarray(grey).save(mask_path)
    assert mask_values(mask_path) == [0, 100, 255]
    dataset = MVTecDataset(tree, "synth_texture", "test", image_size=32)
    index = dataset.paths.index(image_path)
    assert dataset.uint8_masks()[index].sum() > 0
    assert torch.equal(dataset.uint8_masks(), reference)


@pytest.mark.parametrize("mode", ["RGB", "I;16", "F", "1"])
def test_masks_in_other_modes_read_the_same(tree, mode):
    mask_path = tree / "synth_object" / "ground_truth" / "scratch" / "000_mask.png"
    reference = MVTecDataset(tree, "synth_object", "test", image_size=64).uint8_masks()
    binary = np.asarray(Image.open(mask_path)) > 0
    if mode == "RGB":
        image = Image.fromarray(np.stack([binary * 0, binary * 0, binary * 30], axis=2).astype(np.uint8))
    elif mode == "I;16":
        image = Image.fromarray(binary.astype(np.uint16))  # 0/1 in a 16-bit file
    elif mode == "F":
        image = Image.fromarray(binary.astype(np.float32) * 0.5)
    else:
        image = Image.fromarray(binary)
    assert image.mode == mode
    mask_path.unlink()
    image.save(mask_path.with_suffix(".tiff"))
    assert torch.equal(MVTecDataset(tree, "synth_object", "test", image_size=64).uint8_masks(), reference)


# ---------------------------------------------------------------- images that are not 8-bit


def sixteen_bit(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode.startswith("I;16")
    return image


def test_non_eight_bit_images_are_scaled(tmp_path, synthetic_root):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    images = {
        "a_float.tiff": Image.fromarray(ramp),
        "b_16bit.png": sixteen_bit(np.full((64, 64), 257 * 200)),
        "c_int32.tiff": Image.fromarray(np.full((64, 64), 257 * 40, dtype=np.int32)),
        "d_16bit_big_endian.tiff": Image.fromarray(np.full((64, 64), 257 * 60, dtype=">u2")),
    }
    assert [image.mode for image in images.values()] == ["F", "I;16", "I", "I;16B"]
    category = category_with_test_images(tmp_path, synthetic_root, images)
    decoded = MVTecDataset(tmp_path, category, "test", image_size=64).uint8_images()
    assert torch.equal(decoded[0, 0], torch.from_numpy(np.rint(ramp * 255).astype(np.uint8)))  # not black
    assert decoded[0].max() == 255
    assert [decoded[i].unique().tolist() for i in (1, 2, 3)] == [[200], [40], [60]]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Image.fromarray(np.full((64, 64), 2.5, dtype=np.float32)),
         r"float image \(mode F\) with values 2\.5\.\.2\.5, outside \[0, 1\]; accepted: 8-bit images"),
        (Image.fromarray(np.full((64, 64), np.nan, dtype=np.float32)),
         r"float image \(mode F\) with NaN or infinite values"),
        (Image.fromarray(np.full((64, 64), 70000, dtype=np.int32)),
         r"mode I image with values 70000\.\.70000, outside the 16-bit range 0\.\.65535; accepted:"),
        (sixteen_bit(np.full((64, 64), 200)), r"mode I;16 \(16-bit\) image whose values only reach 200: 8-bit data"),
    ],
)
def test_images_that_would_decode_wrongly_are_refused(tmp_path, synthetic_root, image, message):
    category = category_with_test_images(tmp_path, synthetic_root, {"bad.tiff": image})
    dataset = MVTecDataset(tmp_path, category, "test", image_size=64)
    with pytest.raises(DataError, match=rf"{tmp_path / category / 'test' / 'good' / 'bad.tiff'}: {message}"):
        dataset.uint8_images()


def test_unsupported_mode_is_refused_at_construction(tmp_path, synthetic_root):
    category = category_with_test_images(tmp_path, synthetic_root, {"lab.tiff": Image.new("LAB", (64, 64))})
    with pytest.raises(DataError, match=r"lab.tiff: image mode 'LAB' is not supported; accepted: 8-bit images"):
        MVTecDataset(tmp_path, category, "test", image_size=64)


# ---------------------------------------------------------------- unreadable files and folders


def test_unreadable_folder_is_named(tree, monkeypatch):
    train_dir = tree / "synth_object" / "train" / "good"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == train_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match=rf"{train_dir}: permission denied; expected a folder or file"):
        MVTecDataset(tree, "synth_object")


def test_unreadable_image_is_named(tree, monkeypatch):
    image = tree / "synth_object" / "train" / "good" / "000.png"
    real_open = Image.open

    def open_image(path, *args, **kwargs):
        if Path(path) == image:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_image)
    with pytest.raises(DataError, match=rf"{image}: permission denied"):
        MVTecDataset(tree, "synth_object", "train", image_size=64)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="runs as root, where chmod 000 does not deny reads (simulated by the tests above)")
def test_chmod_000_folder_is_named(tree):
    train_dir = tree / "synth_object" / "train" / "good"
    train_dir.chmod(0)
    try:
        with pytest.raises(DataError, match=rf"{train_dir}: permission denied"):
            MVTecDataset(tree, "synth_object")
    finally:
        train_dir.chmod(0o755)


# ---------------------------------------------------------------- VisA layout


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VisA-layout tree (read-only): candle with 0/1 masks, pcb1 with 0/255 masks."""
    root = tmp_path_factory.mktemp("visa")
    write_visa_tree(root)
    return root


@pytest.fixture
def visa_tree(tmp_path: Path, visa_root: Path) -> Path:
    root = tmp_path / "visa"
    shutil.copytree(visa_root, root)
    return root


def test_visa_layout_loads(visa_root):
    assert detect_format(visa_root) == "visa" == detect_format(visa_root, category="candle")
    assert list_categories(visa_root) == ["candle", "pcb1"]  # from the split file: split_csv/ is no category
    train = AnomalyDataset(visa_root, "candle", "train", image_size=32)
    val = AnomalyDataset(visa_root, "candle", "val", image_size=32, data_format="visa")
    test = AnomalyDataset(visa_root, "candle", "test", image_size=32)
    assert (len(train), len(val), len(test)) == (6, 4, 5)
    assert train.data_format == "visa" and train.split_csv == visa_root / "split_csv" / "1cls.csv"
    assert train.val_names == test.val_names
    assert all(name.startswith("candle/Data/Images/Normal/") for name in train.val_names)
    assert [str(Path(p).relative_to(visa_root)) for p in val.paths] == val.val_names
    names = [f"candle/Data/Images/Normal/{i:04d}.JPG" for i in range(10)]
    assert val.val_names == split_train_val(names)[1]  # the same seeded split, by path relative to the root
    assert test.defect_types == ["good", "good", "anomaly", "anomaly", "anomaly"] and test.labels == [0, 0, 1, 1, 1]
    assert test.paths[0].endswith("Normal/0010.JPG") and test.paths[2].endswith("Anomaly/000.JPG")
    assert test.has_masks and test.kind == "multiple instances" and test.folder == visa_root / "candle"
    masks = test.uint8_masks()
    assert masks[:2].sum() == 0 and all(mask.sum() > 0 for mask in masks[2:])
    assert test.uint8_images().shape == (5, 3, 32, 32)


def test_data_provenance(visa_root, synthetic_root):
    assert data_provenance(synthetic_root) == {"data_format": "mvtec", "split_csv": None, "split_csv_sha256": None}
    split_file = visa_root / "split_csv" / "1cls.csv"
    provenance = data_provenance(visa_root, category="candle")
    assert provenance["data_format"] == "visa" and provenance["split_csv"] == str(split_file)
    assert provenance["split_csv_sha256"] == hashlib.sha256(split_file.read_bytes()).hexdigest()
    assert data_provenance(visa_root, split_csv=split_file)["data_format"] == "csv"


def test_visa_zero_one_and_zero_255_masks_read_the_same(visa_root):
    candle = AnomalyDataset(visa_root, "candle", "test", image_size=64)  # masks 0/1
    pcb1 = AnomalyDataset(visa_root, "pcb1", "test", image_size=64)  # masks 0/255, same shapes
    assert mask_values(candle.mask_paths[2]) == [0, 1] and mask_values(pcb1.mask_paths[2]) == [0, 255]
    assert torch.equal(candle.uint8_masks(), pcb1.uint8_masks())
    assert candle.uint8_masks().sum() > 0


def test_visa_split_does_not_depend_on_row_order(visa_tree):
    before = {split: AnomalyDataset(visa_tree, "pcb1", split, 32) for split in ("train", "val", "test")}
    split_file = visa_tree / "split_csv" / "1cls.csv"
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    for split, dataset in before.items():
        again = AnomalyDataset(visa_tree, "pcb1", split, 32)
        assert (again.paths, again.labels, again.val_names) == (dataset.paths, dataset.labels, dataset.val_names)


def test_visa_without_its_split_file(visa_tree):
    (visa_tree / "split_csv" / "1cls.csv").unlink()
    assert detect_format(visa_tree) == "visa"  # the categories have Data/Images
    with pytest.raises(DataError, match=r"split_csv/1cls.csv not found; expected VisA's one-class split there"):
        AnomalyDataset(visa_tree, "candle")
    with pytest.raises(DataError, match=r"category 'candle' has no train/good/ folder"):
        AnomalyDataset(visa_tree, "candle", data_format="mvtec")


def test_visa_unknown_category(visa_root):
    with pytest.raises(DataError, match=r"category 'fryum' not found in .*1cls.csv; categories found: candle, pcb1"):
        AnomalyDataset(visa_root, "fryum")


def test_visa_missing_image_names_row_and_column(visa_tree):
    (visa_tree / "pcb1" / "Data" / "Images" / "Normal" / "0003.JPG").unlink()
    split_file = visa_tree / "split_csv" / "1cls.csv"
    lines = split_file.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "pcb1/Data/Images/Normal/0003" in text)
    with pytest.raises(DataError, match=rf"{split_file}, line {line}, column 'image': .*0003.JPG not found"):
        AnomalyDataset(visa_tree, "pcb1")


# ---------------------------------------------------------------- split files (format csv)


def split_file_of_synthetic_tree(root: Path, path: Path, mask_column: bool = True) -> Path:
    """A split file listing the synthetic MVTec tree's synth_object: train/good as train, test as test."""
    folder = root / "synth_object"
    rows = [("synth_object", "train", "normal", str(p.relative_to(root)), "")
            for p in sorted((folder / "train" / "good").glob("*.png"))]
    for image in sorted((folder / "test").glob("*/*.png")):
        defect = image.parent.name
        mask = folder / "ground_truth" / defect / f"{image.stem}_mask.png"
        label, mask_text = ("normal", "") if defect == "good" else ("anomaly", str(mask.relative_to(root)))
        rows.append(("synth_object", "test", label, str(image.relative_to(root)), mask_text))
    if not mask_column:
        return write_split_csv(path, SPLIT_HEADER[:4], [row[:4] for row in rows])
    return write_split_csv(path, SPLIT_HEADER, rows)


def test_split_file_reads_the_same_images_as_the_folders(tmp_path, synthetic_root):
    split_file = split_file_of_synthetic_tree(synthetic_root, tmp_path / "split.csv")
    assert detect_format(synthetic_root, split_file) == "csv"
    assert list_categories(synthetic_root, split_csv=split_file) == ["synth_object"]
    folders = MVTecDataset(synthetic_root, "synth_object", "test", image_size=32)
    listed = AnomalyDataset(synthetic_root, "synth_object", "test", image_size=32, split_csv=split_file)
    assert listed.data_format == "csv" and listed.has_masks and listed.folder == synthetic_root
    order = [listed.paths.index(path) for path in folders.paths]
    assert sorted(order) == list(range(16))
    assert [listed.labels[i] for i in order] == folders.labels
    assert set(listed.defect_types) == {"good", "anomaly"}
    assert torch.equal(listed.uint8_images()[order], folders.uint8_images())
    assert torch.equal(listed.uint8_masks()[order], folders.uint8_masks())
    train = AnomalyDataset(synthetic_root, "synth_object", "train", 32, data_format="csv", split_csv=split_file)
    assert len(train) == 24 - len(train.val_names) and train.val_names[0].startswith("synth_object/train/good/")


def test_split_file_without_mask_column(tmp_path, synthetic_root):
    split_file = split_file_of_synthetic_tree(synthetic_root, tmp_path / "split.csv", mask_column=False)
    listed = AnomalyDataset(synthetic_root, "synth_object", "test", image_size=32, split_csv=split_file)
    assert listed.has_masks is False and listed.uint8_masks().sum() == 0 and sum(listed.labels) == 11


def test_format_and_split_file_must_agree(synthetic_root, tmp_path):
    with pytest.raises(DataError, match=r"--format csv needs --split-csv FILE"):
        AnomalyDataset(synthetic_root, "synth_object", data_format="csv")
    with pytest.raises(DataError, match=r"--split-csv .* is read by --format csv or visa, not by --format mvtec"):
        AnomalyDataset(synthetic_root, "synth_object", data_format="mvtec", split_csv=tmp_path / "x.csv")
    with pytest.raises(DataError, match=r"--format 'folder': expected one of auto, mvtec, visa, csv"):
        AnomalyDataset(synthetic_root, "synth_object", data_format="folder")
    with pytest.raises(DataError, match=r"--split-csv .*missing.csv: no such file"):
        AnomalyDataset(synthetic_root, "synth_object", split_csv=tmp_path / "missing.csv")


GOOD_ROW = ("synth_object", "test", "normal", "synth_object/test/good/000.png", "")
BAD_ROW = ("synth_object", "test", "anomaly", "synth_object/test/scratch/000.png",
           "synth_object/ground_truth/scratch/000_mask.png")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("synth_object", "valid", *GOOD_ROW[2:]), r"line 3, column 'split': 'valid'; expected train or test"),
        (("synth_object", "test", "bad", *GOOD_ROW[3:]), r"line 3, column 'label': 'bad'; expected normal or anomaly"),
        (("synth_object", "train", *BAD_ROW[2:]), r"line 3, column 'label': an anomaly in the train split"),
        (("synth_object", "test", "normal", "synth_object/test/good/999.png", ""),
         r"line 3, column 'image': .*999.png not found; expected the image file"),
        (("synth_object", "test", "anomaly", "synth_object/test/scratch/001.png", "synth_object/none.png"),
         r"line 3, column 'mask': .*none.png not found"),
        (("synth_object", "test", "normal", "/etc/passwd", ""),
         r"line 3, column 'image': '/etc/passwd' leaves the data root"),
        (("synth_object", "test", "normal", "../outside.png", ""),
         r"line 3, column 'image': '\.\./outside.png' leaves"),
        (("synth_object", "test", "normal", "", ""), r"line 3, column 'image': empty"),
        (("synth_object", "test", "normal", BAD_ROW[3], BAD_ROW[4]),
         r"line 3, column 'mask': a mask for a normal image"),
        (("synth_object", "test", "anomaly", "synth_object/test/scratch/001.png", ""),
         r"line 3, column 'mask': an anomaly without a mask while 1 other anomalies of 'synth_object' have one"),
        (("../other", *GOOD_ROW[1:]), r"line 3, column 'category': category '\.\./other' is not a plain folder name"),
        (GOOD_ROW[:4], r"line 3: 4 fields; expected 5, as in the header"),
        (BAD_ROW, r"line 3, column 'image': synth_object/test/scratch/000.png is listed again \(first on line 2\)"),
    ],
)
def test_bad_split_file_rows_name_file_line_and_column(tmp_path, synthetic_root, row, message):
    train = [("synth_object", "train", "normal", f"synth_object/train/good/{i:03d}.png", "") for i in range(24)]
    split_file = write_split_csv(tmp_path / "split.csv", SPLIT_HEADER, [BAD_ROW, row, GOOD_ROW, *train])
    with pytest.raises(DataError, match=rf"{split_file}(, )?{message}"):
        AnomalyDataset(synthetic_root, "synth_object", "test", image_size=32, split_csv=split_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty; expected the header category,split,label,image,mask"),
        ("category,split,label,mask\n", r"no 'image' column in the header category,split,label,mask"),
        ("split,label,image\n", r"no 'category' column in the header"),
        ("category,object,split,label,image\n", r"both 'category' and 'object'"),
        ("category,split,label,image,mask\n", r"lists no images"),
    ],
)
def test_bad_split_file_headers(tmp_path, text, message):
    split_file = tmp_path / "split.csv"
    split_file.write_text(text)
    with pytest.raises(DataError, match=rf"{split_file}:? {message}"):
        read_split_csv(split_file)


def test_split_file_accepts_visa_header_windows_separators_and_a_bom(tmp_path):
    split_file = tmp_path / "split.csv"
    split_file.write_text("\ufeffObject, split,label,image,mask\r\ncandle,train,normal,candle\\Data\\a.JPG,\r\n",
                          encoding="utf-8")
    (row,) = read_split_csv(split_file)
    assert (row.category, row.split, row.label, row.image, row.mask, row.line) == (
        "candle", "train", "normal", "candle/Data/a.JPG", "", 2)
    assert VISA_HEADER[0] == "object"


def test_source_resolution_decoding_then_resizing_is_what_the_dataset_reads(synthetic_root):
    """synthval makes anomalies on image_io.decode_rgb's source-resolution pixels and resizes them with resize_rgb:
    on an unchanged image that gives exactly the dataset's pixels, at any working size."""
    from image_io import decode_rgb, resize_rgb

    for category in ("synth_object", "synth_texture"):  # RGB and grayscale sources
        val = MVTecDataset(synthetic_root, category, "val", image_size=32)
        source = [decode_rgb(path) for path in val.paths]
        assert all(image.shape == (64, 64, 3) for image in source)  # the files' own size, not the working one
        resized = torch.from_numpy(np.stack([resize_rgb(image, 32) for image in source])).permute(0, 3, 1, 2)
        assert torch.equal(resized, val.uint8_images())
        assert resize_rgb(source[0], 64) is source[0]
