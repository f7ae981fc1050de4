"""Training-time augmentations beyond detectron2's resize / crop / flip:

* :class:`RandomPhotometric`: colour jitter (brightness, contrast, saturation, white
  balance, hue), Gaussian blur and sensor noise, so that lighting and camera colour
  response are not memorised (``INPUT.PHOTOMETRIC``);
* :class:`RandomZoom`: a focal-length jitter: the image is scaled by a random factor about a
  random point and cropped or padded back to its size, which is what a camera with a
  longer or shorter lens at the same place would see; K follows (``fx, fy, cx, cy`` scale,
  the principal point shifts with the crop), depth is unchanged (``INPUT.CAMERA_AUG``).

Both are ordinary detectron2 augmentations; their transforms say how they change depth and
intrinsics (photometric ones do not; the zoom is a resize and a crop or pad, transforms that
:mod:`panoptic_curriculum.data.transforms` already handles).
"""

import math
from typing import List, Tuple

import cv2
import numpy as np
from fvcore.transforms.transform import CropTransform, PadTransform, Transform, TransformList

from detectron2.data import transforms as T
from detectron2.data.transforms import ResizeTransform

from .transforms import PixelValueTransform

__all__ = [
    "PhotometricTransform",
    "RandomPhotometric",
    "RandomZoom",
    "build_extra_train_augmentation",
]

