"""Learning sanity: each stage overfits a few dozen training samples far below the mean-pose error.

The standard check that targets, loss, soft-argmax and the training step are wired right:
the real loader and pipeline feed the real stage (colour augmentation drawn afresh every
pass, applied in the step), and the model is scored in eval mode on the un-augmented views
of the same samples. A control that sees black images stays at the mean pose, so the bar
cannot be cleared by fitting labels alone. (That targets move with their image under roll,
flip and zoom is checked geometrically in ``test_pipeline.py``; learning that invariance
from 24 samples takes far longer than a test may.)
"""
from pathlib import Path

import pytest
import torch

from depthpi.config import load_config
from depthpi.data.batches import Batch, Inputs, build_eval_loader, build_train_loaders, with_depth
from depthpi.data.reference import mean_pose
from depthpi.evaluate import evaluate
from depthpi.train.run import build_stage
from depthpi.weights import save_weights

from conftest import subset_split

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"
TINY = {"model.arch": "resnet18", "model.width": 0.125, "model.depth_bins": 8, "data.pipeline.input_size": 33,
        "data.batch_size": 8, "data.num_workers": 0, "data.shuffle_buffer": 24, "data.eval_batch_size": 24,
        "data.pipeline.augment.geometry": False, "teacher.model.arch": "resnet18", "teacher.model.width": 0.125,
        "teacher.model.depth_bins": 8, "distill.tap": "layer3.1.post_relu"}
EPOCHS, LR = 60, 2e-3  # 180 steps of 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def few(tmp_path_factory, synth_root):
    """24 training samples in 3 shards."""
    return subset_split(synth_root / "train", tmp_path_factory.mktemp("few") / "train", [0, 1, 2])


def overfit(config: str, split: Path, tmp_path: Path, epochs: int = EPOCHS, lr: float = LR, blind: bool = False,
            **overrides):
    """Train ``epochs`` passes over ``split`` (fresh augmented views each pass).

    Returns:
        (MPJPE mm on the split's un-augmented views in eval mode, the split's mean-pose MPJPE, model).
        ``blind``: the model sees black images (the control).
    """
    values = {**TINY, "data.train": split, "data.test": split, "run.out_dir": tmp_path, **overrides}
    cfg = load_config(DEMO / config, [f"{k}={v}" for k, v in values.items()])
    torch.manual_seed(0)
    stage, model = build_stage(cfg, torch.device("cpu"))
    if blind:
        seen = stage.inputs
        stage.inputs = lambda batch: Inputs(torch.zeros_like(seen(batch).rgb))
    pipeline = with_depth(cfg.data.pipeline, stage.needs_depth)
    loader, _ = build_train_loaders(cfg.data, pipeline, seed=0, rank=0, world_size=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        for group in optimizer.param_groups:  # a tenth of the rate for the last quarter: settle
            group["lr"] = lr if epoch < 0.75 * epochs else 0.1 * lr
        loader.set_epoch(epoch)
        for raw in loader:
            terms = stage.losses(model, Batch.from_collated(raw), epoch=float(epoch))
            terms["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    result = evaluate(lambda batch: stage.predict(model, batch), build_eval_loader(cfg.data, pipeline, str(split), 0, 1),
                      torch.device("cpu"), 50.0, mean_pose=mean_pose(split)).summary()
    return result["mpjpe"], result["mean_pose_mpjpe"], model


@pytest.fixture(scope="module")
def trained(few, tmp_path_factory):
    """The RGB baseline, depth baseline and teacher overfitted once; the student test reuses them."""
    out = tmp_path_factory.mktemp("overfit")
    results = {}
    for name, config, extra in (("rgb", "baseline_rgb.yaml", {}), ("depth", "baseline_depth.yaml", {}),
                                ("teacher", "teacher.yaml", {"model.depth_branch_checkpoint": "null"})):
        mpjpe, reference, model = overfit(config, few, out / name, **extra)
        path = out / name / "last.pt"
        save_weights(model.state_dict(), path)
        results[name] = (mpjpe, reference, path)
    return results


@pytest.mark.parametrize("name", ["rgb", "depth", "teacher"])
def test_supervised_stages_overfit_far_below_the_mean_pose(trained, name):
    mpjpe, reference, _ = trained[name]
    assert 150 < reference < 400  # synthetic people, 17 joints, root included
    assert mpjpe < 0.3 * reference, f"{name}: {mpjpe:.1f} mm vs mean pose {reference:.1f} mm"


def test_student_with_its_online_teacher_overfits_too(few, trained, tmp_path):
    _, reference, teacher = trained["teacher"]
    mpjpe, _, _ = overfit("student.yaml", few, tmp_path, **{
        "model.init": "none", "model.init_checkpoint": "null", "teacher.weights": teacher,
        "distill.alpha_warmup": 0.1, "distill.alpha_target": 0.1})
    assert mpjpe < 0.3 * reference, f"student: {mpjpe:.1f} mm vs mean pose {reference:.1f} mm"


def test_a_model_that_sees_no_pixels_stays_near_the_mean_pose(few, tmp_path):
    """The control that makes the bar meaningful: with every image black, the best a model can
    do is (about) the mean pose, so the overfit tests above cannot pass by fitting labels alone."""
    mpjpe, reference, _ = overfit("baseline_rgb.yaml", few, tmp_path, epochs=30, blind=True)
    assert mpjpe > 0.8 * reference, f"{mpjpe:.1f} mm vs mean pose {reference:.1f} mm"
