"""depthpi.draw: one skeleton drawer for training panels, contact sheets and predict overlays."""
from types import SimpleNamespace

import numpy as np
import torch

from depthpi.draw import (BOX_COLOUR, CENTRE, GT_COLOUR, LEFT, PRED_COLOUR, RIGHT, Pose3DView, draw_skeleton,
                          render_overlay, side_colours)
from depthpi.skeleton import H36M_17
from depthpi.data.batches import Batch
from depthpi.train.reporting import skeleton_panel

CHAIN = [(1, 0), (2, 1)]  # three joints: 0 — 1 — 2


def blank(height=40, width=60) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def hue(pixel) -> np.ndarray:
    """A drawn pixel's colour up to brightness (anti-aliased lines are dimmer than their colour)."""
    pixel = np.asarray(pixel, np.float64)
    return pixel / pixel.max()


def assert_drawn_in(image, uv, colour):
    u, v = np.round(uv).astype(int)
    assert image[v, u].max() > 0, f"nothing drawn at {(u, v)}"
    np.testing.assert_allclose(hue(image[v, u]), hue(colour), atol=0.05)


def test_bone_is_drawn_between_the_pixels_of_two_valid_joints():
    pixels = np.array([[10.0, 10.0], [40.0, 10.0], [40.0, 30.0]])
    image = draw_skeleton(blank(), pixels, GT_COLOUR, edges=CHAIN)
    for u in (15, 25, 35):
        assert_drawn_in(image, (u, 10), GT_COLOUR)
    assert_drawn_in(image, (40, 20), GT_COLOUR)
    assert not image[20, 10:30].any() and not image[30:, :30].any()  # nothing off the bones


def test_bone_with_an_invalid_end_is_not_drawn():
    pixels = np.array([[10.0, 10.0], [40.0, 10.0], [40.0, 30.0]])
    image = draw_skeleton(blank(), pixels, GT_COLOUR, valid=np.array([True, True, False]), edges=CHAIN)
    assert_drawn_in(image, (25, 10), GT_COLOUR)
    assert not image[15:, 35:45].any()  # the bone 1 — 2 is skipped
    assert not draw_skeleton(blank(), pixels, GT_COLOUR, valid=np.array([False, True, False]), edges=CHAIN).any()


def test_non_finite_or_far_point_draws_nothing():
    for bad in (np.nan, np.inf, -np.inf, 1e6):
        pixels = np.array([[10.0, 10.0], [bad, 10.0], [40.0, 30.0]])
        assert not draw_skeleton(blank(), pixels, PRED_COLOUR, edges=CHAIN).any(), bad


def test_side_colours_follow_the_child_joint():
    colours = dict(zip(H36M_17.edges, side_colours(H36M_17)))
    assert colours[(H36M_17.index("lkne"), H36M_17.index("lhip"))] == LEFT
    assert colours[(H36M_17.index("relb"), H36M_17.index("rsho"))] == RIGHT
    assert colours[(H36M_17.index("neck"), H36M_17.index("spin"))] == CENTRE
    pixels = np.full((17, 2), np.nan)
    pixels[[H36M_17.index("lhip"), H36M_17.index("lkne")]] = [[10, 10], [10, 30]]
    pixels[[H36M_17.index("rhip"), H36M_17.index("rkne")]] = [[50, 10], [50, 30]]
    image = draw_skeleton(blank(), pixels, side_colours(H36M_17), edges=H36M_17.edges, thickness=2)
    assert_drawn_in(image, (10, 20), LEFT)
    assert_drawn_in(image, (50, 20), RIGHT)


def panel_batch(size=64, f=60.0, root_z=3000.0):
    """Three crops: pelvis at the root on the optical axis, rhip 300 mm to its right."""
    joints = np.zeros((3, 17, 3))
    joints[:, H36M_17.index("rhip")] = [300.0, 0, 0]
    batch = Batch(rgb=torch.zeros(3, size, size, 3, dtype=torch.uint8),
                  K=torch.tensor([[[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]]] * 3),
                  root=torch.tensor([[0, 0, root_z]] * 3), joints=torch.tensor(joints),
                  joints2d=torch.zeros(3, 17, 2), valid=torch.ones(3, 17, dtype=torch.bool),
                  labeled=torch.tensor([True, True, False]), keys=["a", "b", "c"], groups={})
    return batch, joints


def test_skeleton_panel_projects_with_the_crop_camera():
    batch, joints = panel_batch()
    pred = torch.tensor(joints)
    pred[:, H36M_17.index("rhip")] = torch.tensor([0.0, 300.0, 0])  # prediction: rhip below the pelvis
    panel = skeleton_panel(batch, pred)
    assert panel.shape == (64, 3 * 64, 3) and panel.dtype == np.uint8
    centre, offset = 31.5, 60.0 * 300 / 3000  # u = f x / z + cx
    assert_drawn_in(panel, (centre + offset / 2, centre), GT_COLOUR)  # truth: pelvis → rhip, to the right
    assert_drawn_in(panel, (centre, centre + offset / 2), PRED_COLOUR)  # prediction: downwards
    assert_drawn_in(panel, (64 + centre + offset / 2, centre), GT_COLOUR)  # the second crop too
    assert not panel[:, 128:].any()  # the unlabelled crop is left as it is
    assert skeleton_panel(batch, pred, count=2).shape == (64, 2 * 64, 3)


def test_skeleton_panel_skips_bones_behind_the_camera():
    batch, joints = panel_batch()
    pred = torch.tensor(joints)
    pred[:, H36M_17.index("rhip")] = torch.tensor([300.0, 0, -4000.0])  # 1 m behind the camera
    batch.labeled[:] = torch.tensor([True, False, False])
    batch.valid[:] = False  # no truth drawn: only the prediction
    panel = skeleton_panel(batch, pred, count=1)
    assert panel[30:34, 30:34].any()  # the other joints, all at the root, draw a dot
    panel[30:34, 30:34] = 0
    assert not panel.any()  # no bone towards (or mirrored from) the joint behind the camera


def person(bbox, joints2d):
    return SimpleNamespace(bbox=np.array(bbox, np.float64), joints2d=joints2d,
                           joints3d=np.random.default_rng(0).uniform(-500, 500, (17, 3)))


def test_render_overlay_draws_boxes_and_skeletons_beside_the_3d_view():
    pixels = np.full((17, 2), np.nan)
    pixels[[H36M_17.index("lhip"), H36M_17.index("lkne")]] = [[30, 20], [30, 50]]
    frame = SimpleNamespace(image=np.zeros((60, 80, 3), np.uint8), people=[person([10, 5, 40, 50], pixels)])
    view = Pose3DView(H36M_17, size_px=120)
    try:
        assert view.render([frame.people[0].joints3d]).shape == (120, 120, 3)
        overlay = render_overlay(frame, H36M_17, view)
    finally:
        view.close()
    assert overlay.shape == (60, 80 + 60, 3) and overlay.dtype == np.uint8
    assert tuple(overlay[5, 30]) == BOX_COLOUR and tuple(overlay[55, 10]) == BOX_COLOUR  # box edges
    assert_drawn_in(overlay, (30, 35), LEFT)  # the left thigh
    assert not frame.image.any()  # the frame itself is not drawn on
    assert len(np.unique(overlay[:, 80:].reshape(-1, 3), axis=0)) > 2  # the 3D view has content
