"""Inputs of ``depthpi predict``: frames (an image, a folder or a video), intrinsics and boxes.

A boxes file (``--boxes``) is JSON Lines, ``{"frame": name or index, "boxes": [[x, y, w, h],
...]}`` in frame pixels; a frame it does not mention has no people, and a file that names no
frame of the input is refused (:func:`match_boxes`). Image headers are checked before
decoding: more than ``max_pixels`` is refused for a single image (or a video) and skipped,
with a warning, in a folder.

docs/predict.md ("Inputs", "A boxes file") has the details.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: more than any camera's frame
_HEADER_BYTES = 16 << 20  # a JPEG's frame header must come within its first 16 MiB
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


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


def declared_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) px an image file's header declares, read without decoding it.

    PNG and JPEG headers are read here (a few bytes; a JPEG's segments are skipped by their
    lengths up to its frame header); other formats through Pillow's lazy open. None when the
    header is not one of an image.
    """
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(f)
    return _pillow_size(path)


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk a JPEG's marker segments (from byte 2) to its start-of-frame header."""
    f.seek(2)
    while f.tell() < _HEADER_BYTES:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):  # EOI or scan data before a frame
            return None
        if marker[1] in (0x01, 0xFF) or 0xD0 <= marker[1] <= 0xD7:  # no length: fill byte, TEM, RSTn
            f.seek(-1 if marker[1] == 0xFF else 0, 1)
            continue
        length = f.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            return None
        if marker[1] in _JPEG_SOF:
            frame = f.read(5)  # precision, height, width
            return (struct.unpack(">H", frame[3:5])[0], struct.unpack(">H", frame[1:3])[0]) if len(frame) == 5 else None
        f.seek(struct.unpack(">H", length)[0] - 2, 1)
    return None


def _pillow_size(path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit, Image.MAX_IMAGE_PIXELS
        return (2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def oversize(size: tuple[int, int], max_pixels: int) -> str | None:
    """Why a frame of ``size`` (width, height) px is refused, or None when it is within ``max_pixels``."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"declares {width}x{height} = {width * height / 1e6:.3g} megapixels, over --max-megapixels "
            f"{max_pixels / 1e6:g} (a decompression bomb?)")


def match_boxes(boxes: dict, source: FrameSource, path: str) -> dict:
    """How the frames a boxes file names match the frames of ``source``.

    Returns:
        {"named": frames the file names, "matched": how many of them the input has,
        "unmatched": the first 10 it does not have}.
    Raises:
        ValueError: the file names frames and none of them is in the input.
    """
    ids = source.frame_ids()
    named = list(boxes)
    unmatched = [] if ids is None else [k for k in named if k not in ids]
    report = {"named": len(named), "matched": len(named) - len(unmatched), "unmatched": unmatched[:10]}
    if named and not report["matched"]:
        have = (f"{source.total} frames, indices 0-{source.total - 1}" if source.kind == "video"
                else f"files such as {sorted(ids - set(range(len(source.files))))[:3]} or indices 0-{len(source.files) - 1}")
        raise ValueError(f"--boxes {path}: none of the {len(named)} frames it names (e.g. {named[:3]}) is a frame of "
                         f"--input {source.path} ({have})")
    if unmatched:
        warn(f"--boxes {path}: {report['matched']} of the {len(named)} frames it names are in the input; not found: "
             f"{', '.join(map(repr, unmatched[:5]))}{' ...' if len(unmatched) > 5 else ''}")
    return report


class FrameSource:
    """Frames of an image, a folder of images or a video, as (index, frame id, (H, W, 3) uint8 RGB).

    The frame id is the file name for images, the 0-based index for a video. Every image's
    header is checked before it is decoded. Unreadable images in a folder, and images
    declaring more than ``max_pixels``, are skipped and listed in ``skipped`` (name, reason).
    """

    def __init__(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.max_pixels = max_pixels
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
            size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            capture.release()
            if oversize(size, max_pixels):
                raise ValueError(f"--input {path}: its frame size {oversize(size, max_pixels)}")
        else:
            self.kind, self.files, self.total = "image", [self.path], 1

    def frame_ids(self) -> set | None:
        """Every id a boxes file may use for a frame of this input (names and indices);
        None for a video whose length its header does not tell."""
        if self.kind == "video":
            return set(range(self.total)) if self.total else None
        return {p.name for p in self.files} | set(range(len(self.files)))

    def __iter__(self):
        if self.kind == "video":
            yield from self._video_frames()
            return
        for index, path in enumerate(self.files):
            image, why = self._read(path)
            if image is None:
                if self.kind == "image":
                    raise ValueError(f"--input {path}: {why}")
                self.skipped.append((path.name, why))
                warn(f"{path}: {why}; skipped")
                continue
            yield index, path.name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _read(self, path: Path) -> tuple[np.ndarray | None, str]:
        """(BGR image, "") or (None, why): decoded only once its header passed the size limit."""
        size = declared_size(path)
        if size is None:
            return None, "not a readable image (no PNG, JPEG or other image header)"
        too_large = oversize(size, self.max_pixels)
        if too_large:
            return None, too_large
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return (image, "") if image is not None else (None, "not a readable image (corrupt or unsupported)")

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
