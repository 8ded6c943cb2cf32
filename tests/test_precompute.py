"""Precomputed teacher features: one set per view, one view read per sample and epoch, exact
replay, equivalence with the online teacher, checks."""
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
from depthpi.data.features import check_feature_shards, decode_features, feature_sets, replay_map, view_in_set
from depthpi.data.loader import collate, make_loader
from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import SampleError
from depthpi.data.shard_plan import companion_set
from depthpi.data.shards import read_manifest
from depthpi.io import file_sha256
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
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(kw.pop("shards", root / "synth/train")), out=str(out),
                           tap=kw.pop("tap", TAP), views=kw.pop("views", 3), dtype=kw.pop("dtype", "fp16"),
                           batch_size=8, **kw)
    return cfg, precompute(cfg, device="cpu")


def members(split, name=None) -> dict[str, dict]:
    """key → tar members of every shard of ``split`` (or of shard ``name`` only)."""
    names = [name] if name else [s.name for s in read_manifest(split).shards]
    return {m["__key__"]: m for m in wds.DataPipeline(wds.SimpleShardList([str(Path(split) / n) for n in names]),
                                                       wds.tarfile_to_samples())}


def test_each_set_mirrors_the_source_and_replays_bit_identical_inputs(setup, tmp_path):
    root, teacher = setup
    cfg, manifest = _precompute(setup, tmp_path / "feat")
    source = read_manifest(root / "synth/train")
    assert manifest.shards == [] and manifest.params["layout"] == "one_view_per_set"
    assert manifest.params["teacher_sha256"] == file_sha256(teacher) and manifest.params["tap"] == TAP
    sets = feature_sets(tmp_path / "feat")
    assert [Path(s).name for s in sets] == ["set-0", "set-1", "set-2"]
    for j, location in enumerate(sets):
        assert [(s.name, s.count, s.first_key) for s in read_manifest(location).shards] == \
            [(s.name, s.count, s.first_key) for s in source.shards]
        params = dict(manifest.params)
        params.pop("set_manifests")
        assert read_manifest(location).params == {**params, "set": j}
    predictor = Predictor.from_checkpoint(teacher, device="cpu")
    pipeline = replace(predictor.cfg.data.pipeline, depth=True)
    stored = [members(location) for location in sets]
    for sample in list(iter_split(root / "synth/train"))[:4]:
        expected = view_params(sample.key, 3, 0, pipeline.augment)
        assert expected[0].to_dict()["flip"] is False and expected[1] != expected[0]
        seen = []
        for j in range(3):
            member = stored[j][sample.key]
            record = json.loads(member["view.json"])
            assert record["index"] == view_in_set(sample.key, j, 3)
            assert record["view"] == expected[record["index"]].to_dict()
            seen.append(record["index"])
            sample.extras = {"feat.npy": member["feat.npy"], "view.json": member["view.json"]}
            student_view = replay_map(sample, 0, cfg=replace(pipeline, depth=False), seed=5)
            k = student_view["view_index"]
            assert k == record["index"]
            teacher_view = process_sample(sample, pipeline, view=expected[k], view_index=k)
            teacher_view.pop("view")
            features = student_view.pop("teacher_feat")
            student_in = model_inputs(Batch.from_collated(collate([student_view])))
            teacher_in = model_inputs(Batch.from_collated(collate([teacher_view])), depth=True)
            assert torch.equal(student_in.rgb, teacher_in.rgb)  # the pixels the teacher saw, bit for bit
            with torch.no_grad():
                online = run_model(predictor.model, predictor.cfg.model, teacher_in.rgb, teacher_in.depth,
                                   (TAP,)).features[TAP][0].numpy()
            np.testing.assert_allclose(features, online, rtol=2e-3, atol=2e-3)  # fp16 resolution
        assert sorted(seen) == [0, 1, 2]  # the K sets hold the K views of every sample, once each


def test_uint8_stores_sigmoid_and_decodes_to_logits(setup, tmp_path):
    _precompute(setup, tmp_path / "u8", dtype="uint8", views=1)
    first = next(iter(members(tmp_path / "u8" / "set-0").values()))
    raw = np.load(__import__("io").BytesIO(first["feat.npy"]), allow_pickle=False)
    assert raw.dtype == np.uint8 and raw.shape == (64, 5, 5)  # one view: (C, h, w)
    logits = decode_features(first["feat.npy"])
    np.testing.assert_allclose(np.round(255 / (1 + np.exp(-logits))), raw, atol=0.5)


