"""Raw-dataset converters on tiny NTU / PKU-MMD / Human3.6M layouts with known truth."""
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from depthpi.camera import Camera
from depthpi.data.converters import SOURCES, SPLITS, ConverterError, convert
from depthpi.data.schema import decode_sample
from depthpi.data.shard_verify import require_intact
from depthpi.data.shards import read_manifest
from depthpi.skeleton import H36M_17

from raw_datasets import (MARKERS, NTU_DEFECTS, NTU_MISSING_DEPTH_FRAME, NTU_SENSORS, NTU_SETUPS, NTU_TRUNCATED,
                          PKU_DEPTH_K, PKU_RGB_K, write_h36m, write_ntu, write_pku)

J = {name: i for i, name in enumerate(H36M_17.joint_names)}


def read_split(split_dir: Path):
    require_intact(split_dir)
    manifest = read_manifest(split_dir)
    samples = []
    for shard in manifest.shards:
        groups = defaultdict(dict)
        with tarfile.open(split_dir / shard.name) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                groups[key][ext] = tar.extractfile(member).read()
        for key, members in groups.items():
            samples.append(decode_sample({"__key__": key, **members}))
    assert len(samples) == manifest.total_count
    return samples


def marker_centroid(rgb, colour, near, window=14):
    """Centroid of the pixels of one marker colour within ``window`` px of ``near``."""
    x0, y0 = int(round(near[0])) - window, int(round(near[1])) - window
    patch = rgb[max(y0, 0):y0 + 2 * window + 1, max(x0, 0):x0 + 2 * window + 1].astype(np.float64)
    target = np.array(colour, np.float64)
    weight = np.clip(1.0 - np.abs(patch - target).max(axis=2) / 110.0, 0, 1)
    if weight.sum() < 3:
        return None
    v, u = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    return np.array([(u * weight).sum() / weight.sum() + max(x0, 0), (v * weight).sum() / weight.sum() + max(y0, 0)])


@pytest.fixture(scope="module")
def ntu(tmp_path_factory):
    root = tmp_path_factory.mktemp("ntu_raw")
    truth = write_ntu(root)
    out = tmp_path_factory.mktemp("ntu_out")
    summary = convert("ntu", root, out, every=1, workers=1, progress=False, videos_per_shard=2)
    return {"root": root, "out": out, "truth": truth, "summary": summary}


def test_ntu_fitted_intrinsics_recover_the_generator(ntu):
    record = json.loads((ntu["out"] / "intrinsics.ntu.json").read_text())
    u, v = np.meshgrid(np.linspace(0, 1919, 9), np.linspace(0, 1079, 7))
    for setup, fit in record["setups"].items():
        assert fit["mirrored"] is True
        for stream, size in (("rgb", (1920, 1080)), ("depth", (512, 424))):
            true_K = NTU_SETUPS[setup][0 if stream == "rgb" else 1]
            fit_K = np.asarray(fit[f"{stream}_K"])
            pixels = np.stack([u.ravel() * size[0] / 1920, v.ravel() * size[1] / 1080], 1)
            points = Camera.from_intrinsics(true_K).image_to_camera(pixels, 3000.0)
            error = np.linalg.norm(Camera.from_intrinsics(fit_K).camera_to_image(points) - pixels, axis=1)
            assert error.max() < 0.5, (setup, stream, error.max())
            assert fit[f"{stream}_rms"] < 0.5
    assert any("rms" in note for note in ntu["summary"].notes)


