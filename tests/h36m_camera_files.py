"""Human3.6M camera files in the layouts users have, with published values.

Subject S9, cameras 54138969 and 55011271, as the public sources print them:
``camera-parameters.json`` of karfly/human36m-camera-parameters (R, t with p_cam = R p + t,
calibration_matrix, distortion k1 k2 p1 p2 k3) and the tables of VideoPose3D's
``common/h36m_dataset.py`` (orientation quaternion w x y z camera→world, translation =
camera centre in mm, tangential_distortion as (p2, p1)). The cameras.h5 layout is written
from the same calibration (R stored camera→world, T the centre), as that file holds it.

The writers ``as_*`` turn depthpi's own layout (t = centre, OpenCV dist) into the others,
for converting one raw dataset with the same cameras in every layout.
"""
from __future__ import annotations

import numpy as np

S9_CENTRE_54138969 = np.array([2044.45849609375, 4935.1171875, 1481.2275390625])  # mm, VideoPose3D
CAMERAS = ("54138969", "55011271")

KARFLY = {
    "intrinsics": {
        "54138969": {"calibration_matrix": [[1145.04940458804, 0.0, 512.541504956548],
                                            [0.0, 1143.78109572365, 515.4514869776], [0.0, 0.0, 1.0]],
                     "distortion": [-0.207098910824901, 0.247775183068982, -0.00142447157470321,
                                    -0.000975698859470499, -0.00307515035078854]},
        "55011271": {"calibration_matrix": [[1149.67569986785, 0.0, 508.848621645943],
                                            [0.0, 1147.59161666764, 508.064917088557], [0.0, 0.0, 1.0]],
                     "distortion": [-0.194213629607385, 0.240408539138292, -0.0027408943961907,
                                    -0.001619026613787, 0.00681997559022603]},
    },
    "extrinsics": {"S9": {
        "54138969": {"R": [[-0.9033486204435297, 0.4269119782787646, 0.04132109321984796],
                           [0.04153061098352977, 0.182951140059007, -0.9822444139329296],
                           [-0.4268916470184284, -0.8855930460167476, -0.18299857527497945]],
                     "t": [[-321.2078335720134], [467.13452033013084], [5514.330338522134]]},
        "55011271": {"R": [[0.9315720471487059, 0.36348288012373176, -0.007329176497134756],
                           [0.06810069482701912, -0.19426747906725159, -0.9785818524481906],
                           [-0.35712157080642226, 0.911120377575769, -0.20572758986325015]],
                     "t": [[19.193095609487138], [404.22842728571936], [5702.169280033924]]},
    }},
}

VIDEOPOSE_INTRINSICS = [
    {"id": "54138969", "center": [512.54150390625, 515.4514770507812],
     "focal_length": [1145.0494384765625, 1143.7811279296875],
     "radial_distortion": [-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043],
     "tangential_distortion": [-0.0009756988729350269, -0.00142447161488235], "res_w": 1000, "res_h": 1002,
     "azimuth": 70},
    {"id": "55011271", "center": [508.8486328125, 508.0649108886719],
     "focal_length": [1149.6756591796875, 1147.5916748046875],
     "radial_distortion": [-0.1942136287689209, 0.2404085397720337, 0.006819975562393665],
     "tangential_distortion": [-0.0016190266469493508, -0.0027408944442868233], "res_w": 1000, "res_h": 1000,
     "azimuth": -70},
]
VIDEOPOSE_EXTRINSICS = {
    "S9": [
        {"orientation": [0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243],
         "translation": [2044.45849609375, 4935.1171875, 1481.2275390625]},
        {"orientation": [0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801],
         "translation": [1990.959716796875, -5123.810546875, 1568.8048095703125]},
    ],
    "S2": [{}, {}],  # VideoPose3D leaves subjects without calibration empty
}


def videopose_tables() -> dict:
    return {"intrinsics": VIDEOPOSE_INTRINSICS, "extrinsics": VIDEOPOSE_EXTRINSICS}


