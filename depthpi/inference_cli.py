"""``depthpi predict`` and ``depthpi export``: a trained student on the user's own pictures.

predict writes into ``--out``:
- ``predictions.jsonl``: one line per frame (see ``frame_record``);
- ``meta.json``: skeleton (joint names, parents), camera source, definitions, every box of
  every frame with its source, frames without people, skipped files;
- ``overlay/<name>.jpg`` per image, or ``overlay.mp4`` for a video: the frame with boxes and
  2D skeletons, beside a 3D view of the root-relative poses.

Inputs (frames, ``--K``, ``--bbox``, the ``--boxes`` file) are read by :mod:`depthpi.sources`;
people without given boxes are found by :mod:`depthpi.detect`; overlays are drawn by
:mod:`depthpi.draw`. docs/predict.md is the manual.
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
from depthpi.detect import Detection, make_detector
from depthpi.sources import (DEFAULT_MAX_PIXELS, FrameSource, match_boxes, parse_bbox, read_boxes, read_intrinsics,
                             warn)

DEFAULT_FOV = 55.0
CKPT_HELP = ("a run directory (its export/last.pt), a weights file (run/export/last.pt or best.pt), or a "
             "checkpoint directory (run/checkpoints/step-N)")


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
    """``depthpi predict``; returns a summary (frames, people, frames without people, skipped, output paths)."""
    from tqdm import tqdm

    from depthpi.predict import Predictor, predict_frames

    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: expected >= 1")
    device = resolve_device(args.device)
    source = FrameSource(args.input, max_pixels(args.max_megapixels))
    boxes_for = FrameBoxes(args, source)
    camera_for, camera_note = frame_camera(args)
    predictor = Predictor.from_checkpoint(args.ckpt, args.config, device)
    predictor.require_rgb()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlay = None if args.no_overlay else OverlayWriter(out, source.kind == "video", source.fps)
    view = None if args.no_overlay else Pose3DView(predictor.skeleton)
    frames, people, empty, per_frame = 0, 0, [], []
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
            if not frame.people:
                empty.append(frame.frame)
            per_frame.append({"frame": frame.frame, "boxes": [p.box_json() for p in frame.people]})
    if overlay is not None:
        overlay.close()
        view.close()
    summary = {"frames": frames, "people": people, "frames_without_people": len(empty),
               "first_frames_without_people": empty[:10], "box_source": boxes_for.source,
               "skipped": [{"file": n, "reason": r} for n, r in source.skipped],
               "predictions": str(jsonl), "overlay": str(overlay.path) if overlay else None}
    _write_meta(out, predictor, source, args, camera_note, {**boxes_for.settings(), "per_frame": per_frame}, summary)
    return summary


def resolve_device(name: str | None) -> str:
    """``--device`` checked: ``cpu``, ``cuda`` or ``cuda:N`` where there is one; default cuda when available."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available (PyTorch {torch.__version__} "
                         f"{'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


def max_pixels(megapixels: float) -> int:
    """``--max-megapixels`` as a pixel count."""
    if not megapixels > 0:
        raise ValueError(f"--max-megapixels {megapixels:g}: expected > 0")
    return int(megapixels * 1e6)


def frame_camera(args) -> tuple[Callable, str]:
    """``camera_for(image) -> Camera`` (``--K``, else ``--fov``) and how meta.json names it.
    Warns when it has to assume the field of view."""
    K = read_intrinsics(args.K) if args.K else None
    if K is not None:
        return (lambda image: Camera.from_intrinsics(K)), f"--K {args.K}"
    fov = args.fov
    if fov is None:
        fov = DEFAULT_FOV
        warn(f"no --K or --fov: assuming a {fov:g} deg horizontal field of view, principal point at the image centre")
    if not 0 < fov < 180:
        raise ValueError(f"--fov {fov:g}: expected a horizontal field of view in degrees, 0 < fov < 180")

    def camera_for(image):
        height, width = image.shape[:2]
        return Camera.from_fov(fov, width, height)

    return camera_for, f"{fov:g} deg horizontal field of view{'' if args.fov is not None else ' (assumed)'}"