def test_ntu_joints_project_onto_rendered_markers_and_depth(ntu):
    checked = 0
    for split in ("train", "test"):
        for sample in read_split(ntu["out"] / split):
            meta = sample.meta
            assert meta.labeled and meta.depth_K is not None and sample.depth is not None
            assert max(sample.rgb.shape[:2]) <= 320
            cam = Camera(meta.rgb_K, meta.R, meta.t)
            pixels = cam.project(meta.joints)
            for name, colour in MARKERS.items():
                found = marker_centroid(sample.rgb, colour, pixels[J[name]])
                assert found is not None, (sample.key, name)
                assert np.linalg.norm(found - pixels[J[name]]) < 1.0, (sample.key, name, found, pixels[J[name]])
                checked += 1
            depth_cam = Camera(meta.depth_K, meta.R, meta.t)
            if meta.extra["video"] == "S001C002P001R001A001":
                continue  # two people: one may occlude the other in depth
            for name in ("pelv", "lsho", "rsho", "lank"):
                u, v = np.round(depth_cam.project(meta.joints[J[name]])).astype(int)
                assert abs(int(sample.depth[v, u]) - meta.joints[J[name], 2]) <= 2.0, (sample.key, name)
            # the box lies inside the stored crop
            x, y, w, h = meta.bbox
            assert x >= -1 and y >= -1 and x + w <= sample.rgb.shape[1] + 1 and y + h <= sample.rgb.shape[0] + 1
    assert checked >= 4 * 20


def _facing_camera(joints):
    """(left − right shoulder) × (head − pelvis), dotted with the direction to the camera."""
    normal = np.cross(joints[J["lsho"]] - joints[J["rsho"]], joints[J["head"]] - joints[J["pelv"]])
    return float(normal @ (-joints[J["pelv"]]))


def _check_chirality(samples):
    assert samples
    for sample in samples:
        meta = sample.meta
        cam_joints = Camera(meta.rgb_K, meta.R, meta.t).world_to_camera(meta.joints)
        assert _facing_camera(cam_joints) > 0, sample.key
        pixels = Camera(meta.rgb_K, meta.R, meta.t).project(meta.joints)
        assert pixels[J["lsho"], 0] > pixels[J["rsho"], 0], sample.key  # left shoulder on the image's right
        # and the image agrees: the left-shoulder marker is on the right of the right-shoulder marker
        left = marker_centroid(sample.rgb, MARKERS["lsho"], pixels[J["lsho"]])
        right = marker_centroid(sample.rgb, MARKERS["rsho"], pixels[J["rsho"]])
        assert left[0] > right[0], sample.key


def test_ntu_chirality_person_facing_camera(ntu):
    _check_chirality(read_split(ntu["out"] / "train") + read_split(ntu["out"] / "test"))


def test_ntu_unmirrored_raw_frames_are_detected_and_give_the_same_geometry(tmp_path):
    root = tmp_path / "raw"
    write_ntu(root, frames=3, mirrored=False, videos={"S001C001P001R001A001": 1}, defects=False)
    convert("ntu", root, tmp_path / "out", every=1, progress=False)
    fit = json.loads((tmp_path / "out" / "intrinsics.ntu.json").read_text())["setups"]["S001C001"]
    assert fit["mirrored"] is False
    np.testing.assert_allclose(fit["rgb_K"], NTU_SETUPS["S001C001"][0], atol=0.05)
    _check_chirality(read_split(tmp_path / "out" / "test"))


def test_ntu_thesis_split_shares_no_subject_or_camera(ntu):
    train, test = read_split(ntu["out"] / "train"), read_split(ntu["out"] / "test")
    subjects = [{s.meta.subject for s in part} for part in (train, test)]
    cameras = [{s.meta.camera for s in part} for part in (train, test)]
    assert subjects[0] and subjects[1] and not subjects[0] & subjects[1]
    assert cameras[0] and cameras[1] and not cameras[0] & cameras[1]
    assert all(s.meta.extra["video"] != "S001C001P007R001A003" for s in train + test)
    assert "not in the thesis split" in ntu["summary"].videos_skipped
    # multi-person frames: one sample per person
    two = [s for s in test if s.meta.extra["video"] == "S001C002P001R001A001"]
    assert len(two) == 2 * 6 and {s.meta.extra["person"] for s in two} == {0, 1}


