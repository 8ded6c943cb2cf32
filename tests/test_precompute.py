"""Precomputed teacher features: exact replay, equivalence with the online teacher, checks."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import tb_scalars
from depthpi.config import DataConfig, TrainConfig, load_config, save_config
from depthpi.data.batches import Batch, model_inputs
from depthpi.data.build import iter_split
from depthpi.data.features import decode_features, replay_map
from depthpi.data.loader import collate
from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import SampleError
from depthpi.data.shards import file_sha256, read_manifest
from depthpi.models.posenet import ModelConfig, build_model, run_model
from depthpi.precompute import PrecomputeConfig, estimate, precompute, view_params
from depthpi.predict import Predictor
from depthpi.train.engine import train

ROOT = Path(__file__).resolve().parents[1]
TAP = "layer3.1.post_relu"  # the end of layer3 of the demo's ResNet-18


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synth_root):
    """Synthetic shards (65×65 pipeline) and a randomly initialised tiny teacher 'run'."""
    root = tmp_path_factory.mktemp("pre")
    (root / "synth").symlink_to(synth_root)
    torch.manual_seed(0)
    model_cfg = ModelConfig(kind="teacher", arch="resnet18", width=0.25, depth_bins=8, init="none")
    cfg = TrainConfig(stage="teacher", model=model_cfg,
                      data=DataConfig(train=str(root / "synth/train"), test=str(root / "synth/test"),
                                      pipeline=PipelineConfig(input_size=65)))
    teacher_dir = root / "teacher"
    save_config(cfg, teacher_dir / "config.yaml")
    model = build_model(model_cfg)
    with torch.no_grad():  # non-trivial BN statistics so eval-mode features are not all alike
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    (teacher_dir / "export").mkdir(parents=True)
    torch.save(model.state_dict(), teacher_dir / "export" / "best.pt")
    return root, teacher_dir / "export" / "best.pt"


def _precompute(setup, out, **kw):
    root, teacher = setup
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(root / "synth/train"), out=str(out), tap=TAP,
                           views=kw.pop("views", 3), dtype=kw.pop("dtype", "fp16"), batch_size=8, **kw)
    return cfg, precompute(cfg, device="cpu")


def test_features_mirror_source_and_replay_bit_identical_inputs(setup, tmp_path):
    root, teacher = setup
    cfg, manifest = _precompute(setup, tmp_path / "feat")
    source = read_manifest(root / "synth/train")
    assert [(s.name, s.count) for s in manifest.shards] == [(s.name, s.count) for s in source.shards]
    assert manifest.params["teacher_sha256"] == file_sha256(teacher) and manifest.params["tap"] == TAP
    predictor = Predictor.from_checkpoint(teacher, device="cpu")
    pipeline = replace(predictor.cfg.data.pipeline, depth=True)
    stored = {m["__key__"]: m for m in wds.DataPipeline(
        wds.SimpleShardList([str(tmp_path / "feat" / s.name) for s in manifest.shards]), wds.tarfile_to_samples())}
    for sample in list(iter_split(root / "synth/train"))[:4]:
        member = stored[sample.key]
        views = json.loads(member["views.json"])["views"]
        expected = view_params(sample.key, 3, 0, pipeline.augment)
        assert views == [v.to_dict() for v in expected] and views[0]["flip"] is False and views[1] != views[0]
        sample.extras = {"feat.npy": member["feat.npy"], "views.json": member["views.json"]}
        for epoch in range(3):
            student_view = replay_map(sample, epoch, cfg=replace(pipeline, depth=False), seed=5)
            k = student_view["view_index"]
            teacher_view = process_sample(sample, pipeline, view=expected[k], view_index=k)
            teacher_view.pop("view"), student_view.pop("teacher_feat")
            student_in = model_inputs(Batch.from_collated(collate([student_view])))
            teacher_in = model_inputs(Batch.from_collated(collate([teacher_view])), depth=True)
            assert torch.equal(student_in.rgb, teacher_in.rgb)  # the pixels the teacher saw, bit for bit
            with torch.no_grad():
                online = run_model(predictor.model, predictor.cfg.model, teacher_in.rgb, teacher_in.depth,
                                   (TAP,)).features[TAP][0].numpy()
            student_view = replay_map(sample, epoch, cfg=replace(pipeline, depth=False), seed=5)
            np.testing.assert_allclose(student_view["teacher_feat"], online, rtol=2e-3, atol=2e-3)  # fp16 resolution


def test_uint8_stores_sigmoid_and_decodes_to_logits(setup, tmp_path):
    _, manifest = _precompute(setup, tmp_path / "u8", dtype="uint8", views=1)
    first = next(iter(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "u8" / manifest.shards[0].name)]),
                                       wds.tarfile_to_samples())))
    raw = np.load(__import__("io").BytesIO(first["feat.npy"]), allow_pickle=False)
    assert raw.dtype == np.uint8 and raw.shape[0] == 1
    logits = decode_features(first["feat.npy"])
    np.testing.assert_allclose(np.round(255 / (1 + np.exp(-logits))), raw, atol=0.5)


def test_killed_precompute_rerun_writes_the_same_bytes(setup, tmp_path):
    root, teacher = setup
    _, whole = _precompute(setup, tmp_path / "whole")
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(root / "synth/train"), out=str(tmp_path / "part"),
                           tap=TAP, views=3, batch_size=8)
    assert precompute(cfg, rank=0, world_size=2, device="cpu") is None  # half the shards, no manifest yet
    (tmp_path / "part" / ".shard-000001.tar.tmp").write_bytes(b"half-written")  # a kill mid-shard
    again = precompute(cfg, rank=1, world_size=2, device="cpu")
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in whole.shards]


def _student_overrides(root, out_dir, **extra):
    values = {"data.train": root / "synth/train", "data.test": root / "synth/test", "run.out_dir": out_dir,
              "data.num_workers": 0, "data.batch_size": 4, "data.pipeline.input_size": 65, "optim.epochs": 1,
              "run.steps_per_epoch": 3, "model.init": "none", "model.init_checkpoint": "null", "data.pipeline.augment.geometry": False,
              "data.pipeline.augment.colour": False, "teacher.model.depth_bins": 8, "run.log_every": 1}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_student_from_stored_features_matches_online_student(setup, tmp_path):
    root, teacher = setup
    _precompute(setup, tmp_path / "feat1", views=1)  # the only view is un-augmented, as online with augment off
    torch.manual_seed(0)
    online = train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
        root, tmp_path / "online", **{"teacher.weights": teacher})))
    stored = train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
        root, tmp_path / "stored", **{"teacher.weights": teacher, "teacher.mode": "precomputed",
                                      "teacher.features": tmp_path / "feat1"})))
    a, b = tb_scalars(tmp_path / "online"), tb_scalars(tmp_path / "stored")
    # Step 1 sees the same student weights and the same view: the regression term must agree
    # to float precision, the distillation term to the fp16 rounding of the stored tap. Later
    # steps are not compared tightly: Adam's first updates are nearly sign(gradient), so a
    # rounding-sized gradient change flips near-zero coordinates and the runs drift apart by
    # an amount that depends on the CPU's float kernels (seen: 0.5 % here, 3 % on CI).
    assert a["train/regression"][0] == pytest.approx(b["train/regression"][0], rel=1e-5)
    assert a["train/distillation"][0] == pytest.approx(b["train/distillation"][0], rel=1e-3)
    assert a["train/distillation"][0] > 0
    assert a["train/loss"][-1] == pytest.approx(b["train/loss"][-1], rel=3e-2)
    assert online["mpjpe"] == pytest.approx(stored["mpjpe"], rel=3e-2)


def test_mismatched_feature_shards_fail_at_start(setup, tmp_path):
    root, teacher = setup
    _precompute(setup, tmp_path / "feat", views=1)

    def run(**extra):
        cfg = load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
            root, tmp_path / "run", **{"teacher.weights": teacher, "teacher.mode": "precomputed",
                                       "teacher.features": tmp_path / "feat", **extra}))
        return train(cfg)

    with pytest.raises(ValueError, match="tap"):
        run(**{"distill.tap": "layer3.0.post_relu"})
    with pytest.raises(ValueError, match="input size"):
        run(**{"data.pipeline.input_size": 129})
    other = tmp_path / "other.pt"
    weights = torch.load(teacher, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, other)
    with pytest.raises(ValueError, match="another teacher"):
        run(**{"teacher.weights": other})
    # a student machine without the teacher file: the recorded path must be the configured one
    with pytest.raises(ValueError, match="not on this machine"):
        run(**{"teacher.weights": tmp_path / "elsewhere" / "best.pt"})
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "feat", moved)
    record = json.loads((moved / "manifest.json").read_text())
    record["shards"][0]["first_key"] = "someone_else_00000000"
    (moved / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not mirror the source split"):
        run(**{"teacher.features": moved})
    changed = tmp_path / "changed"
    shutil.copytree(root / "synth/train", changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["params"]["note"] = "rebuilt"
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different source split"):
        run(**{"data.train": changed})
    # keys out of order: a feature shard rewritten with two samples swapped
    name = read_manifest(tmp_path / "feat").shards[0].name
    members = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "feat" / name)]), wds.tarfile_to_samples()))
    members[0], members[1] = members[1], members[0]
    size = (tmp_path / "feat" / name).stat().st_size
    with wds.TarWriter(str(tmp_path / "feat" / name), mtime=0) as writer:
        for m in members:
            writer.write({k: v for k, v in m.items() if k != "__url__" and k != "__local_path__"})
    assert (tmp_path / "feat" / name).stat().st_size == size  # same size: only the order betrays it
    with pytest.raises(ValueError, match="out of step"):
        run()


def test_estimate_reports_bytes_before_writing(setup, tmp_path):
    root, teacher = setup
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(root / "synth/train"), out=str(tmp_path / "est"),
                           tap=TAP, views=4, dtype="fp16")
    text = estimate(cfg)
    # ResNet-18 at width 1/4 (the demo student's): the end of layer3 has 64 channels at 5×5 for 65×65 inputs
    assert "64×5×5" in text and "32 samples" in text
    assert not (tmp_path / "est").exists()


def test_bad_source_sample_is_skipped_at_precompute_and_by_the_student(setup, tmp_path):
    """A corrupt JPEG in the source split: precompute finishes (the shards still mirror the
    source key for key), records it in its manifest, and the student skips and counts it."""
    from test_engine import _corrupt_one_jpeg

    root, teacher = setup
    source = tmp_path / "train"
    shutil.copytree(root / "synth/train", source)
    bad = _corrupt_one_jpeg(source, shard=1)
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(source), out=str(tmp_path / "feat"), tap=TAP, views=2,
                           batch_size=8)
    manifest = precompute(cfg, device="cpu")
    assert [s.count for s in manifest.shards] == read_manifest(source).counts
    assert manifest.skipped["count"] == 1 and manifest.skipped["examples"][0]["key"] == bad
    assert manifest.skipped["by_reason"] == {"decode:rgb.jpg": 1}
    stored = {m["__key__"]: m for m in wds.DataPipeline(
        wds.SimpleShardList([str(tmp_path / "feat" / manifest.shards[1].name)]), wds.tarfile_to_samples())}
    assert "feat.npy" not in stored[bad]
    sample = next(iter_split(root / "synth/train"))  # a good sample paired with the placeholder
    sample.extras = {"views.json": stored[bad]["views.json"]}
    with pytest.raises(SampleError, match="skipped at precompute: decode:rgb.jpg"):
        replay_map(sample, 0, cfg=PipelineConfig(input_size=65), seed=0)
    metrics = train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
        root, tmp_path / "run", **{"data.train": source, "teacher.weights": teacher, "teacher.mode": "precomputed",
                                   "teacher.features": tmp_path / "feat", "run.steps_per_epoch": 8})))
    assert metrics["skipped"]["train"]["total"] == 1
    assert metrics["skipped"]["train"]["examples"]["decode:rgb.jpg"]["key"] == bad


def test_a_damaged_source_shard_is_reported_by_precompute_and_mirrored_as_read(setup, tmp_path):
    """Garbage over a tar header (tarfile sees the end of the archive) and a shard cut short:
    precompute finishes without a traceback, names both shards in its manifest, and the
    feature shards mirror what could be read, so a student reads the pair in step."""
    import shard_faults

    from depthpi.data.loader import make_loader, skip_summary

    root, teacher = setup
    source = tmp_path / "train"
    shutil.copytree(root / "synth/train", source)
    shard_faults.garbage_over_header(source, 1, member=3 * 5)  # shard 1 ends after 5 of its 8 samples
    shard_faults.truncate(source, 2, member=3 * 2 + 1)         # shard 2 cut inside sample 2
    shard_faults.zero_bytes(source, 3)                          # shard 3 emptied
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(source), out=str(tmp_path / "feat"), tap=TAP, views=1,
                           batch_size=8)
    manifest = precompute(cfg, device="cpu")
    short = {s["shard"]: (s["read"], s["expected"]) for s in manifest.skipped["shortfalls"]}
    assert short == {"shard-000001.tar": (5, 8), "shard-000002.tar": (3, 8), "shard-000003.tar": (0, 8)}
    assert [s.count for s in manifest.shards] == [8, 5, 3, 0]  # sample 2 of shard 2 holds a placeholder
    assert manifest.skipped["by_reason"] == {"decode:json": 1}
    loader = make_loader(source, 4, _key_and_views, rank=0, world_size=1, shuffle=False, drop_last=False,
                         companion_dir=tmp_path / "feat")
    batches = list(loader)
    assert all(all(batch["paired"]) for batch in batches)
    summary = skip_summary([loader.pass_stats()])
    assert sum(len(b["key"]) for b in batches) == 8 + 5 + 2  # sample 2 of shard 2 is a decode skip
    assert set(summary["shortfalls"]) == {"shard-000001.tar", "shard-000002.tar", "shard-000003.tar"}
    assert summary["by_reason"] == {"decode:json": 1, "shard:missing": 3 + 5 + 8}


def _key_and_views(sample, epoch):
    return {"key": sample.key, "paired": "views.json" in sample.extras}
