"""The embedded synthetic RGB-D set: determinism, geometry, depth model, splits, schema."""
import numpy as np
import pytest

from depthpi.camera import Camera, reproject_image
from depthpi.data.schema import decode_sample, encode_sample
from depthpi.data.synthetic import (FAMILIES, SyntheticConfig, cameras_of, render_sample, render_sample_debug,
                                    subject_identity, subjects_of)
from depthpi.skeleton import H36M_17

CFG = SyntheticConfig()
J = {name: i for i, name in enumerate(H36M_17.joint_names)}


@pytest.fixture(scope="module")
def train_samples():
    return [render_sample_debug("train", i, CFG) for i in range(60)]


def test_deterministic_by_seed_split_index():
    a, b = render_sample("train", 5, CFG), render_sample("train", 5, CFG)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    assert np.array_equal(a.meta.joints, b.meta.joints) and np.array_equal(a.meta.rgb_K, b.meta.rgb_K)
    assert a.meta.to_json() == b.meta.to_json()
    c = render_sample("train", 5, SyntheticConfig(seed=1))
    assert not np.array_equal(a.meta.joints, c.meta.joints)
    assert a.rgb.shape != c.rgb.shape or np.abs(a.rgb.astype(int) - c.rgb).mean() > 5
    d = render_sample("train", 6, CFG)
    assert not np.array_equal(a.meta.joints, d.meta.joints)
    e = render_sample("test", 5, CFG)
    assert e.meta.subject in subjects_of("test", CFG) and not np.array_equal(a.meta.joints, e.meta.joints)


def test_sample_follows_schema(train_samples):
    for sample, _ in train_samples[:20]:
        m = sample.meta
        assert sample.rgb.shape == (CFG.crop_size, CFG.crop_size, 3) and sample.rgb.dtype == np.uint8
        assert sample.depth.dtype == np.uint16 and sample.depth.ndim == 2
        assert max(sample.depth.shape) < CFG.crop_size  # native low-resolution depth window
        assert m.dataset == "synthetic" and m.skeleton == "h36m_17" and m.labeled
        assert m.action in FAMILIES and m.frame >= 0 and m.subject.startswith("P")
        assert m.joints.shape == (17, 3) and np.all(np.isfinite(m.joints)) and m.joint_valid.dtype == bool
        assert m.bbox[2] > 10 and m.bbox[3] > 10
        assert np.isclose(np.linalg.det(m.R), 1.0)  # a rotation, never a reflection
        # both crops cover the same field of view, each through its own intrinsics
        h, w = sample.depth.shape
        np.testing.assert_allclose([w / m.depth_K[0, 0], h / m.depth_K[1, 1]],
                                   [CFG.crop_size / m.rgb_K[0, 0], CFG.crop_size / m.rgb_K[1, 1]], rtol=0.1)
    assert len({s.meta.action for s, _ in train_samples}) >= 6


def test_body_heights_and_rigid_bones(train_samples):
    heights = np.array([subject_identity(f"P{n:03d}", CFG).height for n in range(1, 201)])
    assert heights.min() >= 1450 and heights.max() <= 2000
    assert heights.max() - heights.min() > 350  # spread over the range
    # bone lengths of a subject are the same in every pose; the feet are on the floor
    bones = {}
    for sample, debug in train_samples:
        joints = sample.meta.joints
        lengths = np.array([np.linalg.norm(joints[c] - joints[p]) for c, p in H36M_17.edges])
        bones.setdefault(sample.meta.subject, []).append(lengths)
        assert 0 <= min(joints[J["lank"], 2], joints[J["rank"], 2], joints[J["lkne"], 2], joints[J["rkne"], 2])
        assert joints[:, 2].min() < 250  # something touches (near) the floor
        leg = lengths[[1, 2]].sum()  # rhip-rkne-rank
        assert 0.4 * 1450 < leg < 0.56 * 2000
    repeated = [np.array(v) for v in bones.values() if len(v) > 1]
    assert repeated
    for lengths in repeated:
        np.testing.assert_allclose(lengths, lengths[0][None].repeat(len(lengths), 0), atol=1e-6)


def test_joints_project_inside_crop_and_bbox(train_samples):
    S = CFG.crop_size
    for sample, _ in train_samples:
        m = sample.meta
        uv = Camera(m.rgb_K, m.R, m.t).project(m.joints)[m.joint_valid]
        assert m.joint_valid.mean() > 0.8
        assert np.all(uv >= -0.5) and np.all(uv <= S - 0.5)
        x, y, w, h = m.bbox
        tol = 2.0
        assert np.all(uv[:, 0] >= x - tol) and np.all(uv[:, 0] <= x + w + tol)
        assert np.all(uv[:, 1] >= y - tol) and np.all(uv[:, 1] <= y + h + tol)
        # the margin: the tight box fills roughly 1/crop_margin of the crop's long side
        assert 0.45 * S < max(w, h) < S


