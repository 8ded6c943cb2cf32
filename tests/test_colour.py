"""Colour augmentation (eq. 4.14–4.17) in torch: exact HSV arithmetic, applied in the training step."""
import colorsys

import numpy as np
import pytest
import torch

from depthpi.data.augment import AugmentConfig, ViewParams, draw_view
from depthpi.data.batches import Batch, model_inputs
from depthpi.data.colour import colour_augment
from depthpi.data.loader import collate
from depthpi.data.pipeline import PipelineConfig, process_sample

from conftest import fake_sample


def _coloured(img: np.ndarray, views: list[ViewParams]) -> np.ndarray:
    """(B, H, W, 3) intensities in [0, 255] of ``img`` coloured by each view."""
    rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float().expand(len(views), -1, -1, -1) / 255
    params = torch.from_numpy(np.stack([v.colour_vector() for v in views]))
    return colour_augment(rgb, params).permute(0, 2, 3, 1).numpy() * 255


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
    out = _coloured(image, views)
    for b, view in enumerate(views):
        np.testing.assert_allclose(out[b], _reference(image, view), atol=1e-3)


def test_identity_returns_the_input_and_full_turn_of_hue_changes_nothing(image):
    out = _coloured(image, [ViewParams(), ViewParams(hue=360.0)])
    np.testing.assert_allclose(out[0], image, atol=1e-3)
    np.testing.assert_allclose(out[1], image, atol=1e-3)


def test_known_values_hue_rotation_and_desaturation():
    red = np.array([[[255, 0, 0]]], np.uint8)
    grey = np.array([[[200, 100, 50]]], np.uint8)
    np.testing.assert_allclose(_coloured(red, [ViewParams(hue=120.0)])[0, 0, 0], [0, 255, 0], atol=1e-3)
    np.testing.assert_allclose(_coloured(red, [ViewParams(hue=-120.0)])[0, 0, 0], [0, 0, 255], atol=1e-3)
    np.testing.assert_allclose(_coloured(grey, [ViewParams(saturation=0.0)])[0, 0, 0], [200, 200, 200], atol=1e-3)
    # brightness +0.1 then contrast 2 about 0.5: 0.5 + 0.1 → 0.7
    out = colour_augment(torch.full((1, 3, 1, 1), 0.5), torch.tensor([[0.1, 2.0, 0.0, 1.0]]))
    assert out.flatten().tolist() == pytest.approx([0.7] * 3, abs=1e-6)


def test_brightness_and_contrast_move_intensities_the_right_way(image):
    out = _coloured(image, [ViewParams(brightness=0.1), ViewParams(contrast=0.8)])
    assert out[0].mean() > image.mean() + 20
    assert out[1].std() < image.std()


def test_model_inputs_colour_training_views_and_leave_evaluation_views_alone():
    sample = fake_sample("k0", rgb_shape=(48, 40))
    cfg = PipelineConfig(input_size=33)
    train_view = process_sample(sample, cfg, seed=3)
    eval_view = process_sample(sample, cfg, train=False)
    assert train_view["colour"].tolist() != [0.0, 1.0, 0.0, 1.0]
    train_batch, eval_batch = (Batch.from_collated(collate([v])) for v in (train_view, eval_view))
    assert eval_batch.colour is None

    plain = train_batch.rgb.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(model_inputs(train_batch).rgb, colour_augment(plain, train_batch.colour))
    assert (model_inputs(train_batch).rgb - plain).abs().max() > 0.01
    torch.testing.assert_close(model_inputs(eval_batch).rgb, eval_batch.rgb.permute(0, 3, 1, 2).float() / 255)