# luma weights of (R, G, B)
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class PhotometricTransform(PixelValueTransform):
    """Deterministic colour changes of an ``(H, W, 3)`` uint8 image (channel order
    ``image_format``), applied in this order: per-channel gains (white balance) times a
    brightness factor, contrast about the mean luma, saturation about each pixel's luma, hue
    rotation about the grey axis (degrees), Gaussian blur (sigma in pixels), additive
    Gaussian noise (std in 0-255 intensity units, ``noise_seed``). Labels, coordinates,
    depth and K are unchanged."""

    def __init__(
        self,
        *,
        gains_rgb: Tuple[float, float, float] = (1.0, 1.0, 1.0),
        brightness: float = 1.0,
        contrast: float = 1.0,
        saturation: float = 1.0,
        hue_deg: float = 0.0,
        blur_sigma: float = 0.0,
        noise_std: float = 0.0,
        noise_seed: int = 0,
        image_format: str = "BGR",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"PhotometricTransform needs RGB or BGR images, got {image_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        rgb = x[..., ::-1] if self.image_format == "BGR" else x
        rgb = rgb * (np.asarray(self.gains_rgb, np.float32) * self.brightness)
        luma = rgb @ _LUMA_RGB  # [H, W]
        if self.contrast != 1.0:
            rgb = (rgb - luma.mean()) * self.contrast + luma.mean()
            luma = rgb @ _LUMA_RGB
        if self.saturation != 1.0:
            rgb = (rgb - luma[..., None]) * self.saturation + luma[..., None]
        if self.hue_deg != 0.0:
            rgb = rgb @ _hue_rotation(self.hue_deg).T
        if self.blur_sigma > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), self.blur_sigma, borderType=cv2.BORDER_REFLECT)
        if self.noise_std > 0:
            rng = np.random.default_rng(self.noise_seed)
            rgb = rgb + rng.normal(0.0, self.noise_std, size=rgb.shape).astype(np.float32)
        out = rgb[..., ::-1] if self.image_format == "BGR" else rgb
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _hue_rotation(deg: float) -> np.ndarray:
    """3x3 matrix rotating RGB colours by ``deg`` about the grey axis (keeps greys grey)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    k = 1.0 / 3.0
    r = math.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - r * s, k * (1 - c) + r * s],
            [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
            [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)],
        ],
        dtype=np.float32,
    )


class RandomPhotometric(T.Augmentation):
    """Random :class:`PhotometricTransform`: brightness, contrast and saturation factors in
    ``[1 - b, 1 + b]`` (each), red and blue gains in ``[1 - w, 1 + w]`` relative to green
    (white balance), a hue rotation in ``[-h, h]`` degrees, a blur with probability
    ``blur_prob`` (sigma uniform in ``[0.3, blur_sigma]`` pixels) and noise with probability
    ``noise_prob`` (std uniform in ``[0, noise_std]``, 0-255 units). A magnitude of 0 turns
    its part off."""

    def __init__(
        self,
        *,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        white_balance: float = 0.0,
        hue_deg: float = 0.0,
        blur_sigma: float = 0.0,
        blur_prob: float = 0.0,
        noise_std: float = 0.0,
        noise_prob: float = 0.0,
        image_format: str = "BGR",
    ):
        super().__init__()
        for name, value in (
            ("BRIGHTNESS", brightness),
            ("CONTRAST", contrast),
            ("SATURATION", saturation),
            ("WHITE_BALANCE", white_balance),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"INPUT.PHOTOMETRIC.{name} must be in [0, 1), got {value}")
        for name, value in (("BLUR_PROB", blur_prob), ("NOISE_PROB", noise_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"INPUT.PHOTOMETRIC.{name} must be in [0, 1], got {value}")
        if not 0.0 <= hue_deg <= 180.0:
            raise ValueError(f"INPUT.PHOTOMETRIC.HUE must be in [0, 180] degrees, got {hue_deg}")
        if not (blur_sigma == 0.0 or 0.3 <= blur_sigma <= 20.0):
            raise ValueError(
                f"INPUT.PHOTOMETRIC.BLUR_SIGMA must be 0 (off) or in [0.3, 20] pixels, got "
                f"{blur_sigma}"
            )
        if not 0.0 <= noise_std <= 255.0:
            raise ValueError(f"INPUT.PHOTOMETRIC.NOISE_STD must be in [0, 255], got {noise_std}")
        self._init(locals())

    def get_transform(self, image) -> Transform:
        def u(low=1.0, high=None):  # a Python float (the base class returns a 0-d array)
            return float(self._rand_range(low, high))

        def factor(m):
            return u(1.0 - m, 1.0 + m) if m > 0 else 1.0

        gains = (factor(self.white_balance), 1.0, factor(self.white_balance))
        blur = u(0.3, self.blur_sigma) if self.blur_sigma > 0 and u() < self.blur_prob else 0.0
        noise = u(0.0, self.noise_std) if self.noise_std > 0 and u() < self.noise_prob else 0.0
        return PhotometricTransform(
            gains_rgb=gains,
            brightness=factor(self.brightness),
            contrast=factor(self.contrast),
            saturation=factor(self.saturation),
            hue_deg=u(-self.hue_deg, self.hue_deg) if self.hue_deg > 0 else 0.0,
            blur_sigma=blur,
            noise_std=noise,
            noise_seed=int(np.random.randint(0, 2**31 - 1)),
            image_format=self.image_format,
        )


class RandomZoom(T.Augmentation):
    """Focal-length jitter: scale the image by ``z`` (log-uniform in ``zoom_range``), then crop
    (``z > 1``, a longer lens) or pad (``z < 1``, a shorter lens: the border is unknown, so
    it is black, ignored in the labels and invalid in depth) back to the input size, at a
    random position (which moves the principal point). K scales by ``z`` and shifts with the
    crop or pad; depth values stay (the camera has not moved).

    Args:
        zoom_range: ``(min, max)`` scale factors, ``0 < min <= max``.
        seg_pad_value: label of padded pixels (the dataset's ignore value).
    """

    def __init__(self, zoom_range: Tuple[float, float], seg_pad_value: int = 255):
        super().__init__()
        lo, hi = (float(v) for v in zoom_range)
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(
                f"INPUT.CAMERA_AUG.ZOOM_RANGE must be (min, max) with 0 < min <= max, got "
                f"{tuple(zoom_range)}"
            )
        self._init(locals())
        self.lo, self.hi = lo, hi

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        z = math.exp(float(self._rand_range(math.log(self.lo), math.log(self.hi))))
        new_h, new_w = max(1, int(round(h * z))), max(1, int(round(w * z)))
        tfms: List[Transform] = [ResizeTransform(h, w, new_h, new_w)]
        if new_h >= h and new_w >= w:
            y0 = int(np.random.randint(0, new_h - h + 1))
            x0 = int(np.random.randint(0, new_w - w + 1))
            tfms.append(CropTransform(x0, y0, w, h, orig_w=new_w, orig_h=new_h))
        else:  # z < 1 (one side may equal the input's after rounding, never exceed it)
            pad_h, pad_w = h - new_h, w - new_w
            top = int(np.random.randint(0, pad_h + 1))
            left = int(np.random.randint(0, pad_w + 1))
            tfms.append(
                PadTransform(
                    left,
                    top,
                    pad_w - left,
                    pad_h - top,
                    orig_w=new_w,
                    orig_h=new_h,
                    pad_value=0,
                    seg_pad_value=self.seg_pad_value,
                )
            )
        return TransformList(tfms)


def build_extra_train_augmentation(cfg) -> List[T.Augmentation]:
    """The training augmentations of ``INPUT.CAMERA_AUG`` (a zoom, after the resize / crop /
    flip, so the network input size is unchanged) and ``INPUT.PHOTOMETRIC`` (last), each
    only when its ``ENABLED`` is set."""
    augs: List[T.Augmentation] = []
    cam = cfg.INPUT.CAMERA_AUG
    if cam.ENABLED:
        augs.append(RandomZoom(tuple(cam.ZOOM_RANGE), cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    p = cfg.INPUT.PHOTOMETRIC
    if p.ENABLED:
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.PHOTOMETRIC needs INPUT.FORMAT 'RGB' or 'BGR', got {cfg.INPUT.FORMAT!r}"
            )
        augs.append(
            RandomPhotometric(
                brightness=p.BRIGHTNESS,
                contrast=p.CONTRAST,
                saturation=p.SATURATION,
                white_balance=p.WHITE_BALANCE,
                hue_deg=p.HUE,
                blur_sigma=p.BLUR_SIGMA,
                blur_prob=p.BLUR_PROB,
                noise_std=p.NOISE_STD,
                noise_prob=p.NOISE_PROB,
                image_format=cfg.INPUT.FORMAT,
            )
        )
        if not 0.0 <= p.PROB <= 1.0:
            raise ValueError(f"INPUT.PHOTOMETRIC.PROB must be in [0, 1], got {p.PROB}")
        if p.PROB < 1.0:  # the rest of the images stay as rendered; 1: no extra random draw
            augs[-1] = T.RandomApply(augs[-1], prob=p.PROB)
    return augs
