"""depthpi predict: same input as evaluation, camera-frame rotation, 2D joints, flip TTA, sources."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from depthpi.camera import Camera
from depthpi.config import DataConfig, TrainConfig, save_config
from depthpi.data.augment import ViewParams
from depthpi.data.batches import Inputs
from depthpi.data.pipeline import PipelineConfig, crop_camera, process_sample
from depthpi.data.schema import Sample, SampleMeta
from depthpi.inference_cli import add_inference_parsers
from depthpi.models.posenet import ModelConfig, PoseOutput, build_model
from depthpi.predict import (Predictor, fit_root_depth, joints_2d, make_crop, predict_frames, to_camera_frame,
                             unflip_joints)
from depthpi.skeleton import H36M_17
from depthpi.sources import read_boxes

SIZE = 65
K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])


def make_run(root: Path, size: int = SIZE, kind: str = "baseline") -> Path:
    """A tiny untrained model saved like a run: root/export/best.pt + root/config.yaml."""
    model_cfg = ModelConfig(width=0.125, arch="resnet50", init="none", kind=kind)
    cfg = TrainConfig(model=model_cfg, stage="teacher" if kind == "teacher" else "baseline",
                      data=DataConfig(pipeline=PipelineConfig(input_size=size)))
    torch.manual_seed(0)
    model = build_model(model_cfg)
    with torch.no_grad():  # tame the random head so heatmaps are not one-hot
        model.head.conv.weight.mul_(0.05)
    (root / "export").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), root / "export" / "best.pt")
    save_config(cfg, root / "config.yaml")
    return root / "export" / "best.pt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt)


def textured(shape=(240, 320), seed=0) -> np.ndarray:
    """Smooth random colour image (upsampled noise), so crops have structure."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (shape[0] // 8, shape[1] // 8, 3)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def stored_sample(key="s0") -> Sample:
    """A labelled sample of a tilted camera (R ≠ I, t ≠ 0) whose stored crop is the 'frame'."""
    angle = np.radians(20)
    R = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    t = np.array([100.0, -1500.0, -2000.0])
    rng = np.random.default_rng(1)
    cam_points = np.array([200.0, 100.0, 3500.0]) + rng.uniform(-400, 400, (17, 3))
    joints = cam_points @ R + t
    uv = Camera(K, R, t).project(joints)
    lo, hi = uv.min(0) - 8, uv.max(0) + 8
    meta = SampleMeta(dataset="test", subject="S1", camera="C1", action="a", frame=0, labeled=True,
                      rgb_K=K, depth_K=None, R=R, t=t, joints=joints, joint_valid=np.ones(17, bool),
                      bbox=np.array([*lo, *(hi - lo)]))
    return Sample(key=key, rgb=textured(), depth=None, meta=meta)


class ConstantModel(nn.Module):
    """Returns the same root-relative pose (crop frame) for every input."""

    def __init__(self, pose: np.ndarray):
        super().__init__()
        self.register_buffer("pose", torch.as_tensor(pose, dtype=torch.float32))

    def forward(self, x, taps=()):
        return PoseOutput(self.pose.expand(x.shape[0], -1, -1).clone(), {})


def constant_predictor(predictor: Predictor, pose: np.ndarray) -> Predictor:
    clone = object.__new__(Predictor)
    clone.__dict__.update(predictor.__dict__, model=ConstantModel(pose))
    return clone


def random_pose(seed=0) -> np.ndarray:
    pose = np.random.default_rng(seed).uniform(-500, 500, (17, 3))
    return pose - pose[0]