def test_killed_precompute_rerun_writes_the_same_bytes(setup, one_process, tmp_path):
    root, teacher = setup
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(root / "synth/train"), out=str(tmp_path / "part"),
                           tap=TAP, views=2, batch_size=8)
    assert precompute(cfg, rank=0, world_size=2, device="cpu") is None  # half the shards, no manifest yet
    (tmp_path / "part" / "set-1" / ".shard-000001.12-34.tmp.tar").write_bytes(b"half-written")  # a kill mid-shard
    again = precompute(cfg, rank=1, world_size=2, device="cpu")
    whole = read_manifest(one_process)
    assert again.params["set_manifests"] == whole.params["set_manifests"]  # every set, shard for shard
    assert file_sha256(tmp_path / "part" / "manifest.json") == file_sha256(one_process / "manifest.json")
    assert not list((tmp_path / "part" / "set-1").glob(".*.tmp.tar"))


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
    record = json.loads((moved / "set-0" / "manifest.json").read_text())
    record["shards"][0]["first_key"] = "someone_else_00000000"
    (moved / "set-0" / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="set-0: its manifest is not the one this split was written with"):
        run(**{"teacher.features": moved})
    top = json.loads((moved / "manifest.json").read_text())
    top["params"]["set_manifests"][0] = file_sha256(moved / "set-0" / "manifest.json")  # a consistent forgery
    (moved / "manifest.json").write_text(json.dumps(top))
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
    shard = tmp_path / "feat" / "set-0" / read_manifest(tmp_path / "feat" / "set-0").shards[0].name
    stored = list(members(shard.parent, shard.name).values())
    stored[0], stored[1] = stored[1], stored[0]
    size = shard.stat().st_size
    with wds.TarWriter(str(shard), mtime=0) as writer:
        for m in stored:
            writer.write({k: v for k, v in m.items() if k != "__url__" and k != "__local_path__"})
    assert shard.stat().st_size == size  # same size: only the order betrays it
    with pytest.raises(ValueError, match="out of step"):
        run()


def test_a_tap_is_recorded_by_its_canonical_name_and_either_name_matches_it(setup, tmp_path):
    root, teacher = setup
    _, manifest = _precompute(setup, tmp_path / "feat", views=1, tap="block6.post_relu")  # ResNet-18's layer3.1
    assert manifest.params["tap"] == TAP
    teacher_model = load_config(teacher.parent.parent / "config.yaml").model

    def check(tap: str):
        return check_feature_shards(tmp_path / "feat", root / "synth/train", tap=tap, input_size=65,
                                    sigmoid_needed=True, teacher_weights=str(teacher), teacher_model=teacher_model)

    check("block6.post_relu")
    check(TAP)
    with pytest.raises(ValueError, match="tap 'layer3.1.post_relu' but distill.tap is 'block5.post_relu'"):
        check("block5.post_relu")
    top = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    top["params"]["tap"] = "block6.post_relu"  # a split recorded by the alias
    (tmp_path / "feat" / "manifest.json").write_text(json.dumps(top))
    check(TAP)


def test_estimate_reports_bytes_before_writing(setup, tmp_path):
    root, teacher = setup
    cfg = PrecomputeConfig(teacher=str(teacher), shards=str(root / "synth/train"), out=str(tmp_path / "est"),
                           tap=TAP, views=4, dtype="fp16")
    text = estimate(cfg)
    # ResNet-18 at width 1/4 (the demo student's): the end of layer3 has 64 channels at 5×5 for 65×65 inputs
    assert "64×5×5" in text and "32 samples" in text
    assert "13.5 KiB stored per sample, 3.4 KiB read per sample and epoch" in text  # K = 4 views of 3,200 B + 256
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
    for location in feature_sets(tmp_path / "feat"):
        assert read_manifest(location).counts == read_manifest(source).counts
        assert "feat.npy" not in members(location)[bad]
    assert manifest.skipped["count"] == 1 and manifest.skipped["examples"][0]["key"] == bad
    assert manifest.skipped["by_reason"] == {"decode:rgb.jpg": 1}
    stored = members(tmp_path / "feat" / "set-1")
    sample = next(iter_split(root / "synth/train"))  # a good sample paired with the placeholder
    sample.extras = {"view.json": stored[bad]["view.json"]}
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

    from depthpi.data.loader import skip_summary

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
    assert read_manifest(tmp_path / "feat" / "set-0").counts == [8, 5, 3, 0]  # sample 2 of shard 2: a placeholder
    assert manifest.skipped["by_reason"] == {"decode:json": 1}
    loader = make_loader(source, 4, _key_and_views, rank=0, world_size=1, shuffle=False, drop_last=False,
                         companion_dir=feature_sets(tmp_path / "feat"))
    batches = list(loader)
    assert all(all(batch["paired"]) for batch in batches)
    summary = skip_summary([loader.pass_stats()])
    assert sum(len(b["key"]) for b in batches) == 8 + 5 + 2  # sample 2 of shard 2 is a decode skip
    assert set(summary["shortfalls"]) == {"shard-000001.tar", "shard-000002.tar", "shard-000003.tar"}
    assert summary["by_reason"] == {"decode:json": 1, "shard:missing": 3 + 5 + 8}


