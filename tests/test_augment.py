"""On-device augmentation: every output is a valid shift (and flip) of its input."""

import jax
import numpy as np
import pytest
from refusals import refusal

from jaxdistill import augment


def _candidates(image, pixels, flips):
    h, w, _ = image.shape
    padded = np.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
    out = []
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            out += [crop, crop[:, ::-1]] if flips else [crop]
    return out


@pytest.mark.parametrize("kind", ["jitter", "crop_flip"])
def test_outputs_are_shifts_of_inputs(kind):
    images = np.random.default_rng(0).random((16, 6, 7, 2)).astype(np.float32)
    aug = augment.Augment(kind, 2)
    out = np.asarray(augment.apply(aug, images, jax.random.PRNGKey(3), train=True))
    offsets = set()
    for image, result in zip(images, out):
        matches = [i for i, c in enumerate(_candidates(image, 2, kind == "crop_flip"))
                   if np.array_equal(c, result)]
        assert matches, "output is not a shift of its input"
        offsets.add(matches[0])
    assert len(offsets) > 3  # examples get different random shifts
    again = augment.apply(aug, images, jax.random.PRNGKey(3), train=True)
    np.testing.assert_array_equal(out, again)  # a key fixes the augmentation


def test_eval_only_normalises():
    images = np.random.default_rng(1).random((4, 5, 5, 3)).astype(np.float32)
    aug = augment.Augment("crop_flip", 4, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 2.0))
    out = augment.apply(aug, images, None, train=False)
    np.testing.assert_allclose(out, (images - [0.1, 0.2, 0.3]) / [0.5, 0.5, 2.0], rtol=1e-6, atol=1e-6)


def test_bad_kind():
    assert refusal(lambda: augment.Augment("mixup", 2)) == (
        "config.data.augment 'mixup' is unknown; choose one of ('none', 'jitter', 'crop_flip')")
