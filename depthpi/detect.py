"""Finding people in frames for ``depthpi predict``: OpenCV's HOG people detector, or an ONNX detector.

Both return :class:`Detection` boxes (x, y, w, h in frame pixels, pixel centres at
integers) with a score, best first, after non-maximum suppression. Nothing is downloaded:
HOG's SVM ships inside OpenCV, and an ONNX detector is the user's own file, run by OpenCV's
DNN module on a letterboxed S×S input; its first output is read as rows (N, 6) or YOLOv8's
(4 + C, N), and a box counts when its class is ``person_class`` and its score reaches
``min_score``.

docs/predict.md ("An ONNX detector") has the input and output layouts in full.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

NMS_IOU = 0.45  # boxes overlapping more than this (IoU) with a better one are dropped
# Dalal & Triggs' 64×128 window holds a ~96 px tall person with a margin on every side; the
# crop pipeline expects a tight box, so a window is cut to its central 60 % × 80 %.
HOG_PERSON = (0.2, 0.1, 0.6, 0.8)
HOG_WINDOW = (64, 128)  # px, width × height
HOG_MAX_SIDE = 1280  # larger frames are scanned at this size (HOG's time grows with the pixels)


@dataclass
class Detection:
    """One person box: ``bbox`` (4,) x, y, w, h frame px; ``score`` (None where not a detector's); ``source``."""

    bbox: np.ndarray
    score: float | None
    source: str


class HogDetector:
    """OpenCV's HOG + linear SVM people detector (Dalal & Triggs), trained on upright pedestrians.

    It finds people about 100 px tall or more (its window is 64×128 px), standing or walking
    best; sitting, crouching or lying people are often missed. ``min_score`` is a distance from
    the SVM's margin (≈ 0 to 3), not a probability.
    """

    source = "hog"

    def __init__(self, min_score: float = 0.3, max_side: int = HOG_MAX_SIDE):
        if not hasattr(cv2, "HOGDescriptor"):
            raise ValueError(f"--detector hog: this OpenCV ({cv2.__version__}) has no HOG people detector (OpenCV 5 "
                             "moved it to the contrib package): pip install opencv-contrib-python-headless, or give "
                             "--detector model.onnx, --bbox, --boxes or --full-frame")
        self.min_score, self.max_side = min_score, max_side
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def settings(self) -> dict:
        return {"detector": "hog", "min_score": self.min_score, "max_side_px": self.max_side,
                "person_box_of_window": list(HOG_PERSON)}

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """People in ``image``, (H, W, 3) uint8 RGB."""
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        scanned = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if scanned.shape[0] < HOG_WINDOW[1] or scanned.shape[1] < HOG_WINDOW[0]:
            return []  # no window fits (and OpenCV 5.1 crashes on some such frames)
        windows, scores = self.hog.detectMultiScale(scanned, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(windows) == 0:
            return []
        windows = np.asarray(windows, np.float64) / scale
        left, top, width, height = HOG_PERSON
        boxes = np.stack([windows[:, 0] + left * windows[:, 2], windows[:, 1] + top * windows[:, 3],
                          width * windows[:, 2], height * windows[:, 3]], 1) - [0.5, 0.5, 0, 0]
        return suppress(boxes, np.ravel(scores).astype(np.float64), self.min_score, self.source)


class OnnxDetector:
    """A user's ONNX person detector run through ``cv2.dnn`` (output formats: module docstring)."""

    def __init__(self, path: str | Path, size: int = 640, min_score: float = 0.5, person_class: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--detector {path}: no such file (expected an ONNX model, or 'hog')")
        if size < 32:
            raise ValueError(f"--detector-size {size}: expected the detector's input side in px (e.g. 640)")
        try:
            self.net = cv2.dnn.readNetFromONNX(str(self.path))
        except cv2.error as err:
            raise ValueError(f"--detector {path}: OpenCV's DNN module cannot read it as ONNX "
                             f"({_first_line(err)})") from None
        self.size, self.min_score, self.person_class = size, min_score, person_class
        self.source = f"onnx:{self.path.name}"
        self.params = cv2.dnn.Image2BlobParams()
        self.params.scalefactor = (1 / 255.0,) * 3 + (1.0,)
        self.params.size = (size, size)
        self.params.swapRB = False  # frames are RGB already
        self.params.ddepth = cv2.CV_32F
        self.params.paddingmode = cv2.dnn.DNN_PMODE_LETTERBOX
        self.params.borderValue = (114.0, 114.0, 114.0, 0.0)

    def settings(self) -> dict:
        return {"detector": str(self.path), "input_size": self.size, "min_score": self.min_score,
                "person_class": self.person_class}

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """People in ``image``, (H, W, 3) uint8 RGB."""
        self.net.setInput(cv2.dnn.blobFromImageWithParams(np.ascontiguousarray(image), self.params))
        try:
            output = np.asarray(self.net.forward(), np.float64)
        except cv2.error as err:
            raise ValueError(f"--detector {self.path}: the model failed on a (1, 3, {self.size}, {self.size}) input "
                             f"({_first_line(err)}); is --detector-size its input size?") from None
        corners, scores = self.person_boxes(output)
        if not len(corners):
            return []
        rects = np.round(np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], 1)).astype(int)
        height, width = image.shape[:2]
        boxes = np.asarray(self.params.blobRectsToImageRects(rects.tolist(), (width, height)), np.float64)
        return suppress(boxes.reshape(-1, 4) - [0.5, 0.5, 0, 0], scores, self.min_score, self.source)

    def person_boxes(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network output → ((K, 4) x1, y1, x2, y2 input px, (K,) scores) of the person class."""
        table = output.reshape(output.shape[-2:]) if output.ndim >= 2 and np.prod(output.shape[:-2]) == 1 else None
        if table is not None and table.shape[1] == 6:  # rows: x1, y1, x2, y2, score, class
            keep = np.round(table[:, 5]) == self.person_class
            return table[keep, :4], table[keep, 4]
        if table is not None and table.shape[0] > 4 + self.person_class:  # YOLOv8: (4 + C, N)
            cx, cy, w, h = table[:4]
            corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
            return corners, table[4 + self.person_class]
        raise ValueError(f"--detector {self.path}: output of shape {tuple(output.shape)} is neither (N, 6) rows "
                         f"x1, y1, x2, y2, score, class nor YOLOv8's (1, 4 + C, N) with class {self.person_class}")


def suppress(boxes: np.ndarray, scores: np.ndarray, min_score: float, source: str) -> list[Detection]:
    """Boxes (K, 4) x, y, w, h scoring at least ``min_score``, after NMS, best first."""
    keep = (scores >= min_score) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & np.all(np.isfinite(boxes), 1)
    boxes, scores = boxes[keep], scores[keep]
    if not len(boxes):
        return []
    chosen = np.ravel(cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), min_score, NMS_IOU)).astype(int)
    chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
    return [Detection(boxes[i], float(scores[i]), source) for i in chosen]


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def make_detector(spec: str, size: int = 640, min_score: float | None = None, person_class: int = 0):
    """``hog`` → :class:`HogDetector`; a file name → :class:`OnnxDetector`."""
    if spec == "hog":
        return HogDetector() if min_score is None else HogDetector(min_score)
    return OnnxDetector(spec, size, 0.5 if min_score is None else min_score, person_class)
