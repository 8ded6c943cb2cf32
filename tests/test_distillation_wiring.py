"""The teacher → features → loss → student path, link by link, at toy scale.

A null result of a student against its control is only as good as this path: features of
the wrong view, a tap other than the one named, a loss scaled away or unlabelled pairs that
never reach the loss would all leave the student where its control ends. Here each link is
broken on purpose and the student must end measurably elsewhere than with the real path,
in the expected direction; one step is also checked against the objective computed by hand.

The toy setting is the low-label one of the study: a labelled split, and another split of
labelled shards serving as unlabelled pairs (the run withholds their labels).
"""
from pathlib import Path

import pytest
import torch

from conftest import subset_split
from depthpi.config import load_config
from depthpi.data.batches import Batch, build_eval_loader, model_inputs, with_depth
from depthpi.losses import distillation_loss, regression_loss
from depthpi.models.posenet import ModelConfig, build_model, run_model
from depthpi.train.loaders import build_loaders
from depthpi.train.run import build_stage
from depthpi.weights import save_weights

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"
TAP = "layer3.1.post_relu"
TINY = {"model.init": "none", "model.init_checkpoint": "null", "model.arch": "resnet18", "model.width": 0.125,
        "model.depth_bins": 8, "teacher.model.arch": "resnet18", "teacher.model.width": 0.125,
        "teacher.model.depth_bins": 8, "distill.tap": TAP, "data.pipeline.input_size": 33,
        "data.batch_size": 12, "data.unlabeled_fraction": 1 / 3, "data.num_workers": 0,
        "data.shuffle_buffer": 16, "data.eval_batch_size": 16, "data.pipeline.augment.geometry": False,
        "distill.alpha_warmup": 20.0, "distill.alpha_target": 20.0, "distill.pose_weight": 0.0}
STEPS, LR = 48, 3e-3
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(synth_root, tmp_path_factory):
    """(labelled split, unlabelled split of labelled shards, a frozen random RGB-D teacher's weights)."""
    root = tmp_path_factory.mktemp("wiring")
    labeled = subset_split(synth_root / "train", root / "labeled", [0, 1])
    unlabeled = subset_split(synth_root / "train", root / "unlabeled", [2, 3])
    torch.manual_seed(1)
    teacher = build_model(ModelConfig(kind="teacher", arch="resnet18", width=0.125, depth_bins=8, init="none"))
    save_weights(teacher.state_dict(), root / "teacher.pt")
    return labeled, unlabeled, root / "teacher.pt"


def student_config(toy, tmp_path, **overrides):
    labeled, unlabeled, teacher = toy
    values = {**TINY, "data.train": labeled, "data.test": unlabeled, "data.unlabeled": unlabeled,
              "teacher.weights": teacher, "run.out_dir": tmp_path, "data.allow_split_roles": True, **overrides}
    return load_config(DEMO / "student.yaml", [f"{k}={v}" for k, v in values.items()])


