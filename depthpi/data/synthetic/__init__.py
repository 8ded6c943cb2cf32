"""The embedded synthetic RGB-D data set: articulated humans in procedurally built rooms.

It lets the whole teacher/student system run without downloading a data set. Every sample
is a pure function of ``(cfg.seed, split, index)``. Lengths are in mm, image sizes in px,
angles in degrees unless a name says radians.

Modules, in the order a sample is made: ``config``, ``body``, ``poses``, ``colours``,
``scene``, ``raster``, ``sensor_noise``, ``render``. docs/datasets.md ("The synthetic set")
says what each does.
"""
from depthpi.data.synthetic.body import SubjectIdentity, subject_identity
from depthpi.data.synthetic.config import (NTU_TEST_SETUPS, NTU_TEST_SUBJECTS, NTU_TRAIN_SETUPS, NTU_TRAIN_SUBJECTS,
                                           SPLIT_IDS, SyntheticConfig, cameras_of, subjects_of)
from depthpi.data.synthetic.poses import FAMILIES
from depthpi.data.synthetic.render import render_sample, render_sample_debug

__all__ = ["FAMILIES", "NTU_TEST_SETUPS", "NTU_TEST_SUBJECTS", "NTU_TRAIN_SETUPS", "NTU_TRAIN_SUBJECTS", "SPLIT_IDS",
           "SubjectIdentity", "SyntheticConfig", "cameras_of", "render_sample", "render_sample_debug",
           "subject_identity", "subjects_of"]