def cli(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_inference_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func, args


def run_cli(argv):
    from depthpi.inference_cli import run_predict

    _, args = cli(argv)
    return run_predict(args)


# --- same input and output as evaluation -------------------------------------------------

def synthetic_sample() -> Sample:
    from depthpi.data.synthetic import render_sample

    return render_sample("test", 3)


@pytest.mark.parametrize("make_sample", [stored_sample, synthetic_sample], ids=["constructed", "synthetic"])
def test_predict_on_frame_matches_eval_pipeline(predictor, make_sample):
    """The stored crop with its K is a full frame: predict (camera R = I) == eval, rotated."""
    sample = make_sample()
    meta = sample.meta
    evaluated = process_sample(sample, predictor.rgb_pipeline(), train=False)
    pred_eval = predictor.predict_crops(evaluated["rgb"][None])[0]  # eval crop camera's frame
    eval_cam = crop_camera(Camera(meta.rgb_K, meta.R, meta.t), meta.bbox, ViewParams(), SIZE)
    expected = pred_eval @ (meta.R @ eval_cam.R.T).T  # into the stored camera's frame

    frame_cam = Camera.from_intrinsics(meta.rgb_K)
    crop = make_crop(sample.rgb, frame_cam, meta.bbox, predictor.rgb_pipeline(), H36M_17)
    np.testing.assert_array_equal(crop.rgb, evaluated["rgb"])  # the very same network input
    [frame] = predict_frames(predictor, [(0, "f", sample.rgb)], lambda im: frame_cam, lambda *a: [meta.bbox])
    np.testing.assert_allclose(frame.people[0].joints3d, expected, atol=1e-4)
    # and the eval target frame agrees: ground truth rotated the same way is the camera-frame truth
    truth_cam = Camera(meta.rgb_K, meta.R, meta.t).world_to_camera(meta.joints)
    np.testing.assert_allclose(evaluated["joints"] @ (meta.R @ eval_cam.R.T).T, truth_cam - truth_cam[0], atol=1e-2)


def test_shifted_box_rotates_prediction_by_the_camera_turn(predictor):
    """Constant model (stated): the only change between two boxes is the turn to the box centre.

    A box centred at (u, cy) turns the camera by a pure yaw θ = atan((u − cx)/f) about its
    y axis, so the camera-frame pose must be R_y(θ) · pose_crop; checked independently
    of the code's R_cam · R_cropᵀ.
    """
    pose = random_pose()
    const = constant_predictor(predictor, pose)
    camera = Camera.from_intrinsics(K)
    image = textured()
    results = {}
    for u in (159.5, 60.0, 260.0):
        box = np.array([u - 40, K[1, 2] - 80, 80, 160])
        [frame] = predict_frames(const, [(0, 0, image)], lambda im: camera, lambda *a, b=box: [b])
        results[u] = frame.people[0]
    for u, person in results.items():
        theta = np.arctan((u - K[0, 2]) / K[0, 0])
        c, s = np.cos(theta), np.sin(theta)
        yaw = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        np.testing.assert_allclose(person.joints3d, pose @ yaw.T, atol=1e-6)
    np.testing.assert_allclose(results[159.5].joints3d, pose, atol=1e-9)  # centred box: no turn
    assert not np.allclose(results[60.0].joints3d, results[260.0].joints3d, atol=1.0)


def test_frames_without_people_are_not_held_back_for_a_full_batch(predictor):
    """A long video with a sparse boxes file: at most ``batch_size`` frames are ever held."""
    camera = Camera.from_intrinsics(K)
    image, read, held = textured(), [], []
    box = np.array([120.0, 40.0, 80.0, 160.0])

    def frames():
        for index in range(40):
            read.append(index)
            yield index, index, image

    boxes = lambda index, *rest: [box] if index in (3, 39) else []  # noqa: E731
    for frame in predict_frames(predictor, frames(), lambda im: camera, boxes, batch_size=4):
        held.append(len(read) - 1 - frame.index)
    assert max(held) < 4
    assert [len(frame.people) for frame in predict_frames(predictor, frames(), lambda im: camera, boxes,
                                                          batch_size=4)] == [int(i in (3, 39)) for i in range(40)]


def test_joints_2d_root_on_box_centre_ray_and_fit_to_box(predictor):
    camera = Camera.from_intrinsics(K)
    box = np.array([200.0, 40.0, 70.0, 150.0])
    crop = make_crop(textured(), camera, box, predictor.rgb_pipeline(), H36M_17)
    pose = random_pose(3)
    # a given depth: the pose in the frame camera, rooted on the box-centre ray, projected by K
    uv, root = joints_2d(pose, crop, camera, 4000.0)
    centre = box[:2] + box[2:] / 2
    ray = np.linalg.inv(K) @ [*centre, 1.0]
    np.testing.assert_allclose(root / root[2], ray / ray[2], atol=1e-12)  # root on the centre ray
    np.testing.assert_allclose(root[2], 4000.0 * (crop.camera.R.T @ [0, 0, 1.0])[2], rtol=1e-12)
    points = to_camera_frame(pose, crop.camera, camera) + root
    np.testing.assert_allclose(uv, (points / points[:, 2:]) @ K[:2].T, atol=1e-9)
    np.testing.assert_allclose(uv[0], centre, atol=1e-9)  # the root projects onto the box centre
    # the fitted depth: the projected joints' box reaches the person box in one dimension
    z = fit_root_depth(pose, crop)
    uv, _ = joints_2d(pose, crop, camera, z)
    f = crop.camera.K[0, 0]
    in_crop = f * pose[:, :2] / (z + pose[:, 2:])
    np.testing.assert_allclose(np.max((in_crop.max(0) - in_crop.min(0)) / crop.box_size), 1.0, rtol=1e-6)
    extent = uv.max(0) - uv.min(0)
    assert np.max(extent / box[2:]) == pytest.approx(1.0, abs=0.1)  # ≈ in frame pixels (perspective)
    assert np.isnan(fit_root_depth(np.zeros((17, 3)), crop))


# --- flip TTA --------------------------------------------------------------------------------

def test_flipped_input_is_the_pipeline_flip_view(predictor):
    sample = stored_sample()
    plain = process_sample(sample, predictor.rgb_pipeline(), train=False)["rgb"]
    flipped = process_sample(sample, predictor.rgb_pipeline(), view=ViewParams(flip=True))["rgb"]
    diff = np.abs(flipped.astype(int) - plain[:, ::-1].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # equal up to cv2's fixed-point interpolation


def test_flip_tta_is_average_with_unflipped_prediction(predictor):
    x = torch.rand(3, 3, SIZE, SIZE)
    plain = predictor.predict_inputs(Inputs(x))
    mirrored = predictor.predict_inputs(Inputs(x.flip(-1)))
    expected = 0.5 * (plain + unflip_joints(mirrored, H36M_17.flip_permutation))
    np.testing.assert_allclose(predictor.predict_inputs(Inputs(x), flip_tta=True), expected, atol=1e-3)
    # symmetry: TTA of the mirrored image == mirror of TTA of the image
    tta, tta_mirrored = (predictor.predict_inputs(Inputs(v), flip_tta=True) for v in (x, x.flip(-1)))
    np.testing.assert_allclose(tta_mirrored, unflip_joints(tta, H36M_17.flip_permutation), atol=1e-3)


def test_flip_tta_of_a_known_model():
    """A constant model: TTA = ½(P + unflip(P)); unflip swaps l/r and negates x."""
    pose = random_pose(5)
    cfg = TrainConfig(model=ModelConfig(width=0.125, init="none"))
    predictor = object.__new__(Predictor)
    predictor.__dict__.update(cfg=cfg, device=torch.device("cpu"), model=ConstantModel(pose), skeleton=H36M_17)
    out = predictor.predict_inputs(Inputs(torch.zeros(2, 3, SIZE, SIZE)), flip_tta=True)[0].numpy()
    lwri, rwri = H36M_17.index("lwri"), H36M_17.index("rwri")
    expected = 0.5 * (pose[lwri] + pose[rwri] * [-1, 1, 1])
    np.testing.assert_allclose(out[lwri], expected, atol=1e-3)
    np.testing.assert_allclose(unflip_joints(unflip_joints(torch.tensor(pose), H36M_17.flip_permutation),
                                             H36M_17.flip_permutation).numpy(), pose)


# --- sources, files, CLI ----------------------------------------------------------------------

def test_video_gives_one_line_and_one_overlay_frame_per_frame(ckpt, tmp_path):
    path, count = tmp_path / "clip.avi", 5
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(count):
        writer.write(textured((120, 160), seed=i))
    writer.release()
    out = tmp_path / "out"
    summary = run_cli(["predict", "--ckpt", str(ckpt), "--input", str(path), "--out", str(out),
                       "--bbox", "40,10,80,100", "--batch", "2", "--flip-tta"])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(count)) and summary["frames"] == count
    person = lines[0]["people"][0]
    assert np.array(person["joints3d_mm"]).shape == (17, 3) and np.array(person["joints2d_px"]).shape == (17, 2)
    assert lines[0]["skeleton"] == "h36m_17" and lines[0]["flip_tta"] is True
    capture = cv2.VideoCapture(summary["overlay"])
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == count


def test_corrupt_image_in_folder_is_skipped_and_reported(ckpt, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "c.png"):
        cv2.imwrite(str(folder / name), textured((96, 128)))
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "boxes.jsonl").write_text('{"frame": "a.jpg", "boxes": [[10, 5, 50, 80], [60, 5, 50, 80]]}\n'
                                          '{"frame": 2, "boxes": [[20, 10, 40, 70]]}\n')
    out = tmp_path / "out"
    summary = run_cli(["predict", "--ckpt", str(ckpt), "--input", str(folder), "--out", str(out),
                       "--boxes", str(tmp_path / "boxes.jsonl"), "--fov", "60"])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["frame"], r["index"], len(r["people"])) for r in lines] == [("a.jpg", 0, 2), ("c.png", 2, 1)]
    assert summary["skipped"][0]["file"] == "b.jpg"
    assert json.loads((out / "meta.json").read_text())["skipped"][0]["file"] == "b.jpg"
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["a.jpg", "c.jpg"]


