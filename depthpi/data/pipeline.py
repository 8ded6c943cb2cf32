"""From a stored sample to training arrays (thesis §4.1.1, §4.1.4, §5.1.2).

Order of the camera edits (docs/design.md, "Conventions"): turn → roll → flip → zoom → crop. The crop
square is fixed by the *un-augmented* turned camera (the smallest square centred on
the principal point that covers the reprojected box), so roll and zoom change what the
fixed crop shows, as §4.1.4 describes. Each image is then reprojected once, straight
from its stored camera to the final one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from depthpi.camera import Camera, reproject_image
from depthpi.data.augment import AugmentConfig, ViewParams, draw_view, view_rng
from depthpi.data.depth import depth_to_input
from depthpi.data.schema import Sample, SampleError
from depthpi.skeleton import get_skeleton
from depthpi.validation import check


@dataclass(frozen=True)
class PipelineConfig:
    """How stored samples become network inputs.

    Attributes:
        input_size: N of the N×N crop; (N − 1) must be divisible by 16 (§4.1.1).
        augment: augmentation ranges; ``train=False`` at call time disables them.
        depth: produce the depth input (teacher, depth baseline, precompute).
        rectify_depth: eq. 5.4 before eq. 5.3.
    """

    input_size: int = 257
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    depth: bool = False
    rectify_depth: bool = False

    def __post_init__(self):
        check(self.input_size >= 17 and (self.input_size - 1) % 16 == 0, "input_size",
              "N >= 17 with N - 1 divisible by 16 (e.g. 257, 129, 65)", self.input_size)


def crop_camera(rgb_cam: Camera, bbox: np.ndarray, view: ViewParams, size: int) -> Camera:
    """The camera of the N×N network input for a box seen by ``rgb_cam``.

    Args:
        rgb_cam: camera of the stored RGB crop.
        bbox: (4,) x, y, w, h in that crop's pixels; the box spans [x, x + w] × [y, y + h]
            in continuous pixel coordinates (pixel centres at integers).
        view: augmentation (roll, flip, zoom).
        size: N.
    """
    x, y, w, h = bbox
    turned = rgb_cam.turn_towards(np.array([x + w / 2, y + h / 2]))
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], np.float64)
    corners_h = np.concatenate([corners, np.ones((4, 1))], axis=1) @ rgb_cam.homography_to(turned).T
    corners_turned = corners_h[:, :2] / corners_h[:, 2:3]
    half_side = np.max(np.abs(corners_turned - turned.K[:2, 2]))
    camera = turned.roll(view.roll)
    if view.flip:
        camera = camera.horizontal_flip()
    camera = camera.zoom(view.zoom * size / (2 * half_side))
    return camera.with_principal_point((size - 1) / 2, (size - 1) / 2)


def process_sample(sample: Sample, cfg: PipelineConfig, *, seed: int = 0, epoch: int = 0,
                   view_index: int = 0, train: bool = True, view: ViewParams | None = None) -> dict:
    """Build one view of a sample.

    Args:
        sample: decoded stored sample.
        cfg: pipeline configuration.
        seed, epoch, view_index: seed the view's generator with the sample key.
        train: draw augmentations; False gives the identity view (evaluation, view 0).
        view: replay these parameters instead of drawing (precomputed teacher views).
    Returns:
        dict of arrays:
        ``rgb`` (N, N, 3) uint8, geometry applied, colour not; ``colour`` (4,) float32, the
        view's colour parameters (``depthpi.data.colour``), present unless this is an
        evaluation view (``train`` False and no ``view``); ``depth`` (N, N) float32 in
        [0, 1) when ``cfg.depth``;
        ``joints`` (J, 3) float32 mm, new camera frame, root-relative (zeros if
        unlabelled); ``root`` (3,) float32 mm, the root joint in the new camera frame;
        ``joints2d`` (J, 2) float32 px in the input; ``valid`` (J,) bool
        (annotated and inside the input); ``labeled`` bool; ``K`` (3, 3) and ``R`` (3, 3)
        float32 of the input camera; ``view`` dict of the parameters used; ``view_index`` int; ``key``, ``subject``,
        ``camera``, ``action`` str (for per-group metrics).
    Raises:
        SampleError: the sample cannot be used (e.g. depth required but absent).
    """
    meta = sample.meta
    evaluation = view is None and not train
    if view is None:
        view = draw_view(view_rng(seed, epoch, sample.key, view_index), cfg.augment) if train else ViewParams()
    rgb_cam = Camera(meta.rgb_K, meta.R, meta.t)
    out_cam = crop_camera(rgb_cam, meta.bbox, view, cfg.input_size)
    size = (cfg.input_size, cfg.input_size)

    out = {"rgb": reproject_image(sample.rgb, rgb_cam, out_cam, size)}
    if not evaluation:
        out["colour"] = view.colour_vector()
    if cfg.depth:
        out["depth"] = _depth_input(sample, out_cam, cfg)
    out.update(_pose_targets(sample, out_cam, view.flip, cfg.input_size))
    out.update(K=out_cam.K.astype(np.float32), R=out_cam.R.astype(np.float32),
               view=view.to_dict(), view_index=view_index, key=sample.key,
               subject=meta.subject, camera=meta.camera, action=meta.action)
    return out


def _depth_input(sample: Sample, out_cam: Camera, cfg: PipelineConfig) -> np.ndarray:
    meta = sample.meta
    if sample.depth is None or meta.depth_K is None:
        raise SampleError(sample.key, "depth.png", "the pipeline needs depth but the sample has none")
    depth_cam = Camera(meta.depth_K, meta.R, meta.t)
    size = (cfg.input_size, cfg.input_size)
    depth_mm = reproject_image(sample.depth, depth_cam, out_cam, size, interpolation="nearest")
    rectify = out_cam.normalised_coordinates(*size) if cfg.rectify_depth else None
    return depth_to_input(depth_mm, rectify)


def _pose_targets(sample: Sample, out_cam: Camera, flip: bool, size: int) -> dict:
    meta = sample.meta
    skeleton = get_skeleton(meta.skeleton)
    J = skeleton.num_joints
    if not meta.labeled:
        return {"joints": np.zeros((J, 3), np.float32), "joints2d": np.zeros((J, 2), np.float32),
                "root": np.zeros(3, np.float32), "valid": np.zeros(J, bool), "labeled": False}
    if meta.joints.shape != (J, 3):
        raise SampleError(sample.key, "joints", f"expected ({J}, 3) for skeleton {skeleton.name}")
    cam_points = out_cam.world_to_camera(meta.joints)
    pixels = out_cam.camera_to_image(cam_points)
    valid = meta.joint_valid.copy()
    if flip:  # the image is mirrored: the person's left now looks like a right side
        perm = skeleton.flip_permutation
        cam_points, pixels, valid = cam_points[perm], pixels[perm], valid[perm]
    inside = (cam_points[:, 2] > 0) & np.all((pixels >= -0.5) & (pixels <= size - 0.5), axis=1)
    return {"joints": (cam_points - cam_points[skeleton.root]).astype(np.float32),
            "root": cam_points[skeleton.root].astype(np.float32),
            "joints2d": np.nan_to_num(pixels, nan=-1.0).astype(np.float32),
            "valid": valid & inside, "labeled": True}
