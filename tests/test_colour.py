"""Device-side colour augmentation: exact HSV arithmetic, agreement with the workers' OpenCV path."""
import colorsys

import numpy as np
import pytest
import torch

from depthpi.data.augment import AugmentConfig, ViewParams, colour_augment as worker_colour, draw_view
from depthpi.data.batches import IMAGENET_MEAN, IMAGENET_STD, to_device
from depthpi.data.device_colour import IDENTITY, colour_augment
from depthpi.data.pipeline import PipelineConfig, process_sample

from conftest import fake_sample


def _on_device(img: np.ndarray, views: list[ViewParams]) -> np.ndarray:
    """(B, H, W, 3) float intensities of ``img`` coloured by each view."""
    rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float().expand(len(views), -1, -1, -1)
    params = torch.from_numpy(np.stack([v.colour_vector() for v in views]))
    return colour_augment(rgb, params).permute(0, 2, 3, 1).numpy()


def _reference(img: np.ndarray, view: ViewParams) -> np.ndarray:
    """Eq. 4.14–4.17 in float64 with the standard library's HSV, pixel by pixel."""
    x = np.clip((img / 255.0 + view.brightness - 0.5) * view.contrast + 0.5, 0.0, 1.0)
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[index])
        out[index] = colorsys.hsv_to_rgb((h + view.hue / 360.0) % 1.0, min(s * view.saturation, 1.0), v)
    return out * 255.0


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)


def test_matches_float64_hsv_reference_per_sample(image):
    rng = np.random.default_rng(1)
    views = [draw_view(rng, AugmentConfig()) for _ in range(4)]
    out = _on_device(image, views)
    for b, view in enumerate(views):
        np.testing.assert_allclose(out[b], _reference(image, view), atol=1e-3)


def test_identity_returns_the_input_and_full_turn_of_hue_changes_nothing(image):
    identity = ViewParams()
    full_turn = ViewParams(hue=360.0)
    out = _on_device(image, [identity, full_turn])
    np.testing.assert_allclose(out[0], image, atol=1e-3)
    np.testing.assert_allclose(out[1], image, atol=1e-3)


def test_known_values_hue_rotation_and_desaturation():
    red = np.array([[[255, 0, 0]]], np.uint8)
    grey = np.array([[[200, 100, 50]]], np.uint8)
    np.testing.assert_allclose(_on_device(red, [ViewParams(hue=120.0)])[0, 0, 0], [0, 255, 0], atol=1e-3)
    np.testing.assert_allclose(_on_device(red, [ViewParams(hue=-120.0)])[0, 0, 0], [0, 0, 255], atol=1e-3)
    np.testing.assert_allclose(_on_device(grey, [ViewParams(saturation=0.0)])[0, 0, 0], [200, 200, 200], atol=1e-3)
    # brightness +0.1 then contrast 2 about 0.5: 0.5 + 0.1 → 0.7 → 178.5
    mid = np.full((1, 1, 3), 127.5, np.float32)
    out = colour_augment(torch.from_numpy(mid).permute(2, 0, 1)[None], torch.tensor([[0.1, 2.0, 0.0, 1.0]]))
    assert out.flatten().tolist() == pytest.approx([178.5] * 3, abs=1e-3)


def test_agrees_with_workers_opencv_path_to_its_8_bit_hsv_quantisation(image):
    rng = np.random.default_rng(2)
    views = [draw_view(rng, AugmentConfig()) for _ in range(8)]
    device = _on_device(image, views)
    worker = np.stack([worker_colour(image, v) for v in views]).astype(np.float32)
    diff = np.abs(device - worker)
    # OpenCV's uint8 HSV keeps hue in 1.4° steps (up to ~6 levels on saturated pixels)
    # and rounds twice more; the mean difference is under one level.
    assert diff.max() <= 12 and diff.mean() < 1.0


def test_to_device_colours_training_views_and_skips_identity_views():
    sample = fake_sample("k0", rgb_shape=(48, 40))
    cfg = PipelineConfig(input_size=33, colour_on="device")
    device_view = process_sample(sample, cfg, seed=3)
    worker_view = process_sample(sample, PipelineConfig(input_size=33, colour_on="workers"), seed=3)
    assert device_view["colour"].tolist() != list(IDENTITY)
    np.testing.assert_array_equal(device_view["joints"], worker_view["joints"])

    def model_input(view):
        batch = {k: torch.as_tensor(view[k])[None] for k in ("rgb", "colour") if k in view}
        return to_device(batch, torch.device("cpu"), channels_last=False)["rgb_input"]

    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    diff = ((model_input(device_view) - model_input(worker_view)) * std).abs()
    assert diff.max() <= 12 and diff.mean() < 1.5
    eval_view = process_sample(sample, cfg, train=False)
    expected = (torch.as_tensor(eval_view["rgb"]).permute(2, 0, 1)[None].float() / 255
                - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model_input(eval_view), expected)


def test_auto_places_colour_on_cuda_devices_only_and_bad_value_names_the_key():
    assert PipelineConfig().for_device("cuda").colour_on == "device"
    assert PipelineConfig().for_device("cpu").colour_on == "workers"
    assert PipelineConfig(colour_on="device").for_device("cpu").colour_on == "device"
    with pytest.raises(ValueError, match="pipeline.colour_on"):
        PipelineConfig(colour_on="gpu")