class FrameBoxes:
    """The person boxes of each frame: ``--bbox``, ``--boxes``, ``--full-frame``, or found by a
    detector (``--detector``; OpenCV's HOG people detector by default), each a
    :class:`~depthpi.detect.Detection` naming its source."""

    def __init__(self, args, source: FrameSource):
        self.fixed = parse_bbox(args.bbox) if args.bbox else None
        self.table = read_boxes(args.boxes) if args.boxes else None
        self.detector, self.extra = None, {}
        if self.fixed is not None:
            self.source = "--bbox"
        elif self.table is not None:
            self.source = "--boxes"
            self.extra = {"boxes_file": str(args.boxes), **match_boxes(self.table, source, args.boxes)}
        elif args.full_frame:
            self.source = "--full-frame"
        else:
            self.detector = make_detector(args.detector or "hog", args.detector_size, args.min_score,
                                          args.person_class)
            self.source = self.detector.source

    def __call__(self, index: int, frame_id, image: np.ndarray) -> list[Detection]:
        if self.detector is not None:
            return self.detector(image)
        if self.fixed is not None:
            boxes = [self.fixed]
        elif self.table is not None:
            boxes = self.table.get(frame_id, self.table.get(index, []))
        else:
            height, width = image.shape[:2]
            boxes = [np.array([-0.5, -0.5, width, height])]  # pixel centres at integers
        return [Detection(np.asarray(box, np.float64), None, self.source) for box in boxes]

    def settings(self) -> dict:
        """What meta.json records of where the boxes came from."""
        detector = self.detector.settings() if self.detector is not None else {}
        return {"source": self.source, **detector, **self.extra}


def _write_meta(out: Path, predictor, source: FrameSource, args, camera: str, boxes: dict, summary: dict) -> None:
    skeleton = predictor.skeleton
    meta = {
        "input": str(source.path), "kind": source.kind, "checkpoint": str(args.ckpt), "camera": camera,
        "skeleton": skeleton.name, "joint_names": list(skeleton.joint_names),
        "parents": skeleton.parents.tolist(), "flip_tta": args.flip_tta, "input_size": predictor.input_size,
        "max_megapixels": args.max_megapixels,
        "definitions": {
            "joints3d_mm": "root-relative joints, mm, in the input camera's frame (x right, y down, z forward)",
            "joints2d_px": "projection into the frame of the 3D pose placed with its root on the ray through "
                           "the box centre, at root_mm[2]: fitted so the projected joints just fit the box "
                           "(root_depth_source 'fit'), or --root-depth ('given')",
            "bbox": "x, y, w, h in frame px (pixel centres at integers); box_source: --bbox, --boxes, --full-frame, "
                    "hog (OpenCV's HOG people detector) or onnx:<file>; box_score: the detector's score",
        },
        **summary,
        "boxes": boxes,
    }
    atomic_write_json(out / "meta.json", meta)


def run_export(args):
    from depthpi.export import export_model
    from depthpi.predict import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, args.config, resolve_device(args.device or "cpu"))
    if args.size and args.size != predictor.input_size:
        print(f"[depthpi export] note: --size {args.size}, but the model was trained on {predictor.input_size}"
              f"×{predictor.input_size} crops; it runs at any size, its accuracy is known only at the trained one",
              file=sys.stderr)
    report = export_model(predictor, args.format, args.out, args.size, check=not args.no_check)
    print(report.summary())
    return report


