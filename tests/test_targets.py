"""Device-side attention maps equal the workers' NumPy ones (eq. 4.26)."""
import cv2
import numpy as np
import pytest
import torch

from depthpi.data import pipeline
from depthpi.train.targets import area_matrix, keypoint_attention


@pytest.mark.parametrize("size, out_size", [(257, 17), (65, 5), (129, 9), (64, 16), (10, 10)])
def test_area_matrix_is_opencv_inter_area(size, out_size):
    profiles = np.random.default_rng(size).random((3, size)).astype(np.float32)
    expected = cv2.resize(profiles, (out_size, 3), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(profiles @ area_matrix(size, out_size).T, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(area_matrix(size, out_size).sum(1), 1.0)  # a constant stays constant


def test_batched_attention_equals_the_pipeline_map_per_sample():
    rng = np.random.default_rng(0)
    size, out = 257, 17
    joints = rng.uniform(-20, size + 20, (5, 17, 2)).astype(np.float32)  # some outside the crop
    valid = rng.random((5, 17)) > 0.3
    valid[3] = False  # no valid joint: a map of ones, as the pipeline gives
    maps = keypoint_attention(torch.from_numpy(joints), torch.from_numpy(valid), size, out).numpy()
    for b in range(5):
        expected = pipeline.keypoint_attention(joints[b], valid[b], size, out)
        np.testing.assert_allclose(maps[b], expected, atol=2e-5)
    assert maps[3].min() == 1.0 and all(m.max() == pytest.approx(1.0) for m in maps)


def test_student_stage_builds_the_map_the_workers_would_have_built():
    from conftest import fake_sample

    from depthpi.data.loader import collate
    from depthpi.data.pipeline import PipelineConfig, process_sample
    from depthpi.train.stages import StudentStage

    from dataclasses import replace

    def sample(i):  # a camera that puts the joints (±500 mm at 3 m) inside the 48×40 frame
        s = fake_sample(f"k{i}", seed=i)
        K = np.array([[100.0, 0, 20], [0, 100.0, 24], [0, 0, 1]])
        return replace(s, meta=replace(s.meta, rgb_K=K, depth_K=K))

    cfg = PipelineConfig(input_size=65, attention=True)
    views = [process_sample(sample(i), cfg, seed=1, epoch=0, train=True) for i in range(4)]
    batch = collate(views)
    from_workers = batch.pop("attention")
    batch["rgb_input"] = batch["rgb"].permute(0, 3, 1, 2).float()
    built = StudentStage.attention(batch, cfg.attention_size)
    assert built.shape == from_workers.shape == (4, 5, 5) and (from_workers < 0.5).any()  # not maps of ones
    torch.testing.assert_close(built, from_workers, atol=2e-5, rtol=0)
