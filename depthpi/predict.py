"""Using a trained model: load it with its run config, predict, evaluate.

``Predictor.predict`` is the only place a model is called for inference: ``depthpi eval``
runs it over shards (``evaluate_checkpoint``), ``depthpi predict`` over crops of the
user's own frames (``predict_frames``), and ``depthpi export`` checks an exported model
against it. A user's frame goes through the training pipeline unchanged (each box an
unlabelled :class:`Sample` of that camera, ``process_sample(..., train=False)``), and
``flip_tta`` averages with the prediction on the mirrored crop, un-flipped.

docs/predict.md ("How a crop and a prediction are made") has the details.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from depthpi.camera import Camera
from depthpi.config import TrainConfig, load_config
from depthpi.data.augment import ViewParams
from depthpi.data.batches import Batch, Inputs, build_eval_loader, model_inputs, with_depth
from depthpi.data.pipeline import PipelineConfig, crop_camera, process_sample
from depthpi.data.reference import cached_mean_pose
from depthpi.data.schema import Sample, SampleMeta
from depthpi.data.shards import read_manifest
from depthpi.detect import Detection
from depthpi.evaluate import evaluate, threshold_for_split, write_report
from depthpi.models.posenet import load_model, needs_depth, needs_rgb, run_model
from depthpi.skeleton import SKELETONS, Skeleton
from depthpi.weights import find_run_config

log = logging.getLogger(__name__)


def skeleton_for(num_joints: int) -> Skeleton:
    """The known skeleton with ``num_joints`` joints (the model config stores only J)."""
    for skeleton in SKELETONS.values():
        if skeleton.num_joints == num_joints:
            return skeleton
    raise ValueError(f"no known skeleton has {num_joints} joints (known: "
                     f"{ {s.name: s.num_joints for s in SKELETONS.values()} })")


def unflip_joints(joints: torch.Tensor, flip_permutation) -> torch.Tensor:
    """Prediction on the mirrored crop → the unmirrored crop's frame.

    Args:
        joints: (..., J, 3) mm in the mirrored camera's frame, mirrored labels.
        flip_permutation: (J,) the skeleton's left/right swap.
    Returns:
        (..., J, 3): labels swapped back and x negated (an involution).
    """
    perm = torch.as_tensor(np.asarray(flip_permutation), dtype=torch.long, device=joints.device)
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=joints.dtype, device=joints.device)
    return joints[..., perm, :] * sign


class Predictor:
    """A trained pose model with the config that built it, in eval mode on ``device``."""

    def __init__(self, cfg: TrainConfig, weights: str | Path, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = load_model(cfg.model, weights, directories=True).to(self.device).eval()
        self.skeleton = skeleton_for(cfg.model.num_joints)

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, config: str | Path | None = None, device="cpu") -> Predictor:
        return cls(load_config(config or find_run_config(ckpt)), ckpt, device)

    @property
    def needs_depth(self) -> bool:
        return needs_depth(self.cfg.model)

    @property
    def input_size(self) -> int:
        return self.cfg.data.pipeline.input_size

    def rgb_pipeline(self) -> PipelineConfig:
        """The run's pipeline, RGB only: what evaluation applies to a stored sample."""
        return replace(self.cfg.data.pipeline, depth=False)

    def inputs(self, batch: Batch) -> Inputs:
        """The model's inputs of a batch on this predictor's device."""
        return model_inputs(batch, rgb=needs_rgb(self.cfg.model), depth=self.needs_depth)

    @torch.no_grad()
    def predict(self, batch: Batch, flip_tta: bool = False) -> torch.Tensor:
        """(B, J, 3) mm, root-relative, in the input crop's camera frame.

        Args:
            batch: a batch on this predictor's device.
            flip_tta: also predict on the mirrored crops (one forward of 2B) and average
                with their un-flipped predictions.
        """
        return self.predict_inputs(self.inputs(batch), flip_tta)

    @torch.no_grad()
    def predict_inputs(self, inputs: Inputs, flip_tta: bool = False) -> torch.Tensor:
        """:meth:`predict` from model inputs (RGB in [0, 1], depth in [0, 1])."""
        if not flip_tta:
            return run_model(self.model, self.cfg.model, inputs.rgb, inputs.depth).joints
        size = (inputs.rgb if inputs.rgb is not None else inputs.depth).shape[0]
        both = [None if x is None else torch.cat([x, x.flip(-1)]) for x in (inputs.rgb, inputs.depth)]
        joints = run_model(self.model, self.cfg.model, *both).joints
        return 0.5 * (joints[:size] + unflip_joints(joints[size:], self.skeleton.flip_permutation))

    def require_rgb(self) -> None:
        """Raises ValueError unless the model predicts from RGB alone."""
        if self.needs_depth:
            raise ValueError("this checkpoint needs depth input (teacher or depth baseline); "
                             "predicting from RGB needs an RGB model (student or RGB baseline)")

    def predict_crops(self, rgb: np.ndarray, flip_tta: bool = False) -> np.ndarray:
        """(B, N, N, 3) uint8 RGB crops → (B, J, 3) float64 mm, crop camera frame."""
        self.require_rgb()
        images = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        inputs = Inputs(images.permute(0, 3, 1, 2).float() / 255.0)
        return self.predict_inputs(inputs, flip_tta).float().cpu().numpy().astype(np.float64)