def train_student(cfg, break_teacher: bool = False):
    """STEPS steps of the real stage on the real loaders; ``break_teacher``: the teacher's tap
    replaced by a constant. Returns (stage, model)."""
    torch.manual_seed(0)
    stage, model = build_stage(cfg, torch.device("cpu"))
    if break_teacher:
        real = stage.teacher.outputs
        stage.teacher.outputs = lambda batch, inputs, pose: (torch.full_like(real(batch, inputs, pose)[0], 0.5), None)
    loaders = build_loaders(cfg, stage.needs_depth, rank=0, world=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    step, epoch = 0, 0
    while step < STEPS:
        loaders.start_epoch(epoch, {}, 0)
        for _, batch in loaders.train_batches(start=0):
            stage.losses(model, batch, epoch=float(epoch))["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    return stage, model.eval()


def distances(cfg, stage, model, split):
    """(feature distance, pose distance in mm) between student and the real teacher on the
    un-augmented views of ``split`` (the unlabelled pairs)."""
    teacher = stage.teacher.model
    loader = build_eval_loader(cfg.data, with_depth(cfg.data.pipeline, True), str(split), 0, 1)
    feature, pose, count = 0.0, 0.0, 0
    with torch.no_grad():
        for raw in loader:
            batch = Batch.from_collated(raw)
            inputs = model_inputs(batch, rgb=True, depth=True)
            ours = run_model(model, cfg.model, inputs.rgb, None, (TAP,))
            theirs = run_model(teacher, cfg.teacher.model, inputs.rgb, inputs.depth, (TAP,))
            feature += distillation_loss(ours.features[TAP], theirs.features[TAP], cfg.distill).sum().item()
            pose += (ours.joints - theirs.joints).norm(dim=-1).mean(dim=-1).sum().item()
            count += len(batch)
    return feature / count, pose / count


def spy_on(block, name: str, caught: dict) -> None:
    """Record the output after ReLU of the residual ``block`` (what a ``post_relu`` tap names)."""
    forward_pre = block.forward_pre

    def recorded(x, mask=None):
        pre, mask = forward_pre(x, mask)
        caught[name] = torch.relu(pre)
        return pre, mask

    block.forward_pre = recorded


@pytest.fixture(scope="module")
def real_run(toy, tmp_path_factory):
    cfg = student_config(toy, tmp_path_factory.mktemp("real"))
    return distances(cfg, *train_student(cfg), toy[1])


def test_one_step_is_the_objective_computed_by_hand_from_the_named_tap_of_the_same_view(toy, tmp_path):
    """Labelled: Huber regression + α·distillation; unlabelled: α·distillation only, their labels
    withheld; teacher and student read at the module the tap names, on the very inputs of the step."""
    cfg = student_config(toy, tmp_path)
    torch.manual_seed(0)
    stage, model = build_stage(cfg, torch.device("cpu"))
    loaders = build_loaders(cfg, stage.needs_depth, rank=0, world=1)
    loaders.start_epoch(0, {}, 0)
    _, batch = next(loaders.train_batches(start=0))
    assert batch.labeled.tolist() == [True] * 8 + [False] * 4  # the unlabelled share, labels withheld
    assert not batch.valid[8:].any() and not batch.joints[8:].any()

    caught = {}
    spy_on(model.backbone.layer3[1], "student", caught)
    spy_on(stage.teacher.model.module.trunk.layer3[1], "teacher", caught)
    terms = stage.losses(model, batch, epoch=0.0)

    inputs = stage.inputs(batch)
    depth = model_inputs(batch, rgb=False, depth=True).depth
    with torch.no_grad():
        expected_teacher = run_model(stage.teacher.model, cfg.teacher.model, inputs.rgb, depth, (TAP,)).features[TAP]
    assert torch.allclose(caught["teacher"], expected_teacher, atol=1e-6)  # the named module, the step's own view
    reg = regression_loss(run_model(model, cfg.model, inputs.rgb).joints, batch.joints, batch.valid, cfg.loss)
    dist = distillation_loss(caught["student"], expected_teacher, cfg.distill)
    expected = (torch.where(batch.labeled, reg, 0.0) + cfg.distill.alpha_target * dist).mean()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["distillation"].item() == pytest.approx(dist.mean().item(), rel=1e-5)


def test_distillation_moves_the_students_features_towards_the_teacher(toy, real_run, tmp_path):
    """α = 0 (the loss scaled away) and a constant teacher both leave the student's tap on the
    unlabelled pairs far further from the teacher's than the real path does (measured: 0.3 and
    0.5 of their distance)."""
    real_features, _ = real_run
    for name, overrides, broken in (("alpha 0", {"distill.alpha_warmup": 0.0, "distill.alpha_target": 0.0}, False),
                                    ("constant teacher", {}, True)):
        cfg = student_config(toy, tmp_path / name.replace(" ", "-"), **overrides)
        features, _ = distances(cfg, *train_student(cfg, break_teacher=broken), toy[1])
        assert real_features < 0.7 * features, f"{name}: {features:.4f} vs the real path's {real_features:.4f}"


def test_output_distillation_moves_the_students_pose_towards_the_teachers(toy, tmp_path):
    """β > 0 (features off): on the unlabelled pairs the student's pose ends nearer the teacher's.
    β acts on unlabelled pairs only, so this also fails if their stream is cut or their labels kept."""
    without = student_config(toy, tmp_path / "b0", **{"distill.alpha_warmup": 0.0, "distill.alpha_target": 0.0})
    with_pose = student_config(toy, tmp_path / "b1", **{"distill.alpha_warmup": 0.0, "distill.alpha_target": 0.0,
                                                         "distill.pose_weight": 1.0})
    _, pose_without = distances(without, *train_student(without), toy[1])
    _, pose_with = distances(with_pose, *train_student(with_pose), toy[1])
    assert pose_with < 0.7 * pose_without, f"β=1: {pose_with:.1f} mm vs β=0: {pose_without:.1f} mm"


def test_output_distillation_needs_an_online_teacher_and_unlabelled_pairs(toy, tmp_path):
    with pytest.raises(ValueError, match="distill.pose_weight"):
        student_config(toy, tmp_path, **{"distill.pose_weight": 1.0, "data.unlabeled": "null"})
    with pytest.raises(ValueError, match="distill.pose_weight"):
        student_config(toy, tmp_path, **{"distill.pose_weight": 1.0, "teacher.mode": "precomputed",
                                         "teacher.features": tmp_path, "teacher.unlabeled_features": tmp_path})
