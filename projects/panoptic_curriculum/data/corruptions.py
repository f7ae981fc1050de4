"""Image corruptions of the ImageNet-C / Cityscapes-C benchmarks (Hendrycks & Dietterich
2019; Michaelis et al. 2019), through the ``imagecorruptions`` package, as a detectron2
augmentation that the test-time mapper applies in memory (the dataset's files are never
written).

Corruptions are photometric: labels, depth and intrinsics are unchanged. Each image's
corruption is deterministic: its random numbers are seeded from the image content, the
corruption, the severity and a base seed, so every model sees the same corrupted image.

Two corruptions run through this module's own code rather than the package's: ``glass_blur``
(the package moves pixels one by one in Python, several seconds for a 192x256 image; here the
same sequence of moves is resolved on pixel indices by vectorised pointer jumping and the
pixels are gathered once, giving the identical image (tested)) and ``impulse_noise`` (the package's
scikit-image call draws from an unseeded generator; here the same salt-and-pepper noise is
drawn from the seeded one).
"""

import zlib
from typing import Optional, Sequence, Tuple

import numpy as np
from fvcore.transforms.transform import Transform

from detectron2.data import transforms as T

from ..compat import import_imagecorruptions
from .transforms import PixelValueTransform

__all__ = [
    "CORRUPTION_GROUPS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "SEVERITIES",
    "check_corruptions",
    "corrupt_image",
    "ImageCorruption",
    "ImageCorruptionTransform",
]

#: the 15 benchmark corruptions, by group (the ImageNet-C / Cityscapes-C protocol)
CORRUPTION_GROUPS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
COMMON_CORRUPTIONS: Tuple[str, ...] = tuple(n for g in CORRUPTION_GROUPS.values() for n in g)
#: the four held-out ("validation") corruptions of ImageNet-C
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
#: the smallest image side ``imagecorruptions`` accepts (pixels)
MIN_SIDE = 32


def check_corruptions(names: Sequence[str], severities: Sequence[int] = ()) -> None:
    """Raise ``ValueError`` listing the valid values for an unknown corruption name or a
    severity outside 1-5."""
    unknown = [n for n in names if n not in ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"unknown corruption(s) {unknown}; valid: {list(ALL_CORRUPTIONS)} (groups: "
            f"{ {g: list(v) for g, v in CORRUPTION_GROUPS.items()} })"
        )
    bad = [s for s in severities if isinstance(s, bool) or s not in SEVERITIES]
    if bad:
        raise ValueError(f"corruption severities must be in {list(SEVERITIES)}, got {bad}")


def _seed(image: np.ndarray, name: str, severity: int, seed: int) -> int:
    content = zlib.crc32(np.ascontiguousarray(image).tobytes())
    entropy = [content, ALL_CORRUPTIONS.index(name), severity, seed]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _glass_blur(x: np.ndarray, severity: int) -> np.ndarray:
    """``imagecorruptions``' glass blur on an ``(H, W, 3)`` uint8 RGB image, float result in
    [0, 255]: blur, locally shuffle pixels, blur again. The package's per-pixel "swap"
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` goes through NumPy views and so copies the
    neighbour's pixel into ``(h, w)``; this reproduces exactly that."""
    from skimage.filters import gaussian

    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][
        severity - 1
    ]
    x = np.uint8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    h, w = x.shape[:2]
    rows = np.arange(h - delta, delta, -1)  # the package's loop order: bottom-up, right-left
    cols = np.arange(w - delta, delta, -1)
    hh, ww = np.repeat(rows, len(cols)), np.tile(cols, len(rows))
    a = hh * w + ww  # the visited positions, in visiting order (flat index decreasing)
    visited = np.zeros(h * w, dtype=bool)
    visited[a] = True
    source = np.arange(h * w)  # source[p]: the blurred pixel that ends up at position p
    for _ in range(iterations):
        # one (dx, dy) per pixel, drawn in the loop's order (the same stream as the package)
        d = np.random.randint(-delta, delta, size=(len(hh), 2))
        b = (hh + d[:, 1]) * w + (ww + d[:, 0])
        # the package's loop sets p := (value of b_p at p's turn): b_p's new value when b_p
        # was visited before p (visited and b_p > p), else its value before this pass. The
        # chains p -> b_p -> ... that this makes are resolved by pointer jumping
        link = np.arange(h * w)
        link[a] = b
        pending = np.zeros(h * w, dtype=bool)
        pending[a] = visited[b] & (b > a)
        while pending.any():
            link, pending = np.where(pending, link[link], link), pending & pending[link]
        source = source[link]
    x = x.reshape(h * w, 3)[source].reshape(h, w, 3)
    return np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def _impulse_noise(x: np.ndarray, severity: int) -> np.ndarray:
    """Salt-and-pepper noise as scikit-image's ``random_noise(mode="s&p")`` in
    ``imagecorruptions``: each value is replaced with probability ``amount``, by 0 or 255
    with equal odds; drawn from NumPy's (seeded) global generator."""
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    out = x.astype(np.float64)
    flipped = np.random.random_sample(out.shape) <= amount
    salted = np.random.random_sample(out.shape) <= 0.5
    out[flipped & salted] = 255.0
    out[flipped & ~salted] = 0.0
    return out