def evaluate_checkpoint(ckpt: str | Path, shards: str | Path, out_dir: str | Path, *, config=None,
                        batch_size: int = 64, num_workers: int = 2, device: str | None = None,
                        flip_tta: bool = False, threshold_mm: float | None = None) -> dict:
    """``depthpi eval``: metrics.json, pck_curve.png and per-joint tables in ``out_dir``.

    PCK/AUC use ``threshold_mm``, by default the one of the data set ``shards`` came from.
    The mean-pose reference comes from the run's training split (``data.train`` of its
    config), cached in the run directory; it is left out, with a warning, where that split
    is not on this machine.
    """
    check_pose_split(shards)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_checkpoint(ckpt, config, device)
    data = replace(predictor.cfg.data, eval_batch_size=batch_size)
    loader = build_eval_loader(data, with_depth(data.pipeline, predictor.needs_depth), str(shards), rank=0,
                               world_size=1, num_workers=num_workers)
    threshold_mm = threshold_mm or threshold_for_split(shards, data.dataset)
    evaluation = evaluate(partial(predictor.predict, flip_tta=flip_tta), loader, predictor.device, threshold_mm,
                          mean_pose=_training_mean_pose(predictor.cfg, ckpt))
    scored = int(evaluation.metrics.count.sum())
    if not scored:
        skipped = evaluation.skipped
        raise ValueError(f"--shards {shards}: nothing was scored (0 labelled joints; {skipped['total']} samples "
                         f"skipped: {skipped['by_reason'] or 'none'}); expected a split of labelled pose samples")
    tta = " (flip TTA)" if flip_tta else ""
    return write_report(evaluation, out_dir, title=f"{model_name(ckpt)} on {split_name(shards)}{tta}")


def check_pose_split(shards: str | Path) -> None:
    """Refuse a split that holds no pose samples to score (stored teacher features).

    Raises:
        ValueError: naming the split, what it is and what was expected.
    """
    params = read_manifest(shards).params
    if params.get("kind") == "teacher_features":
        raise ValueError(f"--shards {shards}: a split of stored teacher features (depthpi precompute's output, from "
                         f"{params.get('source', '?')}), not of pose samples; evaluate on a pose split such as "
                         f"{params.get('source', 'shards/<set>/test')}")


def model_name(ckpt: str | Path) -> str:
    """``run (weights)`` for a plot title: e.g. ``student (last.pt)``, ``teacher (step-00000558)``."""
    path = Path(ckpt).resolve()
    try:
        run_dir = find_run_config(path).parent
    except FileNotFoundError:
        return path.name
    weights = "last.pt" if path == run_dir else path.name
    return f"{run_dir.name} ({weights})"


def split_name(shards: str | Path) -> str:
    """The split's last two path parts (``synth/test``)."""
    parts = [p for p in str(shards).rstrip("/").split("/") if p]
    return "/".join(parts[-2:])


def _training_mean_pose(cfg: TrainConfig, ckpt: str | Path) -> np.ndarray | None:
    """The mean pose of the run's training split (cached beside its config.yaml), or None."""
    train = Path(cfg.data.train)
    if not (train / "manifest.json").is_file():
        log.warning("mean-pose reference left out: the run's training split %s is not here", train)
        return None
    try:
        run_dir = find_run_config(ckpt).parent
    except FileNotFoundError:  # weights given with --config, away from their run
        run_dir = Path(ckpt).parent
    return cached_mean_pose(train, run_dir / "mean_pose.json")


