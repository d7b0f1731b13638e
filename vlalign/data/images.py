"""Opening images from every reference a record may hold, checking them fully, capping their size.

A record's image is a path (relative paths resolve against the data file's folder, or ``image_root``),
raw bytes, the HF ``datasets`` Image struct ``{"bytes": ..., "path": ...}``, or — only when the user
allows network — an ``http(s)://`` URL, which is downloaded once into a cache folder named by the URL's
hash and from then on is a local path.

Validation decodes every image completely (``Image.load``), because ``verify()`` passes truncated JPEGs
that then fail in the middle of training. Before decoding, the header's size is checked against
``max_image_pixels`` / ``max_image_side``: a 20000×20000 PNG is a *decompression bomb* (1.2 GB of RGB)
and is reported as a bad row instead of being decoded. Answers are cached per file (path + size +
mtime) and per content hash of in-memory bytes, so a file that reuses 50 images decodes 50 images.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

# Pillow's own decompression-bomb threshold (~89.5M pixels ≈ 9459²); above twice it Pillow refuses to open.
DEFAULT_MAX_IMAGE_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
DEFAULT_MAX_IMAGE_SIDE = 16_384  # longest side; processors fail on extreme aspect ratios anyway
URL_PREFIXES = ("http://", "https://")
CACHE_ENTRIES = 65_536  # answers remembered per checker (~10 MB): enough for any file's reused images
URL_MAX_BYTES = 64 * 2**20
URL_TIMEOUT_S = 20.0

_EXT_BY_FORMAT = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}


def is_url(ref: Any) -> bool:
    return isinstance(ref, str) and ref.startswith(URL_PREFIXES)


def normalize_ref(ref: Any, base_dir: str | Path | None = None) -> str | bytes:
    """Any image reference → raw ``bytes``, a URL (unchanged) or an absolute path string.

    HF Image structs prefer their bytes (the path inside them is often the original, absent file).
    Relative paths are resolved against ``base_dir`` so records stay usable after loading.
    """
    if isinstance(ref, dict):
        data = ref.get("bytes")
        if data:
            return bytes(data)
        path = ref.get("path")
        if not path:
            raise ValueError("image struct has neither 'bytes' nor 'path'")
        ref = path
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if isinstance(ref, Image.Image):  # a decoded image handed over in memory: keep it lossless
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue()
    if is_url(ref):
        return ref
    if isinstance(ref, (str, os.PathLike)):
        if not str(ref).strip():
            raise ValueError("image path is empty")
        p = Path(ref).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return str(p)
    raise TypeError(f"image reference must be a path, bytes or {{'bytes','path'}} dict, got {type(ref).__name__}")


def url_cache_dir() -> Path:
    """Where downloaded images live (``VLALIGN_IMAGE_CACHE``, default ``~/.cache/vlalign/images``)."""
    return Path(os.environ.get("VLALIGN_IMAGE_CACHE") or Path.home() / ".cache" / "vlalign" / "images")


def fetch_url(url: str, cache_dir: str | Path | None = None) -> str:
    """Download ``url`` once (size-capped, with a timeout) and return the local file path."""
    folder = Path(cache_dir) if cache_dir else url_cache_dir()
    target = folder / hashlib.sha256(url.encode()).hexdigest()
    if target.is_file():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as resp:
        data = resp.read(URL_MAX_BYTES + 1)
    if len(data) > URL_MAX_BYTES:
        raise ValueError(f"{url}: image is larger than {URL_MAX_BYTES // 2**20} MiB")
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)
    return str(target)


def capped_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest (w, h) with w*h <= max_pixels and the same aspect ratio; unchanged if already small.

    Why: VLM processors tile or patchify large images into hundreds of tokens; capping pixels up front
    bounds memory per sample instead of discovering the blow-up as an OOM mid-epoch.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    return w, h


def cap_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downsize ``img`` (keeping aspect) so that it has at most ``max_pixels`` pixels."""
    if not max_pixels:
        return img
    size = capped_size(img.width, img.height, max_pixels)
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def open_image(ref: Any, base_dir: str | Path | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open an image reference as an RGB PIL image (downsized to ``max_pixels`` when given).

    A JPEG larger than the cap is decoded at a reduced scale (``draft``), so a 12000×12000 photo never
    costs its full-size decode; other formats are decoded, then resized.
    """
    norm = normalize_ref(ref, base_dir)
    if is_url(norm):
        raise ValueError(f"{norm}: image URLs are only opened when network is allowed (data.allow_network)")
    src = io.BytesIO(norm) if isinstance(norm, bytes) else norm
    with Image.open(src) as img:
        if max_pixels and img.format == "JPEG" and img.width * img.height > max_pixels:
            img.draft("RGB", capped_size(img.width, img.height, max_pixels))
        rgb = img.convert("RGB")  # convert() forces the decode and detaches from the file handle
    return cap_pixels(rgb, max_pixels) if max_pixels else rgb


def image_extension(data: bytes) -> str:
    """File extension for encoded image bytes (``png`` when the format is unknown)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _EXT_BY_FORMAT.get(img.format or "", "png")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return "png"


def content_name(data: bytes) -> str:
    """``<sha256>.<ext>``: the file name image bytes are stored under (same bytes → same file)."""
    return f"{hashlib.sha256(data).hexdigest()}.{image_extension(data)}"


class ImageChecker:
    """Decodes every image reference once and says what is wrong with it (``None`` = usable).

    ``decode=False`` checks the header and the size limits only: for a caller that decodes the image
    right after anyway (the streaming encoder), where a decoding failure is reported for the row too.
    Such a checker keeps no cache: reading a JPEG header (~20 µs for a 448-pixel image) costs little more
    than hashing its bytes for the cache key (~6 µs), while the cache would grow by one entry per new
    image, up to ``CACHE_ENTRIES`` (~10 MiB, reached after 65k rows of a stream, in every worker).

    ``allow_network`` lets URL images be downloaded (see :func:`fetch_url`); otherwise a URL is a
    problem with its fix. ``resolved`` maps each URL checked to its local copy, so the caller can
    point the record at the file.
    """

    def __init__(
        self,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
        allow_network: bool = False,
        url_cache: str | Path | None = None,
        decode: bool = True,
    ) -> None:
        self.max_image_pixels, self.max_image_side, self.decode = max_image_pixels, max_image_side, decode
        self.allow_network, self.url_cache = allow_network, url_cache
        self._cache: dict[Any, str | None] = {}  # bounded (oldest first out); unused when decode=False
        self.resolved: dict[str, str] = {}
        self.n_opened = 0  # how many files/bytes were actually decoded (for tests and stats)

    def problem(self, ref: Any, base_dir: str | Path | None = None) -> str | None:
        """``None`` if the image is readable and within the limits, else a short reason."""
        try:
            norm = normalize_ref(ref, base_dir)
        except (TypeError, ValueError) as exc:
            return str(exc)
        if is_url(norm):
            return self._url_problem(norm)
        if isinstance(norm, bytes):
            src: Any = io.BytesIO(norm)
            what = "image bytes"
            key: Any = ("bytes", hashlib.blake2b(norm, digest_size=16).digest()) if self.decode else None
        else:
            try:
                st = os.stat(norm)
            except OSError:
                return f"image file not found: {norm}"
            src, what, key = norm, f"image file {norm}", (norm, st.st_size, st.st_mtime_ns)
        if not self.decode:  # a header-only check: no cache (see the class docstring)
            return self._decode(src, what)
        if key not in self._cache:
            self._remember(key, self._decode(src, what))
        return self._cache[key]

    def _remember(self, key: Any, answer: str | None) -> None:
        if len(self._cache) >= CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = answer

    def _url_problem(self, url: str) -> str | None:
        if not self.allow_network:
            return (f"image is a URL ({url:.100}) and network is off; set data.allow_network=true "
                    "(--allow-network) to download it, or give local files")
        if url not in self.resolved:
            try:
                self.resolved[url] = fetch_url(url, self.url_cache)
            except Exception as exc:  # noqa: BLE001 (any network failure is this row's problem, never a crash)
                return f"could not download {url:.100} ({type(exc).__name__}: {exc})"
        return self.problem(self.resolved[url])

    def _too_large(self, what: str, w: int, h: int) -> str | None:
        if w * h > self.max_image_pixels or max(w, h) > self.max_image_side:
            return (f"{what} is {w}x{h} ({w * h:,} pixels), over the limit of {self.max_image_pixels:,} pixels / "
                    f"{self.max_image_side} px per side (a decompression-bomb guard); downsize it, or raise "
                    "data.max_image_pixels")
        return None

    def _decode(self, src: Any, what: str) -> str | None:
        self.n_opened += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below
                with Image.open(src) as img:
                    too_large = self._too_large(what, *img.size)
                    if too_large:
                        return too_large
                    if self.decode:
                        img.load()  # full decode: truncated or corrupt data fails here, not at step 5,000
        except Image.DecompressionBombError:
            w, h = _header_size(src)
            return self._too_large(what, w, h) or f"{what} is a decompression bomb ({w}x{h}); downsize it"
        except Exception as exc:  # noqa: BLE001 (a decoder failure is this image's problem, never a crash)
            return f"{what} is not a readable image ({type(exc).__name__}: {exc})"
        return None


def _header_size(src: Any) -> tuple[int, int]:
    """(width, height) from the header of an image Pillow refuses to open (read only, never decoded)."""
    if hasattr(src, "seek"):
        src.seek(0)
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(src) as img:
            return img.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
