"""Decoding images and masks: the accepted Pillow modes, their conversion to 8-bit RGB, mask binarisation and
resizing, and the errors that name a file the data tree cannot give (unreadable, damaged, unsupported mode).

Any non-zero mask pixel is a defect (0/255, 0/1 and anti-aliased masks alike). Images and masks are resized
to the working size here (PIL bilinear; masks thresholded again at 0.5 after resizing). A mask may also be a
folder of PNGs, one per defect region (MVTec LOCO AD): its pixel mask is their union, and ``read_region`` reads
one region with the pixel value that names its defect type.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from errors import DataError

__all__ = ["ACCEPTED_MODES", "ACCEPTED_MODES_TEXT", "EIGHT_BIT_MODES", "FLOAT_MODE", "IMAGE_EXTENSIONS",
           "MAX_LISTED_VALUES", "RAW_MASK_MODES", "SIXTEEN_BIT_MODES", "check_headers", "decode_rgb", "mask_files",
           "mask_values", "read_images", "read_mask", "read_region", "read_regions", "read_rgb", "readable",
           "resize_rgb"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Pillow image modes: what each decodes to 8-bit RGB through
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # "I": 32-bit int, 16-bit values only
FLOAT_MODE = "F"  # 32-bit float, values in [0, 1] only
ACCEPTED_MODES = EIGHT_BIT_MODES | SIXTEEN_BIT_MODES | {FLOAT_MODE}
ACCEPTED_MODES_TEXT = (
    "8-bit images (modes 1, L, LA, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr), 16-bit images (I;16 modes, "
    "and mode I with values 0..65535; scaled by 1/257) and 32-bit float images (mode F) with values in "
    "[0, 1] (scaled by 255)"
)
RAW_MASK_MODES = frozenset({"1", "L"}) | SIXTEEN_BIT_MODES | {FLOAT_MODE}  # one channel, read as stored
MAX_LISTED_VALUES = 8


@contextlib.contextmanager
def readable() -> Iterator[None]:
    """Turn an OS error met while reading the data tree (unreadable folder or file) into a DataError naming it."""
    try:
        yield
    except PermissionError as error:
        raise DataError(
            f"{error.filename or 'a file of the data tree'}: permission denied; expected a folder or file "
            f"that this user can read (check its permissions)"
        ) from None
    except OSError as error:
        where = error.filename or "a file of the data tree"
        raise DataError(f"{where}: cannot be read ({error.strerror or error})") from None


def check_headers(pairs: Iterable[tuple[Path, Path | None]]) -> None:
    """Open every image and mask header of (image, mask or None) pairs (cheap): unreadable files, unsupported
    modes and mask/image size mismatches fail now. A mask folder's every file is checked."""
    for image, mask in pairs:
        size = _header_size(image)
        for mask_file in [] if mask is None else mask_files(mask):
            mask_size = _header_size(mask_file)
            if mask_size != size:
                raise DataError(
                    f"{mask_file}: mask is {mask_size[0]}x{mask_size[1]} px but its image {image} is "
                    f"{size[0]}x{size[1]} px; expected both the same size"
                )


def mask_files(mask: Path) -> list[Path]:
    """The files of a mask: the file itself, or a mask folder's PNGs (one per defect region), sorted."""
    if not mask.is_dir():
        return [mask]
    files = sorted(entry for entry in mask.iterdir() if entry.suffix.lower() == ".png" and entry.is_file()
                   and not entry.name.startswith("."))
    if not files:
        raise DataError(f"{mask}: mask folder without a PNG; expected one PNG per defect region of its image")
    return files


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            _check_mode(image.mode, path)
            return image.size
    except PermissionError:
        raise DataError(f"{path}: permission denied; expected an image file this user can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({error}); expected a PNG, JPEG, BMP or TIFF file") from None


def _check_mode(mode: str, path: Path) -> None:
    if mode not in ACCEPTED_MODES:
        raise DataError(f"{path}: image mode {mode!r} is not supported; accepted: {ACCEPTED_MODES_TEXT}")


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open(path)``, with decoding errors as DataErrors naming the file."""
    try:
        with Image.open(path) as image:
            _check_mode(image.mode, path)
            yield image
    except PermissionError:
        raise DataError(f"{path}: permission denied; expected an {what} file this user can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode {what} ({error}); the file is truncated or damaged") from None


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Any accepted mode -> 8-bit RGB: 16-bit values scaled by 1/257, float [0, 1] by 255 (never clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(_sixteen_to_eight_bit(np.asarray(image), image.mode, path)).convert("RGB")
    if image.mode == FLOAT_MODE:
        return Image.fromarray(_float_to_eight_bit(np.asarray(image), path)).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # keeps a transparency palette from warning on the way to RGB
    return image.convert("RGB")


def _sixteen_to_eight_bit(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit values -> uint8 by 1/257; values outside 0..65535, or 8-bit data in a 16-bit file, refused."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise DataError(
            f"{path}: mode {mode} image with values {low}..{high}, outside the 16-bit range 0..65535; "
            f"accepted: {ACCEPTED_MODES_TEXT}"
        )
    if 0 < high <= 255:
        raise DataError(
            f"{path}: mode {mode} (16-bit) image whose values only reach {high}: 8-bit data in a 16-bit file, "
            f"which would decode almost black; expected 16-bit values (0..65535), or save it as an 8-bit image"
        )
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _float_to_eight_bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Float values in [0, 1] -> uint8 by 255; anything else refused."""
    if not np.isfinite(values).all():
        raise DataError(f"{path}: float image (mode F) with NaN or infinite values; accepted: {ACCEPTED_MODES_TEXT}")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{path}: float image (mode F) with values {low:g}..{high:g}, outside [0, 1]; accepted: "
            f"{ACCEPTED_MODES_TEXT}. Rescale it to [0, 1] or save it as an 8- or 16-bit image"
        )
    return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)


