"""Drawing poses: 2D skeletons and boxes on images, a 3D view, and the predict overlay.

One skeleton drawer serves the training panels (TensorBoard), the shard contact sheet and
the ``depthpi predict`` overlay. Images are (H, W, 3) uint8 RGB; colours are RGB triples.
Projection is not done here: callers project with :class:`depthpi.camera.Camera`.
"""
from __future__ import annotations

import cv2
import numpy as np

from depthpi.skeleton import H36M_17, Skeleton

LEFT, RIGHT, CENTRE = (255, 80, 40), (40, 140, 255), (240, 240, 240)
CENTRE_3D = (90, 90, 90)  # centre bones of the 3D view, on its white background
GT_COLOUR, PRED_COLOUR = (40, 220, 40), (230, 40, 40)
BOX_COLOUR = (255, 255, 0)
MAX_PIXEL = 1e5  # endpoints farther than this (px) are skipped: cv2 takes int coordinates


def side_colours(skeleton: Skeleton, centre=CENTRE) -> list[tuple[int, int, int]]:
    """One colour per bone of ``skeleton.edges``, by the child joint's side.

    Left bones orange, right bones blue, the others ``centre``.
    """
    left = {a for a, _ in skeleton.left_right_pairs}
    right = {b for _, b in skeleton.left_right_pairs}
    return [LEFT if child in left else RIGHT if child in right else centre for child, _ in skeleton.edges]


def line_width(image: np.ndarray) -> int:
    """Box line width in px for an image: 1 per 400 px of its longer side, at least 1."""
    return max(1, round(max(image.shape[:2]) / 400))


def draw_skeleton(image: np.ndarray, pixels: np.ndarray, colour, valid=None, edges=None,
                  thickness: int = 1) -> np.ndarray:
    """Draw bones onto ``image`` in place and return it.

    Args:
        image: (H, W, 3) uint8 RGB.
        pixels: (J, 2) joint positions, px (pixel centres at integers).
        colour: one RGB triple for every bone, or a list of one per bone (e.g. :func:`side_colours`).
        valid: (J,) bool, or None for all valid; a bone with an invalid end is skipped.
        edges: (child, parent) joint index pairs; default the bones of ``H36M_17``.
        thickness: line width, px.

    A bone with a non-finite end, or an end farther than ``MAX_PIXEL`` px, is skipped.
    """
    edges = H36M_17.edges if edges is None else edges
    colours = [colour] * len(edges) if np.ndim(colour) == 1 else colour
    for (child, parent), bone_colour in zip(edges, colours):
        if valid is not None and not (valid[child] and valid[parent]):
            continue
        ends = np.array([pixels[child], pixels[parent]], np.float64)
        if not np.all(np.isfinite(ends)) or np.abs(ends).max() > MAX_PIXEL:
            continue
        a, b = (tuple(end) for end in np.round(ends).astype(int))
        cv2.line(image, a, b, bone_colour, thickness, cv2.LINE_AA)
    return image


def draw_box(image: np.ndarray, bbox: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Draw ``bbox`` (4,) x, y, w, h in px onto an (H, W, 3) uint8 image in place and return it."""
    x, y, w, h = np.round(bbox).astype(int)
    cv2.rectangle(image, (x, y), (x + w, y + h), BOX_COLOUR, thickness)
    return image


class Pose3DView:
    """Matplotlib 3D view of root-relative poses (camera frame: x right, z forward, −y up; axes in mm)."""

    def __init__(self, skeleton: Skeleton, size_px: int = 480):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.skeleton = skeleton
        self.colours = [np.array(c) / 255 for c in side_colours(skeleton, CENTRE_3D)]
        self.fig = plt.figure(figsize=(size_px / 100, size_px / 100), dpi=100)
        self.ax = self.fig.add_subplot(projection="3d")

    def render(self, poses: list[np.ndarray]) -> np.ndarray:
        """poses: each (J, 3) root-relative mm → (size_px, size_px, 3) uint8 RGB; people 1.2 m apart."""
        ax = self.ax
        ax.cla()
        for k, pose in enumerate(poses):
            p = pose + np.array([1200.0 * (k - (len(poses) - 1) / 2), 0, 0])
            for (child, parent), colour in zip(self.skeleton.edges, self.colours):
                ax.plot(*(p[[child, parent]][:, [0, 2, 1]] * [1, 1, -1]).T, color=colour, lw=2)
        half = 1000.0 * max(1, len(poses))
        ticks = np.arange(-half, half + 1, 1000.0)
        ax.set(xlim=(-half, half), ylim=(-half, half), zlim=(-1000, 1000), xticks=ticks, yticks=ticks,
               zticks=[-1000, 0, 1000])
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.set_ylabel("z (mm)", fontsize=8)
        ax.set_zlabel("−y (mm)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_box_aspect((1, 1, 1 / max(1, len(poses))))
        ax.view_init(elev=15, azim=-75)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)


def render_overlay(frame, skeleton: Skeleton, view: Pose3DView) -> np.ndarray:
    """The frame with boxes and 2D skeletons, beside the 3D view scaled to its height.

    Args:
        frame: a :class:`depthpi.predict.FramePrediction`: ``image`` (H, W, 3) uint8 RGB and
            ``people``, each with ``bbox`` (4,) px, ``joints2d`` (J, 2) px, ``joints3d`` (J, 3) mm.
    Returns:
        (H, W + H, 3) uint8 RGB.
    """
    image = frame.image.copy()
    width = line_width(image)
    for person in frame.people:
        draw_box(image, person.bbox, width)
        draw_skeleton(image, person.joints2d, side_colours(skeleton), edges=skeleton.edges, thickness=width + 1)
    panel = view.render([p.joints3d for p in frame.people])
    height = image.shape[0]
    panel = cv2.resize(panel, (height, height), interpolation=cv2.INTER_AREA)
    return np.concatenate([image, panel], axis=1)
