"""Ray-cast RGB-D scene generator (vectorised NumPy).

A scene is a ground plane, a back wall and sky (stuff) with objects of four thing classes
standing on the ground, seen by a pinhole camera whose intrinsics, height and pitch vary per
image. Every pixel's ray is intersected with every surface at once, so depth (metres, the
camera ``z`` coordinate; 0 where the ray hits nothing, i.e. sky), the semantic label and the
instance id are exact for the pixel centre; the colour is Lambertian shading of a sampled
albedo plus noise.

Geometry carries what colour does not: ``ball`` and ``pillar`` share one colour
distribution and differ in 3D shape (sphere against vertical cylinder); ``crate`` and
``container`` share another and differ only in metric size (a container is about 2.6 times
larger, so a far container and a near crate look alike in the image but not in 3D).

Frames: camera coordinates are OpenCV's (x right, y down, z forward). The world frame has
its origin at the camera centre, ``y`` pointing down (the ground is the plane
``y = camera_height``) and ``z`` pointing forward horizontally; the camera is pitched down
by ``pitch`` about the ``x`` axis. Pixel convention: see :mod:`panoptic_curriculum.geometry`.
"""

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "CATEGORIES",
    "SceneRanges",
    "SceneSample",
    "sample_scene",
    "render_scene",
    "IGNORE_LABEL",
]

#: Categories in contiguous-id order (things first); "id" is the 1-based dataset id used in
#: the COCO-format JSON files.
CATEGORIES: List[Dict] = [
    {"id": 1, "name": "ball", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "crate", "isthing": 1, "color": [255, 160, 0]},
    {"id": 3, "name": "container", "isthing": 1, "color": [0, 80, 230]},
    {"id": 4, "name": "pillar", "isthing": 1, "color": [160, 0, 200]},
    {"id": 5, "name": "ground", "isthing": 0, "color": [100, 170, 60]},
    {"id": 6, "name": "wall", "isthing": 0, "color": [150, 150, 150]},
    {"id": 7, "name": "sky", "isthing": 0, "color": [120, 190, 250]},
]
BALL, CRATE, CONTAINER, PILLAR, GROUND, WALL, SKY = range(7)
IGNORE_LABEL = 255

# Per-class albedo distributions in HSV (hue ranges wrap around 1). Shared on purpose:
# ball/pillar ("red") and crate/container ("yellow").
_RED = dict(hue=(-0.04, 0.04), sat=(0.55, 0.9), val=(0.55, 0.95))
_YELLOW = dict(hue=(0.10, 0.16), sat=(0.5, 0.85), val=(0.6, 0.95))
_PALETTE = {BALL: _RED, PILLAR: _RED, CRATE: _YELLOW, CONTAINER: _YELLOW}

# Size ranges (metres).
_BALL_RADIUS = (0.25, 0.45)
_CRATE_SIDE = (0.45, 0.65)
_CONTAINER_SIDE = (1.2, 1.7)
_PILLAR_RADIUS = (0.18, 0.3)
_PILLAR_HEIGHT = (1.6, 2.6)