def _key_and_views(sample, epoch):
    return {"key": sample.key, "paired": "view.json" in sample.extras}


# --- one stored view read per sample and epoch ------------------------------------------------
WIDE_TAP = "layer4.1.post_relu"  # 128 × 5 × 5 at 65×65: a view (6,400 B in fp16) larger than its tar headers
VIEW_NPY = 128 * 5 * 5 * 2 + 128  # the .npy member of one view: map + header
TAR_SLACK = 3 * 1024  # per sample: two member headers and paddings (< 2 KiB) and the shard's end blocks (< 1.3 KiB)


@pytest.fixture(scope="module")
def four_views(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("k4") / "feat"
    _precompute(setup, out, views=4, tap=WIDE_TAP)
    return out


def _replay(sample, epoch):
    out = replay_map(sample, epoch, cfg=PipelineConfig(input_size=65), seed=0)
    return {"key": out["key"], "view_index": out["view_index"], "teacher_feat": out["teacher_feat"],
            "rgb": out["rgb"]}


def test_a_student_reads_one_stored_view_per_sample_and_meets_all_k_over_k_epochs(setup, four_views):
    root, _ = setup
    source, sets = read_manifest(root / "synth/train"), feature_sets(four_views)
    loader = make_loader(root / "synth/train", 4, _replay, rank=0, world_size=1, num_workers=0, seed=3,
                         companion_dir=sets)
    met = {}
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            for key, index in zip(batch["key"], batch["view_index"].tolist()):
                met.setdefault(key, []).append(index)
        stats = loader.pass_stats()
        # every source shard read once, with the one set the plan gives it this epoch
        chosen = [read_manifest(sets[companion_set(3, epoch, 0, i, 4)]).shards[i].bytes
                  for i in range(len(source.shards))]
        assert stats["bytes_read"] == {"images": sum(s.bytes for s in source.shards), "features": sum(chosen)}
        per_sample = stats["bytes_read"]["features"] / stats["samples_used"]
        assert VIEW_NPY < per_sample < VIEW_NPY + TAR_SLACK  # one view's bytes, not four (≥ 4 × 6,400)
    assert len(met) == 32 and all(sorted(views) == [0, 1, 2, 3] for views in met.values())


def test_a_resumed_epoch_replays_the_same_views_and_features(setup, four_views):
    # 2 workers of 16 samples, batch 6: each yields 2 full batches and 3 loose samples, which
    # the main process pools into the 5th batch; resume after 2 batches.
    root, _ = setup
    kw = dict(rank=0, world_size=1, num_workers=2, seed=3, companion_dir=feature_sets(four_views))
    first = make_loader(root / "synth/train", 6, _replay, **kw)
    first.set_epoch(5)
    full, state = [], None
    for index, batch in enumerate(first):
        full.append(batch)
        if index == 1:
            state = first.state_dict()
    assert len(full) == 5 and all(len(b["key"]) == 6 for b in full)
    resumed = make_loader(root / "synth/train", 6, _replay, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 3
    for a, b in zip(rest, full[2:], strict=True):
        assert a["key"] == b["key"] and torch.equal(a["view_index"], b["view_index"])
        assert torch.equal(a["teacher_feat"], b["teacher_feat"]) and torch.equal(a["rgb"], b["rgb"])


def test_the_run_reports_image_and_feature_bytes_per_training_sample(setup, four_views, tmp_path):
    root, teacher = setup
    metrics = train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
        root, tmp_path / "run", **{"teacher.weights": teacher, "teacher.mode": "precomputed",
                                   "teacher.features": four_views, "distill.tap": WIDE_TAP,
                                   "run.steps_per_epoch": 8})))
    read = json.loads((tmp_path / "run" / "metrics.json").read_text())["read"]
    assert read == metrics["read"] and read["samples"] == 32
    assert read["bytes_per_sample"]["images"] == sum(s.bytes for s in read_manifest(root / "synth/train").shards) / 32
    assert VIEW_NPY < read["bytes_per_sample"]["features"] < VIEW_NPY + TAR_SLACK
    assert tb_scalars(tmp_path / "run")["data/bytes_per_sample_features"] == [read["bytes_per_sample"]["features"]]


