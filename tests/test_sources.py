"""Inputs of depthpi predict: image headers read before decoding, decompression bombs refused."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from depthpi import sources
from depthpi.sources import FrameSource, declared_size


def bomb_png(path, side: int = 30000) -> None:
    """A valid 1-bit greyscale PNG of side × side pixels, all black: ~110 kB on disk, side² pixels
    (2.7 GB as the 8-bit colour image OpenCV would allocate for it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_headers_give_the_size_without_decoding(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    for name in ("a.png", "b.jpg", "c.bmp", "d.webp"):
        cv2.imwrite(str(tmp_path / name), image)
        assert declared_size(tmp_path / name) == (80, 48), name
    # a JPEG with a large metadata segment before its frame header (EXIF/ICC-like APP1 of 60 kB)
    jpeg = (tmp_path / "b.jpg").read_bytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 60002) + b"\x00" * 60000
    (tmp_path / "e.jpg").write_bytes(jpeg[:2] + app1 + jpeg[2:])
    assert declared_size(tmp_path / "e.jpg") == (80, 48)
    (tmp_path / "f.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "g.png").write_bytes(b"plain text")
    assert declared_size(tmp_path / "f.jpg") is None and declared_size(tmp_path / "g.png") is None
    bomb_png(tmp_path / "bomb.png", 30000)
    assert declared_size(tmp_path / "bomb.png") == (30000, 30000)
    assert (tmp_path / "bomb.png").stat().st_size < 200_000


def test_a_decompression_bomb_is_never_decoded(tmp_path, monkeypatch):
    """In a folder it is skipped with one warning line; alone it is refused; cv2 never decodes it."""
    folder = tmp_path / "frames"
    folder.mkdir()
    bomb_png(folder / "b_bomb.png")
    cv2.imwrite(str(folder / "a.png"), np.full((64, 48, 3), 90, np.uint8))
    decoded = []
    imread = cv2.imread
    monkeypatch.setattr(sources.cv2, "imread", lambda path, *a: decoded.append(path) or imread(path, *a))
    warnings = []
    monkeypatch.setattr(sources, "warn", warnings.append)

    frames = list(FrameSource(folder))
    assert [frame_id for _, frame_id, _ in frames] == ["a.png"] and decoded == [str(folder / "a.png")]
    assert len(warnings) == 1 and "b_bomb.png: declares 30000x30000 = 900 megapixels" in warnings[0]
    with pytest.raises(ValueError, match=r"--input .*b_bomb.png: declares 30000x30000 = 900 megapixels, over "
                                         r"--max-megapixels 100"):
        list(FrameSource(folder / "b_bomb.png"))
    assert decoded == [str(folder / "a.png")]


def test_the_limit_is_an_option_and_a_video_is_checked_too(tmp_path):
    from test_predict import run_cli

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(2):
        writer.write(np.zeros((120, 160, 3), np.uint8))
    writer.release()
    with pytest.raises(ValueError, match=r"clip.avi: its frame size declares 160x120 = 0.0192 megapixels, over "
                                         r"--max-megapixels 0.01"):
        FrameSource(path, max_pixels=10_000)
    with pytest.raises(ValueError, match="--max-megapixels 0: expected > 0"):
        run_cli(["predict", "--ckpt", "x.pt", "--input", str(path), "--out", str(tmp_path / "o"),
                 "--max-megapixels", "0"])