def test_full_frame_box_and_K_file(ckpt, tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), textured((96, 128)))
    (tmp_path / "K.json").write_text(json.dumps({"K": [[150, 0, 63.5], [0, 150, 47.5], [0, 0, 1]]}))
    summary = run_cli(["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "one.png"), "--out",
                       str(tmp_path / "out"), "--K", str(tmp_path / "K.json"), "--no-overlay", "--full-frame"])
    [line] = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert line["K"][0][0] == 150 and line["people"][0]["bbox"] == [-0.5, -0.5, 128, 96]
    assert line["people"][0]["box_source"] == "--full-frame" and line["people"][0]["box_score"] is None
    assert summary["overlay"] is None


def test_people_are_found_without_boxes_and_each_box_is_recorded_with_its_source(ckpt, tmp_path, capsys):
    """Default: OpenCV's HOG detector. A frame with a person gets one, an empty room none (and
    the command says which frames had none); meta.json lists every box with its source."""
    from depthpi.cli import main
    from test_detect import off_centre_frame, iou

    from depthpi.data.synthetic.scene import sensor_of
    from test_detect import WIDE

    folder = tmp_path / "frames"
    folder.mkdir()
    person, truth = off_centre_frame("test", 5)
    cv2.imwrite(str(folder / "a_person.png"), cv2.cvtColor(person, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "b_room.png"), cv2.cvtColor(sensor_of(WIDE, "S001C001").bg_rgb, cv2.COLOR_RGB2BGR))
    main(["predict", "--ckpt", str(ckpt), "--input", str(folder), "--out", str(tmp_path / "out"), "--no-overlay",
          "--fov", "60"])
    out = capsys.readouterr()
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [len(line["people"]) for line in lines] == [1, 0]
    found = lines[0]["people"][0]
    assert found["box_source"] == "hog" and found["box_score"] >= 0.3 and iou(found["bbox"], truth) > 0.5
    assert "2 frames, 1 people (boxes: hog)" in out.out and "no person in 1 of 2 frames (hog): b_room.png" in out.out
    assert "field of view" not in out.err  # --fov given: nothing assumed, nothing to warn about
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["boxes"]["source"] == "hog" and meta["frames_without_people"] == 1
    assert meta["boxes"]["per_frame"] == [{"frame": "a_person.png", "boxes": [
        {k: found[k] for k in ("bbox", "box_source", "box_score")}]}, {"frame": "b_room.png", "boxes": []}]
    assert meta["camera"] == "60 deg horizontal field of view"


