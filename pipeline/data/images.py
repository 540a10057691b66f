"""One image file -> pixels, whatever Pillow opens, and any bit depth -> 8 bits.

Decoding (`read_image`):
- the first frame of an animated or multi-page file;
- EXIF orientation applied (PIL.ImageOps.exif_transpose), so a phone photo is upright as a viewer shows it;
- transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white, as image
  viewers and browsers show it - what the person who sorted the images saw;
- 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, HSV...) are converted with Pillow to L or RGB;
- high bit-depth modes (I;16, I;16B/L/N, I, F - 16-bit PNG/TIFF, 32-bit TIFF) are NOT converted with
  Pillow (its convert('L') clips them to 255: a 16-bit image becomes white); they are returned as float32 in
  their own range and scaled to 8 bits for the whole dataset at once by `to_uint8`.
Any failure (unreadable, truncated, zero bytes, not an image, permission denied, a decompression bomb, a
mode with no conversion) raises `UnreadableImage`, which the loaders route to the data.bad_images policy.

Scaling (`to_uint8`), one linear map for a whole array so relative intensities between images survive:
uint8 as is; bool -> 0/255; float in [0, 1] -> x 255; values up to 255 -> as is; larger values -> x 255 /
(2**b - 1) with b the smallest even bit depth (10, 12, 14, 16, ... 32) holding the largest value, i.e. the
sensor's depth as found (12-bit data stored in 16-bit files keeps its contrast; the brightest pixel ends at
>= 1/4 of the 8-bit range). Negative or NaN/Inf
pixels are refused: they are normalized data, not pixels.
"""
from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

HIGH_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
BIT_DEPTHS = tuple(range(8, 33, 2))  # 8, 10, 12, 14, 16 (sensors), ... 32: the range used is >= 1/4


class UnreadableImage(DataError):
    """One file that cannot be decoded; `reason` is short (no path), for the skip warning."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} is not a readable image ({reason})",
                         hint="remove or replace that file, or set data.bad_images=skip "
                              "to skip unreadable files with a warning")
        self.path = path
        self.reason = reason


def image_extensions() -> set[str]:
    """Extensions Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _describe(path: Path, e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text.replace(str(path), "").strip(" :'\"") or type(e).__name__


def _upright(img):
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, IndexError, SyntaxError, struct.error):
        return img  # a broken EXIF block: the pixels are fine, keep them as stored


def _on_white(img):
    """Alpha composited on white; returns an image without alpha."""
    from PIL import Image

    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    bg.alpha_composite(rgba)
    return bg.convert("RGB")


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _decode(path: Path, channels: int, size: int | None) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns about palette transparency, odd EXIF and large images; the outcome is handled here.
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img.load()  # decode now (frame 0 of an animation): a truncated file fails here
            img = _upright(img)
            if img.mode in HIGH_BIT_MODES:
                a = np.asarray(img).astype(np.float32)
                if a.ndim != 2:
                    raise UnreadableImage(path, f"mode {img.mode} with shape {a.shape}")
                if not np.isfinite(a).all():
                    raise UnreadableImage(path, f"NaN/Inf pixel values (mode {img.mode})")
                if a.size and a.min() < 0:
                    raise UnreadableImage(path, f"negative pixel values (mode {img.mode})")
                f = Image.fromarray(a)  # mode F: Pillow resizes floats without clipping
                if size and f.size != (size, size):
                    f = f.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(f, dtype=np.float32)[..., None]
            if _has_alpha(img):
                img = _on_white(img)
            elif img.mode not in ("L", "1", "RGB"):
                img = img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV...: Pillow knows their RGB
            img = img.convert("L" if channels == 1 else "RGB")
            if size and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def read_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    """uint8 HxWxC (C = channels), or float32 HxWx1 for a high bit-depth image (scale it with to_uint8)."""
    try:
        st = os.stat(path)  # follows links: a broken one fails here
    except OSError as e:
        raise UnreadableImage(path, "broken link" if os.path.islink(path) else _describe(path, e)) from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or stream forever when opened
        raise UnreadableImage(path, "not a regular file")
    if st.st_size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    try:
        return _decode(path, channels, size)
    except UnreadableImage:
        raise
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, struct.error...)
        raise UnreadableImage(path, _describe(path, e)) from e


def to_uint8(x: np.ndarray, what: str) -> tuple[np.ndarray, str | None]:
    """Pixels of any numeric dtype -> uint8 with one linear map; returns (pixels, a note when scaled)."""
    if x.dtype == np.uint8:
        return x, None
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * np.uint8(255), f"{what}: boolean pixels mapped to 0/255"
    if x.dtype.kind not in "uif":
        raise DataError(f"{what} has dtype {x.dtype}, not numbers", hint="store images as uint8 0..255 or float in [0, 1]")
    if x.size == 0:
        return x.astype(np.uint8), None
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{what} holds NaN/Inf values", hint="clean the data")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        raise DataError(f"{what} has negative pixel values (min {lo:g}): it looks normalized, not raw pixels",
                        hint="save raw pixels (uint8 0..255, 16-bit, or float in [0, 1]); the recipe's "
                             "data.mean/std normalize them")
    if x.dtype.kind == "f" and hi <= 1.0:
        return np.round(x * 255.0).astype(np.uint8), None
    if hi <= 255:
        note = f"{what}: float pixels in [0, {hi:g}] taken as 0..255" if x.dtype.kind == "f" else None
        return np.round(x).astype(np.uint8), note
    bits = next((b for b in BIT_DEPTHS if hi <= 2 ** b - 1), None)
    full = float(2 ** bits - 1) if bits else hi
    scaled = np.empty(x.shape, dtype=np.uint8)
    flat, out = x.reshape(len(x), -1), scaled.reshape(len(x), -1)  # x is (N, ...): one row per image
    for i in range(0, len(flat), 4096):  # in chunks: a float copy of a large uint16 array would double memory
        out[i:i + 4096] = np.round(flat[i:i + 4096].astype(np.float32) * np.float32(255.0 / full)).clip(0, 255)
    depth = f"{bits}-bit range" if bits else f"its maximum {hi:g}"
    return scaled, (f"{what}: high bit-depth pixels (max {hi:g}) scaled to 8 bits by 255/{full:g} ({depth})")