@dataclass(frozen=True)
class SceneRanges:
    """Ranges ``(low, high)`` the per-image camera and lighting are drawn from (uniformly).

    The defaults are those of the embedded dataset; other ranges give shifted scenes (other
    lenses, rigs, lighting) to test generalisation. With the default lighting ranges no
    lighting parameter is drawn at all, so default scenes are exactly those of earlier
    versions, and a lighting-only shift keeps each scene's geometry (same seed, relit).

    Attributes:
        hfov_deg: horizontal field of view, degrees (the focal length follows from it and
            the image width).
        camera_height_m: camera height above the ground, metres.
        pitch_deg: downward pitch of the camera, degrees.
        exposure: global gain of the rendered radiance (1: as rendered).
        white_balance: gains of the red and of the blue channel (each drawn) relative to
            green (1: neutral).
        ambient: share of the light that surfaces facing away from the sun still receive.
    """

    hfov_deg: Tuple[float, float] = (55.0, 80.0)
    camera_height_m: Tuple[float, float] = (1.45, 1.6)
    pitch_deg: Tuple[float, float] = (3.0, 6.0)
    exposure: Tuple[float, float] = (1.0, 1.0)
    white_balance: Tuple[float, float] = (1.0, 1.0)
    ambient: Tuple[float, float] = (0.35, 0.35)

    def __post_init__(self):
        limits = {
            "hfov_deg": (1.0, 170.0),
            "camera_height_m": (0.05, 100.0),
            "pitch_deg": (-45.0, 80.0),
            "exposure": (0.01, 100.0),
            "white_balance": (0.01, 100.0),
            "ambient": (0.0, 1.0),
        }
        for name, (lo_ok, hi_ok) in limits.items():
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not (lo_ok <= value[0] <= value[1] <= hi_ok):
                raise ValueError(
                    f"scene range {name} must be (low, high) with {lo_ok} <= low <= high <= "
                    f"{hi_ok}, got {getattr(self, name)}"
                )
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: Optional[Dict]) -> "SceneRanges":
        """From ``{name: [low, high]}`` (missing names keep their defaults)."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown scene range(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**{k: tuple(v) for k, v in values.items()})

    def changed(self) -> Dict[str, List[float]]:
        """The ranges that differ from the defaults, as ``{name: [low, high]}``."""
        default = SceneRanges()
        return {k: list(v) for k, v in asdict(self).items() if v != getattr(default, k)}

    def shifts_lighting(self) -> bool:
        """Whether a lighting range differs from the default (lighting is then drawn)."""
        return any(k in self.changed() for k in ("exposure", "white_balance", "ambient"))


@dataclass
class SceneObject:
    """One thing: ``kind`` is its class id, ``center`` its world position (metres), ``size``
    the radius (ball), side (crate, container) or (radius, height) (pillar), ``yaw`` its
    rotation about the vertical axis (radians), ``albedo`` RGB in [0, 1]."""

    kind: int
    center: np.ndarray
    size: tuple
    yaw: float
    albedo: np.ndarray


@dataclass
class SceneSample:
    """A rendered scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        depth: ``(H, W)`` float32 metres (camera ``z``), 0 where nothing is hit (sky).
        sem_seg: ``(H, W)`` uint8 contiguous class ids, ``IGNORE_LABEL`` on tiny instances.
        instance_ids: ``(H, W)`` int32, 0 for stuff and ignored pixels, ``k + 1`` for the
            pixels of ``instances[k]``.
        instances: one dict per visible instance: ``category`` (contiguous id), ``area``
            (pixels).
        K: ``(3, 3)`` float64 intrinsics in pixels.
        camera: camera height (m), pitch (deg) and horizontal field of view (deg).
    """

    image: np.ndarray
    depth: np.ndarray
    sem_seg: np.ndarray
    instance_ids: np.ndarray
    instances: List[Dict]
    K: np.ndarray
    camera: Dict = field(default_factory=dict)


def _hsv_to_rgb(h, s, v):
    h = h % 1.0
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = int(i) % 6
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _sample_albedo(rng, kind):
    pal = _PALETTE[kind]
    return _hsv_to_rgb(rng.uniform(*pal["hue"]), rng.uniform(*pal["sat"]), rng.uniform(*pal["val"]))


def sample_scene(
    rng: np.random.Generator, height: int, width: int, ranges: Optional[SceneRanges] = None
) -> Dict:
    """Sample camera and objects of one scene (no rendering); ``ranges`` (default:
    :class:`SceneRanges`) bounds the camera and lighting."""
    ranges = ranges or SceneRanges()
    hfov = np.deg2rad(rng.uniform(*ranges.hfov_deg))
    fx = (width / 2.0) / np.tan(hfov / 2.0)
    fy = fx * rng.uniform(0.98, 1.02)
    cx = (width - 1) / 2.0 + rng.normal(0.0, 0.03 * width)
    cy = (height - 1) / 2.0 + rng.normal(0.0, 0.03 * height)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    # a vehicle-mounted rig: height and pitch vary a little (monocular metric depth needs a
    # known ground geometry), the lens (K) varies a lot
    cam_height = rng.uniform(*ranges.camera_height_m)
    pitch = np.deg2rad(rng.uniform(*ranges.pitch_deg))
    wall_dist = rng.uniform(16.0, 30.0)
    wall_height = rng.uniform(2.0, 7.0)

    objects: List[SceneObject] = []
    footprints = []  # (x, z, radius)
    num = int(rng.integers(3, 9))
    tries = 0
    while len(objects) < num and tries < 200:
        tries += 1
        kind = int(rng.integers(0, 4))
        z = rng.uniform(2.5, min(14.0, wall_dist - 2.0))
        half_w = z * np.tan(hfov / 2.0) * 0.85
        x = rng.uniform(-half_w, half_w)
        if kind == BALL:
            r = rng.uniform(*_BALL_RADIUS)
            size, foot, cy_obj = (r,), r, cam_height - r
        elif kind in (CRATE, CONTAINER):
            s = rng.uniform(*(_CRATE_SIDE if kind == CRATE else _CONTAINER_SIDE))
            size, foot, cy_obj = (s,), s * 0.75, cam_height - s / 2.0
        else:
            r, h = rng.uniform(*_PILLAR_RADIUS), rng.uniform(*_PILLAR_HEIGHT)
            size, foot, cy_obj = (r, h), r, cam_height - h / 2.0
        if any(np.hypot(x - fx_, z - fz_) < foot + fr_ + 0.15 for fx_, fz_, fr_ in footprints):
            continue
        footprints.append((x, z, foot))
        objects.append(
            SceneObject(
                kind,
                np.array([x, cy_obj, z]),
                size,
                rng.uniform(0, np.pi / 2),
                _sample_albedo(rng, kind),
            )
        )
    lighting = {}
    if ranges.shifts_lighting():
        # from a child stream: the scene itself (geometry, albedos, sensor noise) is the one
        # the same seed gives with the training lighting, so relit scenes pair with them
        light_rng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
        lighting = dict(
            exposure=light_rng.uniform(*ranges.exposure),
            white_balance=np.array(
                [
                    light_rng.uniform(*ranges.white_balance),
                    1.0,
                    light_rng.uniform(*ranges.white_balance),
                ]
            ),
            ambient=light_rng.uniform(*ranges.ambient),
        )
    return dict(
        **lighting,
        K=K,
        cam_height=cam_height,
        pitch=pitch,
        wall_dist=wall_dist,
        wall_height=wall_height,
        hfov=hfov,
        objects=objects,
        light=_normalize(
            np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.2, 0.8)])
        ),  # direction the light travels
        ground_albedo=(
            _hsv_to_rgb(rng.uniform(0.22, 0.35), rng.uniform(0.25, 0.5), 0.55),
            _hsv_to_rgb(rng.uniform(0.22, 0.35), rng.uniform(0.25, 0.5), 0.42),
        ),
        wall_albedo=_hsv_to_rgb(
            rng.uniform(0.55, 0.7), rng.uniform(0.05, 0.2), rng.uniform(0.45, 0.7)
        ),
        checker=1.0,  # 1 m floor tiles: a metric cue, like real-world texture scales
    )


def _normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rot_y(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _hit_sphere(d, c, r):
    """Rays ``t * d`` (d: [P, 3]) against a sphere; returns (t [P], normals [P, 3])."""
    a = np.einsum("pi,pi->p", d, d)
    b = d @ c
    disc = b * b - a * (c @ c - r * r)
    t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    t = np.where(t > 0, t, np.inf)
    n = (t[:, None] * d - c) / r
    return t, n


def _hit_box(d, c, half, yaw):
    """Rays against a box of half-extent ``half`` rotated by ``yaw`` about the vertical."""
    R = _rot_y(yaw)
    o = -(c @ R)  # origin in box frame: R^T (0 - c)
    dl = d @ R  # directions in box frame
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    tmin_ax = np.minimum(t1, t2)
    tmax = np.min(np.maximum(t1, t2), axis=1)
    tmin = np.max(tmin_ax, axis=1)
    hit = (tmax >= tmin) & (tmin > 0)
    t = np.where(hit, tmin, np.inf)
    axis = np.argmax(tmin_ax, axis=1)
    n_local = np.zeros_like(d)
    n_local[np.arange(len(d)), axis] = -np.sign(dl[np.arange(len(d)), axis])
    return t, n_local @ R.T


def _hit_cylinder(d, c, r, h, ground_y):
    """Rays against a vertical cylinder standing on ``y = ground_y`` (side and top cap)."""
    dx, dz = d[:, 0], d[:, 2]
    a = dx * dx + dz * dz
    b = dx * c[0] + dz * c[2]
    disc = b * b - a * (c[0] ** 2 + c[2] ** 2 - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    y_side = t_side * d[:, 1]
    top = ground_y - h
    t_side = np.where((t_side > 0) & (y_side >= top) & (y_side <= ground_y), t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = np.where(d[:, 1] < 0, top / d[:, 1], np.inf)  # camera is above only if top < 0
    px, pz = t_cap * dx - c[0], t_cap * dz - c[2]
    t_cap = np.where((t_cap > 0) & (px * px + pz * pz <= r * r), t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    n_side = np.stack([t_side * dx - c[0], np.zeros_like(dx), t_side * dz - c[2]], axis=1) / r
    n_cap = np.tile(np.array([0.0, -1.0, 0.0]), (len(d), 1))
    n = np.where((t_cap < t_side)[:, None], n_cap, n_side)
    return t, n


def render_scene(
    scene: Dict, height: int, width: int, rng: np.random.Generator, min_instance_area: int = 12
) -> SceneSample:
    """Ray-cast ``scene`` (from :func:`sample_scene`) at ``height x width`` pixels."""
    K = scene["K"]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    d_cam = pix @ np.linalg.inv(K).T  # [P, 3], z = 1: ray parameter t equals depth
    p = scene["pitch"]
    R = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(p), np.sin(p)], [0.0, -np.sin(p), np.cos(p)]])
    d = d_cam @ R.T  # world directions
    g = scene["cam_height"]

    num_pix = d.shape[0]
    objects = scene["objects"]
    # Candidate surfaces: ground, wall, then the objects. t = inf where missed.
    ts, normals = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[:, 1] > 1e-9, g / d[:, 1], np.inf)
        t_wall = np.where(d[:, 2] > 1e-9, scene["wall_dist"] / d[:, 2], np.inf)
    t_wall = np.where(t_wall * d[:, 1] >= g - scene["wall_height"], t_wall, np.inf)
    ts += [t_ground, t_wall]
    normals += [np.tile([0.0, -1.0, 0.0], (num_pix, 1)), np.tile([0.0, 0.0, -1.0], (num_pix, 1))]
    for obj in objects:
        if obj.kind == BALL:
            t, n = _hit_sphere(d, obj.center, obj.size[0])
        elif obj.kind in (CRATE, CONTAINER):
            t, n = _hit_box(d, obj.center, np.full(3, obj.size[0] / 2.0), obj.yaw)
        else:
            t, n = _hit_cylinder(d, obj.center, obj.size[0], obj.size[1], g)
        ts.append(t)
        normals.append(n)
    T = np.stack(ts)  # [S, P]
    surface = np.argmin(T, axis=0)
    t_hit = T[surface, np.arange(num_pix)]
    hit = np.isfinite(t_hit)
    surface = np.where(hit, surface, -1)  # -1: sky
    depth = np.where(hit, t_hit, 0.0)

    # Labels: surface 0 ground, 1 wall, 2.. objects; -1 sky.
    kinds = np.array([GROUND, WALL] + [o.kind for o in objects])
    sem = np.where(hit, kinds[np.maximum(surface, 0)], SKY).astype(np.uint8)
    inst = np.where(surface >= 2, surface - 1, 0).astype(np.int32)  # 1-based object index

    # Shading.
    normal = np.stack(normals)[np.maximum(surface, 0), np.arange(num_pix)]
    light = scene["light"]
    if "ambient" in scene:
        amb = scene["ambient"]
        shade = amb + (1.0 - amb) * np.clip(normal @ (-light), 0.0, 1.0)
    else:
        shade = 0.35 + 0.65 * np.clip(normal @ (-light), 0.0, 1.0)
    points = d * depth[:, None]
    albedo = np.zeros((num_pix, 3))
    checker = (
        (np.floor(points[:, 0] / scene["checker"]) + np.floor(points[:, 2] / scene["checker"])) % 2
    ).astype(bool)
    ga, gb = scene["ground_albedo"]
    albedo[surface == 0] = np.where(checker[surface == 0, None], ga, gb)
    brick = (np.floor(points[:, 1] / 0.4) % 2).astype(bool)
    albedo[surface == 1] = scene["wall_albedo"] * np.where(brick[surface == 1, None], 1.0, 0.85)
    for k, obj in enumerate(objects):
        albedo[surface == k + 2] = obj.albedo
    rgb = albedo * shade[:, None]
    sky_rows = (v.ravel() / max(height - 1, 1))[:, None]
    sky = (1 - sky_rows) * np.array([0.35, 0.6, 0.95]) + sky_rows * np.array([0.75, 0.85, 0.97])
    rgb = np.where(hit[:, None], rgb, sky)
    if "exposure" in scene:  # the camera's response: exposure and white balance
        rgb = rgb * (scene["exposure"] * scene["white_balance"])
    rgb = rgb + rng.normal(0.0, 0.015, size=rgb.shape)
    image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)

    # Instances: drop the ones hidden or too small to annotate (their pixels -> ignore).
    sem = sem.reshape(height, width)
    inst = inst.reshape(height, width)
    areas = np.bincount(inst.ravel(), minlength=len(objects) + 1)
    instances, relabel = [], np.zeros(len(objects) + 1, dtype=np.int32)
    for k, obj in enumerate(objects, start=1):
        if areas[k] >= min_instance_area:
            instances.append({"category": obj.kind, "area": int(areas[k])})
            relabel[k] = len(instances)
        elif areas[k] > 0:
            sem[inst == k] = IGNORE_LABEL
    inst = relabel[inst]

    camera = {
        "camera_height_m": float(g),
        "pitch_deg": float(np.rad2deg(p)),
        "hfov_deg": float(np.rad2deg(scene["hfov"])),
    }
    if "exposure" in scene:
        camera["exposure"] = float(scene["exposure"])
        camera["white_balance_rgb"] = [float(v) for v in scene["white_balance"]]
        camera["ambient"] = float(scene["ambient"])
    return SceneSample(
        image=image,
        depth=depth.reshape(height, width).astype(np.float32),
        sem_seg=sem,
        instance_ids=inst,
        instances=instances,
        K=K.copy(),
        camera=camera,
    )
