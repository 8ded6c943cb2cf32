"""Keypoint attention maps (eq. 4.26), built on the training device."""
import cv2
import numpy as np
import pytest
import torch

from depthpi.train.targets import area_matrix, keypoint_attention


@pytest.mark.parametrize("size, out_size", [(257, 17), (65, 5), (129, 9), (64, 16), (10, 10)])
def test_area_matrix_is_opencv_inter_area(size, out_size):
    profiles = np.random.default_rng(size).random((3, size)).astype(np.float32)
    expected = cv2.resize(profiles, (out_size, 3), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(profiles @ area_matrix(size, out_size).T, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(area_matrix(size, out_size).sum(1), 1.0)  # a constant stays constant


def _eq_4_26_full_resolution(joints2d: np.ndarray, valid: np.ndarray, size: int, out_size: int) -> np.ndarray:
    """The map as eq. 4.26 writes it: Σ_j exp(−‖p − p_j‖² / 5) over the N×N input, area-resized, max 1."""
    grid = np.arange(size, dtype=np.float64)
    full = sum(np.outer(np.exp(-(grid - v) ** 2 / 5), np.exp(-(grid - u) ** 2 / 5))
               for (u, v), ok in zip(joints2d, valid) if ok)
    small = cv2.resize(np.asarray(full, np.float32), (out_size, out_size), interpolation=cv2.INTER_AREA)
    return small / small.max()


def test_batched_map_equals_eq_4_26_built_at_full_resolution_then_resized():
    rng = np.random.default_rng(0)
    size, out = 129, 9
    joints = rng.uniform(-20, size + 20, (4, 17, 2)).astype(np.float32)  # some outside the crop
    valid = rng.random((4, 17)) > 0.3
    maps = keypoint_attention(torch.from_numpy(joints), torch.from_numpy(valid), size, out).numpy()
    for b in range(4):
        np.testing.assert_allclose(maps[b], _eq_4_26_full_resolution(joints[b], valid[b], size, out), atol=2e-5)


def test_map_peaks_at_the_joints_and_ignores_invalid_ones():
    joints2d = torch.tensor([[[16.0, 16.0], [100.0, 40.0]]])
    attention = keypoint_attention(joints2d, torch.tensor([[True, False]]), 129, 9)[0]
    assert attention.max().item() == pytest.approx(1.0)
    assert np.unravel_index(int(attention.argmax()), attention.shape) == (1, 1)
    assert attention[2, 6] < 1e-3  # the invalid joint contributes nothing


def test_sample_without_valid_joints_gets_a_map_of_ones():
    joints2d = torch.rand(2, 17, 2) * 64
    valid = torch.zeros(2, 17, dtype=torch.bool)
    valid[0, 3] = True
    maps = keypoint_attention(joints2d, valid, 65, 5)
    assert maps[1].eq(1.0).all() and maps[0].max().item() == pytest.approx(1.0) and maps[0].min() < 1.0
