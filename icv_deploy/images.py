"""Reading user images safely (docs/DESIGN.md 10) and sizing them for the model.

`load_image` accepts a path, a PIL image or an HxWx3 uint8 array and returns HxWx3 uint8 RGB with EXIF
rotation applied. Modes that convert safely (16-bit, CMYK, palette, alpha) are converted with a warning;
unreadable, truncated, too small or absurdly large images are refused with one line.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

log = logging.getLogger("icv_deploy")

MIN_SIDE = 16  # smaller images cannot be encoded meaningfully by the VAE
MAX_PIXELS = 100_000_000  # refuse (decompression bombs), read from the header before any pixel is decoded
MAX_FILE_BYTES = 1 << 30  # refuse image files over 1 GiB before reading them
MAX_WORKING_SIDE = 1024  # resolution=None never runs the model above this long side


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        log.warning("%s: %s-mode image converted to 8-bit", name, img.mode)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        log.warning("%s: alpha channel composited over white", name)
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode == "CMYK":
        log.warning("%s: CMYK image converted to RGB", name)
    return img.convert("RGB")


def open_image(path, name: str | None = None) -> Image.Image:
    """Open an image file, reading only its header; no pixel is decoded yet (PIL decodes on `load()`).

    Missing, empty and oversized files, files PIL cannot identify, and images whose header already says they
    have more than MAX_PIXELS pixels are refused here, in one line, before the decoder allocates anything.
    PIL's process-wide `Image.MAX_IMAGE_PIXELS` is left as the application set it: only its warning is silenced
    here, because this check replaces it.
    """
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    if path.is_dir():
        raise ImageError(f"{name}: is a folder, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{name}: empty file, not an image")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{name}: {size:,} bytes, too large an image file (at most {MAX_FILE_BYTES:,})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:  # PIL's own limit, as the application set it
        raise ImageError(f"{name}: refused as a decompression bomb ({' '.join(str(exc).split())})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: unreadable image header ({' '.join(str(exc).split())})") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise ImageError(f"{name}: its header says {width}x{height} px, more than {MAX_PIXELS:,} pixels: refused "
                         "before decoding (decompression bomb or absurdly large image)")
    return img


def load_image(image, name: str | None = None) -> np.ndarray:
    """Path, PIL image or HxWx3 / HxW uint8 array -> HxWx3 uint8 RGB (EXIF rotation applied)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ImageError(f"image array has shape {arr.shape}: expected HxWx3 (RGB)")
        if arr.dtype != np.uint8:
            raise ImageError(f"image array has dtype {arr.dtype}: expected uint8 RGB")
        arr = np.ascontiguousarray(arr[..., :3])
    else:
        if isinstance(image, Image.Image):
            img, name = image, name or "image"
        else:
            name = name or str(image)
            img = open_image(image, name)
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError(f"{name}: unreadable or truncated image ({' '.join(str(exc).split())})") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block must not lose the image
            log.warning("%s: unreadable EXIF orientation ignored", name)
        arr = np.asarray(_to_rgb(img, name))
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name or 'image'}: {w}x{h} px is too small to encode (at least {MIN_SIDE} px a side)")
    if h * w > MAX_PIXELS:
        raise ImageError(f"{name or 'image'}: {w}x{h} px is absurdly large (more than {MAX_PIXELS:,} pixels)")
    return arr


def working_size(height: int, width: int, resolution: int | None, multiple: int) -> tuple[int, int]:
    """The (H, W) the model runs at: long side = resolution (None keeps the input size, capped at
    MAX_WORKING_SIDE), both sides rounded down to a multiple of the VAE scale factor, as diffusers does."""
    scale = 1.0
    if resolution is not None:
        scale = resolution / max(height, width)
    elif max(height, width) > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / max(height, width)
        log.warning("image is %dx%d px: resized to a long side of %d px", width, height, MAX_WORKING_SIDE)
    h = max(multiple, int(round(height * scale)) // multiple * multiple)
    w = max(multiple, int(round(width * scale)) // multiple * multiple)
    return h, w


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> (H, W) with Lanczos (the resampling diffusers' image processor uses)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.LANCZOS))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float32 in [-1, 1]."""
    return torch.tensor(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> B x H x W x 3 uint8 (rounded as diffusers' numpy_to_pil does)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (x * 255).round().astype(np.uint8)
