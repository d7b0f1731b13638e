"""Image perturbations: the consistency probe's image changes and the red-team's perturbation attacks.

Each is a pure function ``(image, rng) -> image`` picked by name from :data:`IMAGE_PERTURBATIONS`;
the random choices come from the ``random.Random`` passed in, so a perturbed set is reproducible
from its seed. Strengths are mild on purpose for consistency (the object must stay visible), and a
``strength`` argument scales them for attacks.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image

from vlalign.registry import Registry

Perturbation = Callable[..., Image.Image]  # (image, rng, strength=1.0) -> image
IMAGE_PERTURBATIONS: Registry[Perturbation] = Registry("image perturbation")


@IMAGE_PERTURBATIONS.register("gaussian_noise", "noise")
def gaussian_noise(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Add N(0, (8·strength)²) noise per pixel and channel (0–255 scale), clipped."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 8.0 * strength, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


@IMAGE_PERTURBATIONS.register("jpeg")
def jpeg(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Re-encode as JPEG at quality max(5, 40 − 25·(strength − 1)) (40 by default)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(max(5, 40 - 25 * (strength - 1))))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@IMAGE_PERTURBATIONS.register("crop")
def crop(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Cut a random border of up to 6%·strength of each side and resize back to the original size."""
    w, h = img.size
    m = max(1, round(min(w, h) * 0.06 * strength))
    left, top = rng.randint(0, m), rng.randint(0, m)
    right, bottom = w - rng.randint(0, m), h - rng.randint(0, m)
    return img.convert("RGB").crop((left, top, right, bottom)).resize((w, h), Image.BILINEAR)


@IMAGE_PERTURBATIONS.register("patch")
def patch(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Paste a random-colour square of side 15%·strength of the image at a random place."""
    out = img.convert("RGB").copy()
    w, h = out.size
    side = max(2, int(min(w, h) * 0.15 * strength))
    x, y = rng.randint(0, max(0, w - side)), rng.randint(0, max(0, h - side))
    colour = tuple(rng.randrange(256) for _ in range(3))
    out.paste(colour, (x, y, x + side, y + side))
    return out
