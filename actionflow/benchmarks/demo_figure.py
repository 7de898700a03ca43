"""The demo's dancer: six dance moves as joint-angle offsets over time, and a random 2-D body.

A move (:func:`dance_pose`) turns a phase angle into offsets of the pose's degrees of freedom
(shoulder, elbow, hip, knee angles, body position, lean, facing); :func:`random_body` draws the
proportions and colours of one figure, and :func:`skeleton` turns a pose into joint positions in
pixels. Rendering (drawing, backgrounds, camera, files) is :mod:`actionflow.benchmarks.demo_data`'s; see its
docstring for why the moves make a dataset that only motion can classify.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

MOVES: tuple[str, ...] = ("arm_wave", "spin", "jump", "side_step", "kick", "sway")


# --------------------------------------------------------------------------- moves
# Each move draws its amplitudes from ``rng`` and returns offsets to the pose degrees of
# freedom as functions of its phase ``theta`` [T] (radians). Angles are in radians, the
# offsets x / y in body units (torso length = 1, y down). Shoulder and hip angles are
# abductions (0 = limb hanging down, pi = pointing up); elbow and knee angles are flexions.
Offsets = dict[str, np.ndarray]


def _arm_wave(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    amp = rng.uniform(0.7, 1.0)
    lag = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8) * np.pi  # the wave runs from one arm to the other
    bend = rng.uniform(0.3, 0.6)
    return {
        "shoulder_l": amp * (1 + np.sin(theta)),
        "shoulder_r": amp * (1 + np.sin(theta + lag)),
        "elbow_l": bend * (1 + np.sin(theta - 1.0)),
        "elbow_r": bend * (1 + np.sin(theta + lag - 1.0)),
    }


def _spin(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    # dancers "spot": they face the camera (or turn their back to it) for longer and whip
    # through the side-on views, where the frontal-plane moves would be hard to see
    return {"yaw": theta - 0.4 * np.sin(2 * theta)}


def _jump(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    height = rng.uniform(0.6, 0.9)
    crouch = rng.uniform(0.8, 1.2)
    air = np.maximum(0.0, np.sin(theta))
    ground = np.maximum(0.0, -np.sin(theta))
    return {
        "y": -height * air,
        "knee_l": crouch * ground,
        "knee_r": crouch * ground,
        "shoulder_l": 0.5 * air,
        "shoulder_r": 0.5 * air,
    }


def _side_step(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    reach = rng.uniform(0.8, 1.1)
    stride = rng.uniform(0.35, 0.55)
    return {
        "x": reach * np.sin(theta),
        # the leading leg opens while the body moves towards it
        "hip_r": stride * np.maximum(0.0, np.cos(theta)),
        "hip_l": stride * np.maximum(0.0, -np.cos(theta)),
    }


def _kick(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    side = "l" if rng.random() < 0.5 else "r"
    lift = rng.uniform(1.1, 1.5)
    chamber = rng.uniform(0.5, 0.9)
    max_lean = rng.uniform(0.2, 0.3)
    up = (1 - np.cos(theta)) / 2
    # the upper body leans away from the kicking leg: a counter-motion of the torso and arms that
    # tells a kick from an arm wave in the flow at any yaw (a leg raised sideways seen alone looks like an arm)
    lean = max_lean * up * (1.0 if side == "l" else -1.0)
    return {f"hip_{side}": lift * up, f"knee_{side}": chamber * np.maximum(0.0, np.sin(theta)), "tilt": lean}


def _sway(theta: np.ndarray, rng: np.random.Generator) -> Offsets:
    tilt = rng.uniform(0.35, 0.5)
    return {"tilt": tilt * np.sin(theta), "x": -0.3 * tilt * np.sin(theta)}


MOVE_OFFSETS: dict[str, Callable[[np.ndarray, np.random.Generator], Offsets]] = {
    "arm_wave": _arm_wave,
    "spin": _spin,
    "jump": _jump,
    "side_step": _side_step,
    "kick": _kick,
    "sway": _sway,
}
# the period range of each move's cycle, in frames (spin: one full turn). Slow enough that
# a limb moves by about its own thickness per frame: optical flow loses thin limbs that jump
# further than that.
PERIOD_FRAMES: dict[str, tuple[float, float]] = {m: (12.0, 20.0) for m in MOVES} | {"spin": (14.0, 24.0)}

NEUTRAL_POSE: dict[str, float] = {
    "x": 0.0, "y": 0.0, "tilt": 0.0, "yaw": 0.0,
    "shoulder_l": 0.25, "shoulder_r": 0.25, "elbow_l": 0.15, "elbow_r": 0.15,
    "hip_l": 0.08, "hip_r": 0.08, "knee_l": 0.05, "knee_r": 0.05,
}


def dance_pose(move: str, frames: int, rng: np.random.Generator, tempo: float = 1.0) -> dict[str, np.ndarray]:
    """Pose degrees of freedom [frames] for a figure dancing ``move`` (all other moves frozen).

    Every move is drawn, in the same order whatever ``move`` is; only ``move``'s phase
    advances with time, the others stay at a random phase. So a single frame's pose has the
    same distribution for every move. ``tempo`` multiplies the speed of the move (its period is
    :data:`PERIOD_FRAMES` divided by ``tempo``); it draws nothing, so a seed gives the same
    figure at every tempo.
    """
    t = np.arange(frames, dtype=np.float64) * tempo
    pose = {k: np.full(frames, v) for k, v in NEUTRAL_POSE.items()}
    for name in MOVES:
        period = rng.uniform(*PERIOD_FRAMES[name])
        direction = rng.choice([-1.0, 1.0])
        phase = rng.uniform(0, 2 * np.pi)
        theta = phase + (direction * 2 * np.pi / period * t if name == move else np.zeros_like(t))
        for dof, offset in MOVE_OFFSETS[name](theta, rng).items():
            pose[dof] = pose[dof] + offset
    for joint in ("elbow_l", "elbow_r", "knee_l", "knee_r"):
        pose[joint] = np.clip(pose[joint], 0.0, 2.2)
    return pose


# --------------------------------------------------------------------------- figure
@dataclass(frozen=True)
class Body:
    """Body proportions in torso lengths, and limb colours (RGB 0..255)."""

    shoulder: float
    hip: float
    upper_arm: float
    lower_arm: float
    upper_leg: float
    lower_leg: float
    head: float
    limb: float  # limb thickness (in pixels once the figure is placed in an image)
    colours: dict[str, tuple[int, int, int]]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A bright colour (value >= 150 of 255), so that figures stand out and are never black."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(150, 255)]]]).astype(np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def dark(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The outline colour of a part: its own colour, darker."""
    return tuple(int(c * 0.35) for c in colour)