# --- frames of the user's own camera -------------------------------------------------------

@dataclass
class Crop:
    """One person box of one frame, ready for the model.

    Attributes:
        rgb: (N, N, 3) uint8 network input (what evaluation would feed).
        camera: float64 camera of the crop (turned to the box centre, zoomed, cropped).
        bbox: (4,) x, y, w, h in frame pixels.
        box_size: (2,) width and height of the box as seen in the crop, px.
    """

    rgb: np.ndarray
    camera: Camera
    bbox: np.ndarray
    box_size: np.ndarray


def make_crop(image: np.ndarray, camera: Camera, bbox, pipeline: PipelineConfig, skeleton: Skeleton,
              key: str = "frame") -> Crop:
    """Build the network input for ``bbox`` of a frame seen by ``camera`` (identity view)."""
    bbox = np.asarray(bbox, np.float64)
    if bbox.shape != (4,) or not np.all(np.isfinite(bbox)) or bbox[2] <= 0 or bbox[3] <= 0:
        raise ValueError(f"box {bbox.tolist()}: expected x, y, w, h with w > 0 and h > 0")
    meta = SampleMeta(dataset="predict", subject="", camera="", action="", frame=0, labeled=False,
                      rgb_K=camera.K, depth_K=None, R=camera.R, t=camera.t, joints=None,
                      joint_valid=np.ones(skeleton.num_joints, bool), bbox=bbox, skeleton=skeleton.name)
    out = process_sample(Sample(key=key, rgb=image, depth=None, meta=meta), pipeline, train=False)
    # the same camera process_sample used, in float64 (its out["R"] is float32)
    crop_cam = crop_camera(camera, bbox, ViewParams(), pipeline.input_size)
    x, y, w, h = bbox
    corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]]) @ camera.homography_to(crop_cam).T
    corners = corners[:, :2] / corners[:, 2:]
    return Crop(out["rgb"], crop_cam, bbox, corners.max(0) - corners.min(0))


def to_camera_frame(joints_crop: np.ndarray, crop_cam: Camera, camera: Camera) -> np.ndarray:
    """(J, 3) root-relative mm in the crop camera's frame → ``camera``'s frame.

    Both cameras share a centre, so a direction maps by p = R_cam · R_cropᵀ · p_crop.
    """
    return np.asarray(joints_crop, np.float64) @ (camera.R @ crop_cam.R.T).T


def fit_root_depth(joints_crop: np.ndarray, crop: Crop) -> float:
    """Depth z (mm) that makes the pose, rooted on the crop's axis, fit the person box.

    The root sits on the crop camera's optical axis (the ray through the box centre) at
    depth z; z is where the bounding box of the projected joints first reaches the person
    box (as seen in the crop) in width or height. Each joint's offset from the principal
    point shrinks monotonically with z, so the extent does too and bisection finds z.
    Returns NaN for a degenerate (all-zero) pose.
    """
    joints = np.asarray(joints_crop, np.float64)
    f = crop.camera.K[[0, 1], [0, 1]]

    def fill(z: float) -> float:
        uv = f * joints[:, :2] / (z + joints[:, 2:3])
        return float(np.max((uv.max(0) - uv.min(0)) / crop.box_size))

    lo, hi = max(1.0, 1.0 - joints[:, 2].min()), 1e7  # lo: every joint in front of the camera
    if fill(lo) <= 1:  # degenerate pose, or one too small to reach the box even at the camera
        return float("nan")
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if fill(mid) > 1 else (lo, mid)
        if hi - lo < 1e-9 * hi:
            break
    return 0.5 * (lo + hi)