_OWN = {"glass_blur": _glass_blur, "impulse_noise": _impulse_noise}


def corrupt_image(
    image: np.ndarray, name: str, severity: int, *, seed: int = 0, image_format: str = "RGB"
) -> np.ndarray:
    """Corrupted copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8, channels in ``image_format`` order ("RGB" or "BGR"),
            ``H, W >= 32``.
        name: one of :data:`ALL_CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        seed: base seed; the image's random numbers also depend on its content, ``name``
            and ``severity`` (same inputs, same output). NumPy's global random state, which
            ``imagecorruptions`` draws from, is restored afterwards.
        image_format: channel order of ``image`` and of the result.

    Returns:
        ``(H, W, 3)`` uint8 in ``image_format`` order.
    """
    check_corruptions([name], [severity])
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"corrupt_image needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}"
        )
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"corrupt_image needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    ic = import_imagecorruptions()
    rgb = image[:, :, ::-1] if image_format == "BGR" else image
    state = np.random.get_state()
    try:
        np.random.seed(_seed(image, name, int(severity), seed))
        rgb = np.ascontiguousarray(rgb)
        if name in _OWN:
            out = np.uint8(_OWN[name](rgb, int(severity)))  # uint8 as the package's corrupt()
        else:
            out = ic.corrupt(rgb, severity=int(severity), corruption_name=name)
    finally:
        np.random.set_state(state)
    out = np.asarray(out, dtype=np.uint8)
    if out.shape != image.shape:
        raise RuntimeError(
            f"corruption {name!r} (severity {severity}) returned shape {out.shape} for an "
            f"image of shape {image.shape}"
        )
    return np.ascontiguousarray(out[:, :, ::-1] if image_format == "BGR" else out)


class ImageCorruptionTransform(PixelValueTransform):
    """Corrupts the image; segmentation, coordinates, depth and intrinsics are unchanged."""

    def __init__(self, name: str, severity: int, seed: int = 0, image_format: str = "RGB"):
        super().__init__()
        check_corruptions([name], [severity])
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return corrupt_image(
            img, self.name, self.severity, seed=self.seed, image_format=self.image_format
        )


class ImageCorruption(T.Augmentation):
    """Augmentation applying one corruption at one severity to every image (deterministic
    per image, see :func:`corrupt_image`). Put it first in a test-time augmentation list so
    that the original image is corrupted, as the benchmarks do."""

    def __init__(
        self, name: str, severity: int, seed: int = 0, image_format: Optional[str] = "RGB"
    ):
        super().__init__()
        check_corruptions([name], [severity])
        self._init(locals())

    def get_transform(self, image) -> Transform:
        return ImageCorruptionTransform(self.name, self.severity, self.seed, self.image_format)
