"""Files of the drawing tools: input image lists, unique output names, PNG writing, and the
pictures and point cloud of one image written under one stem."""

import glob
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .render3d import Cloud, save_point_cloud_ply

__all__ = ["IMAGE_EXTENSIONS", "list_images", "unique_stem", "write_png_rgb", "write_views"]

#: file extensions (lower case) taken as images in a folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def list_images(paths: Optional[Sequence[str]] = None, folder: Optional[str] = None) -> List[str]:
    """The image paths to process: ``paths`` (glob patterns expanded and sorted, order kept
    otherwise) or, with ``folder``, the files of ``folder`` with an image extension (sorted).

    Raises:
        FileNotFoundError: naming ``folder`` when it is not a folder.
    """
    if folder is not None:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--input-dir {folder} is not a folder")
        names = sorted(os.listdir(folder))
        return [
            os.path.join(folder, n)
            for n in names
            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
        ]
    out = []
    for item in paths or ():
        if glob.has_magic(item):
            out.extend(sorted(glob.glob(os.path.expanduser(item))))
        else:
            out.append(item)
    return out


def unique_stem(path: str, used: set) -> str:
    """The file name of ``path`` without extension, suffixed ``_1``, ``_2``, ... when already
    in ``used``; the result is added to ``used``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def write_png_rgb(path: str, image_rgb: np.ndarray) -> None:
    """Write a ``(H, W, 3)`` uint8 RGB image to ``path`` (PNG, or the format of its extension).

    Raises:
        OSError: naming ``path`` when OpenCV cannot write it.
    """
    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")


def write_views(
    folder: str,
    stem: str,
    pictures: Dict[str, np.ndarray],
    cloud: Optional[Cloud] = None,
    renderer=None,
) -> Dict[str, str]:
    """Write one image's pictures and point cloud into ``folder``.

    Args:
        folder: existing output folder.
        stem: prefix of the file names.
        pictures: name -> ``(H, W, 3)`` uint8 RGB, written as ``<stem>_<name>.png`` in order.
        cloud: ``(points (N, 3) metres, colors (N, 3) in 0..1)``, written as
            ``<stem>_pointcloud.ply`` and, with ``renderer``, rendered to
            ``<stem>_pointcloud.png``; None writes neither.
        renderer: a :class:`~.render3d.PointCloudRenderer` (or anything with
            ``render(points, colors)``).

    Returns:
        key -> file name (without the folder): the picture names, then ``pointcloud_ply``
        and ``pointcloud_render``.
    """
    files = {}
    for key, image in pictures.items():
        files[key] = f"{stem}_{key}.png"
        write_png_rgb(os.path.join(folder, files[key]), image)
    if cloud is not None:
        points, colors = cloud
        files["pointcloud_ply"] = f"{stem}_pointcloud.ply"
        save_point_cloud_ply(os.path.join(folder, files["pointcloud_ply"]), points, colors)
        if renderer is not None:
            files["pointcloud_render"] = f"{stem}_pointcloud.png"
            write_png_rgb(
                os.path.join(folder, files["pointcloud_render"]), renderer.render(points, colors)
            )
    return files