def joints_2d(joints_crop: np.ndarray, crop: Crop, camera: Camera, root_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """2D joints in the frame: the pose with its root on the crop axis at ``root_depth``.

    Returns:
        (J, 2) px in the frame of ``camera`` and (3,) the assumed root in its frame, mm.
    """
    root_crop = np.array([0.0, 0.0, root_depth])
    world = crop.camera.camera_to_world(np.asarray(joints_crop, np.float64) + root_crop)
    root = camera.world_to_camera(crop.camera.camera_to_world(root_crop))
    return camera.project(world), root


@dataclass
class Person:
    """One predicted person.

    Attributes:
        bbox: (4,) x, y, w, h frame px. joints3d: (J, 3) root-relative mm, frame camera axes.
        joints2d: (J, 2) frame px. root: (3,) assumed root, frame camera mm.
        root_depth_source: ``fit`` (box fit) or ``given``.
        box_source: where the box came from (``hog``, ``onnx:<file>``, ``--bbox``, ...).
        box_score: the detector's score of the box, None for a given box.
    """

    bbox: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray
    root: np.ndarray
    root_depth_source: str
    box_source: str = "given"
    box_score: float | None = None

    def box_json(self) -> dict:
        return {"bbox": _round(self.bbox, 2), "box_source": self.box_source,
                "box_score": None if self.box_score is None else round(self.box_score, 4)}

    def to_json(self) -> dict:
        return {**self.box_json(), "joints3d_mm": _round(self.joints3d, 3),
                "joints2d_px": _round(self.joints2d, 2), "root_mm": _round(self.root, 1),
                "root_depth_source": self.root_depth_source}


@dataclass
class FramePrediction:
    """Everything predicted for one frame (``image`` is kept for overlays)."""

    frame: int | str
    index: int
    image: np.ndarray
    camera: Camera
    people: list[Person] = field(default_factory=list)


def _round(array: np.ndarray, digits: int) -> list:
    return np.round(np.nan_to_num(np.asarray(array, np.float64), nan=-1.0), digits).tolist()


def predict_frames(predictor: Predictor, frames: Iterable[tuple[int, int | str, np.ndarray]],
                   camera_for: Callable[[np.ndarray], Camera],
                   boxes_for: Callable[[int, int | str, np.ndarray], list],
                   batch_size: int = 16, flip_tta: bool = False,
                   root_depth: float | None = None) -> Iterator[FramePrediction]:
    """Predict every person box of every frame, batching crops across frames.

    Args:
        frames: (index, frame id, (H, W, 3) uint8 RGB) in order; the index counts frames
            of the source (a skipped unreadable file keeps its index).
        camera_for: frame → its camera (R = I, t = 0: outputs are in its frame).
        boxes_for: (index, frame id, image) → list of (4,) boxes x, y, w, h, or of
            :class:`~depthpi.detect.Detection` (a box with its score and source).
        batch_size: crops per forward pass; also the most frames held back waiting for a
            full batch (so frames without people, e.g. a sparse boxes file, cannot pile up).
        flip_tta: test-time flip augmentation.
        root_depth: fixed root depth (mm) for the 2D joints; None fits it to the box.
    Yields:
        FramePrediction per frame, in input order.
    """
    pipeline = predictor.rgb_pipeline()
    pending: list[tuple[FramePrediction, list[Crop]]] = []
    count = 0
    for index, frame_id, image in frames:
        camera = camera_for(image)
        boxes = [box if isinstance(box, Detection) else Detection(np.asarray(box, np.float64), None, "given")
                 for box in boxes_for(index, frame_id, image)]
        crops = [(make_crop(image, camera, box.bbox, pipeline, predictor.skeleton, key=str(frame_id)), box)
                 for box in boxes]
        pending.append((FramePrediction(frame_id, index, image, camera), crops))
        count += len(crops)
        if count >= batch_size or len(pending) >= batch_size:
            yield from _finish(predictor, pending, batch_size, flip_tta, root_depth)
            pending, count = [], 0
    yield from _finish(predictor, pending, batch_size, flip_tta, root_depth)


def _finish(predictor, pending, batch_size, flip_tta, root_depth) -> Iterator[FramePrediction]:
    crops = [c for _, frame_crops in pending for c, _ in frame_crops]
    preds = [predictor.predict_crops(np.stack([c.rgb for c in crops[i:i + batch_size]]), flip_tta)
             for i in range(0, len(crops), batch_size)]
    preds = iter(np.concatenate(preds) if preds else [])
    for frame, frame_crops in pending:
        for crop, box in frame_crops:
            pose = next(preds)
            depth = root_depth if root_depth is not None else fit_root_depth(pose, crop)
            source = "given" if root_depth is not None else "fit"
            if not np.isfinite(depth):
                depth, source = DEFAULT_ROOT_DEPTH_MM, "default"
            uv, root = joints_2d(pose, crop, frame.camera, depth)
            frame.people.append(Person(crop.bbox, to_camera_frame(pose, crop.camera, frame.camera), uv, root, source,
                                       box.source, box.score))
        yield frame


DEFAULT_ROOT_DEPTH_MM = 4000.0  # only for a degenerate pose the box fit cannot place
