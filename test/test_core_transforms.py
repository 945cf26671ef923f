"""core/transforms.py against scipy.spatial.transform and hand-built chains."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from objembed_ros.core.transforms import (
    RigidTransform,
    TransformBuffer,
    TransformLookupError,
    quat_multiply,
    quat_slerp,
    quat_to_matrix,
)

RNG = np.random.default_rng(7)
# REP 103 camera_link -> optical: optical z = link x, optical x = link -y, optical y = link -z
OPTICAL = Rotation.from_matrix([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def random_quats(n):
    return Rotation.random(n, random_state=3).as_quat()  # (x, y, z, w)


def as_matrix(t: RigidTransform) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(t.rotation).as_matrix()
    m[:3, 3] = t.translation
    return m


def same_rotation(q1, q2, atol=1e-9):
    q1, q2 = np.asarray(q1), np.asarray(q2)
    assert min(np.abs(q1 - q2).max(), np.abs(q1 + q2).max()) < atol


def test_quaternion_math_matches_scipy():
    qs = random_quats(20)
    for a, b in zip(qs[:10], qs[10:], strict=True):
        np.testing.assert_allclose(quat_to_matrix(a), Rotation.from_quat(a).as_matrix(),
                                   atol=1e-12)
        same_rotation(quat_multiply(a, b), (Rotation.from_quat(a) * Rotation.from_quat(b))
                      .as_quat())
        for t in (0.0, 0.25, 0.5, 0.9, 1.0):
            ref = Slerp([0, 1], Rotation.from_quat([a, b]))([t]).as_quat()[0]
            same_rotation(quat_slerp(a, b, t), ref, atol=1e-9)
    # the short way: b and -b give the same interpolation
    a, b = qs[0], qs[1]
    same_rotation(quat_slerp(a, -b, 0.3), quat_slerp(a, b, 0.3))


def test_rigid_transform_compose_inverse_apply_match_matrices():
    qs = random_quats(6)
    ts = RNG.normal(size=(6, 3))
    pts = RNG.normal(size=(5, 3))
    for i in range(5):
        a = RigidTransform.make(ts[i], qs[i])
        b = RigidTransform.make(ts[i + 1], qs[i + 1])
        np.testing.assert_allclose(as_matrix(a.compose(b)), as_matrix(a) @ as_matrix(b),
                                   atol=1e-12)
        np.testing.assert_allclose(as_matrix(a.inverse()), np.linalg.inv(as_matrix(a)),
                                   atol=1e-12)
        homo = np.c_[pts, np.ones(5)] @ as_matrix(a).T
        np.testing.assert_allclose(a.apply(pts), homo[:, :3], atol=1e-12)
    with pytest.raises(ValueError):
        RigidTransform.make((0, 0, 0), (0, 0, 0, 0))


def yaw(deg: float):
    return tuple(Rotation.from_euler("z", deg, degrees=True).as_quat())


def robot_tree() -> TransformBuffer:
    """map -> odom (static), odom -> base_link (moving: 1 m/s along x while turning 90
    degrees per second), base_link -> camera_link (static), camera_link -> camera_optical
    (static, the REP 103 optical rotation)."""
    buf = TransformBuffer(cache_ns=100_000_000_000)
    buf.set_transform("map", "odom", 0, RigidTransform.make((2.0, 0.0, 0.0), yaw(0)),
                      static=True)
    for k in range(3):  # stamps 1 s, 2 s, 3 s
        buf.set_transform("odom", "base_link", (k + 1) * 1_000_000_000,
                          RigidTransform.make((float(k), 0.0, 0.0), yaw(90 * k)))
    buf.set_transform("base_link", "camera_link", 0,
                      RigidTransform.make((0.0, 0.5, 1.0), yaw(0)), static=True)
    optical = OPTICAL.as_quat()
    buf.set_transform("camera_link", "camera_optical", 0,
                      RigidTransform.make((0, 0, 0), optical), static=True)
    return buf


def test_chain_at_a_sample_by_hand():
    buf = robot_tree()
    # at 2 s: base at odom (1, 0, 0) yawed 90 deg; camera_link 0.5 m to the robot's left
    # (+y of base) = -x of odom, 1 m up. map = odom + (2, 0, 0).
    t = buf.lookup("map", "camera_link", 2_000_000_000)
    np.testing.assert_allclose(t.translation, (2 + 1 - 0.5, 0.0, 1.0), atol=1e-12)
    # a point 3 m in front of the optical frame (+z optical = +x camera_link = +y odom here)
    p = buf.lookup("map", "camera_optical", 2_000_000_000).apply(np.array([0.0, 0.0, 3.0]))
    np.testing.assert_allclose(p, (2.5, 3.0, 1.0), atol=1e-12)
    # and the inverse direction
    back = buf.lookup("camera_optical", "map", 2_000_000_000).apply(p)
    np.testing.assert_allclose(back, (0.0, 0.0, 3.0), atol=1e-12)


def test_interpolated_chain_matches_scipy_product():
    buf = robot_tree()
    stamp = 2_250_000_000  # a quarter of the way from the 2 s to the 3 s sample
    ref_rot = Slerp([0, 1], Rotation.from_quat([yaw(90), yaw(180)]))([0.25])[0]
    base = np.eye(4)
    base[:3, :3] = ref_rot.as_matrix()
    base[:3, 3] = (1.25, 0.0, 0.0)
    m_map_odom = np.eye(4)
    m_map_odom[:3, 3] = (2, 0, 0)
    m_base_cam = np.eye(4)
    m_base_cam[:3, 3] = (0, 0.5, 1)
    m_cam_opt = np.eye(4)
    m_cam_opt[:3, :3] = OPTICAL.as_matrix()
    ref = m_map_odom @ base @ m_base_cam @ m_cam_opt
    got = buf.lookup("map", "camera_optical", stamp)
    np.testing.assert_allclose(as_matrix(got), ref, atol=1e-12)
    # yaw 112.5 degrees at that stamp, by hand
    assert math.isclose(Rotation.from_quat(buf.lookup("odom", "base_link", stamp).rotation)
                        .as_euler("zyx", degrees=True)[0], 112.5, abs_tol=1e-9)


def test_lookup_errors_name_the_reason():
    buf = robot_tree()
    with pytest.raises(TransformLookupError, match="does not exist"):
        buf.lookup("map", "nowhere", 2_000_000_000)
    buf.set_transform("world", "other", 0, RigidTransform(), static=True)
    with pytest.raises(TransformLookupError, match="not connected"):
        buf.lookup("map", "other", 2_000_000_000)
    with pytest.raises(TransformLookupError, match="future"):
        buf.lookup("map", "camera_optical", 3_500_000_000)
    with pytest.raises(TransformLookupError, match="past"):
        buf.lookup("map", "camera_optical", 500_000_000)
    # static-only chains resolve at any stamp; time 0 takes the latest sample
    assert buf.lookup("base_link", "camera_optical", 123).translation == (0.0, 0.5, 1.0)
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 0).translation, (2, 0, 0))
    tol = TransformBuffer(tolerance_ns=100)
    tol.set_transform("a", "b", 1000, RigidTransform.make((1, 0, 0), yaw(0)))
    assert tol.lookup("a", "b", 1100).translation == (1.0, 0.0, 0.0)
    with pytest.raises(TransformLookupError):
        tol.lookup("a", "b", 1101)


def test_cache_drops_old_samples_and_reparenting_replaces_the_edge():
    buf = TransformBuffer(cache_ns=1_000)
    for s in (0, 500, 1000, 1500, 2000):
        buf.set_transform("odom", "base", 10_000 + s, RigidTransform.make((s, 0, 0), yaw(0)))
    with pytest.raises(TransformLookupError, match="past"):
        buf.lookup("odom", "base", 10_900)  # 10_000 and 10_500 dropped
    assert buf.lookup("odom", "base", 11_250).translation == (1250.0, 0.0, 0.0)
    buf.set_transform("map", "base", 5, RigidTransform.make((7, 0, 0), yaw(0)), static=True)
    assert buf.lookup("map", "base", 99).translation == (7.0, 0.0, 0.0)
    with pytest.raises(TransformLookupError, match="does not exist|not connected"):
        buf.lookup("odom", "base", 11_250)


def test_lookup_between_two_branches():
    buf = robot_tree()
    lidar_q = Rotation.from_euler("xyz", [5, -10, 30], degrees=True)
    buf.set_transform("base_link", "lidar", 0,
                      RigidTransform.make((0.3, -0.1, 0.8), lidar_q.as_quat()), static=True)
    m_base_lidar = np.eye(4)
    m_base_lidar[:3, :3] = lidar_q.as_matrix()
    m_base_lidar[:3, 3] = (0.3, -0.1, 0.8)
    m_base_cam = np.eye(4)
    m_base_cam[:3, 3] = (0, 0.5, 1)
    m_cam_opt = np.eye(4)
    m_cam_opt[:3, :3] = OPTICAL.as_matrix()
    ref = np.linalg.inv(m_base_lidar) @ m_base_cam @ m_cam_opt
    got = buf.lookup("lidar", "camera_optical", 2_000_000_000)
    np.testing.assert_allclose(as_matrix(got), ref, atol=1e-12)
