"""Finding people: OpenCV's HOG detector on full synthetic frames and empty rooms; ONNX detectors
of both output formats, built here and run through OpenCV's DNN module."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depthpi.data.synthetic import SyntheticConfig, render_sample
from depthpi.data.synthetic.scene import sensor_of
from depthpi.detect import HogDetector, OnnxDetector

# A 400×400 view of the sensor with the person ~200 px tall (HOG's window is 64×128 px):
# the renderer's crop at twice the default margin. Samples HOG finds (standing/walking/arms up).
WIDE = SyntheticConfig(crop_margin=2.0, crop_size=400)
FOUND = [("test", 5), ("test", 8), ("train", 7)]


def iou(a, b) -> float:
    """Intersection over union of two x, y, w, h boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def off_centre_frame(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A 360×340 frame cut so that the person is off its centre, and the person's true box in it."""
    sample = render_sample(split, index, WIDE)
    top, left = 40, 0 if index % 2 else 60
    frame = np.ascontiguousarray(sample.rgb[top:, left:left + 340])
    return frame, sample.meta.bbox - [left, top, 0, 0]


@pytest.mark.parametrize("split,index", FOUND)
def test_hog_finds_the_person_of_a_full_frame(split, index):
    frame, truth = off_centre_frame(split, index)
    found = HogDetector()(frame)
    assert found, "no person found"
    best = found[0]
    assert best.source == "hog" and best.score >= 0.3
    assert iou(best.bbox, truth) > 0.5, (best.bbox, truth)
    assert all(iou(other.bbox, best.bbox) <= 0.45 for other in found[1:])  # one box per person after NMS


def test_hog_finds_nobody_in_empty_rooms():
    for camera in ("S001C001", "S002C002", "S008C003"):  # the test split's rooms, 640×480, nobody in them
        assert HogDetector()(sensor_of(WIDE, camera).bg_rgb) == []
    assert HogDetector()(np.zeros((96, 128, 3), np.uint8)) == []  # smaller than the window


# --- ONNX detectors ----------------------------------------------------------------------------

class Yolov8Like(nn.Module):
    """(1, 3, S, S) → (1, 4 + 2, 3): three fixed candidates (cx, cy, w, h in input px); the
    person score of each is the red value of the input at its centre, the other class's the green."""

    BOXES = torch.tensor([[100.0, 250.0, 200.0], [140.0, 140.0, 60.0], [60.0, 40.0, 40.0], [120.0, 80.0, 80.0]])
    CENTRES = ((140, 100), (140, 250), (60, 200))  # (row, column)

    def forward(self, x):
        red = torch.stack([x[0, 0, r, c] for r, c in self.CENTRES])
        green = torch.stack([x[0, 1, r, c] for r, c in self.CENTRES])
        return torch.cat([self.BOXES, red[None], green[None]])[None]


class Rows(nn.Module):
    """(1, 3, S, S) → (4, 6) rows x1, y1, x2, y2, score, class, whatever the input."""

    ROWS = torch.tensor([[40.0, 60.0, 100.0, 200.0, 0.9, 0],    # a person
                         [44.0, 62.0, 104.0, 204.0, 0.8, 0],    # the same person again: NMS drops it
                         [200.0, 60.0, 260.0, 200.0, 0.3, 0],   # a person below the score threshold
                         [150.0, 100.0, 190.0, 140.0, 0.95, 2]])  # not a person

    def forward(self, x):
        return self.ROWS + 0 * x.mean()


def export_onnx(model: nn.Module, path, size: int) -> str:
    pytest.importorskip("onnxscript")
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=True, verbose=False)
    return str(path)


def test_yolov8_output_is_read_in_frame_pixels_rgb_in_0_1(tmp_path):
    """A 640×480 frame letterboxed into 320×320: scale 1/2, 40 grey rows above. Only the first
    candidate's centre is painted red, so only it scores as a person: its box must come back in
    frame pixels, which also checks the RGB order and the [0, 1] scale."""
    detector = OnnxDetector(export_onnx(Yolov8Like(), tmp_path / "yolo.onnx", 320), size=320)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[195:206, 195:206, 0] = 255  # red around frame pixel (200, 200) = input pixel (row 140, column 100)
    frame[95:106, 395:406, 1] = 255  # green at the third candidate: another class
    [person] = detector(frame)
    assert person.source == "onnx:yolo.onnx" and person.score == pytest.approx(1.0)
    # candidate 0: cx 100, cy 140, w 60, h 120 input px → x (100 − 30) · 2, y (140 − 60 − 40) · 2 in the frame
    np.testing.assert_allclose(person.bbox, [140 - 0.5, 80 - 0.5, 120, 240], atol=1.0)


def test_rows_output_keeps_people_above_the_threshold_once(tmp_path):
    detector = OnnxDetector(export_onnx(Rows(), tmp_path / "rows.onnx", 256), size=256)
    [person] = detector(np.full((256, 256, 3), 90, np.uint8))  # a square frame: no letterbox, scale 1
    assert person.score == pytest.approx(0.9)
    np.testing.assert_allclose(person.bbox, [40 - 0.5, 60 - 0.5, 60, 140], atol=1.0)
    assert len(OnnxDetector(tmp_path / "rows.onnx", size=256, min_score=0.25)(np.zeros((256, 256, 3), np.uint8))) == 2


def test_unknown_output_and_missing_files_are_named(tmp_path):
    class Flat(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))  # (1, 3)

    detector = OnnxDetector(export_onnx(Flat(), tmp_path / "flat.onnx", 64), size=64)
    with pytest.raises(ValueError, match=r"flat.onnx: output of shape \(1, 3\)"):
        detector(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="nothing.onnx: no such file"):
        OnnxDetector(tmp_path / "nothing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: OpenCV's DNN module cannot read it"):
        OnnxDetector(tmp_path / "junk.onnx")
