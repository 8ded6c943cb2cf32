"""``depthpi predict`` and ``depthpi export``: a trained student on the user's own pictures.

predict writes into ``--out``:
- ``predictions.jsonl``: one line per frame (see ``frame_record``);
- ``meta.json``: skeleton (joint names, parents), camera source, definitions, skipped files;
- ``overlay/<name>.jpg`` per image, or ``overlay.mp4`` for a video: the frame with boxes and
  2D skeletons, beside a 3D view of the root-relative poses.

Inputs (frames, ``--K``, ``--bbox``, the ``--boxes`` file) are read by :mod:`depthpi.sources`;
overlays are drawn by :mod:`depthpi.draw`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.draw import Pose3DView, render_overlay
from depthpi.io import atomic_path, atomic_write_json
from depthpi.sources import FrameSource, parse_bbox, read_boxes, read_intrinsics, warn

DEFAULT_FOV = 55.0


# --- outputs --------------------------------------------------------------------------------

def frame_record(frame, skeleton_name: str, flip_tta: bool) -> dict:
    """One JSONL line: frame id and index, image size, K, skeleton, people."""
    height, width = frame.image.shape[:2]
    return {"frame": frame.frame, "index": frame.index, "width": width, "height": height,
            "K": np.round(frame.camera.K, 4).tolist(), "skeleton": skeleton_name, "flip_tta": flip_tta,
            "people": [p.to_json() for p in frame.people]}


class OverlayWriter:
    """overlay/<name>.jpg per image, or one overlay video for a video input."""

    def __init__(self, out_dir: Path, video: bool, fps: float):
        self.out_dir, self.video, self.fps = out_dir, video, fps
        self.writer = None
        self.path = out_dir / "overlay.mp4" if video else out_dir / "overlay"
        if not video:
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, name, image: np.ndarray) -> None:
        """Write ``image``, (H, W, 3) uint8 RGB, as overlay/<stem of name>.jpg or the next video frame."""
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not self.video:
            with atomic_path(self.path / (Path(str(name)).stem + ".jpg")) as tmp:
                cv2.imwrite(str(tmp), bgr)
            return
        if self.writer is None:
            size = (bgr.shape[1], bgr.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self.writer.isOpened():  # no mp4 encoder in this OpenCV build
                self.path = self.path.with_suffix(".avi")
                self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, size)
        self.writer.write(bgr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


# --- commands -------------------------------------------------------------------------------

def run_predict(args) -> dict:
    """``depthpi predict``; returns a summary (frames, people, skipped, output paths)."""
    import torch
    from tqdm import tqdm

    from depthpi.predict import Predictor, predict_frames

    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: expected >= 1")
    camera_for, boxes_for, has_K = frame_geometry(args)
    source = FrameSource(args.input)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_checkpoint(args.ckpt, args.config, device)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlay = None if args.no_overlay else OverlayWriter(out, source.kind == "video", source.fps)
    view = None if args.no_overlay else Pose3DView(predictor.skeleton)
    frames = people = 0
    jsonl = out / "predictions.jsonl"
    with atomic_path(jsonl) as tmp, open(tmp, "w") as f:
        results = predict_frames(predictor, source, camera_for, boxes_for, args.batch, args.flip_tta, args.root_depth)
        for frame in tqdm(results, total=source.total, desc="predict", unit="frame",
                          disable=source.kind == "image"):
            f.write(json.dumps(frame_record(frame, predictor.skeleton.name, args.flip_tta)) + "\n")
            if overlay is not None:
                overlay.write(frame.frame, render_overlay(frame, predictor.skeleton, view))
            frames += 1
            people += len(frame.people)
    if overlay is not None:
        overlay.close()
        view.close()
    summary = {"frames": frames, "people": people, "skipped": [{"file": n, "reason": r} for n, r in source.skipped],
               "predictions": str(jsonl), "overlay": str(overlay.path) if overlay else None}
    _write_meta(out, predictor, source, args, has_K, summary)
    return summary


def frame_geometry(args) -> tuple[Callable, Callable, bool]:
    """How each frame is seen: ``camera_for(image) -> Camera`` (``--K``, else ``--fov``),
    ``boxes_for(index, frame_id, image) -> [(4,) px boxes]`` (``--bbox``, ``--boxes``, else the
    whole frame), and whether K was given. Warns about what it has to assume."""
    if args.bbox and args.boxes:
        raise ValueError("--bbox and --boxes: give one of them")
    K = read_intrinsics(args.K) if args.K else None
    boxes = read_boxes(args.boxes) if args.boxes else None
    fixed = parse_bbox(args.bbox) if args.bbox else None
    if K is None:
        warn(f"no --K: assuming a {args.fov:g} deg horizontal field of view, principal point at the image centre")
    if fixed is None and boxes is None:
        warn("no --bbox/--boxes: each whole frame is treated as one person box; "
             "crop the person (or give boxes) for accurate poses")

    def camera_for(image):
        height, width = image.shape[:2]
        return Camera.from_intrinsics(K) if K is not None else Camera.from_fov(args.fov, width, height)

    def boxes_for(index, frame_id, image):
        if fixed is not None:
            return [fixed]
        if boxes is not None:
            return boxes.get(frame_id, boxes.get(index, []))
        height, width = image.shape[:2]
        return [np.array([-0.5, -0.5, width, height])]  # pixel centres at integers

    return camera_for, boxes_for, K is not None


def _write_meta(out: Path, predictor, source: FrameSource, args, has_K: bool, summary: dict) -> None:
    skeleton = predictor.skeleton
    meta = {
        "input": str(source.path), "kind": source.kind, "checkpoint": str(args.ckpt),
        "camera": "--K file" if has_K else f"{args.fov:g} deg horizontal field of view",
        "skeleton": skeleton.name, "joint_names": list(skeleton.joint_names),
        "parents": skeleton.parents.tolist(), "flip_tta": args.flip_tta, "input_size": predictor.input_size,
        "definitions": {
            "joints3d_mm": "root-relative joints, mm, in the input camera's frame (x right, y down, z forward)",
            "joints2d_px": "projection into the frame of the 3D pose placed with its root on the ray through "
                           "the box centre, at root_mm[2]: fitted so the projected joints just fit the box "
                           "(root_depth_source 'fit'), or --root-depth ('given')",
        },
        **summary,
    }
    atomic_write_json(out / "meta.json", meta)


def run_export(args):
    from depthpi.export import export_model
    from depthpi.predict import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, args.config, args.device or "cpu")
    if args.size and args.size != predictor.input_size:
        print(f"[depthpi export] note: --size {args.size}, but the model was trained on {predictor.input_size}"
              f"×{predictor.input_size} crops; it runs at any size, its accuracy is known only at the trained one",
              file=sys.stderr)
    report = export_model(predictor, args.format, args.out, args.size, check=not args.no_check)
    print(report.summary())
    return report


def _predict(args) -> None:
    summary = run_predict(args)
    skipped = summary["skipped"]
    print(f"{summary['frames']} frames, {summary['people']} people -> {summary['predictions']}"
          + (f"; overlay -> {summary['overlay']}" if summary["overlay"] else "")
          + (f"; skipped {len(skipped)}: " + ", ".join(s["file"] for s in skipped) if skipped else ""))


def _export(args) -> None:
    try:
        run_export(args)
    except ImportError as err:
        raise SystemExit(f"depthpi export: {err}") from None


def add_inference_parsers(subparsers) -> None:
    """Register ``predict`` and ``export`` on the ``depthpi`` sub-command parser."""
    predict = subparsers.add_parser("predict", help="3D poses from images, a folder or a video")
    predict.add_argument("--ckpt", required=True, help="weights (run/export/last.pt) or checkpoint dir")
    predict.add_argument("--config", help="run config (default: config.yaml of the run the ckpt is in)")
    predict.add_argument("--input", required=True, help="an image, a folder of images or a video")
    boxes = predict.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", help="x,y,w,h person box for every frame (frame pixels)")
    boxes.add_argument("--boxes", help='JSON Lines: {"frame": name_or_index, "boxes": [[x, y, w, h], ...]}')
    camera = predict.add_mutually_exclusive_group()
    camera.add_argument("--K", help="JSON file with the 3x3 intrinsics of the frames")
    camera.add_argument("--fov", type=float, default=DEFAULT_FOV, help="horizontal field of view, degrees "
                        "(used without --K; default %(default)s)")
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--flip-tta", action="store_true", help="average with the un-flipped mirrored prediction")
    predict.add_argument("--batch", type=int, default=16, help="crops per forward pass")
    predict.add_argument("--root-depth", type=float, help="root depth in mm for the 2D joints (default: fit to box)")
    predict.add_argument("--no-overlay", action="store_true", help="skip overlay images/video")
    predict.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    predict.set_defaults(func=_predict)

    export = subparsers.add_parser("export", help="inference-only torch.export (.pt2), TorchScript or ONNX model")
    export.add_argument("--ckpt", required=True, help="weights (run/export/last.pt) or checkpoint dir")
    export.add_argument("--config", help="run config (default: config.yaml of the run the ckpt is in)")
    export.add_argument("--format", default="pt2", choices=["pt2", "torchscript", "onnx"],
                        help="pt2 (torch.export, default), torchscript or onnx")
    export.add_argument("--size", type=int, help="input N (default: the run's data.pipeline.input_size)")
    export.add_argument("--out", required=True, help="output file")
    export.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    export.add_argument("--device", help="device for the export and check (default cpu)")
    export.set_defaults(func=_export)