def test_a_boxes_file_must_name_frames_of_the_input(ckpt, tmp_path, capsys):
    """Frame names or indices that match nothing are an error; a partial match is said."""
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(12):
        writer.write(textured((120, 160), seed=i))
    writer.release()
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text('{"frame": 99, "boxes": [[40, 10, 80, 100]]}\n{"frame": "img_0001.jpg", "boxes": []}\n')
    base = ["predict", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--no-overlay", "--boxes", str(boxes)]
    with pytest.raises(ValueError, match=r"none of the 2 frames it names \(e.g. \[99, 'img_0001.jpg'\]\) is a frame "
                                         r"of --input .*clip.avi \(12 frames, indices 0-11\)"):
        run_cli([*base, "--input", str(video)])
    assert not (tmp_path / "out").exists()  # refused before anything was predicted

    boxes.write_text('{"frame": 3, "boxes": [[40, 10, 80, 100]]}\n{"frame": 99, "boxes": [[0, 0, 9, 9]]}\n')
    summary = run_cli([*base, "--input", str(video)])
    assert summary["people"] == 1
    assert "1 of the 2 frames it names are in the input; not found: 99" in capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())["boxes"]
    assert (meta["source"], meta["named"], meta["matched"], meta["unmatched"]) == ("--boxes", 2, 1, [99])

    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), textured((96, 128)))
    boxes.write_text('{"frame": "frame_a.jpg", "boxes": [[10, 5, 50, 80]]}\n')
    with pytest.raises(ValueError, match=r"none of the 1 frames .*\(files such as \['a.jpg'\] or indices 0-0\)"):
        run_cli([*base, "--input", str(folder)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["predict", "--input", "x.png", "--out", "o"], ["export", "--out", "m.pt2"]])