def test_depth_aligned_with_joints_and_rgb(train_samples):
    diffs, ious = [], []
    for sample, debug in train_samples:
        m = sample.meta
        dcam = Camera(m.depth_K, m.R, m.t)
        for name in ("pelv", "spin", "neck"):
            z = dcam.world_to_camera(m.joints[J[name]])[2]
            u, v = np.round(dcam.project(m.joints[J[name]])).astype(int)
            if 0 <= v < sample.depth.shape[0] and 0 <= u < sample.depth.shape[1] and sample.depth[v, u] > 0:
                diffs.append(float(sample.depth[v, u]) - z)
        # the body silhouettes of both crops coincide through their own intrinsics
        rcam = Camera(m.rgb_K, m.R, m.t)
        warped = reproject_image(debug["person_rgb"].astype(np.uint8), rcam, dcam, sample.depth.shape, "nearest")
        mask = debug["person_depth"]
        ious.append((warped.astype(bool) & mask).sum() / (warped.astype(bool) | mask).sum())
    diffs = np.array(diffs)
    assert len(diffs) > 100
    # the surface is in front of the joint by up to the body's half thickness; noise ≤ ~40 mm
    inside = (diffs > -300) & (diffs < 60)
    assert inside.mean() > 0.9, np.percentile(diffs, [5, 50, 95])
    assert -200 < np.median(diffs) < 0
    assert np.median(ious) > 0.8, np.percentile(ious, [5, 50])


def test_depth_noise_invalid_pixels_and_far_range(train_samples):
    near, far = CFG.depth_range
    beyond_far = 0
    for sample, debug in train_samples:
        depth, true = sample.depth, debug["depth_true"]
        valid = depth > 0
        assert 0.02 < 1 - valid.mean() < 0.9  # some, not all, pixels are invalid
        assert depth[valid].min() >= near * 0.9 and depth[valid].max() <= far
        assert np.all(depth[true > far] == 0)
        beyond_far += (true > far).sum()
        # the silhouette is not measured: the background pixels next to the body (far side
        # of the jump) are invalid, and part of the body's own edge pixels (mixed pixels)
        body = debug["person_depth"]
        grown = np.zeros_like(body)
        grown[:, 1:] |= body[:, :-1]
        grown[:, :-1] |= body[:, 1:]
        ring = grown & ~body & (true > np.median(true[body]) + 500) & (true < far)  # real jumps only
        edge = body & ~(np.roll(body, 1, 1) & np.roll(body, -1, 1))
        assert (depth[ring] == 0).mean() > 0.85
        assert 0.25 < (depth[edge] == 0).mean() < 0.95
        # noise grows with distance: valid residuals small, within a few sigma
        both = valid & (true > 0) & ~edge
        residual = depth[both].astype(np.float64) - true[both]
        a, b = CFG.depth_noise
        sigma = a + b * (true[both] / 1000) ** 2
        assert np.mean(np.abs(residual) < 5 * sigma + 1) > 0.98
    assert beyond_far > 0  # far walls drop out somewhere


def test_depth_carries_metric_scale(train_samples):
    """RGB crops are scale-normalised; depth values tell the true distance."""
    distances, person_depths, box_heights = [], [], []
    for sample, debug in train_samples:
        depth = sample.depth[debug["person_depth"] & (sample.depth > 0)]
        person_depths.append(np.median(depth))
        distances.append(debug["distance"])
        box_heights.append(sample.meta.bbox[3])
    assert np.corrcoef(distances, person_depths)[0, 1] > 0.95
    assert abs(np.corrcoef(distances, box_heights)[0, 1]) < 0.6  # crops hide the size