def random_body(rng: np.random.Generator) -> Body:
    """Random proportions and colours, the same distribution for every move."""
    colours = {part: _random_colour(rng) for part in ("head", "torso", "arm_l", "arm_r", "leg_l", "leg_r")}
    if rng.random() < 0.5:
        colours["arm_r"] = colours["arm_l"]
    if rng.random() < 0.5:
        colours["leg_r"] = colours["leg_l"]
    return Body(
        shoulder=rng.uniform(0.3, 0.42),
        hip=rng.uniform(0.18, 0.26),
        upper_arm=rng.uniform(0.55, 0.68),
        lower_arm=rng.uniform(0.5, 0.62),
        upper_leg=rng.uniform(0.7, 0.82),
        lower_leg=rng.uniform(0.68, 0.8),
        head=rng.uniform(0.28, 0.36),
        limb=rng.uniform(0.25, 0.35),
        colours=colours,
    )


def _direction(angle: np.ndarray, side: float, facing: np.ndarray) -> np.ndarray:
    """Unit limb direction [T,2] for an abduction ``angle``: x is foreshortened by ``facing`` = cos(yaw)."""
    return np.stack([side * np.sin(angle) * facing, np.cos(angle)], axis=-1)


def skeleton(pose: dict[str, np.ndarray], body: Body) -> dict[str, np.ndarray]:
    """Forward kinematics: joint positions [T,2] in body units, (x right, y down), feet on the ground y = 0.

    Also returns "torso" [T,4,2], the torso outline, whose apparent width follows the yaw.
    """
    yaw = pose["yaw"]
    facing = np.cos(yaw)
    one = np.ones_like(yaw)
    zero = np.zeros_like(yaw)
    j: dict[str, np.ndarray] = {"pelvis": np.stack([zero, zero], -1), "neck": np.stack([zero, -one], -1)}
    j["head"] = j["neck"] + np.stack([zero, -(0.12 + body.head) * one], -1)
    # an elliptic torso cross-section: seen side-on it is about half as deep as it is wide
    width = np.sqrt(facing**2 + (0.5 * np.sin(yaw)) ** 2)
    j["torso"] = np.stack(
        [
            np.stack([-body.shoulder * width, -0.95 * one], -1),
            np.stack([body.shoulder * width, -0.95 * one], -1),
            np.stack([body.hip * width * 1.1, 0.05 * one], -1),
            np.stack([-body.hip * width * 1.1, 0.05 * one], -1),
        ],
        axis=1,
    )
    for s, side in (("l", -1.0), ("r", 1.0)):
        shoulder = np.stack([side * body.shoulder * facing, -0.9 * one], -1)
        a, e = pose[f"shoulder_{s}"], pose[f"elbow_{s}"]
        j[f"shoulder_{s}"] = shoulder
        j[f"elbow_{s}"] = shoulder + body.upper_arm * _direction(a, side, facing)
        j[f"hand_{s}"] = j[f"elbow_{s}"] + body.lower_arm * _direction(a + e, side, facing)
        hip = np.stack([side * body.hip * facing, zero], -1)
        h, k = pose[f"hip_{s}"], pose[f"knee_{s}"]
        j[f"hip_{s}"] = hip
        # a knee bent in the frontal plane: knee out, foot back in (a plie)
        j[f"knee_{s}"] = hip + body.upper_leg * _direction(h + k / 2, side, facing)
        j[f"foot_{s}"] = j[f"knee_{s}"] + body.lower_leg * _direction(h - k / 2, side, facing)
    # the upper body tilts about the pelvis (sway, kick lean); legs stay
    def tilted(p: np.ndarray) -> np.ndarray:  # p [T,...,2] rotated about the pelvis by tilt [T]
        angle = pose["tilt"].reshape((-1,) + (1,) * (p.ndim - 2))
        c, s_ = np.cos(angle), np.sin(angle)
        return np.stack([p[..., 0] * c - p[..., 1] * s_, p[..., 0] * s_ + p[..., 1] * c], -1)

    for name in ("neck", "head", "shoulder_l", "shoulder_r", "elbow_l", "elbow_r", "hand_l", "hand_r"):
        j[name] = tilted(j[name])
    j["torso"][:, :2] = tilted(j["torso"][:, :2])
    # the lower foot stands on the ground; then the figure moves (side step) or leaves the ground (jump)
    ground = np.maximum(j["foot_l"][:, 1], j["foot_r"][:, 1]) + body.limb / 2
    shift = np.stack([pose["x"], pose["y"] - ground], -1)
    return {name: p + (shift[:, None] if p.ndim == 3 else shift) for name, p in j.items()}


FIGURE_HEIGHT = 3.45  # neutral standing height in torso lengths (legs + torso + neck + head)
