"""The 17-joint Human3.6M-compatible skeleton every depthpi sample is expressed in.

Joint order follows the common Human3.6M 17-joint convention (as used by MeTRAbs'
``h36m_17`` and most monocular 3D pose papers), root (pelvis) first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A named joint set with its kinematic tree and mirror symmetry.

    Attributes:
        name: identifier stored in shard manifests and sample JSON.
        joint_names: (J,) short names, e.g. ``"lsho"`` for the left shoulder.
        parents: (J,) index of each joint's parent; the root's parent is itself.
        root: index of the root joint (root-relative poses subtract it).
        groups: named joint subsets for per-group metrics (e.g. ``"arms"``).
    """

    name: str
    joint_names: tuple[str, ...]
    parent_names: tuple[str, ...]
    root_name: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.joint_names) != len(self.parent_names):
            raise ValueError(f"skeleton {self.name!r}: {len(self.joint_names)} joints but "
                             f"{len(self.parent_names)} parents")
        unknown = set(self.parent_names) - set(self.joint_names)
        if unknown:
            raise ValueError(f"skeleton {self.name!r}: unknown parents {sorted(unknown)}")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def root(self) -> int:
        return self.joint_names.index(self.root_name)

    @property
    def parents(self) -> np.ndarray:
        """(J,) int64 parent index per joint; the root is its own parent."""
        return np.array([self.joint_names.index(p) for p in self.parent_names], np.int64)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(child, parent) index pairs of the kinematic tree, root excluded."""
        return [(j, int(p)) for j, p in enumerate(self.parents) if j != p]

    @property
    def left_right_pairs(self) -> list[tuple[int, int]]:
        """(left, right) index pairs: names ``l<x>`` and ``r<x>``."""
        pairs = []
        for j, name in enumerate(self.joint_names):
            if name.startswith("l") and "r" + name[1:] in self.joint_names:
                pairs.append((j, self.joint_names.index("r" + name[1:])))
        return pairs

    @property
    def flip_permutation(self) -> np.ndarray:
        """(J,) index map: ``joints_flipped = joints[perm]`` swaps left and right."""
        perm = np.arange(self.num_joints)
        for left, right in self.left_right_pairs:
            perm[left], perm[right] = right, left
        return perm

    def index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise ValueError(f"skeleton {self.name!r} has no joint {name!r}; "
                             f"joints: {', '.join(self.joint_names)}") from None


H36M_17 = Skeleton(
    name="h36m_17",
    joint_names=("pelv", "rhip", "rkne", "rank", "lhip", "lkne", "lank", "spin", "neck",
                 "head", "htop", "lsho", "lelb", "lwri", "rsho", "relb", "rwri"),
    parent_names=("pelv", "pelv", "rhip", "rkne", "pelv", "lhip", "lkne", "pelv", "spin",
                  "neck", "head", "neck", "lsho", "lelb", "neck", "rsho", "relb"),
    root_name="pelv",
    groups={
        "torso": ("pelv", "spin", "neck", "rhip", "lhip", "rsho", "lsho"),
        "head": ("head", "htop"),
        "arms": ("lelb", "lwri", "relb", "rwri"),
        "legs": ("lkne", "lank", "rkne", "rank"),
    },
)

SKELETONS = {H36M_17.name: H36M_17}


def get_skeleton(name: str) -> Skeleton:
    """Look up a skeleton by the name stored in manifests and sample JSON."""
    if name not in SKELETONS:
        raise ValueError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}")
    return SKELETONS[name]
