"""Image files: the header read and checked against our size limit before any pixel is
decoded, one frame decoded, and pages brought to RGB within a pixel budget.

A file that cannot be read raises InputError with the reason; the caller adds its name.
In-memory images (bytes given to the Python API) take the same path through a file object.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO, Union

from .errors import InputError
from .i18n import _

# Images declaring more than REFUSE_FACTOR times the page pixel budget are refused
# outright (decompression bombs); pages above the budget are scaled down to it.
REFUSE_FACTOR = 8

# Pillow's opener for each kind `sniff` finds.
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}


def _open_image(path: Union[Path, BinaryIO], kind: str, max_pixels: int):
    """The image's header, read lazily; one above our refusal limit is refused before decoding.

    `Image.open` compares sizes with Pillow's process-wide MAX_IMAGE_PIXELS, which
    --max-image-pixels may exceed. Raising that global would leak into the caller's own use
    of Pillow and race between render threads, so the header is read with the format's own
    opener (the same Image.open picks, minus that check) and the size checked here.
    """
    from PIL import Image

    Image.init()
    opener = Image.OPEN.get(PIL_FORMATS.get(kind, ""))
    if opener is None:
        raise InputError(_("cannot read image: {reason}").format(reason=f"no {kind} support in Pillow"))
    try:
        img = opener[0](path if hasattr(path, "read") else str(path))
    except Image.DecompressionBombError as exc:   # raised by some formats' own header checks
        raise InputError(_("image too large ({detail}); refusing to decode it").format(detail=_bomb_detail(str(exc)))) from None
    except (SyntaxError, IndexError, TypeError, ValueError, EOFError, struct.error):
        raise InputError(_("corrupt image: its header cannot be decoded")) from None
    except Exception as exc:
        raise InputError(_("cannot read image: {reason}").format(reason=_clean(exc))) from None
    _check_size(img, max_pixels)
    return img


def _check_size(img, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise InputError(_("image has invalid dimensions {w}x{h}").format(w=w, h=h))
    if w * h > max_pixels * REFUSE_FACTOR:
        img.close()
        raise InputError(_("image too large ({w}x{h} = {mp:.0f} MP, limit {limit:.0f} MP); refusing to decode it").format(
            w=w, h=h, mp=w * h / 1e6, limit=max_pixels * REFUSE_FACTOR / 1e6))


def _decode(img, max_pixels: int) -> None:
    """Decode the current frame; Pillow's own limit (it checks some formats' frames again) is reported as ours."""
    from PIL import Image

    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise InputError(_("image too large ({detail}); refusing to decode it").format(detail=_bomb_detail(str(exc)))) from None
    except Exception as exc:
        raise InputError(_("corrupt or truncated image: {reason}").format(reason=_clean(exc))) from None
    _check_size(img, max_pixels)   # a GIF frame may extend the canvas


def _bomb_detail(message: str) -> str:
    m = re.search(r"\((\d+) pixels\)", message)
    return f"{int(m.group(1)) / 1e6:.0f} MP" if m else message


def _clean(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]


def image_frame_count(path: Path, kind: str, max_pixels: int) -> int:
    img = _open_image(path, kind, max_pixels)
    try:
        # Multi-page TIFFs (and animated GIF/WebP) are documents of several pages.
        count = int(getattr(img, "n_frames", 1) or 1) if kind in ("tiff", "gif", "webp") else 1
        # Decode the first frame now so a truncated or corrupt file fails here, with its name.
        _decode(img, max_pixels)
        return max(count, 1)
    finally:
        img.close()


def load_image_frame(path: Union[Path, BinaryIO], kind: str, frame: int, max_pixels: int):
    from PIL import ImageOps

    img = _open_image(path, kind, max_pixels)
    try:
        if frame:
            img.seek(frame)
        _decode(img, max_pixels)
        return to_rgb(bound_pixels(ImageOps.exif_transpose(img), max_pixels))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(_("corrupt or truncated image: {reason}").format(reason=_clean(exc))) from None
    finally:
        img.close()


def bound_pixels(img, max_pixels: int):
    """`img`, scaled down to at most `max_pixels` pixels (aspect kept)."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = (max_pixels / (w * h)) ** 0.5
    from PIL import Image
    return img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.LANCZOS if img.mode not in ("1", "P") else Image.NEAREST)


def to_rgb(img):
    """`img` as RGB; transparent pixels become white paper, 16-bit greys are stretched to 8 bits."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype("uint8")).convert("RGB")
    return img.convert("RGB")
