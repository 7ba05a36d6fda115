"""Loading and checking media items: a path under the media root, raw bytes, or a ``{"bytes", "path"}``
struct -> (bytes to write, the extension to write them with).

The extension must be one the modality's adapter reads (``adapters.accepted_extensions``). It is decided
from the bytes where the converter knows the format, else from the file name:
- known containers (mp4/mov/m4a, mkv/webm, avi, wav, flac, mp3, ogg/opus) are recognised by their first bytes,
  which refine the extension: the file's own if it is of that container family, else the family's first;
- images are opened with Pillow to check them (``verify``, at most the image adapter's 64 megapixels) and
  written with the extension of their real format; ``--resize N`` re-encodes larger ones (and formats the
  adapter does not read) as JPEG;
- any other extension the adapter declares (an out-of-tree format) is copied as it is: its adapter's
  ``decode`` checks it at training time.
Media bytes are otherwise copied as they are. Paths may not leave the media root (``..``, absolute paths
elsewhere, symlinks out).
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Mapping

from .reasons import ESCAPE, MALFORMED, MISSING_MEDIA, TOO_LARGE, UNREADABLE, UNSUPPORTED, Skip

# Pillow format -> the extensions it is written with (the first one preferred)
IMAGE_FORMATS = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",), "WEBP": ("webp",), "GIF": ("gif",), "BMP": ("bmp",),
                 "TIFF": ("tif", "tiff"),
                 "MPO": ("jpg", "jpeg")}  # a phone camera's JPEG with extra pictures after it: read as its first
IMAGE_EXTENSIONS = {e for exts in IMAGE_FORMATS.values() for e in exts}
# container family of each extension; within a family the first extension is the canonical one
CONTAINERS = {"mp4": "iso", "mov": "iso", "m4a": "iso", "mkv": "ebml", "webm": "ebml", "avi": "avi",
              "wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "ogg"}
FAMILY_NAMES = {"iso": "an MP4/QuickTime file", "ebml": "a Matroska/WebM file", "avi": "an AVI file",
                "wav": "a WAV file", "flac": "a FLAC file", "mp3": "an MP3 file", "ogg": "an Ogg file"}


def sniff(data: bytes) -> str | None:
    """Container family from the first bytes, or None."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "iso"
    if data[:4] == b"\x1aE\xdf\xa3":
        return "ebml"
    if data[:4] == b"RIFF":
        return {b"AVI ": "avi", b"WAVE": "wav"}.get(data[8:12])
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def container_extension(data: bytes, hint_ext: str, accepted: tuple[str, ...]) -> str | None:
    """The extension for the bytes of a known container: ``hint_ext`` if it is of the sniffed family and
    accepted, else the family's first accepted extension; None if the bytes are no known container or the
    adapter reads no extension of their family."""
    family = sniff(data)
    exts = [e for e, f in CONTAINERS.items() if f == family and e in accepted] if family else []
    if not exts:
        return None
    return hint_ext if hint_ext in exts else exts[0]


class Media:
    """Loads one media item and checks it against what its modality's adapter reads."""

    def __init__(self, root: str, resize: int | None = None, accepted: Mapping[str, tuple[str, ...]] | None = None):
        """``accepted``: modality name -> extensions its items may be written with (default: the built-in
        and installed adapters', see ``adapters.accepted_extensions``)."""
        if accepted is None:
            from .adapters import accepted_extensions, resolve
            accepted = accepted_extensions(resolve())
        self.root, self.resize, self.accepted = os.path.realpath(root), resize, dict(accepted)

    def read(self, path: str) -> bytes:
        if "://" in path:
            raise Skip(UNSUPPORTED, f"URL {path} (download media first)")
        try:
            real = os.path.realpath(path if os.path.isabs(path) else os.path.join(self.root, path))
        except ValueError:  # e.g. an embedded NUL
            raise Skip(MALFORMED, f"media path {path!r}") from None
        if os.path.commonpath([real, self.root]) != self.root:
            raise Skip(ESCAPE, path)
        try:
            with open(real, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise Skip(MISSING_MEDIA, path) from None
        except OSError as e:
            raise Skip(UNREADABLE, f"{path}: {e.strerror}") from None

    def load(self, src, modality: str) -> tuple[bytes, str]:
        """-> (bytes to write, extension)."""
        accepted = self.accepted.get(modality)
        if not accepted:
            raise Skip(UNSUPPORTED, f"no adapter for modality {modality!r} (known: {', '.join(sorted(self.accepted))})")
        hint = None
        if isinstance(src, dict):
            hint = src.get("path")
            src = src.get("bytes") if src.get("bytes") is not None else hint
        if isinstance(src, str):
            hint, data = src, self.read(src)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        elif src is None:
            raise Skip(MISSING_MEDIA, f"an empty {modality} item")
        else:
            raise Skip(MALFORMED, f"a {modality} item is {type(src).__name__}")
        if not data:
            raise Skip(UNREADABLE, f"empty {modality} {hint or ''}".strip())
        hint_ext = os.path.splitext(hint)[1][1:].lower() if isinstance(hint, str) else ""
        ext = container_extension(data, hint_ext, accepted)
        if ext is not None:
            return data, ext
        if hint_ext in accepted and hint_ext not in CONTAINERS and hint_ext not in IMAGE_EXTENSIONS:
            return data, hint_ext  # a format the converter does not know: its adapter's decode checks it
        if IMAGE_EXTENSIONS.intersection(accepted):
            return self.image(data, modality, accepted)
        family = sniff(data)
        if family:  # a container this modality's adapter does not take as its own (audio-only WebM, say)
            raise Skip(UNSUPPORTED, f"{hint or 'bytes'}: {FAMILY_NAMES[family]}, which the {modality} adapter does "
                                    f"not read as its own (it reads {'/'.join(accepted)}; re-encode it to one)")
        raise Skip(UNREADABLE, f"not a {modality} file we know ({'/'.join(accepted)}): {hint or 'bytes'}")

    def image(self, data: bytes, modality: str = "image", accepted: tuple[str, ...] = ("jpg", "png", "webp")
              ) -> tuple[bytes, str]:
        from PIL import Image

        from modalities.vision import MAX_PIXELS  # the image adapter's own limit

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise Skip(TOO_LARGE, f"{w}x{h} is over {MAX_PIXELS // 1_000_000} megapixels")
                fmt = im.format
                exts = [e for e in IMAGE_FORMATS.get(fmt, ()) if e in accepted]
                im.verify()
                if self.resize and (max(w, h) > self.resize or not exts):
                    jpeg = [e for e in IMAGE_FORMATS["JPEG"] if e in accepted]
                    if not jpeg:
                        raise Skip(UNSUPPORTED, f"--resize writes JPEG, which the {modality} adapter does not read")
                    im = Image.open(io.BytesIO(data))
                    im.draft("RGB", (self.resize, self.resize))
                    im = im.convert("RGB")
                    im.thumbnail((self.resize, self.resize), Image.Resampling.LANCZOS)
                    out = io.BytesIO()
                    im.save(out, "JPEG", quality=90)
                    return out.getvalue(), jpeg[0]
        except Skip:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip(TOO_LARGE, str(e)[:200]) from None
        except Exception as e:
            raise Skip(UNREADABLE, f"image: {type(e).__name__}: {str(e)[:200]}") from None
        if not exts:
            readable = "/".join(e for e in accepted if e in IMAGE_EXTENSIONS)
            raise Skip(UNSUPPORTED, f"image format {fmt} ({readable} only; --resize re-encodes it)")
        return data, exts[0]
