"""Inputs of ``depthpi predict``: frames (an image, a folder or a video), intrinsics and boxes.

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

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def warn(message: str) -> None:
    """A ``depthpi predict`` warning on stderr that does not break a tqdm progress bar."""
    from tqdm import tqdm

    tqdm.write(f"[depthpi predict] warning: {message}", file=sys.stderr)


def read_intrinsics(path: str | Path) -> np.ndarray:
    """(3, 3) K, px, from a JSON file holding ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` or ``{"K": ...}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--K {path}: cannot read a JSON 3x3 matrix ({err})") from None
    K = np.asarray(data["K"] if isinstance(data, dict) and "K" in data else data, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"--K {path}: expected a 3x3 matrix with positive focal lengths, got {K.tolist()}")
    return K


def parse_bbox(text: str) -> np.ndarray:
    """``"x,y,w,h"`` (frame px) → (4,) float64 box; w, h > 0."""
    try:
        box = np.array([float(v) for v in text.split(",")])
    except ValueError:
        box = np.zeros(0)
    if box.shape != (4,) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"--bbox {text!r}: expected x,y,w,h with w > 0 and h > 0")
    return box


def read_boxes(path: str | Path) -> dict:
    """Boxes file (module docstring) → {frame name or index: [(4,) boxes, px]}."""
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
    """Frames of an image, a folder of images or a video, as (index, frame id, (H, W, 3) uint8 RGB).

    The frame id is the file name for images, the 0-based index for a video. Unreadable
    images in a folder are skipped and listed in ``skipped`` (name, reason).
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
            yield from self._video_frames()
            return
        for index, path in enumerate(self.files):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                if self.kind == "image":
                    raise ValueError(f"--input {path}: not a readable image")
                self.skipped.append((path.name, "not a readable image (corrupt or unsupported)"))
                warn(f"{path}: not a readable image, skipped")
                continue
            yield index, path.name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _video_frames(self):
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