def test_ntu_defects_are_skipped_counted_and_named(ntu):
    summary = ntu["summary"]
    text = summary.format()
    truncated = [r for r in summary.frames_skipped if "ended early" in r]
    assert truncated and NTU_TRUNCATED in " ".join(summary.named[truncated[0]])
    assert summary.frames_skipped["depth frame missing"] == 1
    assert f"{NTU_DEFECTS}/MDepth-{NTU_MISSING_DEPTH_FRAME + 1:08d}.png" in summary.named["depth frame missing"]
    assert summary.frames_skipped["malformed skeleton line"] == 1
    assert NTU_DEFECTS in summary.named["malformed skeleton line"][0]
    assert "malformed skeleton line" in text and "depth frame missing" in text
    saved = json.loads((ntu["out"] / "summary.ntu.json").read_text())
    assert saved["samples_written"] == summary.samples_written > 0
    manifest = read_manifest(ntu["out"] / "train")
    assert manifest.skipped["by_reason"]["depth frame missing"] == 1


def test_ntu_conversion_is_deterministic_resumable_and_parallel_safe(ntu, tmp_path):
    out = tmp_path / "again"
    convert("ntu", ntu["root"], out, every=1, workers=2, progress=False, videos_per_shard=2)
    for split in ("train", "test"):
        a, b = read_manifest(ntu["out"] / split), read_manifest(out / split)
        assert [(s.name, s.sha256) for s in a.shards] == [(s.name, s.sha256) for s in b.shards]
    # resume: finished shards are kept (not rewritten), a deleted one is rebuilt identically
    shard = out / "train" / read_manifest(out / "train").shards[0].name
    kept = out / "test" / read_manifest(out / "test").shards[0].name
    mtime = kept.stat().st_mtime_ns
    shard.unlink()
    summary = convert("ntu", ntu["root"], out, every=1, workers=1, progress=False, videos_per_shard=2)
    assert kept.stat().st_mtime_ns == mtime
    assert read_manifest(out / "train").shards[0].sha256 == read_manifest(ntu["out"] / "train").shards[0].sha256
    assert summary.samples_written == ntu["summary"].samples_written


def test_ntu_every_missing_list_and_poses_file(ntu, tmp_path):
    missing = tmp_path / "missing.txt"
    missing.write_text("S001C001P001R001A001\n")
    poses = tmp_path / "poses.jsonl"
    joints = ntu["truth"]["joints"]["S001C002P001R001A001"][2, 0] + np.array([5.0, 0, 0])
    poses.write_text(json.dumps({"video": "S001C002P001R001A001", "frame": 2, "joints": joints.tolist()}) + "\n"
                     + "{broken\n")
    summary = convert("ntu", ntu["root"], tmp_path / "out", every=2, progress=False, missing_list=missing,
                      poses_file=poses)
    assert "S001C001P001R001A001" in summary.named["listed in the missing-skeletons file"]
    assert summary.frames_skipped["poses file: malformed record"] == 1
    test = read_split(tmp_path / "out" / "test")
    assert len(test) == 1 and test[0].meta.frame == 2 and test[0].meta.extra["label_source"] == "poses_file"
    np.testing.assert_allclose(test[0].meta.joints, joints, atol=1e-3)
    assert all(s.meta.frame % 2 == 0 for s in read_split(tmp_path / "out" / "train"))


