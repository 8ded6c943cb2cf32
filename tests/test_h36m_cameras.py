"""Human3.6M camera files as users have them: every layout lands on the same cameras, bad files are refused."""
import json
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from depthpi.data.converters import ConverterError, convert
from depthpi.data.converters.h36m_cameras import load_cameras
from depthpi.data.schema import decode_sample
from depthpi.data.shards import read_manifest

from h36m_camera_files import (KARFLY, S9_CENTRE_54138969, VIDEOPOSE_EXTRINSICS, VIDEOPOSE_INTRINSICS, as_karfly,
                               as_videopose_merged, h5_layout_from_karfly, own_from_videopose, videopose_merged_by_id,
                               videopose_merged_list, videopose_tables)
from raw_datasets import write_h36m

LAYOUTS = {
    "camera-parameters.json": lambda: KARFLY,
    "VideoPose3D": videopose_tables,
    "VideoPose3D merged list": videopose_merged_list,
    "VideoPose3D merged by id": videopose_merged_by_id,
    "cameras.h5 as JSON": h5_layout_from_karfly,
    "depthpi": own_from_videopose,
}


def write(tmp_path: Path, record, name: str = "cameras.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    out = {}
    for name, make in LAYOUTS.items():
        path = write(tmp_path_factory.mktemp("cams"), make())
        out[name] = load_cameras(path)
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_puts_s9_camera_54138969_at_its_published_centre(loaded, name):
    layout, cameras = loaded[name]
    assert layout == name.split(" as ")[0].split(" merged")[0]
    camera = cameras[("S9", "54138969")].camera
    np.testing.assert_allclose(camera.t, S9_CENTRE_54138969, atol=1.0)   # about (2044, 4935, 1481) mm
    # the capture-space origin is in view, near the image centre
    u, v = camera.project(np.zeros(3))
    assert 0 < u < 1000 and 0 < v < 1002
    assert set(cameras) == {("S9", "54138969"), ("S9", "55011271")}


def test_all_layouts_agree_with_each_other(loaded):
    points = np.array([[0.0, 0.0, 0.0], [500.0, -300.0, 900.0], [-800.0, 400.0, 1700.0]])  # world mm
    reference = loaded["camera-parameters.json"][1]
    for name, (_, cameras) in loaded.items():
        for key, ref in reference.items():
            cam = cameras[key]
            np.testing.assert_allclose(cam.camera.R, ref.camera.R, atol=1e-6, err_msg=f"{name} {key}")
            np.testing.assert_allclose(cam.camera.K, ref.camera.K, atol=1e-3, err_msg=f"{name} {key}")
            np.testing.assert_allclose(cam.dist, ref.dist, atol=1e-7, err_msg=f"{name} {key}")
            np.testing.assert_allclose(cam.camera.project(points), ref.camera.project(points), atol=0.01)
            assert cam.size == ref.size == ((1000, 1002) if key[1] == "54138969" else (1000, 1000))


def test_distortion_lands_in_opencv_order(loaded):
    """VideoPose3D lists the tangential pair as (p2, p1); all layouts store (k1, k2, p1, p2, k3)."""
    dist = loaded["VideoPose3D"][1][("S9", "54138969")].dist
    p2, p1 = VIDEOPOSE_INTRINSICS[0]["tangential_distortion"]
    assert dist[2] == pytest.approx(p1) and dist[3] == pytest.approx(p2)
    assert dist[2] == pytest.approx(KARFLY["intrinsics"]["54138969"]["distortion"][2], abs=1e-9)


def test_real_cameras_h5_is_read_with_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "cameras.h5"
    with h5py.File(path, "w") as handle:
        for camera_key, fields in h5_layout_from_karfly()["subject9"].items():
            group = handle.create_group(f"subject9/{camera_key}")
            for field, value in fields.items():
                group[field] = np.asarray(value, np.uint8 if field == "Name" else np.float64)
    layout, cameras = load_cameras(path)
    assert layout == "cameras.h5"
    np.testing.assert_allclose(cameras[("S9", "54138969")].camera.t, S9_CENTRE_54138969, atol=1.0)


def test_cameras_h5_without_h5py_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "cameras.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    monkeypatch.setitem(sys.modules, "h5py", None)   # import h5py raises ImportError
    with pytest.raises(ConverterError, match=r"cameras.h5: HDF5 .*needs h5py \(pip install h5py\)"):
        load_cameras(path)


# --- refusals: the file, the subject/camera, the field, what was expected ------------------
def _refused(tmp_path, record, *patterns):
    path = write(tmp_path, record, "bad.json")
    with pytest.raises(ConverterError) as err:
        load_cameras(path)
    message = str(err.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_translation_pasted_as_centre_is_refused_with_the_centre_it_implies(tmp_path):
    """camera-parameters.json's t (p_cam = R p + t) in depthpi's layout would put the camera at (-321, 467, 5514)."""
    own = own_from_videopose()
    entry = own["S9"]["54138969"]
    entry["R"] = KARFLY["extrinsics"]["S9"]["54138969"]["R"]
    entry["t"] = np.ravel(KARFLY["extrinsics"]["S9"]["54138969"]["t"]).tolist()
    message = _refused(tmp_path, own, "S9/54138969", "field 't'", "looks like the translation t of p_cam = R p + t",
                       "[2044.0, 4935.0, 1481.0]")
    assert "deg away from the capture-space origin" in message


def test_centre_written_where_camera_parameters_json_wants_the_translation_is_refused(tmp_path):
    record = json.loads(json.dumps(KARFLY))
    record["extrinsics"]["S9"]["54138969"]["t"] = [[v] for v in S9_CENTRE_54138969]
    _refused(tmp_path, record, "S9/54138969", "field 't'", "it passes as the camera centre itself")


def test_non_orthonormal_rotation_is_refused(tmp_path):
    own = own_from_videopose()
    R = np.array(own["S9"]["55011271"]["R"])
    R[0] *= 1.05
    own["S9"]["55011271"]["R"] = R.tolist()
    _refused(tmp_path, own, "S9/55011271", "field 'R'", "orthonormal 3x3 rotation with det +1")


def test_transposed_rotation_is_refused(tmp_path):
    own = own_from_videopose()
    own["S9"]["54138969"]["R"] = np.array(own["S9"]["54138969"]["R"]).T.tolist()
    _refused(tmp_path, own, "S9/54138969", "field 'R'", "seems to hold the camera->world rotation")


def test_centre_in_metres_and_normalised_intrinsics_are_refused(tmp_path):
    tables = json.loads(json.dumps(videopose_tables()))
    tables["extrinsics"]["S9"][0]["translation"] = (S9_CENTRE_54138969 / 1000).tolist()
    _refused(tmp_path, tables, "S9/54138969", "field 'translation'", "a centre in metres?")
    tables = json.loads(json.dumps(videopose_tables()))
    tables["intrinsics"][1]["focal_length"] = [2.2993, 2.2952]   # VideoPose3D's normalised units
    _refused(tmp_path, tables, "S9/55011271", "focal length", "not normalised")


@pytest.mark.parametrize("record, patterns", [
    # VideoPose3D's extrinsics alone, per subject: no camera ids, no intrinsics
    ({"S9": VIDEOPOSE_EXTRINSICS["S9"]}, ["S9[0]", "extrinsics-only entry", "\"intrinsics\": [...]"]),
    # the two VideoPose3D tables, extrinsics keyed by camera id instead of listed by position
    ({"intrinsics": VIDEOPOSE_INTRINSICS, "extrinsics": {"S9": {"54138969": VIDEOPOSE_EXTRINSICS["S9"][0]}}},
     ["extrinsics/S9", "expected a list of 2", "order of the intrinsics list"]),
    # camera-parameters.json with its extrinsics flattened to a list
    ({"intrinsics": KARFLY["intrinsics"], "extrinsics": {"S9": list(KARFLY["extrinsics"]["S9"].values())}},
     ["extrinsics/S9", "expected {camera id: {R, t}}"]),
    # camera-parameters.json with an intrinsics entry in f/c form
    ({"intrinsics": {"54138969": {"f": [1145.0, 1143.8], "c": [512.5, 515.5]}},
      "extrinsics": {"S9": {"54138969": KARFLY["extrinsics"]["S9"]["54138969"]}}},
     ["intrinsics/54138969", "field 'calibration_matrix': missing; expected 3x3 intrinsics in px",
      "fields present: c, f"]),
    # depthpi's layout without the centre
    ({"S9": {"54138969": {"R": np.eye(3).tolist(), "f": [1, 1], "c": [1, 1]}}},
     ["S9/54138969", "field 't': missing; expected camera centre"]),
    # an extrinsics part without intrinsics
    ({"extrinsics": KARFLY["extrinsics"]}, ["needs both an intrinsics and an extrinsics part"]),
    ([1, 2, 3], ["top level is a list of 3"]),
])
def test_wrong_nestings_are_refused_naming_what_was_expected(tmp_path, record, patterns):
    _refused(tmp_path, record, *patterns)


def _samples(split_dir: Path) -> dict:
    manifest = read_manifest(split_dir)
    groups = defaultdict(dict)
    for shard in manifest.shards:
        with tarfile.open(split_dir / shard.name) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                groups[key][ext] = tar.extractfile(member).read()
    return {key: decode_sample({"__key__": key, **members}) for key, members in groups.items()}


def test_h36m_conversion_gives_the_same_samples_from_every_layout(tmp_path):
    """The raw fixture's cameras written as camera-parameters.json and as VideoPose3D entries convert the same."""
    root = tmp_path / "raw"
    write_h36m(root, frames=2, actions=("Posing",), defects=False)
    own = json.loads((root / "cameras.json").read_text())
    files = {"depthpi": root / "cameras.json", "camera-parameters.json": write(tmp_path, as_karfly(own), "k.json"),
             "VideoPose3D": write(tmp_path, as_videopose_merged(own), "v.json")}
    converted = {}
    for layout, path in files.items():
        out = tmp_path / f"out-{layout}"
        summary = convert("h36m", root, out, every=1, progress=False, intrinsics_file=path)
        assert read_manifest(out / "test").params["camera_file_layout"] == layout
        assert any(f"({layout} layout" in note for note in summary.notes)
        converted[layout] = _samples(out / "test")
    reference = converted["depthpi"]
    assert len(reference) == 2 * 2 * 2   # S9, S11 × 2 cameras × 2 frames
    for layout, samples in converted.items():
        assert samples.keys() == reference.keys(), layout
        for key, sample in samples.items():
            ref = sample.meta, reference[key].meta
            for name in ("R", "t", "rgb_K", "joints"):
                np.testing.assert_allclose(getattr(ref[0], name), getattr(ref[1], name), atol=1e-6,
                                           err_msg=f"{layout} {key} {name}")
            assert np.abs(sample.rgb.astype(int) - reference[key].rgb).max() <= 1, (layout, key)


# --- hostile camera files: every malformed value, depth and size is one line naming file and field ---
_VIDEOPOSE_ONE = {"intrinsics": VIDEOPOSE_INTRINSICS[:1], "extrinsics": {"S9": VIDEOPOSE_EXTRINSICS["S9"][:1]}}
_H5_ENTRY = {"R": np.eye(3).tolist(), "T": [2000.0, 0, 0], "f": [1145.0, 1143.8], "c": [512.5, 515.5],
             "k": [0, 0, 0], "p": [0, 0]}


def _with_intrinsic(**fields):
    return {**_VIDEOPOSE_ONE, "intrinsics": [{**VIDEOPOSE_INTRINSICS[0], **fields}]}


@pytest.mark.parametrize("text, patterns", [
    ('{"S9": 5}', ["S9: expected {camera id:", "got int '5'"]),
    ('{"S9": null}', ["S9: expected {camera id:", "got NoneType"]),
    ('{"S9": "54138969"}', ["S9: expected {camera id:"]),
    ("[" * 100_000 + "]" * 100_000, ["nested deeper than JSON can be read"]),
    ('{"S9": ' + "[" * 40 + "]" * 40 + "}", ["S9/0/0/0/0/0/0", "nested 33 levels deep"]),
    (json.dumps(_with_intrinsic(res_w=1e300)), ["extrinsics/S9[0]", "field 'res_w'", "whole numbers 1-100000"]),
    (json.dumps(_with_intrinsic(res_h=-5)), ["field 'res_h'", "whole numbers 1-100000"]),
    (json.dumps(_with_intrinsic(res_w=float("inf"))), ["field 'res_w'", "non-finite"]),
    (json.dumps(_with_intrinsic(id=[1, 2])), ["field 'id'", "expected a camera id"]),
    (json.dumps({"subject9": {"camera1": {**_H5_ENTRY, "Name": [-5]}}}), ["subject9/camera1", "field 'Name'",
                                                                         "character codes"]),
    (json.dumps({"subject9": {"camera1": {**_H5_ENTRY, "Name": [1e300]}}}), ["field 'Name'", "character codes"]),
    ('{"subject9": {"camera1": {"Name": [Infinity]}}}', ["field 'Name'", "character codes"]),
    (json.dumps({"S9": {"54138969": {"R": np.eye(3).tolist(), "t": [1, 2, 3], "K": np.eye(3).tolist(),
                                     "size": [1e300, 1000]}}}), ["S9/54138969", "field 'size'", "whole numbers"]),
], ids=["subject int", "subject null", "subject string", "nested 100000 deep", "nested 40 deep", "res_w 1e300",
        "res_h -5", "res_w Infinity", "id a list", "Name -5", "Name 1e300", "Name Infinity", "size 1e300"])
def test_a_hostile_value_depth_or_size_is_one_line_naming_the_file_and_field(tmp_path, text, patterns):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConverterError) as err:
        load_cameras(path)
    message = str(err.value)
    assert message.startswith(f"camera file {path}: ") and "\n" not in message and len(message) < 600
    for pattern in patterns:
        assert pattern in message, message


def test_a_camera_file_larger_than_any_real_one_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text('{"S9": [' + ",".join(["1"] * 3_000_000) + "]}")
    with pytest.raises(ConverterError, match=r"huge.json: \d+ bytes; a camera file holds a few KiB"):
        load_cameras(path)