def read_images(paths: Sequence[str | os.PathLike], size: int) -> torch.Tensor:
    """Images of any supported mode as one uint8 RGB tensor (N, 3, size, size), decoded exactly as the
    datasets decode them (so a model sees the same pixels in ``predict`` as in ``test``)."""
    with readable():
        arrays = [read_rgb(Path(path), size) for path in tqdm(paths, desc="reading images", unit="img",
                                                                leave=False, disable=len(paths) < 50)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_rgb(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to uint8 RGB (size, size, 3), resized with antialiasing (PIL bilinear)."""
    with _decoding(path, "image") as image:
        rgb = _to_rgb(image, path)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.array(rgb, dtype=np.uint8)


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to uint8 RGB (H, W, 3) at its own size (``read_rgb`` before its resize)."""
    path = Path(path)
    with readable(), _decoding(path, "image") as image:
        return np.array(_to_rgb(image, path), dtype=np.uint8)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> (size, size, 3) as ``read_rgb`` resizes a decoded file (PIL bilinear)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.array(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _mask_levels(image: Image.Image, path: Path) -> np.ndarray:
    """A mask's values (H, W): one-channel modes as stored (0/1, 0/255, 16-bit, float), others as the
    brightest channel of their RGB form."""
    if image.mode in RAW_MASK_MODES:
        levels = np.asarray(image)
        if image.mode == FLOAT_MODE and not np.isfinite(levels).all():
            raise DataError(f"{path}: float mask with NaN or infinite values; expected 0 for normal pixels")
        return levels.astype(np.uint8) if levels.dtype == bool else levels
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB")).max(axis=2)


def mask_values(path: str | os.PathLike) -> list[float]:
    """The distinct values of a mask file (of all files of a mask folder), sorted (what ``check-data --decode``
    reports on)."""
    values: set[float] = set()
    for mask_file in mask_files(Path(path)):
        with _decoding(mask_file, "mask") as image:
            values.update(np.unique(_mask_levels(image, mask_file)).tolist())
    return sorted(values)


def read_mask(path: Path, size: int) -> np.ndarray:
    """Decode a mask to uint8 {0, 1} (size, size): binarised (any non-zero pixel is a defect, so 0/255 and
    0/1 masks read the same; a mask folder's files united), resized, then thresholded at 0.5."""
    binary = None
    for mask_file in mask_files(path):
        with _decoding(mask_file, "mask") as image:
            levels = _mask_levels(image, mask_file) != 0
        binary = levels if binary is None else binary | levels
    return _resized_binary(binary, size)


def read_region(path: Path, size: int) -> tuple[np.ndarray, int, float]:
    """One defect region of a mask folder: uint8 {0, 1} (size, size) as ``read_mask`` resizes it, the one
    non-zero value its pixels carry (its defect type's ``pixel_value`` in MVTec LOCO AD), and the working size's
    pixels per source pixel (size² / (H W))."""
    levels = _region_levels(path)
    return _region(levels, path, size)


def read_regions(path: Path, size: int) -> tuple[np.ndarray, list[Path], list[tuple[np.ndarray, int, float]]]:
    """A mask folder decoded once: its union as ``read_mask`` reads it, its files (``mask_files``) and each file as
    ``read_region`` reads it."""
    files = mask_files(path)
    levels = [_region_levels(mask_file) for mask_file in files]
    union = np.logical_or.reduce([level != 0 for level in levels])
    return (_resized_binary(union, size), files,
            [_region(level, mask_file, size) for level, mask_file in zip(levels, files)])


def _region_levels(path: Path) -> np.ndarray:
    with _decoding(path, "mask") as image:
        return _mask_levels(image, path)


def _region(levels: np.ndarray, path: Path, size: int) -> tuple[np.ndarray, int, float]:
    values = np.unique(levels[levels != 0])
    if values.size != 1 or not float(values[0]).is_integer():
        listed = ", ".join(f"{value:g}" for value in values[:MAX_LISTED_VALUES].tolist()) or "none"
        raise DataError(f"{path}: a region mask with non-zero values {listed}; expected one whole-number value (its "
                        f"defect type's pixel value) on the region and 0 elsewhere")
    return _resized_binary(levels != 0, size), int(values[0]), size * size / float(levels.shape[0] * levels.shape[1])


def _resized_binary(binary: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask (H, W) -> uint8 {0, 1} (size, size): bilinear resize of 0/255, then >= 128."""
    if binary.shape != (size, size):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        binary = np.asarray(resized) >= 128
    return binary.astype(np.uint8)