def test_ntu_missing_list_as_shipped_keeps_only_sample_names(ntu, tmp_path):
    """The dataset's list opens with two prose lines; only sample names reach the manifests."""
    missing = tmp_path / "NTU_RGBD_samples_with_missing_skeletons.txt"
    missing.write_text('302 of the captured samples in the "NTU RGB+D" dataset have missing or incomplete '
                       'skeleton data.\nIf you are working on skeleton-based analysis, please ignore these files in '
                       'your training and testing procedures.\n\nS001C001P001R001A001\nS003C001P007R001A001.skeleton\n')
    summary = convert("ntu", ntu["root"], tmp_path / "out", every=3, progress=False, missing_list=missing)
    for split in ("train", "test"):
        assert read_manifest(tmp_path / "out" / split).params["missing_list"] == ["S001C001P001R001A001",
                                                                                  "S003C001P007R001A001"]
    assert summary.videos_skipped["listed in the missing-skeletons file"] == 2
    assert any("2 sample names (2 other lines ignored)" in note for note in summary.notes)
    prose_only = tmp_path / "prose.txt"
    prose_only.write_text("302 of the captured samples have missing skeleton data.\n")
    with pytest.raises(ConverterError, match="prose.txt: no sample names"):
        convert("ntu", ntu["root"], tmp_path / "out2", progress=False, missing_list=prose_only)


@pytest.mark.parametrize("source, expected", [("ntu", "nturgb+d_skeletons"), ("pku", "RGB_VIDEO"),
                                              ("h36m", "S9/Videos")])