def test_feature_shards_of_the_earlier_layout_are_refused_with_how_to_rebuild_them(setup, four_views, tmp_path):
    # The earlier layout: the split's own shards, all K views of a sample in one feat.npy.
    root, teacher = setup
    old = tmp_path / "old"
    shutil.copytree(four_views / "set-0", old)
    record = json.loads((old / "manifest.json").read_text())
    for key in ("layout", "set", "set_manifests"):
        record["params"].pop(key, None)
    (old / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"earlier layout .* rebuild them with `depthpi precompute --teacher "
                                         rf"{teacher} --shards {root / 'synth/train'} --tap {WIDE_TAP} --views 4"):
        train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
            root, tmp_path / "run", **{"teacher.weights": teacher, "teacher.mode": "precomputed",
                                       "teacher.features": old, "distill.tap": WIDE_TAP})))


# --- precompute in parts --------------------------------------------------------------------
def _precompute_cmd(setup, out, *extra) -> list[str]:
    root, teacher = setup
    return ["-m", "depthpi.cli", "precompute", "--teacher", str(teacher), "--shards", str(root / "synth/train"),
            "--out", str(out), "--tap", TAP, "--views", "2", "--batch", "8", *extra]


def _same_split(a: Path, b: Path) -> None:
    """Every set's manifest (names, counts, keys, sha256 of every shard) and the split's, byte for byte."""
    for name in ("manifest.json", "set-0/manifest.json", "set-1/manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "feat"
    _precompute(setup, out, views=2)
    return out


def test_two_parts_one_killed_and_rerun_write_the_split_of_one_process(setup, one_process, tmp_path):
    """Parts as SLURM array tasks run them; part 1 is SIGKILLed once its first shard is done
    and run again: it keeps that shard and writes the rest, and the split equals one
    process's bit for bit (fp16, same seed). A student then trains from it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "feat"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    part = [[sys.executable, *_precompute_cmd(setup, out, "--shard-index", str(i), "--num-shards", "2")]
            for i in (0, 1)]
    first = subprocess.Popen(part[0], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = subprocess.Popen(part[1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "set-0" / ".shard-000001.tar.done.json"  # part 1 writes shards 1 and 3
    deadline = time.monotonic() + 300
    while not done.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert done.exists() and not (out / "set-0" / ".shard-000003.tar.done.json").exists(), \
        "part 1 was not stopped between its two shards"
    kept = {path: path.stat().st_mtime_ns for path in out.glob("set-*/shard-000001.tar")}
    assert len(kept) == 2
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert not (out / "manifest.json").exists()  # part 1 is not finished: nobody writes the manifest
    rerun = subprocess.run(part[1], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "1 of 2 shards finished earlier with the same parameters, kept" in rerun.stderr
    assert "complete: manifest written" in rerun.stdout
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # not redone
    _same_split(out, one_process)
    root, teacher = setup
    metrics = train(load_config(ROOT / "configs/demo/student.yaml", _student_overrides(
        root, tmp_path / "run", **{"teacher.weights": teacher, "teacher.mode": "precomputed",
                                   "teacher.features": out, "run.steps_per_epoch": 1})))
    assert metrics["read"]["samples"] >= 4 and metrics["read"]["bytes_per_sample"]["features"] > 0


def test_two_ranks_under_accelerate_launch_write_the_split_of_one_process(setup, one_process, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "feat"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--num_processes", "2", "--main_process_port", "0",
           *_precompute_cmd(setup, out)]
    result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "part 1/2" in result.stdout and "part 2/2" in result.stdout
    _same_split(out, one_process)
