"""The embedded synthetic RGB-D data set: articulated humans in procedurally built rooms.

It lets the whole teacher/student system run without downloading a data set. Every
sample is a pure function of ``(cfg.seed, split, index)``
(``np.random.default_rng([seed, split_id, index])``). Lengths are in mm, image sizes
in px, angles in degrees unless a name says radians.

Modules, in the order a sample is made:
    config        ``SyntheticConfig``; the train/test/unlabeled subjects and setups (Table 5.2).
    body          subject identities (height 1.45–2.0 m, bones, colours); forward
                  kinematics into 17 joints and 18 primitives (capsules, ellipsoids).
    poses         joint angles of eight pose families, clipped to anatomical limits.
    colours       HSV colours; procedural wall and floor textures.
    scene         one room per setup, three Kinect-like sensors per room (RGB 640×480
                  px, depth 256×212 px), the room ray-traced once per sensor.
    raster        exact ray casts of the primitives into a z-buffer; Lambert shading.
    sensor_noise  RGB noise; Kinect-like depth noise and invalid pixels (uint16 mm, 0 = invalid).
    render        placing the person, the crop cameras, RGB and depth crops, labels.
"""
from depthpi.data.synthetic.body import SubjectIdentity, subject_identity
from depthpi.data.synthetic.config import (NTU_TEST_SETUPS, NTU_TEST_SUBJECTS, NTU_TRAIN_SETUPS, NTU_TRAIN_SUBJECTS,
                                           SPLIT_IDS, SyntheticConfig, cameras_of, subjects_of)
from depthpi.data.synthetic.poses import FAMILIES
from depthpi.data.synthetic.render import render_sample, render_sample_debug

__all__ = ["FAMILIES", "NTU_TEST_SETUPS", "NTU_TEST_SUBJECTS", "NTU_TRAIN_SETUPS", "NTU_TRAIN_SUBJECTS", "SPLIT_IDS",
           "SubjectIdentity", "SyntheticConfig", "cameras_of", "render_sample", "render_sample_debug",
           "subject_identity", "subjects_of"]