def test_cuda_without_cuda_is_one_line_and_status_2(ckpt, command, capsys):
    from depthpi.cli import main

    with pytest.raises(SystemExit) as exit_status:
        main([command[0], "--ckpt", str(ckpt), *command[1:], "--device", "cuda"])
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--device cuda: CUDA is not available" in err and "use --device cpu" in err


def test_boxes_file_errors_name_the_line(tmp_path):
    path = tmp_path / "boxes.jsonl"
    path.write_text('{"frame": 0, "boxes": [[0, 0, 10, 10]]}\n{"frame": 1, "boxes": [[0, 0, -1, 10]]}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_boxes(path)
    path.write_text('{"frame": 0, "boxes": [[0, 0, 10, 10]]}\n{"frame": 0, "boxes": []}\n')
    assert len(read_boxes(path)[0]) == 1


def test_depth_model_is_refused(tmp_path):
    ckpt = make_run(tmp_path, kind="teacher")
    cv2.imwrite(str(tmp_path / "one.png"), textured((96, 128)))
    with pytest.raises(ValueError, match="depth"):
        run_cli(["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "one.png"), "--out", str(tmp_path / "o")])


# --- eval with flip TTA on shards ------------------------------------------------------------

def test_evaluate_checkpoint_with_flip_tta(ckpt, tmp_path):
    from depthpi.data.build import build_synthetic
    from depthpi.predict import evaluate_checkpoint

    build_synthetic(tmp_path / "shards", {"test": 8}, samples_per_shard=4, workers=1, seed=0)
    plain = evaluate_checkpoint(ckpt, tmp_path / "shards" / "test", tmp_path / "e0", batch_size=4, num_workers=0)
    tta = evaluate_checkpoint(ckpt, tmp_path / "shards" / "test", tmp_path / "e1", batch_size=4, num_workers=0,
                              flip_tta=True)
    assert np.isfinite(plain["mpjpe"]) and np.isfinite(tta["mpjpe"]) and plain["mpjpe"] != tta["mpjpe"]


def test_eval_scores_each_split_at_its_source_data_sets_threshold(ckpt, tmp_path):
    """A synthetic-trained run on Human3.6M shards: T = 150 mm (§5.2), not the run's 50 mm."""
    from depthpi.data.converters import convert
    from depthpi.predict import evaluate_checkpoint
    from raw_datasets import write_h36m

    write_h36m(tmp_path / "raw", frames=3, subjects=("S9", "S11"), actions=("Posing",), cdf=False, defects=False)
    convert("h36m", tmp_path / "raw", tmp_path / "h36m", progress=False)
    split = tmp_path / "h36m" / "test"
    default = evaluate_checkpoint(ckpt, split, tmp_path / "e150", batch_size=4, num_workers=0)
    forced = evaluate_checkpoint(ckpt, split, tmp_path / "e50", batch_size=4, num_workers=0, threshold_mm=50.0)
    assert default["threshold_mm"] == 150.0 and forced["threshold_mm"] == 50.0
    assert default["mpjpe"] == forced["mpjpe"] and default["pck"] >= forced["pck"]
    assert json.loads((tmp_path / "e150" / "metrics.json").read_text())["threshold_mm"] == 150.0


def test_eval_that_scores_nothing_fails_and_says_what_the_split_is(ckpt, tmp_path, capsys):
    """A split of stored teacher features, or one with no labelled sample, is an error (status 2),
    never a NaN result with status 0."""
    import shutil

    from depthpi.cli import main
    from depthpi.data.build import build_synthetic
    from depthpi.data.shards import read_manifest, write_manifest

    build_synthetic(tmp_path / "s", {"unlabeled": 4}, samples_per_shard=4, workers=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_status:
        main(["eval", "--ckpt", str(ckpt), "--shards", str(tmp_path / "s" / "unlabeled"), "--out", str(tmp_path / "e"),
              "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert exit_status.value.code == 2
    assert err.splitlines()[-1].startswith("depthpi eval: error: --shards ")  # one line, no traceback of ours
    assert err.splitlines()[-1].endswith("unlabeled: nothing was scored (0 labelled joints; 0 samples skipped: none); "
                                         "expected a split of labelled pose samples")
    assert not (tmp_path / "e" / "metrics.json").exists()

    features = tmp_path / "s" / "train.teacher-x"  # what depthpi precompute's manifest says of its output
    shutil.copytree(tmp_path / "s" / "unlabeled", features)
    manifest = read_manifest(features)
    manifest.params = {"kind": "teacher_features", "source": "shards/synth/train"}
    write_manifest(features, manifest)
    with pytest.raises(SystemExit) as exit_status:
        main(["eval", "--ckpt", str(ckpt), "--shards", str(features), "--out", str(tmp_path / "e")])
    assert exit_status.value.code == 2
    assert "train.teacher-x: a split of stored teacher features (depthpi precompute's output, from " \
           "shards/synth/train), not of pose samples" in capsys.readouterr().err


def test_eval_report_names_run_and_split_and_states_the_root(ckpt, tmp_path):
    from depthpi.data.build import build_synthetic
    from depthpi.predict import evaluate_checkpoint, model_name, split_name

    assert model_name(ckpt) == f"{ckpt.parents[1].name} (best.pt)"
    assert model_name(ckpt.parents[1]) == f"{ckpt.parents[1].name} (last.pt)"
    assert split_name("shards/synth/test/") == "synth/test"
    build_synthetic(tmp_path / "shards", {"test": 4}, samples_per_shard=4, workers=1, seed=0)
    result = evaluate_checkpoint(ckpt, tmp_path / "shards" / "test", tmp_path / "e", batch_size=4, num_workers=0)
    per_joint = result["per_joint"]
    others = [v for name, v in per_joint.items() if name != H36M_17.joint_names[H36M_17.root]]
    assert per_joint[H36M_17.joint_names[H36M_17.root]]["mpjpe"] == 0.0
    assert result["without_root"]["mpjpe"] == pytest.approx(np.mean([v["mpjpe"] for v in others]))
    assert result["without_root"]["mpjpe"] == pytest.approx(result["mpjpe"] * 17 / 16)  # every joint valid here
    assert result["without_root"]["pck"] == pytest.approx((result["pck"] * 17 - 1) / 16)
    table = (tmp_path / "e" / "per_joint.md").read_text()
    assert "| all but the root |" in table and "root (pelv) has error 0 by construction" in table
