"""Uploaded images: the limits and the decoding, each refusal one line with its HTTP status.

* body larger than ``max_bytes`` -> 413 (checked on ``Content-Length`` before reading, and
  while reading a body without one);
* ``Content-Type`` neither ``image/...`` nor ``multipart/form-data`` (field ``file``) -> 415;
* empty body -> 400; bytes that are no image -> 415; an image format other than PNG, JPEG, BMP
  or TIFF -> 415; more than ``max_pixels`` pixels -> 413, read from the header before anything
  is decoded (a decompression bomb: a few KB of PNG that would expand to gigabytes);
  a truncated or corrupt file -> 400.

A good image is decoded as :func:`fapm_lib.data.images.load_image` decodes a file (EXIF
orientation applied, alpha dropped, 16-bit gray scaled by 1/257, gray replicated to RGB), so the
service scores exactly what ``fapm predict`` scores for the same bytes.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from ..data.images import to_rgb

#: Formats accepted (Pillow's names; MPO is how Pillow names some camera JPEGs).
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF"}
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 8192 * 8192


class BadInput(Exception):
    """A request the service refuses: an HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def check_content_type(content_type: str) -> str:
    """``"image"`` or ``"multipart"`` for an accepted ``Content-Type``; BadInput 415 otherwise."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/"):
        return "image"
    if kind == "multipart/form-data":
        return "multipart"
    shown = kind or "none"
    raise BadInput(415, f"Content-Type {shown} is not accepted: send the image as the body with Content-Type "
                        "image/png (jpeg, bmp, tiff) or as the multipart/form-data field 'file'")


def check_length(declared: str | None, max_bytes: int) -> None:
    """BadInput 413 when a declared ``Content-Length`` exceeds ``max_bytes``; 400 when it is no number."""
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise BadInput(400, f"Content-Length {declared!r} is not a number") from None
    if length > max_bytes:
        raise too_large(length, max_bytes)


def too_large(length: int | None, max_bytes: int) -> BadInput:
    """The 413 for a body over the limit."""
    size = "more than that" if length is None else f"{length} bytes"
    return BadInput(413, f"upload too large: {size}; the limit is {max_bytes} bytes (--max-upload-mb)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The bytes of one PNG, JPEG, BMP or TIFF file (8 or 16 bit, gray or colour) -> upright RGB
    Pillow image; BadInput with the status and message of the module's rules otherwise."""
    if not data:
        raise BadInput(400, "empty body: no image was sent")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(413, f"image refused as a possible decompression bomb ({_one_line(exc)})") from None
    except Image.UnidentifiedImageError:
        raise BadInput(415, "not an image: the body is not a PNG, JPEG, BMP or TIFF file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadInput(400, f"corrupt image header ({_one_line(exc)})") from None
    kind = FORMATS.get(pil.format or "")
    if kind is None:
        raise BadInput(415, f"{pil.format} images are not accepted: send PNG, JPEG, BMP or TIFF")
    width, height = pil.size
    if width * height > max_pixels:
        raise BadInput(413, f"image of {width}x{height} pixels refused as a possible decompression bomb: more "
                            f"than {max_pixels} pixels (--max-pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil.load()
            return to_rgb(ImageOps.exif_transpose(pil))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        raise BadInput(400, f"truncated or corrupt {kind} image ({_one_line(exc)})") from None
