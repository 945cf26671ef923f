"""Rigid transforms and a small time-indexed transform tree (numpy only, no ROS).

Conventions are tf2's: quaternions are (x, y, z, w), unit norm; a transform from a parent
frame to a child frame (TransformStamped header.frame_id -> child_frame_id) maps points
given in the child frame into the parent frame: p_parent = R p_child + t.
``TransformBuffer.lookup(target, source, stamp)`` returns the transform that maps points in
``source`` into ``target`` at that stamp (tf2's lookup_transform(target, source, time)).

Why here and not tf2: pip installs of ROS 2 have no tf2_ros; ros/tf_listener.py feeds this
buffer from /tf and /tf_static there and uses tf2_ros itself where it exists.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np

Quat = tuple[float, float, float, float]
Vec3 = tuple[float, float, float]


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"not a rotation quaternion: {q.tolist()}")
    return q / n


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (x, y, z, w) quaternions (apply b, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit (x, y, z, w) quaternion."""
    x, y, z, w = quat_normalize(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quat_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation from a (t=0) to b (t=1) along the shorter arc."""
    a, b = quat_normalize(a), quat_normalize(b)
    dot = float(a @ b)
    if dot < 0.0:  # q and -q are the same rotation: take the short way
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact to float precision
        return quat_normalize(a + t * (b - a))
    theta = np.arccos(min(dot, 1.0))
    s = np.sin(theta)
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / s


@dataclass(frozen=True)
class RigidTransform:
    """p_out = R(rotation) p_in + translation; rotation a unit (x, y, z, w) quaternion."""

    translation: Vec3 = (0.0, 0.0, 0.0)
    rotation: Quat = (0.0, 0.0, 0.0, 1.0)

    @classmethod
    def make(cls, translation: np.ndarray | Vec3, rotation: np.ndarray | Quat) -> RigidTransform:
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"non-finite translation {t.tolist()}")
        q = quat_normalize(np.asarray(rotation, dtype=np.float64))
        return cls(tuple(float(v) for v in t), tuple(float(v) for v in q))  # type: ignore[arg-type]

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(np.array(self.rotation))
        m[:3, 3] = self.translation
        return m

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(3,) or (N, 3) points -> the same shape, transformed."""
        p = np.asarray(points, dtype=np.float64)
        r = quat_to_matrix(np.array(self.rotation))
        return p @ r.T + np.array(self.translation)

    def compose(self, other: RigidTransform) -> RigidTransform:
        """self * other: apply other first (e.g. T_map_odom.compose(T_odom_base))."""
        q = quat_multiply(np.array(self.rotation), np.array(other.rotation))
        t = self.apply(np.array(other.translation))
        return RigidTransform.make(t, q)

    def inverse(self) -> RigidTransform:
        q = quat_conjugate(np.array(self.rotation))
        t = -(quat_to_matrix(q) @ np.array(self.translation))
        return RigidTransform.make(t, q)

    def interpolate(self, other: RigidTransform, t: float) -> RigidTransform:
        """Linear in translation, slerp in rotation (tf2's interpolation)."""
        a, b = np.array(self.translation), np.array(other.translation)
        return RigidTransform.make(a + t * (b - a), quat_slerp(np.array(self.rotation),
                                                               np.array(other.rotation), t))


class TransformLookupError(LookupError):
    """A transform could not be resolved; the message says why (unknown frame, not
    connected, stamp outside the buffered time)."""


class TransformBuffer:
    """Transforms between named frames over time: a tree (each child has one parent, as in
    tf2), each edge a time-sorted list of samples or one static transform. Lookups walk both
    frames up to their common ancestor; each dynamic edge is interpolated at the stamp and
    may not be extrapolated beyond ``tolerance_ns`` from its samples. Samples older than
    ``cache_ns`` before an edge's newest one are dropped. Thread-safe."""

    def __init__(self, cache_ns: int = 10_000_000_000, tolerance_ns: int = 0) -> None:
        if cache_ns <= 0 or tolerance_ns < 0:
            raise ValueError("cache_ns must be > 0 and tolerance_ns >= 0")
        self.cache_ns = int(cache_ns)
        self.tolerance_ns = int(tolerance_ns)
        self._lock = threading.Lock()
        self._parent: dict[str, str] = {}
        self._static: dict[str, RigidTransform] = {}
        self._stamps: dict[str, list[int]] = {}
        self._samples: dict[str, list[RigidTransform]] = {}

    def set_transform(self, parent: str, child: str, stamp_ns: int, transform: RigidTransform,
                      static: bool = False) -> None:
        """Add one parent->child sample (a TransformStamped). A new parent for a child
        replaces the old edge (tf2 lets a frame be re-parented)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"bad transform frames: parent {parent!r}, child {child!r}")
        with self._lock:
            if self._parent.get(child, parent) != parent:
                self._static.pop(child, None)
                self._stamps.pop(child, None)
                self._samples.pop(child, None)
            self._parent[child] = parent
            if static:
                self._static[child] = transform
                self._stamps.pop(child, None)
                self._samples.pop(child, None)
                return
            self._static.pop(child, None)
            stamps = self._stamps.setdefault(child, [])
            samples = self._samples.setdefault(child, [])
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                samples[i] = transform
            else:
                stamps.insert(i, stamp_ns)
                samples.insert(i, transform)
            cut = bisect.bisect_left(stamps, stamps[-1] - self.cache_ns)
            if cut:
                del stamps[:cut]
                del samples[:cut]

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._parent) | set(self._parent.values())

    def _edge(self, child: str, stamp_ns: int) -> RigidTransform:
        static = self._static.get(child)
        if static is not None:
            return static
        stamps, samples = self._stamps[child], self._samples[child]
        parent = self._parent[child]
        if stamp_ns <= 0:  # time zero: the latest sample (tf2's "latest available")
            return samples[-1]
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return samples[i]
        if i == 0:
            if stamps[0] - stamp_ns <= self.tolerance_ns:
                return samples[0]
            raise TransformLookupError(f"{parent} -> {child}: stamp {stamp_ns} is "
                               f"{(stamps[0] - stamp_ns) / 1e9:.3f} s before the oldest "
                               "transform (extrapolation into the past)")
        if i == len(stamps):
            if stamp_ns - stamps[-1] <= self.tolerance_ns:
                return samples[-1]
            raise TransformLookupError(f"{parent} -> {child}: stamp {stamp_ns} is "
                               f"{(stamp_ns - stamps[-1]) / 1e9:.3f} s after the newest "
                               "transform (extrapolation into the future)")
        t0, t1 = stamps[i - 1], stamps[i]
        return samples[i - 1].interpolate(samples[i], (stamp_ns - t0) / (t1 - t0))

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent:
            chain.append(self._parent[chain[-1]])
            if len(chain) > 1000:
                raise TransformLookupError(f"a loop in the transform tree above {frame}")
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int) -> RigidTransform:
        """T_target_source at stamp_ns (0 = latest): maps points in source into target.
        Raises TransformLookupError naming the reason."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            if target == source:
                return RigidTransform()
            known = set(self._parent) | set(self._parent.values())
            for name in (target, source):
                if name not in known:
                    raise TransformLookupError(
                        f"frame {name!r} does not exist in the transform tree")
            up_source, up_target = self._chain(source), self._chain(target)
            common = next((f for f in up_source if f in set(up_target)), None)
            if common is None:
                raise TransformLookupError(f"{source!r} and {target!r} are not connected "
                                   f"(roots {up_source[-1]!r} and {up_target[-1]!r})")
            # T_common_source = product of edges from common down to source
            t_common_source = RigidTransform()
            for child in reversed(up_source[:up_source.index(common)]):
                t_common_source = t_common_source.compose(self._edge(child, stamp_ns))
            t_common_target = RigidTransform()
            for child in reversed(up_target[:up_target.index(common)]):
                t_common_target = t_common_target.compose(self._edge(child, stamp_ns))
            return t_common_target.inverse().compose(t_common_source)