def test_wrong_root_fails_at_start_naming_the_expected_subdirectory(tmp_path, source, expected):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(ConverterError, match=expected.replace("+", r"\+")):
        convert(source, tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train").exists()


@pytest.fixture(scope="module")
def h36m(tmp_path_factory):
    root = tmp_path_factory.mktemp("h36m_raw")
    truth = write_h36m(root, frames=12)
    out = tmp_path_factory.mktemp("h36m_out")
    summary = convert("h36m", root, out, every=4, progress=False)
    return {"root": root, "out": out, "truth": truth, "summary": summary}


def test_h36m_test_split_rgb_only_joints_on_markers(h36m):
    samples = read_split(h36m["out"] / "test")
    assert {s.meta.subject for s in samples} == {"S9", "S11"}
    assert len(samples) == 3 * 2 * 3  # (S9: 2 actions, S11: 1 readable) × 2 cameras × frames 0, 4, 8
    for sample in samples:
        meta = sample.meta
        assert sample.depth is None and meta.depth_K is None and meta.labeled
        world = h36m["truth"]["world"][(meta.subject, meta.extra["action_full"])][meta.frame]
        np.testing.assert_allclose(meta.joints, world, atol=1e-3)
        pixels = Camera(meta.rgb_K, meta.R, meta.t).project(meta.joints)
        for name, colour in MARKERS.items():
            found = marker_centroid(sample.rgb, colour, pixels[J[name]])
            assert found is not None and np.linalg.norm(found - pixels[J[name]]) < 1.0, (sample.key, name, found)
    _check_chirality(samples)
    assert "pose file unreadable" in h36m["summary"].videos_skipped
    assert read_manifest(h36m["out"] / "test").params["every"] == 4


def test_h36m_default_every_and_npz_fallback(tmp_path):
    root = tmp_path / "raw"
    write_h36m(root, frames=3, subjects=("S9", "S11"), actions=("Posing",), cdf=False, defects=False)
    summary = convert("h36m", root, tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out" / "test")
    assert manifest.params["every"] == 64 and manifest.total_count == 4  # frame 0 of 2 subjects × 2 cameras
    assert summary.videos_read == 4


@pytest.fixture(scope="module")
def pku(tmp_path_factory):
    root = tmp_path_factory.mktemp("pku_raw")
    truth = write_pku(root)
    out = tmp_path_factory.mktemp("pku_out")
    summary = convert("pku", root, out, every=1, progress=False, intrinsics_file=root / "kinect_intrinsics.json")
    return {"root": root, "out": out, "truth": truth, "summary": summary}


def test_pku_unlabeled_pairs_and_labelled_test(pku):
    unlabeled, test = read_split(pku["out"] / "unlabeled"), read_split(pku["out"] / "test")
    assert len(unlabeled) == 12 and len(test) == 11
    for sample in unlabeled:
        assert not sample.meta.labeled and sample.meta.joints is None and sample.depth is not None
    for sample in test:
        meta = sample.meta
        np.testing.assert_allclose(meta.joints, pku["truth"]["joints"][meta.extra["video"]][meta.frame], atol=1e-3)
        # eq. 4.7: the depth crop shows what the (unmirrored) raw depth frame shows at each joint
        raw = cv2.flip(cv2.imread(str(pku["root"] / "DEPTH" / meta.extra["video"] / f"{meta.frame:06d}.png"),
                                  cv2.IMREAD_UNCHANGED), 1)
        stored = np.round(Camera(meta.depth_K, meta.R, meta.t).project(meta.joints)).astype(int)
        truth = np.round(Camera.from_intrinsics(PKU_DEPTH_K).camera_to_image(meta.joints)).astype(int)
        np.testing.assert_array_equal(sample.depth[stored[:, 1], stored[:, 0]], raw[truth[:, 1], truth[:, 0]])
    _check_chirality(test)
    assert pku["summary"].frames_skipped["malformed skeleton line"] == 1
    assert "0291-R.txt" in pku["summary"].named["malformed skeleton line"][0]


def test_pku_requires_intrinsics(pku, tmp_path):
    with pytest.raises(ConverterError, match="intrinsics_file"):
        convert("pku", pku["root"], tmp_path / "out", progress=False)


@pytest.mark.parametrize("source", ["ntu", "pku"])
def test_an_intrinsics_file_that_is_no_json_object_is_refused_naming_it(source, ntu, pku, tmp_path):
    path = tmp_path / "intrinsics.json"
    path.write_text(json.dumps([[1050.0, 0, 960], [0, 1050, 540], [0, 0, 1]]))
    with pytest.raises(ConverterError, match=r"intrinsics_file .*intrinsics.json: expected a JSON object with"):
        convert(source, {"ntu": ntu, "pku": pku}[source]["root"], tmp_path / "out", progress=False,
                intrinsics_file=path)


# --- sensors behind the NTU setups, and the one each PKU view gets -------------------------
@pytest.fixture(scope="module")
def ntu_sensors(tmp_path_factory):
    """Four setups filmed by two sensors (S001C001 ≈ S002C001, S003C001 ≈ S004C001)."""
    root = tmp_path_factory.mktemp("ntu_sensors_raw")
    write_ntu(root, frames=3, defects=False, videos={f"{setup}P00{i + 1}R001A001": 1
                                                     for i, setup in enumerate(s for group in NTU_SENSORS
                                                                               for s in group)})
    out = tmp_path_factory.mktemp("ntu_sensors_out")
    summary = convert("ntu", root, out, every=3, split_scheme="xsub120", progress=False)
    return {"out": out, "summary": summary, "record": json.loads((out / "intrinsics.ntu.json").read_text())}


def test_ntu_setups_are_grouped_by_sensor_with_residuals(ntu_sensors):
    record = ntu_sensors["record"]
    sensors = record["sensors"]
    assert [tuple(s["setups"]) for s in sensors.values()] == list(NTU_SENSORS)
    for sensor_id, sensor in sensors.items():
        for setup in sensor["setups"]:
            assert record["setups"][setup]["sensor"] == sensor_id
        for stream in ("rgb", "depth"):   # the sensor's K sits between its setups' (truth within 0.5 px)
            true_K = np.mean([NTU_SETUPS[s][0 if stream == "rgb" else 1] for s in sensor["setups"]], axis=0)
            np.testing.assert_allclose(sensor[f"{stream}_K"], true_K, atol=0.5)
            assert sensor[f"{stream}_rms"] < 0.5 and sensor[f"{stream}_worst_setup"]["rms"] < 0.6
            assert sensor[f"{stream}_worst_setup"]["setup"] in sensor["setups"]
    # one K over both sensors is what the sensors avoid: several pixels of residual
    assert record["pooled_residuals"]["rgb_rms"] > 10 * max(s["rgb_rms"] for s in sensors.values())
    assert record["pooled_residuals"]["rgb_rms"] > 2.0
    assert "rgb_K" not in record   # no pooled K to be used by mistake
    notes = " | ".join(ntu_sensors["summary"].notes)
    assert "sensor 0 [S001C001, S002C001]" in notes and "sensor 1 [S003C001, S004C001]" in notes
    assert "one K over all 4 setups instead would leave rgb rms" in notes


def _sensors_file(tmp_path, *, truth_id="1"):
    """Two sensors: the PKU fixture's true K and one like the second NTU Kinect (depth cx 6 px, rgb cy 28 px off)."""
    wrong_rgb, wrong_depth = PKU_RGB_K.copy(), PKU_DEPTH_K.copy()
    wrong_rgb[1, 2] += 28.0
    wrong_depth[0, 2] -= 6.0
    sensors = {truth_id: (PKU_RGB_K, PKU_DEPTH_K), "0" if truth_id == "1" else "1": (wrong_rgb, wrong_depth)}
    record = {"sensors": {i: {"setups": [f"S00{i}C001"], "rgb_K": r.tolist(), "depth_K": d.tolist(),
                              "mirrored": True, "rgb_rms": 0.4, "depth_rms": 0.2} for i, (r, d) in sensors.items()}}
    path = tmp_path / "intrinsics.ntu.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def pku_phases(tmp_path_factory):
    root = tmp_path_factory.mktemp("pku_phases_raw")
    videos = {"0002-L": "train", "0291-M": "test", "A01N01-L": "train", "A01N02-M": "test", "A01N02-R": "test",
              "A02N05-L": None}
    truth = write_pku(root, frames=3, defects=False, videos=videos)
    return {"root": root, "truth": truth, "sensors": _sensors_file(tmp_path_factory.mktemp("sensors"))}


def test_pku_phase_2_names_split_files_and_samples(pku_phases, tmp_path):
    summary = convert("pku", pku_phases["root"], tmp_path / "out", every=1, progress=False,
                      intrinsics_file=pku_phases["sensors"])
    unlabeled, test = read_split(tmp_path / "out" / "unlabeled"), read_split(tmp_path / "out" / "test")
    assert {s.meta.extra["video"] for s in unlabeled} == {"0002-L", "A01N01-L"}
    assert {s.meta.extra["video"] for s in test} == {"0291-M", "A01N02-M", "A01N02-R"}
    for sample in unlabeled + test:
        video = sample.meta.extra["video"]
        assert sample.meta.extra["phase"] == (2 if video.startswith("A") else 1)
        assert (sample.meta.subject, sample.meta.camera) == (video[:-2], video[-1])
    for sample in test:
        np.testing.assert_allclose(sample.meta.joints, pku_phases["truth"]["joints"][sample.meta.extra["video"]]
                                   [sample.meta.frame], atol=1e-3)
    assert summary.named["not in cross-subject.txt or cross_subject_v2.txt"] == ["A02N05-L"]
    assert read_manifest(tmp_path / "out" / "test").params["phases"] == [1, 2]


def test_pku_chooses_the_sensor_that_matches_its_depth_frames(pku_phases, tmp_path):
    summary = convert("pku", pku_phases["root"], tmp_path / "out", every=1, progress=False,
                      intrinsics_file=pku_phases["sensors"])
    views = read_manifest(tmp_path / "out" / "test").params["views"]
    assert {v: views[v]["sensor"] for v in views} == {"L": "1", "M": "1", "R": "1"}
    for view in views.values():
        assert view["chosen_by"] == "depth agreement"
        assert view["depth_agreement_mm"]["1"] < 0.2 * view["depth_agreement_mm"]["0"]
    samples = read_split(tmp_path / "out" / "test")
    assert samples and all(s.meta.extra["sensor"] == "1" for s in samples)
    _check_depth_crop_matches_raw(pku_phases["root"], samples)
    notes = " | ".join(summary.notes)
    assert "view L: sensor 1 chosen from" in notes and "fits its NTU setups with rgb rms 0.400 px" in notes


def test_pku_sensor_option_names_the_sensor(pku_phases, tmp_path):
    convert("pku", pku_phases["root"], tmp_path / "a", every=3, progress=False,
            intrinsics_file=pku_phases["sensors"], sensor="0")
    views = read_manifest(tmp_path / "a" / "test").params["views"]
    assert {v: (views[v]["sensor"], views[v]["chosen_by"]) for v in views} == {
        v: ("0", "named with the sensor option") for v in "LMR"}
    convert("pku", pku_phases["root"], tmp_path / "b", every=3, progress=False,
            intrinsics_file=pku_phases["sensors"], sensor="M=0")
    views = read_manifest(tmp_path / "b" / "test").params["views"]
    assert {v: views[v]["sensor"] for v in views} == {"L": "1", "M": "0", "R": "1"}
    with pytest.raises(ConverterError, match=r"sensor '7'.*sensors in the intrinsics file: 1 \(S001C001\); "
                                             r"0 \(S000C001\)"):
        convert("pku", pku_phases["root"], tmp_path / "c", progress=False, intrinsics_file=pku_phases["sensors"],
                sensor="7")
    with pytest.raises(ConverterError, match="unknown option.*sensor"):
        convert("ntu", pku_phases["root"], tmp_path / "d", progress=False, sensor="1")


def test_pku_with_an_ntu_conversions_intrinsics_file(ntu_sensors, pku_phases, tmp_path):
    """End to end: the PKU fixture was filmed with S001C001's K; its NTU sensor is sensor 0."""
    convert("pku", pku_phases["root"], tmp_path / "out", every=1, progress=False,
            intrinsics_file=ntu_sensors["out"] / "intrinsics.ntu.json")
    views = read_manifest(tmp_path / "out" / "test").params["views"]
    assert {v: views[v]["sensor"] for v in views} == {"L": "0", "M": "0", "R": "0"}


def _check_depth_crop_matches_raw(root, samples):
    """Eq. 4.7: the depth crop shows what the (unmirrored) raw depth frame shows at each joint."""
    for sample in samples:
        meta = sample.meta
        raw = cv2.flip(cv2.imread(str(root / "DEPTH" / meta.extra["video"] / f"{meta.frame:06d}.png"),
                                  cv2.IMREAD_UNCHANGED), 1)
        stored = np.round(Camera(meta.depth_K, meta.R, meta.t).project(meta.joints)).astype(int)
        truth = np.round(Camera.from_intrinsics(PKU_DEPTH_K).camera_to_image(meta.joints)).astype(int)
        np.testing.assert_array_equal(sample.depth[stored[:, 1], stored[:, 0]], raw[truth[:, 1], truth[:, 0]])


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_writes_exactly_the_splits_configs_may_name(source, request):
    """``SPLITS`` is what test_config checks every ``shards/<source>/<split>`` in configs/ against."""
    out = request.getfixturevalue(source)["out"]
    written = {path.parent.name for path in out.glob("*/manifest.json")}
    assert written == set(SPLITS[source])


def test_misspelt_options_and_converter_bugs_are_not_swallowed(ntu, tmp_path, monkeypatch):
    with pytest.raises(ConverterError, match="unknown option.*contxt; ntu takes context"):
        convert("ntu", ntu["root"], tmp_path / "a", contxt=1.5)
    with pytest.raises(ConverterError, match="h36m: unknown option.*depth"):
        convert("h36m", tmp_path, tmp_path / "b", depth="full")
    from depthpi.data.converters.ntu import NTUConverter

    def broken(self, job, summary):  # a bug, not a bad video: it must stop the run, naming the video
        raise NameError("name 'frmae' is not defined")
        yield

    monkeypatch.setattr(NTUConverter, "convert_video", broken)
    with pytest.raises(NameError) as err:
        convert("ntu", ntu["root"], tmp_path / "c", every=1, workers=1, progress=False)
    assert any(note.startswith("while converting ntu video 'S") for note in err.value.__notes__)
