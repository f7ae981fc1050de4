"""Open3D: PLY files, headless rendering of coloured point clouds and interactive windows.

Point coordinates are ``(N, 3)`` metres in the OpenCV camera frame (``x`` right, ``y`` down,
``z`` forward); point colours are RGB in 0..1. Open3D is imported lazily inside the functions
that need it, so that this module (and the package) imports on machines without Open3D.
"""

import gc
import os
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._common import ArrayLike, to_numpy
from .colors import IGNORED_POINT_COLOR
from .draw2d import tile_panels

__all__ = [
    "save_point_cloud_ply",
    "read_point_cloud_ply",
    "read_point_cloud_plys",
    "PointCloudRenderer",
    "render_point_cloud",
    "render_point_cloud_panels",
    "display_available",
    "show_point_clouds",
]

#: a point cloud: ``(N, 3)`` float32 metres and ``(N, 3)`` RGB in 0..1 or None
Cloud = Tuple[np.ndarray, Optional[np.ndarray]]


def _to_o3d_point_cloud(points: ArrayLike, colors: Optional[ArrayLike]):
    import open3d as o3d  # lazy: only visualisation needs Open3D

    pts = np.ascontiguousarray(to_numpy(points), dtype=np.float64).reshape(-1, 3)
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(pts)
    if colors is not None:
        cols = np.ascontiguousarray(to_numpy(colors), dtype=np.float64).reshape(-1, 3)
        if cols.shape[0] != pts.shape[0]:
            raise ValueError(f"{pts.shape[0]} points but {cols.shape[0]} colours")
        pc.colors = o3d.utility.Vector3dVector(np.clip(cols, 0.0, 1.0))
    return pc


def save_point_cloud_ply(
    path: str, points: ArrayLike, colors: Optional[ArrayLike] = None, binary: bool = True
) -> None:
    """Write a (coloured) point cloud to a PLY file with Open3D (parent folders created).

    Args:
        path: output ``.ply`` path.
        points: ``(N, 3)`` coordinates in metres.
        colors: ``(N, 3)`` RGB in 0..1 (stored as 8-bit), or None.
        binary: binary PLY (else ASCII).

    Raises:
        OSError: naming ``path``, when Open3D cannot write the file.
    """
    import open3d as o3d  # lazy: only visualisation needs Open3D

    pc = _to_o3d_point_cloud(points, colors)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        ok = o3d.io.write_point_cloud(path, pc, write_ascii=not binary)
    except Exception as e:  # noqa: BLE001  (re-raised with the path)
        raise OSError(f"could not write point cloud to {path}: {e}") from e
    if not ok:
        raise OSError(f"could not write point cloud to {path} (Open3D write_point_cloud failed)")




def read_point_cloud_ply(path: str) -> Cloud:
    """Points and colours of a PLY file.

    Returns:
        (points, colors): ``(N, 3)`` float32 and ``(N, 3)`` float32 RGB in 0..1, or None
        when the file has no colours.

    Raises:
        FileNotFoundError: naming ``path`` when it is not a file.
        ValueError: naming ``path`` when no point can be read from it.
    """
    import open3d as o3d  # lazy: only visualisation needs Open3D

    if not os.path.isfile(path):
        raise FileNotFoundError(f"PLY file not found: {path}")
    pc = o3d.io.read_point_cloud(path)
    points = np.asarray(pc.points, dtype=np.float32)
    if points.shape[0] == 0:
        raise ValueError(f"no points could be read from {path}")
    colors = np.asarray(pc.colors, dtype=np.float32) if pc.has_colors() else None
    return points, colors


def read_point_cloud_plys(paths: Sequence[str]) -> Tuple[List[Cloud], List[str]]:
    """:func:`read_point_cloud_ply` of each file, with a title per file
    (``"<file name> (<N> points)"``)."""
    clouds, titles = [], []
    for path in paths:
        points, colors = read_point_cloud_ply(path)
        clouds.append((points, colors))
        titles.append(f"{os.path.basename(path)} ({points.shape[0]} points)")
    return clouds, titles


