"""``depthpi predict`` and ``depthpi export``: a trained student on the user's own pictures.

predict writes into ``--out``:
- ``predictions.jsonl``: one line per frame (see ``frame_record``);
- ``meta.json``: skeleton (joint names, parents), camera source, definitions, skipped files;
- ``overlay/<name>.jpg`` per image, or ``overlay.mp4`` for a video: the frame with boxes and
  2D skeletons, beside a 3D view of the root-relative poses.

Boxes file (``--boxes``): JSON Lines, one object per frame that has people::

    {"frame": "img_0001.jpg", "boxes": [[x, y, w, h], ...]}
    {"frame": 17, "boxes": [[412.0, 80.5, 190.0, 520.0]]}

``frame`` is the file name (relative to the folder; for a single image its file name) or the
0-based frame index (videos: always the index; folders: index in sorted name order).
Boxes are in frame pixels, x, y of the top-left corner, pixel centres at integers. A
frame the file does not mention has no people (an empty ``people`` list).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.io import atomic_path, atomic_write_json

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_FOV = 55.0
LEFT, RIGHT, CENTRE = (255, 80, 40), (40, 140, 255), (240, 240, 240)  # RGB


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[depthpi predict] warning: {message}", file=sys.stderr)


# --- inputs ---------------------------------------------------------------------------------

def read_intrinsics(path: str | Path) -> np.ndarray:
    """3×3 K from a JSON file holding ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` or ``{"K": ...}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--K {path}: cannot read a JSON 3x3 matrix ({err})") from None
    K = np.asarray(data["K"] if isinstance(data, dict) and "K" in data else data, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"--K {path}: expected a 3x3 matrix with positive focal lengths, got {K.tolist()}")
    return K


def parse_bbox(text: str) -> np.ndarray:
    try:
        box = np.array([float(v) for v in text.split(",")])
    except ValueError:
        box = np.zeros(0)
    if box.shape != (4,) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"--bbox {text!r}: expected x,y,w,h with w > 0 and h > 0")
    return box


def read_boxes(path: str | Path) -> dict:
    """Boxes file (module docstring) → {frame name or index: [(4,) boxes]}."""
    table: dict = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"--boxes {path}, line {number}"
        try:
            record = json.loads(line)
            frame, boxes = record["frame"], np.asarray(record["boxes"], np.float64).reshape(-1, 4)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: expected {{\"frame\": name_or_index, \"boxes\": [[x, y, w, h], ...]}} "
                             f"({err})") from None
        if not isinstance(frame, (int, str)) or isinstance(frame, bool):
            raise ValueError(f"{where}: 'frame' must be a file name or an integer index, got {frame!r}")
        if len(boxes) and (np.any(boxes[:, 2:] <= 0) or not np.all(np.isfinite(boxes))):
            raise ValueError(f"{where}: every box needs finite x, y and w, h > 0")
        table.setdefault(frame, []).extend(list(boxes))
    return table


class FrameSource:
    """Frames of an image, a folder of images or a video, as (index, frame id, RGB uint8).

    Unreadable images in a folder are skipped and listed in ``skipped`` (name, reason).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.skipped: list[tuple[str, str]] = []
        self.fps = 25.0
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise ValueError(f"--input {path}: no images ({', '.join(sorted(IMAGE_EXTS))}) in the folder")
            self.total = len(self.files)
        elif not self.path.is_file():
            raise FileNotFoundError(f"--input {path}: no such file or folder")
        elif self.path.suffix.lower() in VIDEO_EXTS:
            self.kind = "video"
            capture = cv2.VideoCapture(str(self.path))
            if not capture.isOpened():
                raise ValueError(f"--input {path}: OpenCV cannot open this video")
            self.total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            self.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            capture.release()
        else:
            self.kind, self.files, self.total = "image", [self.path], 1

    def __iter__(self):
        if self.kind == "video":
            capture = cv2.VideoCapture(str(self.path))
            index = 0
            try:
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    yield index, index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    index += 1
            finally:
                capture.release()
            return
        for index, path in enumerate(self.files):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                if self.kind == "image":
                    raise ValueError(f"--input {path}: not a readable image")
                self.skipped.append((path.name, "not a readable image (corrupt or unsupported)"))
                _warn(f"{path}: not a readable image, skipped")
                continue
            yield index, path.name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- outputs --------------------------------------------------------------------------------

def frame_record(frame, skeleton_name: str, flip_tta: bool) -> dict:
    """One JSONL line: frame id and index, image size, K, skeleton, people."""
    height, width = frame.image.shape[:2]
    return {"frame": frame.frame, "index": frame.index, "width": width, "height": height,
            "K": np.round(frame.camera.K, 4).tolist(), "skeleton": skeleton_name, "flip_tta": flip_tta,
            "people": [p.to_json() for p in frame.people]}


def draw_pose_2d(image: np.ndarray, joints2d: np.ndarray, skeleton, bbox=None) -> np.ndarray:
    """Draw a box and 2D skeleton (left bones orange, right blue) onto an RGB image in place."""
    thickness = max(1, round(max(image.shape[:2]) / 400))
    if bbox is not None:
        x, y, w, h = np.round(bbox).astype(int)
        cv2.rectangle(image, (x, y), (x + w, y + h), (255, 255, 0), thickness)
    left = {a for a, _ in skeleton.left_right_pairs}
    right = {b for _, b in skeleton.left_right_pairs}
    for child, parent in skeleton.edges:
        a, b = joints2d[child], joints2d[parent]
        if not np.all(np.isfinite([*a, *b])) or np.abs([*a, *b]).max() > 1e5:
            continue
        colour = LEFT if child in left else RIGHT if child in right else CENTRE
        cv2.line(image, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), colour, thickness + 1,
                 cv2.LINE_AA)
    return image


class Pose3DView:
    """Matplotlib 3D view of root-relative poses (camera frame: x right, z forward, −y up)."""

    def __init__(self, skeleton, size_px: int = 480):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.skeleton = skeleton
        self.fig = plt.figure(figsize=(size_px / 100, size_px / 100), dpi=100)
        self.ax = self.fig.add_subplot(projection="3d")
        self.left = {a for a, _ in skeleton.left_right_pairs}
        self.right = {b for _, b in skeleton.left_right_pairs}

    def render(self, poses: list[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB; people side by side, 1.2 m apart."""
        ax = self.ax
        ax.cla()
        for k, pose in enumerate(poses):
            p = pose + np.array([1200.0 * (k - (len(poses) - 1) / 2), 0, 0])
            for child, parent in self.skeleton.edges:
                colour = LEFT if child in self.left else RIGHT if child in self.right else (90, 90, 90)
                ax.plot(*(p[[child, parent]][:, [0, 2, 1]] * [1, 1, -1]).T, color=np.array(colour) / 255, lw=2)
        half = 1000.0 * max(1, len(poses))
        ax.set(xlim=(-half, half), ylim=(-half, half), zlim=(-1000, 1000), xlabel="x", ylabel="z", zlabel="-y",
               xticklabels=[], yticklabels=[], zticklabels=[])
        ax.set_box_aspect((1, 1, 1 / max(1, len(poses))))
        ax.view_init(elev=15, azim=-75)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)


def render_overlay(frame, skeleton, view: Pose3DView) -> np.ndarray:
    """The frame with boxes and 2D skeletons, beside the 3D view scaled to its height."""
    image = frame.image.copy()
    for person in frame.people:
        draw_pose_2d(image, person.joints2d, skeleton, person.bbox)
    panel = view.render([p.joints3d for p in frame.people])
    height = image.shape[0]
    panel = cv2.resize(panel, (height, height), interpolation=cv2.INTER_AREA)
    return np.concatenate([image, panel], axis=1)


class OverlayWriter:
    """overlay/<name>.jpg per image, or one overlay video for a video input."""

    def __init__(self, out_dir: Path, video: bool, fps: float):
        self.out_dir, self.video, self.fps = out_dir, video, fps
        self.writer = None
        self.path = out_dir / "overlay.mp4" if video else out_dir / "overlay"
        if not video:
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, name, image: np.ndarray) -> None:
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

    if args.bbox and args.boxes:
        raise ValueError("--bbox and --boxes: give one of them")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: expected >= 1")
    source = FrameSource(args.input)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_checkpoint(args.ckpt, args.config, device)
    K = read_intrinsics(args.K) if args.K else None
    boxes = read_boxes(args.boxes) if args.boxes else None
    fixed = parse_bbox(args.bbox) if args.bbox else None
    if K is None:
        _warn(f"no --K: assuming a {args.fov:g} deg horizontal field of view, principal point at the image centre")
    if fixed is None and boxes is None:
        _warn("no --bbox/--boxes: each whole frame is treated as one person box; "
              "crop the person (or give boxes) for accurate poses")

    def camera_for(image):
        height, width = image.shape[:2]
        if K is not None:
            return Camera(K, np.eye(3), np.zeros(3))
        return Camera.from_fov(args.fov, width, height)

    def boxes_for(index, frame_id, image):
        if fixed is not None:
            return [fixed]
        if boxes is not None:
            return boxes.get(frame_id, boxes.get(index, []))
        height, width = image.shape[:2]
        return [np.array([-0.5, -0.5, width, height])]  # pixel centres at integers

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
    _write_meta(out, predictor, source, args, K is not None, summary)
    return summary


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
