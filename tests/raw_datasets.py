"""Tiny raw datasets in the NTU RGB+D, PKU-MMD and Human3.6M layouts, with known truth.

The geometry is generated in depthpi's camera frame (x right, y down, z forward): a
person facing the camera (left shoulder on the image's right), with per-frame motion.
When :mod:`depthpi.data.synthetic` is available its poses are used (camera-space joints
of ``render_sample``, re-centred in front of the sensor); otherwise a built-in template.
Full frames are drawn with simple primitives: limbs, plus coloured markers at a few joints
(:data:`MARKERS`) whose centroids the tests find in the stored crops; depth frames hold
the joints' z (mm) in small discs over a 4 m wall. Kinect files are written as the sensor
would: camera space x left / y up / z forward in metres, frames mirrored (unless
``mirrored=False``), colorX/depthX in the mirrored frames.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.converters.kinect import HEAD_MIX, HEAD_TOP_EXTRA, KINECT_TO_H36M, K
from depthpi.skeleton import H36M_17

# RGB colours of the markers drawn at these joints (stored crops are RGB).
MARKERS = {"lsho": (255, 0, 0), "rsho": (0, 0, 255), "lwri": (0, 255, 0), "rank": (255, 0, 255)}

TEMPLATE = {  # mm, our camera axes, pelvis at the origin, facing the camera (−z)
    "pelv": (0, 0, 0), "rhip": (-120, 0, 0), "rkne": (-125, 440, 10), "rank": (-130, 870, 40),
    "lhip": (120, 0, 0), "lkne": (125, 440, 10), "lank": (130, 870, 40), "spin": (0, -230, 0),
    "neck": (0, -480, 0), "head": (0, -600, -40), "htop": (0, -730, 0), "lsho": (170, -460, 0),
    "lelb": (200, -200, -20), "lwri": (210, 40, -80), "rsho": (-170, -460, 0), "relb": (-200, -200, -20),
    "rwri": (-210, 40, -80)}


def h36m17_to_kinect(joints17: np.ndarray) -> np.ndarray:
    """Inverse of :func:`~depthpi.data.converters.kinect.kinect_to_h36m17` where it is one: (17, 3) → (25, 3).

    Hands, feet, thumbs and hand tips are extrapolated along the last bone.
    """
    j = {name: np.asarray(joints17[i], np.float64) for i, name in enumerate(H36M_17.joint_names)}
    out = np.zeros((25, 3))
    for name, kname in KINECT_TO_H36M.items():
        out[K[kname]] = j[name]
    # head = N + a (H − N), htop = H + b (H − N)  ⇒  H − N = (htop − head) / (1 − a + b)
    d = (j["htop"] - j["head"]) / (1.0 - HEAD_MIX + HEAD_TOP_EXTRA)
    out[K["Neck"]] = j["head"] - HEAD_MIX * d
    out[K["Head"]] = out[K["Neck"]] + d
    for side in ("l", "r"):
        s = "Left" if side == "l" else "Right"
        wri, elb = j[side + "wri"], j[side + "elb"]
        out[K["Hand" + s]] = wri + 0.3 * (wri - elb)
        out[K["HandTip" + s]] = wri + 0.5 * (wri - elb)
        out[K["Thumb" + s]] = wri + 0.25 * (wri - elb) + np.array([0.0, 0.0, 0.02]) * np.linalg.norm(wri - elb)
        ank, kne = j[side + "ank"], j[side + "kne"]
        out[K["Foot" + s]] = ank + 0.25 * (ank - kne)
    return out


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def person_joints(frame: int, person: int = 0, seed: int = 0) -> np.ndarray:
    """(17, 3) camera-frame mm of a person facing the camera, moving a little per frame."""
    rng = np.random.default_rng([seed, person, frame])
    joints = _synthetic_pose(seed, person, frame)
    if joints is None:
        joints = np.array([TEMPLATE[n] for n in H36M_17.joint_names], np.float64)
        swing = 0.5 * np.sin(0.7 * frame + person)
        for side, sign in (("l", 1), ("r", -1)):  # arms swing forward/back
            sho = joints[H36M_17.index(side + "sho")]
            for j in (side + "elb", side + "wri"):
                i = H36M_17.index(j)
                joints[i] = sho + (joints[i] - sho) @ np.array(
                    [[1, 0, 0], [0, np.cos(sign * swing), -np.sin(sign * swing)],
                     [0, np.sin(sign * swing), np.cos(sign * swing)]]).T
        joints = joints @ _rot_y(0.3 * np.sin(0.3 * frame + person) + rng.uniform(-0.05, 0.05)).T
    centre = np.array([-350.0 + 750.0 * person + 30 * frame, -150.0, 3000.0 + 150 * person - 20 * frame])
    return joints + centre


def _synthetic_pose(seed: int, person: int, frame: int) -> np.ndarray | None:
    try:
        from depthpi.data.synthetic import SyntheticConfig, render_sample
    except ImportError:
        return None
    try:
        sample = render_sample("test", 1000 * person + frame, SyntheticConfig(seed=seed))
        cam = Camera(np.asarray(sample.meta.rgb_K), sample.meta.R, sample.meta.t)
        joints = cam.world_to_camera(sample.meta.joints)
    except Exception:
        return None
    joints = joints - joints[H36M_17.root]
    lsho, rsho = joints[H36M_17.index("lsho")], joints[H36M_17.index("rsho")]
    head, pelv = joints[H36M_17.index("head")], joints[H36M_17.index("pelv")]
    up = head - pelv
    normal = np.cross(lsho - rsho, up)
    if np.linalg.norm(up) < 1 or up[1] > -0.7 * np.linalg.norm(up) or normal[2] > -0.6 * np.linalg.norm(normal):
        return None  # not upright or not clearly facing the camera: the template is the fixture's truth then
    return joints


def _draw(shape_hw, pixels, colour_limbs=(170, 160, 150), markers=True, thickness=18, radius=14, image=None):
    """RGB full frame: grey background, limbs, coloured joint markers (sub-pixel centres)."""
    if image is None:
        image = np.full(shape_hw + (3,), 70, np.uint8)
        image[:, :, 1] = 80
    for child, parent in H36M_17.edges:
        a, b = pixels[child], pixels[parent]
        cv2.line(image, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), colour_limbs, thickness)
    if markers:
        for name, colour in MARKERS.items():
            c = np.round(pixels[H36M_17.index(name)] * 16).astype(int)
            cv2.circle(image, (int(c[0]), int(c[1])), radius * 16, colour, -1, cv2.LINE_AA, shift=4)
    return image


def _draw_depth(shape_hw, pixels, joints, wall=4000):
    depth = np.full(shape_hw, wall, np.uint16)
    for child, parent in H36M_17.edges:
        z = int(round((joints[child, 2] + joints[parent, 2]) / 2))
        cv2.line(depth, tuple(np.round(pixels[child]).astype(int)), tuple(np.round(pixels[parent]).astype(int)), z, 5)
    for j in range(len(joints)):
        cv2.circle(depth, tuple(np.round(pixels[j]).astype(int)), 4, int(round(joints[j, 2])), -1)
    return depth


def _write_video(path: Path, frames_bgr: list[np.ndarray], fourcc: str, fps: float = 30.0) -> None:
    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for frame in frames_bgr:
        writer.write(frame)
    writer.release()


def _rgb_to_bgr(image):
    return np.ascontiguousarray(image[:, :, ::-1])


# --- NTU RGB+D -----------------------------------------------------------------------
NTU_SETUPS = {  # SsssCccc → (rgb K, depth K) of the *unmirrored* frames, our camera frame
    "S001C001": (np.array([[1040.0, 0, 965.3], [0, 1038.0, 538.7], [0, 0, 1]]),
                 np.array([[365.2, 0, 257.1], [0, 364.8, 206.4], [0, 0, 1]])),
    "S001C002": (np.array([[1055.0, 0, 950.2], [0, 1052.0, 541.9], [0, 0, 1]]),
                 np.array([[366.9, 0, 254.3], [0, 366.1, 209.8], [0, 0, 1]])),
    "S003C001": (np.array([[1032.0, 0, 958.8], [0, 1030.5, 533.1], [0, 0, 1]]),
                 np.array([[362.7, 0, 259.6], [0, 362.0, 203.2], [0, 0, 1]])),
    # the same physical sensors as S001C001 and S003C001, within a fraction of a pixel
    "S002C001": (np.array([[1040.4, 0, 965.6], [0, 1038.3, 538.4], [0, 0, 1]]),
                 np.array([[365.3, 0, 257.2], [0, 364.9, 206.3], [0, 0, 1]])),
    "S004C001": (np.array([[1031.7, 0, 959.1], [0, 1030.2, 533.4], [0, 0, 1]]),
                 np.array([[362.6, 0, 259.7], [0, 361.9, 203.1], [0, 0, 1]])),
}
NTU_SENSORS = (("S001C001", "S002C001"), ("S003C001", "S004C001"))
NTU_VIDEOS = {  # name → persons; special cases in write_ntu
    "S001C001P001R001A001": 1,
    "S001C002P001R001A001": 2,      # two people
    "S003C001P007R001A001": 1,
    "S003C001P008R001A002": 1,      # truncated video
    "S003C001P007R002A001": 1,      # a missing depth frame and a malformed skeleton line
    "S001C001P007R001A003": 1,      # subject train, configuration test: in neither part (Table 5.2)
}
NTU_TRUNCATED = "S003C001P008R001A002"
NTU_DEFECTS = "S003C001P007R002A001"
NTU_MISSING_DEPTH_FRAME = 3         # 0-based frame whose depth PNG is deleted
NTU_MALFORMED_FRAME = 4             # 0-based frame with a malformed joint line
RGB_WH, DEPTH_WH = (1920, 1080), (512, 424)


def _kinect_lines(joints_cam_mm, rgb_K, depth_K, mirrored):
    """25 joint lines of the NTU format for one body."""
    kin_cam = h36m17_to_kinect(joints_cam_mm)                   # our frame, mm
    kin = kin_cam * np.array([-1.0, -1.0, 1.0]) / 1000.0        # Kinect camera space, m
    rgb = Camera.from_intrinsics(rgb_K).camera_to_image(kin_cam)
    dep = Camera.from_intrinsics(depth_K).camera_to_image(kin_cam)
    if mirrored:
        rgb[:, 0] = RGB_WH[0] - 1 - rgb[:, 0]
        dep[:, 0] = DEPTH_WH[0] - 1 - dep[:, 0]
    return [" ".join(f"{v:.7f}" for v in (*kin[j], *dep[j], *rgb[j], 1.0, 0.0, 0.0, 0.0)) + " 2" for j in range(25)]


def write_ntu(root: Path, *, frames: int = 6, mirrored: bool = True, videos: dict | None = None,
              seed: int = 0, defects: bool = True) -> dict:
    """Write an NTU RGB+D layout under ``root``; returns the truth.

    Truth: ``{"setups": {setup: {"rgb_K", "depth_K"}}, "joints": {name: (frames, persons, 17, 3)}}``.
    """
    root = Path(root)
    for sub in ("nturgb+d_skeletons", "nturgb+d_rgb", "nturgb+d_depth_masked"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    videos = NTU_VIDEOS if videos is None else videos
    truth = {"setups": {s: {"rgb_K": k[0], "depth_K": k[1]} for s, k in NTU_SETUPS.items()}, "joints": {}}
    for name, persons in videos.items():
        rgb_K, depth_K = NTU_SETUPS[name[:8]]
        rgb_cam, depth_cam = Camera.from_intrinsics(rgb_K), Camera.from_intrinsics(depth_K)
        lines, video, all_joints = [str(frames)], [], []
        depth_dir = root / "nturgb+d_depth_masked" / name
        depth_dir.mkdir(exist_ok=True)
        for f in range(frames):
            people = [person_joints(f, p, seed) for p in range(persons)]
            all_joints.append(people)
            lines.append(str(persons))
            image = np.full((RGB_WH[1], RGB_WH[0], 3), 70, np.uint8)
            image[:, :, 1] = 80
            depth = np.full((DEPTH_WH[1], DEPTH_WH[0]), 4000, np.uint16)
            for p, joints in enumerate(people):
                lines.append(f"{72057594037931101 + p} 0 1 1 1 1 0 -0.1 0.05 2")
                lines.append("25")
                body = _kinect_lines(joints, rgb_K, depth_K, mirrored)
                if defects and name == NTU_DEFECTS and f == NTU_MALFORMED_FRAME:
                    body[7] = body[7].rsplit(" ", 3)[0] + " x?"   # malformed joint line
                lines.extend(body)
                _draw(None, rgb_cam.camera_to_image(joints), image=image)
                d = _draw_depth((DEPTH_WH[1], DEPTH_WH[0]), depth_cam.camera_to_image(joints), joints)
                depth = np.minimum(depth, d)
            if mirrored:
                image, depth = cv2.flip(image, 1), cv2.flip(depth, 1)
            video.append(_rgb_to_bgr(image))
            if not (defects and name == NTU_DEFECTS and f == NTU_MISSING_DEPTH_FRAME):
                cv2.imwrite(str(depth_dir / f"MDepth-{f + 1:08d}.png"), depth)
        (root / "nturgb+d_skeletons" / f"{name}.skeleton").write_text("\n".join(lines) + "\n")
        path = root / "nturgb+d_rgb" / f"{name}_rgb.avi"
        _write_video(path, video, "MJPG")
        if defects and name == NTU_TRUNCATED:
            data = path.read_bytes()
            path.write_bytes(data[:int(len(data) * 0.45)])
        truth["joints"][name] = np.array(all_joints)
    return truth


# --- PKU-MMD -------------------------------------------------------------------------
PKU_RGB_K = NTU_SETUPS["S001C001"][0]
PKU_DEPTH_K = NTU_SETUPS["S001C001"][1]
PKU_VIDEOS = {"0002-L": "train", "0002-M": "train", "0291-L": "test", "0291-R": "test"}
PKU_MALFORMED = ("0291-R", 2)  # (video, 0-based line) with a malformed skeleton line


def write_pku(root: Path, *, frames: int = 6, seed: int = 1, defects: bool = True, videos: dict | None = None
              ) -> dict:
    """PKU-MMD layout: RGB_VIDEO/*.avi, DEPTH/<video>/NNNNNN.png, PKU_Skeleton_Renew/*.txt, the
    split files (phase-1 names in Split/cross-subject.txt, phase-2 names such as A01N02-L in
    Split/cross_subject_v2.txt), and ``root / "kinect_intrinsics.json"`` (top-level rgb_K,
    depth_K). ``videos``: name → "train" | "test" | None (None: in no split file). Returns the truth."""
    root = Path(root)
    for sub in ("RGB_VIDEO", "DEPTH", "PKU_Skeleton_Renew", "Split"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    videos = PKU_VIDEOS if videos is None else videos
    rgb_cam, depth_cam = Camera.from_intrinsics(PKU_RGB_K), Camera.from_intrinsics(PKU_DEPTH_K)
    truth = {"joints": {}}
    for name in videos:
        lines, video, all_joints = [], [], []
        (root / "DEPTH" / name).mkdir(exist_ok=True)
        for f in range(frames):
            joints = person_joints(f, 0, seed)
            all_joints.append(joints)
            kin = h36m17_to_kinect(joints) * np.array([-1.0, -1.0, 1.0]) / 1000.0
            values = np.concatenate([kin.ravel(), np.zeros(75)])
            line = " ".join(f"{v:.7f}" for v in values)
            if defects and (name, f) == PKU_MALFORMED:
                line = line[: len(line) // 2]
            lines.append(line)
            image = _draw((RGB_WH[1], RGB_WH[0]), rgb_cam.camera_to_image(joints))
            depth = _draw_depth((DEPTH_WH[1], DEPTH_WH[0]), depth_cam.camera_to_image(joints), joints)
            video.append(_rgb_to_bgr(cv2.flip(image, 1)))
            cv2.imwrite(str(root / "DEPTH" / name / f"{f:06d}.png"), cv2.flip(depth, 1))
        (root / "PKU_Skeleton_Renew" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        _write_video(root / "RGB_VIDEO" / f"{name}.avi", video, "MJPG")
        truth["joints"][name] = np.array(all_joints)
    for phase, split_name in ((1, "cross-subject.txt"), (2, "cross_subject_v2.txt")):
        named = {n: s for n, s in videos.items() if (n[0].isdigit()) == (phase == 1) and s}
        if named:
            train = [n for n, s in named.items() if s == "train"]
            test = [n for n, s in named.items() if s == "test"]
            header = "Validataion videos:" if phase == 1 else "Validation videos:"
            (root / "Split" / split_name).write_text(
                "Training videos: \n" + ", ".join(train) + f"\n{header} \n" + ", ".join(test) + "\n")
    (root / "kinect_intrinsics.json").write_text(json.dumps(
        {"rgb_K": PKU_RGB_K.tolist(), "depth_K": PKU_DEPTH_K.tolist(), "mirrored": True}))
    return truth


# --- Human3.6M -----------------------------------------------------------------------
H36M_CAMERAS = {"54138969": (1000, 1002), "55011271": (1000, 1000)}
H36M_INDICES = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]


def h36m_camera(camera_id: str) -> tuple[Camera, np.ndarray, tuple[int, int]]:
    """A camera 3.5 m in front of the world origin (world z up), small radial distortion."""
    w, h = H36M_CAMERAS[camera_id]
    yaw = 0.0 if camera_id == "54138969" else 0.4
    forward = np.array([np.sin(yaw), np.cos(yaw), 0.0])
    y_axis = np.array([0.0, 0.0, -1.0])
    x_axis = np.cross(y_axis, forward)
    R = np.stack([x_axis, y_axis, forward])
    t = -3500.0 * forward + np.array([0.0, 0.0, 1000.0])
    K = np.array([[1145.0, 0, 512.5], [0, 1144.0, 515.4], [0, 0, 1]])
    dist = np.array([-0.05, 0.02, 0.0005, -0.0003, 0.0])
    return Camera(K, R, t), dist, (w, h)


def write_h36m(root: Path, *, frames: int = 12, subjects=("S9", "S11"), actions=("Directions 1", "Walking"),
               seed: int = 2, defects: bool = True, cdf: bool = True) -> dict:
    """Human3.6M layout: S*/Videos/<action>.<camera>.mp4, S*/MyPoseFeatures/D3_Positions/<action>.cdf
    (Pose: (1, frames, 96) world mm, 32 joints) and ``cameras.json``. Returns the truth."""
    from cdflib.cdfwrite import CDF

    root = Path(root)
    cameras, truth = {}, {"world": {}}
    for subject in subjects:
        videos_dir = root / subject / "Videos"
        poses_dir = root / subject / "MyPoseFeatures" / "D3_Positions"
        videos_dir.mkdir(parents=True, exist_ok=True)
        poses_dir.mkdir(parents=True, exist_ok=True)
        cameras[subject] = {}
        for camera_id in H36M_CAMERAS:
            cam, dist, _ = h36m_camera(camera_id)
            cameras[subject][camera_id] = {"R": cam.R.tolist(), "t": cam.t.tolist(),
                                           "f": [cam.K[0, 0], cam.K[1, 1]], "c": [cam.K[0, 2], cam.K[1, 2]],
                                           "dist": dist.tolist(), "size": list(H36M_CAMERAS[camera_id])}
        ref_cam = h36m_camera("54138969")[0]
        for action in actions:
            world = np.array([ref_cam.camera_to_world(person_joints(f, 0, seed) + np.array([350.0, 0, 500.0]))
                              for f in range(frames)])
            pose32 = np.zeros((frames, 32, 3))
            pose32[:, H36M_INDICES] = world
            if cdf:
                path = poses_dir / f"{action}.cdf"
                writer = CDF(str(path), cdf_spec={"Majority": "Row_major"}, delete=True)
                writer.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_DOUBLE, "Num_Elements": 1,
                                  "Rec_Vary": True, "Dim_Sizes": [frames, 96]}, var_attrs={},
                                 var_data=pose32.reshape(1, frames, 96))
                writer.close()
            else:
                np.savez(poses_dir / f"{action}.npz", Pose=pose32.reshape(1, frames, 96))
            truth["world"][(subject, action)] = world
            for camera_id in H36M_CAMERAS:
                cam, dist, (w, h) = h36m_camera(camera_id)
                video = []
                for f in range(frames):
                    cam_points = cam.world_to_camera(world[f])
                    pixels, _ = cv2.projectPoints(cam_points, np.zeros(3), np.zeros(3), cam.K, dist)
                    video.append(_rgb_to_bgr(_draw((h, w), pixels[:, 0], thickness=12, radius=9)))
                _write_video(videos_dir / f"{action}.{camera_id}.mp4", video, "mp4v", fps=50.0)
    if defects:  # an unreadable pose file for one action of S11
        bad = root / "S11" / "MyPoseFeatures" / "D3_Positions" / f"{actions[-1]}.cdf"
        if bad.exists():
            bad.write_bytes(b"not a cdf")
    (root / "cameras.json").write_text(json.dumps(cameras, indent=1))
    return truth