class PointCloudRenderer:
    """Headless renderer of coloured point clouds (Open3D ``OffscreenRenderer``, unlit).

    Creating the Open3D renderer takes about a second, so one instance is meant to render
    many clouds; it is created on the first :meth:`render`. Open3D cannot keep two offscreen
    renderers alive in one process (it aborts at exit), so only one ``PointCloudRenderer`` of
    the process holds an Open3D renderer at a time: another one rendering takes it over
    (closing this one's, which is recreated on its next :meth:`render`). :meth:`close`
    releases it explicitly.

    The virtual camera looks at the cloud's centroid from behind and above the real camera's
    origin (OpenCV frame: ``y`` down, ``z`` forward), at ``(0, -elevation * s, -setback * s)``
    with ``s`` the median point depth, and with ``-y`` as its up direction: the rendering is
    upright like the image, shows the whole view frustum (the real camera sits in front of
    the virtual one) and, through the regions occluded in the real view, the depth structure.
    Colours are rendered as given (no tone mapping).
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        point_size: float = 2.0,
        background: Sequence[float] = (0.1, 0.1, 0.1),
        fov_deg: float = 60.0,
        elevation: float = 0.5,
        setback: float = 0.5,
    ):
        """
        Args:
            width, height: output size in pixels.
            point_size: rendered point diameter in pixels.
            background: RGB in 0..1.
            fov_deg: vertical field of view of the virtual camera, degrees.
            elevation, setback: height above and distance behind the real camera of the
                virtual one, as fractions of the median point depth.
        """
        self.width, self.height = int(width), int(height)
        self.point_size = float(point_size)
        self.background = tuple(float(c) for c in background)
        self.fov_deg = float(fov_deg)
        self.elevation = float(elevation)
        self.setback = float(setback)
        self._renderer = None

    def _get_renderer(self):
        global _ACTIVE_RENDERER
        if self._renderer is None:
            import open3d as o3d  # lazy: only visualisation needs Open3D

            with _ACTIVE_LOCK:
                if _ACTIVE_RENDERER is not None and _ACTIVE_RENDERER is not self:
                    _ACTIVE_RENDERER.close()
                self._renderer = o3d.visualization.rendering.OffscreenRenderer(
                    self.width, self.height
                )
                self._renderer.scene.view.set_post_processing(False)  # exact colours
                _ACTIVE_RENDERER = self
        return self._renderer

    def close(self) -> None:
        """Release the Open3D renderer (a later :meth:`render` creates a new one)."""
        global _ACTIVE_RENDERER
        if self._renderer is not None:
            self._renderer.scene.clear_geometry()
            self._renderer = None
            gc.collect()  # destroy the Open3D renderer now, before another one is created
        if _ACTIVE_RENDERER is self:
            _ACTIVE_RENDERER = None

    def camera_pose(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Virtual camera for ``points`` ``(N, 3)`` metres (camera frame of the real camera).

        Returns:
            (center, eye, up): ``(3,)`` float64 each; look-at point (the centroid), camera
            position (metres) and up direction.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        up = np.array([0.0, -1.0, 0.0])  # image "up" is -y in the OpenCV camera frame
        if pts.shape[0] == 0:
            return np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0]), up
        center = pts.mean(axis=0)
        # typical distance of the scene, robust to a few far points
        scale = max(float(np.median(np.abs(pts[:, 2]))), 1e-3)
        eye = np.array([0.0, -self.elevation * scale, -self.setback * scale])
        return center, eye, up

    def render(self, points: ArrayLike, colors: Optional[ArrayLike] = None) -> np.ndarray:
        """Render a point cloud.

        Args:
            points: ``(N, 3)`` camera-frame coordinates in metres.
            colors: ``(N, 3)`` RGB in 0..1, or None (grey).

        Returns:
            ``(height, width, 3)`` uint8 RGB image.
        """
        import open3d as o3d  # lazy: only visualisation needs Open3D

        pts = np.asarray(to_numpy(points), dtype=np.float64).reshape(-1, 3)
        if colors is None:
            colors = np.tile(np.asarray(IGNORED_POINT_COLOR), (pts.shape[0], 1))
        renderer = self._get_renderer()
        scene = renderer.scene
        scene.clear_geometry()
        scene.set_background([*self.background, 1.0])
        if pts.shape[0] > 0:
            material = o3d.visualization.rendering.MaterialRecord()
            material.shader = "defaultUnlit"
            material.point_size = self.point_size
            scene.add_geometry("points", _to_o3d_point_cloud(pts, colors), material)
        center, eye, up = self.camera_pose(pts)
        renderer.setup_camera(self.fov_deg, center, eye, up)
        image = np.asarray(renderer.render_to_image())
        scene.clear_geometry()
        return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


#: the PointCloudRenderer holding the process's Open3D renderer, if any
_ACTIVE_RENDERER: Optional[PointCloudRenderer] = None
_ACTIVE_LOCK = threading.RLock()
#: the renderer used by render_point_cloud
_SHARED_RENDERER: Optional[PointCloudRenderer] = None


def render_point_cloud(
    points: ArrayLike,
    colors: Optional[ArrayLike] = None,
    width: int = 640,
    height: int = 480,
    point_size: float = 2.0,
    background: Sequence[float] = (0.1, 0.1, 0.1),
) -> np.ndarray:
    """Render a point cloud headlessly with a process-wide :class:`PointCloudRenderer`, reused
    across calls of the same output size (a new size replaces it).

    Args:
        points: ``(N, 3)`` camera-frame coordinates in metres.
        colors: ``(N, 3)`` RGB in 0..1, or None (grey).
        width, height: output size in pixels.
        point_size: rendered point diameter in pixels.
        background: RGB in 0..1.

    Returns:
        ``(height, width, 3)`` uint8 RGB image.
    """
    global _SHARED_RENDERER
    with _ACTIVE_LOCK:
        shared = _SHARED_RENDERER
        if shared is None or (shared.width, shared.height) != (int(width), int(height)):
            if shared is not None:
                shared.close()
            shared = _SHARED_RENDERER = PointCloudRenderer(width, height)
        shared.point_size = float(point_size)
        shared.background = tuple(float(c) for c in background)
        return shared.render(points, colors)


def render_point_cloud_panels(
    clouds: Sequence[Tuple[ArrayLike, Optional[ArrayLike]]],
    titles: Sequence[str],
    renderer: Optional[PointCloudRenderer] = None,
    width: int = 480,
    height: int = 360,
) -> np.ndarray:
    """Render point clouds headlessly into titled panels, side by side.

    Args:
        clouds: one ``(points (N, 3) metres, colors (N, 3) in 0..1 or None)`` per panel.
            Panels of the same points are rendered from the same viewpoint.
        titles: one title per panel.
        renderer: the renderer to use (its size sets the panel size); default a
            :class:`PointCloudRenderer` of ``width x height``, closed afterwards.

    Returns:
        ``(height + title bar, len(clouds) * width, 3)`` uint8 RGB.
    """
    if len(clouds) != len(titles):
        raise ValueError(f"{len(clouds)} clouds but {len(titles)} titles")
    own = renderer is None
    renderer = renderer or PointCloudRenderer(width, height)
    try:
        images = [renderer.render(points, colors) for points, colors in clouds]
    finally:
        if own:
            renderer.close()
    return tile_panels(images, titles)


def display_available() -> bool:
    """Whether an on-screen window can be opened: ``DISPLAY`` is set and names an X server
    that accepts a connection (checked with Xlib's ``XOpenDisplay``).

    Merely testing ``DISPLAY`` is not enough: with an unreachable display, Open3D's
    ``Visualizer`` falls back to an invisible EGL context whose ``run()`` never returns.
    """
    if not os.environ.get("DISPLAY"):
        return False
    import ctypes
    import ctypes.util

    try:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    except OSError:
        return False
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = x11.XOpenDisplay(None)
    if not display:
        return False
    x11.XCloseDisplay(display)
    return True


def show_point_clouds(
    clouds: Sequence[Tuple[ArrayLike, Optional[ArrayLike]]],
    titles: Sequence[str],
    window_name: str = "point clouds",
    point_size: float = 2.0,
) -> bool:
    """Show point clouds in an interactive Open3D window, side by side along ``x`` (each
    cloud shifted right of the previous one by its width plus a gap); blocks until the window
    is closed.

    Returns:
        False, without showing anything, when there is no display or Open3D cannot create a
        window (then render headlessly instead); True once the window was shown and closed.
    """
    if not display_available():
        return False
    import open3d as o3d  # lazy: only visualisation needs Open3D

    vis = o3d.visualization.Visualizer()
    name = f"{window_name}: " + " | ".join(titles) if titles else window_name
    if not vis.create_window(window_name=name, width=1280, height=720):
        return False
    try:
        offset = 0.0
        for points, colors in clouds:
            pts = np.asarray(to_numpy(points), dtype=np.float64).reshape(-1, 3)
            if pts.shape[0] == 0:
                continue
            span = float(np.ptp(pts[:, 0]))
            shifted = pts.copy()
            shifted[:, 0] += offset - pts[:, 0].min()
            vis.add_geometry(_to_o3d_point_cloud(shifted, colors))
            offset += span * 1.1 + 1e-3
        options = vis.get_render_option()
        if options is not None:
            options.point_size = float(point_size)
            options.background_color = np.asarray([0.1, 0.1, 0.1])
        control = vis.get_view_control()
        if control is not None:  # look along +z with image "up" (-y) up, as the camera does
            control.set_front([0.0, 0.0, -1.0])
            control.set_up([0.0, -1.0, 0.0])
        vis.run()
    finally:
        vis.destroy_window()
    return True