def test_splits_disjoint():
    tr_s, te_s, un_s = (set(subjects_of(s, CFG)) for s in ("train", "test", "unlabeled"))
    tr_c, te_c, un_c = (set(cameras_of(s, CFG)) for s in ("train", "test", "unlabeled"))
    assert not tr_s & te_s and not tr_s & un_s and not te_s & un_s
    assert not tr_c & te_c and not un_c & (tr_c | te_c)
    assert len(tr_s) == 20 and len(te_s) == 10 and len(tr_c) == 42 and len(te_c) == 9  # Table 5.2
    assert "S003C001" in tr_c and "S008C003" in te_c and "P007" in tr_s and "P032" in te_s
    assert set(cameras_of("unlabeled", SyntheticConfig(unlabeled_cameras="train"))) == tr_c
    for split, subjects, cameras in (("train", tr_s, tr_c), ("test", te_s, te_c), ("unlabeled", un_s, un_c)):
        for i in range(8):
            m = render_sample(split, i, CFG).meta
            assert m.subject in subjects and m.camera in cameras
    with pytest.raises(ValueError, match="overlap"):
        SyntheticConfig(test_subjects=(7, 1))
    with pytest.raises(ValueError, match="unknown split"):
        render_sample("validation", 0, CFG)


def test_unlabeled_samples():
    for i in range(4):
        sample = render_sample("unlabeled", i, CFG)
        assert sample.meta.labeled is False and sample.meta.joints is None
        assert not sample.meta.joint_valid.any() and sample.meta.extra == {}
        assert sample.depth is not None and sample.meta.bbox[2] > 0
        back = decode_sample(encode_sample(sample))
        assert back.meta.labeled is False and back.meta.joints is None


def test_encode_decode_round_trip():
    sample = render_sample("train", 3, CFG)
    back = decode_sample(encode_sample(sample))
    assert back.key == sample.key
    assert np.array_equal(back.depth, sample.depth)
    assert back.rgb.shape == sample.rgb.shape and np.abs(back.rgb.astype(int) - sample.rgb).mean() < 3
    for name in ("rgb_K", "depth_K", "R", "t", "joints", "bbox"):
        np.testing.assert_allclose(getattr(back.meta, name), getattr(sample.meta, name))
    assert np.array_equal(back.meta.joint_valid, sample.meta.joint_valid)
    assert (back.meta.subject, back.meta.camera, back.meta.action) == (sample.meta.subject, sample.meta.camera,
                                                                       sample.meta.action)


def _chroma(c):
    c = np.asarray(c, np.float64)
    return c / (c.sum() + 1e-6)


def test_left_and_right_limbs_differ_in_colour(train_samples):
    """At the projected middle of each visible upper arm and thigh, the pixel's chromaticity
    is nearer to the subject's own colour of that side than to the other side's."""
    correct, total, gaps = 0, 0, []
    for sample, debug in train_samples:
        m, ident = sample.meta, debug["identity"]
        cam = Camera(m.rgb_K, m.R, m.t)
        for (a, b), part, radius in ((("sho", "elb"), "sleeve", ident.radii["upper_arm"]),
                                     (("hip", "kne"), "trousers", ident.radii["thigh"])):
            pixels = {}
            for side in "lr":
                mid = (m.joints[J[side + a]] + m.joints[J[side + b]]) / 2
                u, v = np.round(cam.project(mid)).astype(int)
                z = cam.world_to_camera(mid)[2]
                if 1 <= u < m.bbox[0] + m.bbox[2] and 1 <= v < CFG.crop_size - 1 \
                        and debug["z_rgb"][v, u] > z - 1.3 * radius:  # nothing in front of the limb
                    pixels[side] = sample.rgb[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3).mean(0)
            for side, colour in pixels.items():
                own = _chroma(ident.colours[side + part])
                other = _chroma(ident.colours[("r" if side == "l" else "l") + part])
                d_own, d_other = np.abs(_chroma(colour) - own).sum(), np.abs(_chroma(colour) - other).sum()
                correct += d_own < d_other
                total += 1
            if len(pixels) == 2:
                gaps.append(np.abs(_chroma(pixels["l"]) - _chroma(pixels["r"])).sum())
    assert total > 60
    assert correct / total > 0.8, (correct, total)
    assert np.median(gaps) > 0.05


def test_chirality_left_shoulder_on_image_right_when_facing_camera(train_samples):
    checked = 0
    for sample, _ in train_samples:
        m = sample.meta
        cam = Camera(m.rgb_K, m.R, m.t)
        j = m.joints
        facing = np.cross(j[J["lsho"]] - j[J["rsho"]], j[J["htop"]] - j[J["pelv"]])
        to_camera = m.t - j[J["pelv"]]
        cos = facing @ to_camera / np.linalg.norm(facing) / np.linalg.norm(to_camera)
        if abs(cos) < 0.7:
            continue
        uv = cam.project(j)
        assert (uv[J["lsho"], 0] > uv[J["rsho"], 0]) == (cos > 0)
        checked += 1
    assert checked >= 5
