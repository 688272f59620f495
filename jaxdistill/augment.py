"""On-device input augmentation, applied once per batch inside the train step.

Teacher and student see the same augmented images (function matching, Beyer et al.,
"Knowledge distillation: A good teacher is patient and consistent", CVPR 2022), and the
randomness comes from the step's `fold_in` key, so a resumed run reproduces it exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KINDS = ("none", "jitter", "crop_flip")


@dataclasses.dataclass(frozen=True)
class Augment:
    """kind: 'none' | 'jitter' (random shift of up to `pixels`, zero fill) |
    'crop_flip' (zero-pad `pixels`, random crop, random horizontal flip)."""

    kind: str = "none"
    pixels: int = 0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"config.data.augment '{self.kind}' is unknown; choose one of {KINDS}")
        if self.pixels < 0:
            raise ValueError(f"config.data.augment_pixels must be >= 0, got {self.pixels}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"config.data.std must be > 0, got {self.std}")


def _shift(image: jax.Array, rng: jax.Array, pixels: int, flip: bool) -> jax.Array:
    """Crops an HxW window from `image` zero-padded by `pixels`; optionally flips it."""
    h, w, _ = image.shape
    padded = jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
    k_off, k_flip = jax.random.split(rng)
    dy, dx = jax.random.randint(k_off, (2,), 0, 2 * pixels + 1)
    out = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))
    if flip:
        out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
    return out


def apply(aug: Augment, images: jax.Array, rng: jax.Array, *, train: bool) -> jax.Array:
    """Augments (in training, by `rng`) and normalises a batch of NHWC images in [0, 1]."""
    if train and aug.kind != "none":
        keys = jax.random.split(rng, images.shape[0])
        images = jax.vmap(lambda im, k: _shift(im, k, aug.pixels, aug.kind == "crop_flip"))(
            images, keys)
    mean = jnp.asarray(aug.mean, jnp.float32)
    std = jnp.asarray(aug.std, jnp.float32)
    return (images - mean) / std
