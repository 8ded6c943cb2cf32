"""Camera geometry, checked by property (eq. 4.1–4.7, 4.19–4.21)."""
import numpy as np
import pytest

from depthpi.camera import Camera, reproject_image


def _camera(yaw=0.3, pitch=-0.2, t=(100.0, -1500.0, -3000.0)):
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    R_yaw = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    R_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    K = np.array([[580.0, 0, 319.5], [0, 585.0, 241.0], [0, 0, 1]])
    return Camera(K, R_pitch @ R_yaw, np.array(t))


def _blob_image(center, size=(480, 640), sigma=2.0):
    v, u = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    return np.exp(-((u - center[0]) ** 2 + (v - center[1]) ** 2) / (2 * sigma ** 2))


def _centroid(image):
    v, u = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    w = image / image.sum()
    return np.array([(u * w).sum(), (v * w).sum()])


def test_project_unproject_round_trip():
    cam = _camera()
    points = np.random.default_rng(0).uniform([-800, -1000, 500], [800, 1000, 900], (20, 3)) + [0, 0, 2000]
    world = cam.camera_to_world(points)
    back = cam.unproject(cam.project(world), cam.world_to_camera(world)[:, 2])
    np.testing.assert_allclose(back, world, atol=1e-6)


def test_turn_puts_target_on_principal_point_and_keeps_up_in_yz_plane():
    cam = _camera()
    target = np.array([40.0, 400.0])
    turned = cam.turn_towards(target)
    point = cam.unproject(target, 3000.0)
    np.testing.assert_allclose(turned.project(point), turned.K[:2, 2], atol=1e-9)
    # zero roll: the original up vector has no component along the new x axis
    assert abs(turned.R[0] @ cam.up_world) < 1e-12
    assert turned.R[1] @ cam.up_world < 0  # and y still points down
    np.testing.assert_allclose(turned.R @ turned.R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(turned.R) == pytest.approx(1.0)


def test_warp_moves_image_points_where_projection_puts_them():
    cam = _camera()
    world = cam.unproject(np.array([500.0, 90.0]), 2800.0)
    image = _blob_image(cam.project(world)).astype(np.float32)
    new = cam.turn_towards([500.0, 90.0]).roll(0.2).zoom(1.3).with_principal_point(100.0, 90.0)
    warped = reproject_image(image, cam, new, (180, 200))
    np.testing.assert_allclose(_centroid(warped), new.project(world), atol=0.05)


def test_flip_twice_is_identity_and_mirrors_about_cx():
    cam = _camera()
    twice = cam.horizontal_flip().horizontal_flip()
    np.testing.assert_allclose(twice.R, cam.R)
    point = cam.unproject(np.array([100.0, 50.0]), 2000.0)
    flipped = cam.horizontal_flip().project(point)
    assert flipped[0] == pytest.approx(2 * cam.K[0, 2] - 100.0)
    assert flipped[1] == pytest.approx(50.0)


def test_zoom_scales_projected_size():
    cam = _camera().turn_towards([320, 240])
    a, b = cam.unproject(np.array([[300.0, 200.0], [360.0, 260.0]]), np.array([2500.0, 2600.0]))
    size = np.linalg.norm(cam.project(a) - cam.project(b))
    zoomed = cam.zoom(1.5)
    assert np.linalg.norm(zoomed.project(a) - zoomed.project(b)) == pytest.approx(1.5 * size)


def test_roll_rotates_image_about_principal_point():
    cam = _camera().turn_towards([320, 240])
    fx, fy = cam.K[0, 0], cam.K[1, 1]
    point = cam.unproject(cam.K[:2, 2] + [80.0, 0.0], 2000.0)
    rolled = cam.roll(np.pi / 2).project(point) - cam.K[:2, 2]
    # a quarter turn moves a point on the x axis onto the y axis (scaled by fy / fx)
    np.testing.assert_allclose(np.abs(rolled), [0.0, 80.0 * fy / fx], atol=1e-9)


def test_homography_equals_reprojection_through_3d():
    cam = _camera()
    other = cam.turn_towards([10, 20]).roll(-0.1).zoom(0.8)
    pixels = np.array([[10.0, 20.0], [600.0, 400.0], [320.0, 10.0]])
    world = cam.unproject(pixels, np.array([1000.0, 2000.0, 4000.0]))
    homogeneous = np.concatenate([pixels, np.ones((3, 1))], 1) @ cam.homography_to(other).T
    np.testing.assert_allclose(homogeneous[:, :2] / homogeneous[:, 2:], other.project(world), atol=1e-8)


def test_depth_nearest_warp_never_invents_values():
    cam = _camera()
    depth = np.zeros((480, 640), np.uint16)
    depth[100:300, 200:400] = 2000
    depth[150:250, 250:350] = 3500
    new = cam.turn_towards([300, 200]).roll(0.3).with_principal_point(64, 64)
    warped = reproject_image(depth, cam, new, (129, 129), interpolation="nearest")
    assert set(np.unique(warped)) <= {0, 2000, 3500}
    assert {2000, 3500} <= set(np.unique(warped))


def test_camera_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Camera.K"):
        Camera.from_intrinsics(np.eye(2))