def videopose_merged_list() -> dict:
    """Per subject, VideoPose3D's merged entries (as Human36mDataset builds them, before normalising)."""
    return {"S9": [{**inner, **outer} for inner, outer in zip(VIDEOPOSE_INTRINSICS, VIDEOPOSE_EXTRINSICS["S9"])]}


def videopose_merged_by_id() -> dict:
    return {"S9": {inner["id"]: {k: v for k, v in {**inner, **outer}.items() if k != "id"}
                   for inner, outer in zip(VIDEOPOSE_INTRINSICS, VIDEOPOSE_EXTRINSICS["S9"])}}


def own_from_videopose() -> dict:
    """depthpi's layout written by hand from VideoPose3D's values: R from the quaternion, t the centre."""
    record = {"S9": {}}
    for inner, outer in zip(VIDEOPOSE_INTRINSICS, VIDEOPOSE_EXTRINSICS["S9"]):
        w, x, y, z = outer["orientation"]
        camera_to_world = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        (k1, k2, k3), (p2, p1) = inner["radial_distortion"], inner["tangential_distortion"]
        record["S9"][inner["id"]] = {"R": camera_to_world.T.tolist(), "t": outer["translation"],
                                     "f": inner["focal_length"], "c": inner["center"],
                                     "dist": [k1, k2, p1, p2, k3], "size": [inner["res_w"], inner["res_h"]]}
    return record


def h5_layout_from_karfly() -> dict:
    """cameras.h5's nesting from the same calibration: R camera→world, T centre, column vectors."""
    record = {"subject9": {}}
    for index, camera_id in enumerate(CAMERAS, 1):
        R = np.array(KARFLY["extrinsics"]["S9"][camera_id]["R"])
        t = np.array(KARFLY["extrinsics"]["S9"][camera_id]["t"]).ravel()
        K = np.array(KARFLY["intrinsics"][camera_id]["calibration_matrix"])
        k1, k2, p1, p2, k3 = KARFLY["intrinsics"][camera_id]["distortion"]
        record["subject9"][f"camera{index}"] = {
            "R": R.T.tolist(), "T": (-R.T @ t).reshape(3, 1).tolist(), "f": [[K[0, 0]], [K[1, 1]]],
            "c": [[K[0, 2]], [K[1, 2]]], "k": [[k1], [k2], [k3]], "p": [[p1], [p2]],
            "Name": [ord(ch) for ch in camera_id]}
    return record


# --- depthpi's layout → the others (same cameras) ------------------------------------------
def as_karfly(own: dict) -> dict:
    intrinsics, extrinsics = {}, {}
    for subject, cameras in own.items():
        extrinsics[subject] = {}
        for camera_id, entry in cameras.items():
            R, centre = np.array(entry["R"]), np.array(entry["t"])
            (fx, fy), (cx, cy) = entry["f"], entry["c"]
            intrinsics[camera_id] = {"calibration_matrix": [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
                                     "distortion": list(entry["dist"])}
            extrinsics[subject][camera_id] = {"R": R.tolist(), "t": (-R @ centre).reshape(3, 1).tolist()}
    return {"intrinsics": intrinsics, "extrinsics": extrinsics}


def as_videopose_merged(own: dict) -> dict:
    out = {}
    for subject, cameras in own.items():
        out[subject] = []
        for camera_id, entry in cameras.items():
            k1, k2, p1, p2, k3 = entry["dist"]
            out[subject].append({"id": camera_id, "orientation": _quaternion(np.array(entry["R"]).T).tolist(),
                                 "translation": list(entry["t"]), "focal_length": list(entry["f"]),
                                 "center": list(entry["c"]), "radial_distortion": [k1, k2, k3],
                                 "tangential_distortion": [p2, p1], "res_w": entry["size"][0],
                                 "res_h": entry["size"][1]})
    return out


def _quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation → unit quaternion (w, x, y, z) (trace-positive and general branches)."""
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    return np.array(q) / np.linalg.norm(q)