def _predict(args) -> None:
    summary = run_predict(args)
    skipped, empty = summary["skipped"], summary["first_frames_without_people"]
    print(f"{summary['frames']} frames, {summary['people']} people (boxes: {summary['box_source']}) -> "
          f"{summary['predictions']}" + (f"; overlay -> {summary['overlay']}" if summary["overlay"] else "")
          + (f"; skipped {len(skipped)}: " + ", ".join(s["file"] for s in skipped) if skipped else ""))
    if summary["frames_without_people"]:
        more = " ..." if summary["frames_without_people"] > len(empty) else ""
        hint = ("; give --bbox or --boxes, or --full-frame for frames that are crops of one person"
                if summary["box_source"] not in ("--bbox", "--boxes", "--full-frame") else "")
        print(f"no person in {summary['frames_without_people']} of {summary['frames']} frames "
              f"({summary['box_source']}): {', '.join(map(str, empty))}{more}{hint}")


def _export(args) -> None:
    try:
        run_export(args)
    except ImportError as err:
        raise SystemExit(f"depthpi export: {err}") from None


def add_inference_parsers(subparsers) -> None:
    """Register ``predict`` and ``export`` on the ``depthpi`` sub-command parser."""
    predict = subparsers.add_parser("predict", help="3D poses from images, a folder or a video")
    predict.add_argument("--ckpt", required=True, help=CKPT_HELP)
    predict.add_argument("--config", help="run config (default: config.yaml of the run the ckpt is in)")
    predict.add_argument("--input", required=True, help="an image, a folder of images or a video")
    boxes = predict.add_mutually_exclusive_group()
    boxes.add_argument("--detector", help="find people with 'hog' (OpenCV's HOG people detector: the default "
                       "without --bbox/--boxes/--full-frame) or an ONNX detector file (formats: docs/predict.md)")
    boxes.add_argument("--bbox", help="x,y,w,h person box for every frame (frame pixels)")
    boxes.add_argument("--boxes", help='JSON Lines: {"frame": name_or_index, "boxes": [[x, y, w, h], ...]}')
    boxes.add_argument("--full-frame", action="store_true", help="each whole frame is one person's box "
                       "(frames that are already crops of one person)")
    predict.add_argument("--detector-size", type=int, default=640, help="input side S of an ONNX detector "
                         "(default %(default)s)")
    predict.add_argument("--min-score", type=float, help="detector score to keep a box (default: 0.5 for an ONNX "
                         "detector's probability, 0.3 for HOG's SVM margin)")
    predict.add_argument("--person-class", type=int, default=0, help="an ONNX detector's class index of people "
                         "(default %(default)s, COCO's person)")
    camera = predict.add_mutually_exclusive_group()
    camera.add_argument("--K", help="JSON file with the 3x3 intrinsics of the frames")
    camera.add_argument("--fov", type=float, help=f"horizontal field of view, degrees (without --K; "
                        f"default {DEFAULT_FOV:g}, with a warning)")
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--flip-tta", action="store_true", help="average with the un-flipped mirrored prediction")
    predict.add_argument("--batch", type=int, default=16, help="crops per forward pass")
    predict.add_argument("--root-depth", type=float, help="root depth in mm for the 2D joints (default: fit to box)")
    predict.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                         help="refuse an image (skip it in a folder) whose header declares more pixels, before "
                              "decoding it (default %(default)g)")
    predict.add_argument("--no-overlay", action="store_true", help="skip overlay images/video")
    predict.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    predict.set_defaults(func=_predict)

    export = subparsers.add_parser("export", help="inference-only torch.export (.pt2), TorchScript or ONNX model")
    export.add_argument("--ckpt", required=True, help=CKPT_HELP)
    export.add_argument("--config", help="run config (default: config.yaml of the run the ckpt is in)")
    export.add_argument("--format", default="pt2", choices=["pt2", "torchscript", "onnx"],
                        help="pt2 (torch.export, default), torchscript or onnx")
    export.add_argument("--size", type=int, help="input N (default: the run's data.pipeline.input_size)")
    export.add_argument("--out", required=True, help="output file")
    export.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    export.add_argument("--device", help="device for the export and check (default cpu)")
    export.set_defaults(func=_export)
