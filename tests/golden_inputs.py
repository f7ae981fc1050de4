"""Fixed, tiny inputs of the visualisation golden test (tests/test_visualization_golden.py).

``tests/data/visualization_golden.npz`` holds what the drawing and colouring code made of
these inputs before it was split into the ``panoptic_curriculum.utils.visualization``
package; the golden test asserts that the current code makes exactly the same arrays.
Changing anything here invalidates that file.
"""

from types import SimpleNamespace

import numpy as np
import torch

from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

H, W = 48, 64
K = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]], dtype=np.float64)
NUM_STUFF = 7  # synthetic_scenes: ball, crate, container, pillar, ground, wall, sky


def image_rgb() -> np.ndarray:
    """``(H, W, 3)`` uint8: smooth gradients (compress well)."""
    v, u = np.mgrid[0:H, 0:W]
    return np.stack([u * 4, v * 5, (u + v) * 2], axis=-1).astype(np.uint8)


def depth() -> np.ndarray:
    """``(H, W)`` float32 metres, a few invalid (0) pixels."""
    v, u = np.mgrid[0:H, 0:W]
    d = (1.0 + 0.1 * v + 0.05 * u).astype(np.float32)
    d[0, :5] = 0.0
    d[30:33, 40:44] = 0.0
    return d


def sem_seg() -> np.ndarray:
    """``(H, W)`` int64 class ids (stuff classes 0..6, 255 ignored)."""
    s = np.full((H, W), 4, dtype=np.int64)  # ground
    s[:12] = 6  # sky
    s[12:20] = 5  # wall
    s[24:40, 8:24] = 1  # crate
    s[26:36, 40:52] = 0  # ball
    s[0:3, 0:3] = 255
    return s


def masks_and_boxes():
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 24:40, 8:24] = True
    masks[1, 26:36, 40:52] = True
    boxes = torch.tensor([[8.0, 24.0, 24.0, 40.0], [40.0, 26.0, 52.0, 36.0]])
    return masks, boxes


def gt_instances() -> Instances:
    masks, boxes = masks_and_boxes()
    gt = Instances((H, W))
    gt.gt_boxes, gt.gt_classes, gt.gt_masks = Boxes(boxes), torch.tensor([1, 0]), BitMasks(masks)
    return gt


def pred_instances() -> Instances:
    masks, boxes = masks_and_boxes()
    pred = Instances((H, W))
    pred.pred_boxes, pred.pred_classes = Boxes(boxes), torch.tensor([1, 0])
    pred.scores, pred.pred_masks = torch.tensor([0.9, 0.3]), masks
    return pred


def annotations():
    return [
        {
            "bbox": [8, 24, 16, 16],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": [[8, 24, 24, 24, 24, 40, 8, 40]],
        },
        {
            "bbox": [40, 26, 12, 10],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "segmentation": [[40, 26, 52, 26, 46, 36]],
        },
    ]


def panoptic():
    """``(H, W)`` segment ids and their segments_info."""
    p = np.full((H, W), 2, dtype=np.int64)
    p[:12] = 1
    p[24:40, 8:24] = 3
    segments = [
        {"id": 1, "category_id": 6, "isthing": False},
        {"id": 2, "category_id": 4, "isthing": False},
        {"id": 3, "category_id": 1, "isthing": True},
    ]
    return p, segments


def model_outputs() -> dict:
    """A model's output dict for :func:`image_rgb` (all four branches)."""
    logits = torch.zeros(NUM_STUFF, H, W)
    sem = torch.from_numpy(sem_seg())
    sem[sem == 255] = 4
    logits.scatter_(0, sem[None], 3.0)
    pan, segments = panoptic()
    return {
        "sem_seg": logits,
        "instances": pred_instances(),
        "panoptic_seg": (torch.from_numpy(pan).int(), segments),
        "depth": torch.from_numpy(depth()),
    }


def point_branch_output():
    """``point_cloud`` output of the point branch: 40 points with pixels and labels."""
    rng = np.random.RandomState(3)
    n = 40
    pixels = np.stack([rng.uniform(-0.4, W - 0.6, n), rng.uniform(-0.4, H - 0.6, n)], axis=1)
    points = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
    points[:, 2] += 3.0
    labels_2d = rng.randint(0, NUM_STUFF, n)
    labels_3d = labels_2d.copy()
    labels_3d[::4] = (labels_3d[::4] + 1) % NUM_STUFF
    return {
        "points": torch.from_numpy(points),
        "pixels": torch.from_numpy(pixels).float(),
        "labels_2d": torch.from_numpy(labels_2d),
        "labels_3d": torch.from_numpy(labels_3d),
    }


def short_metadata():
    """Metadata with 3 stuff colours for 5 classes (the hook pads the palette)."""
    colors = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    return SimpleNamespace(
        name="short",
        stuff_colors=colors,
        get=lambda k, d=None: colors if k == "stuff_colors" else d,
    )


def mapped_sample() -> dict:
    """A mapped sample as the dataset mapper makes it (BGR CHW image tensor)."""
    img = image_rgb()[:, :, ::-1].copy()
    inst = gt_instances()
    return {
        "file_name": "scene_0007.png",
        "image": torch.from_numpy(img).permute(2, 0, 1).contiguous(),
        "sem_seg": torch.from_numpy(sem_seg()),
        "instances": inst,
        "depth": torch.from_numpy(depth()),
        "intrinsics": torch.from_numpy(K).float(),
    }
