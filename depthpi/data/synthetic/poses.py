"""The pose sampler: joint angles of eight pose families, clipped to anatomical limits.

Eight families (standing, walking, arms_raised, bending, sitting, crouching, lunge,
kicking) give joint angles (spine flexion/side bend/twist, neck, shoulder
flexion/abduction/twist, elbow, hip flexion/abduction/rotation, knee, ankle), drawn in
degrees, jittered (σ 3°), clipped to ``_LIMITS`` and returned in radians for
:func:`depthpi.data.synthetic.body.posed_body`.
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("standing", "walking", "arms_raised", "bending", "sitting", "crouching", "lunge", "kicking")
_LIMITS = {  # degrees
    "spine_flex": (-25, 95), "spine_lat": (-30, 30), "spine_twist": (-40, 40),
    "neck_flex": (-40, 50), "neck_lat": (-30, 30), "neck_twist": (-60, 60),
    "sh_flex": (-50, 180), "sh_abd": (-15, 170), "sh_twist": (-40, 70), "elbow": (0, 150),
    "hip_flex": (-30, 125), "hip_abd": (-15, 50), "hip_rot": (-40, 40), "knee": (0, 150), "ankle": (-30, 40),
}


def pose_angles(rng: np.random.Generator, family: str) -> dict:
    """Joint angles (radians) of one pose of ``family``, clipped to anatomical limits."""
    U = rng.uniform
    a = {"spine_flex": U(-8, 12), "spine_lat": rng.normal(0, 5), "spine_twist": rng.normal(0, 10),
         "neck_flex": U(-15, 25), "neck_lat": rng.normal(0, 8), "neck_twist": rng.normal(0, 25)}
    for s in "lr":
        a.update({f"{s}sh_flex": U(-20, 35), f"{s}sh_abd": U(3, 25), f"{s}sh_twist": U(-20, 40),
                  f"{s}elbow": U(5, 70), f"{s}hip_flex": U(-8, 12), f"{s}hip_abd": U(0, 12),
                  f"{s}hip_rot": rng.normal(0, 8), f"{s}knee": U(0, 15), f"{s}ankle": rng.normal(0, 5)})
    sides = ("l", "r") if U() < 0.5 else ("r", "l")  # (first, second) for asymmetric families
    if family == "walking":
        phase, amp = U(0, 2 * np.pi), U(15, 35)
        for s, psi in (("r", phase), ("l", phase + np.pi)):
            a[f"{s}hip_flex"] = amp * np.sin(psi) + 5
            a[f"{s}knee"] = 5 + U(35, 60) * max(0.0, np.cos(psi - 0.6))
            a[f"{s}sh_flex"] = -0.8 * amp * np.sin(psi + np.pi) * U(0.6, 1.2)
            a[f"{s}elbow"] = U(10, 45)
            a[f"{s}hip_abd"] = U(0, 6)
    elif family == "arms_raised":
        for s in "lr":
            if U() < 0.75:
                if U() < 0.5:
                    a[f"{s}sh_flex"], a[f"{s}sh_abd"] = U(60, 180), U(0, 40)
                else:
                    a[f"{s}sh_flex"], a[f"{s}sh_abd"] = U(-10, 30), U(60, 170)
                a[f"{s}elbow"] = U(0, 100)
    elif family == "bending":
        a["spine_flex"] = U(35, 90)
        a["neck_flex"] = U(-35, 10)
        for s in "lr":
            a[f"{s}sh_flex"] = a["spine_flex"] * U(0.6, 1.15) + rng.normal(0, 12)
            a[f"{s}elbow"], a[f"{s}knee"], a[f"{s}hip_flex"] = U(0, 50), U(0, 30), U(0, 20)
    elif family == "sitting":
        a["spine_flex"] = U(-10, 25)
        for s in "lr":
            a[f"{s}hip_flex"], a[f"{s}knee"], a[f"{s}hip_abd"] = U(75, 105), U(70, 115), U(0, 20)
            a[f"{s}sh_flex"], a[f"{s}elbow"] = U(0, 55), U(30, 110)
    elif family == "crouching":
        a["spine_flex"] = U(20, 55)
        for s in "lr":
            a[f"{s}hip_flex"], a[f"{s}knee"], a[f"{s}hip_abd"] = U(90, 125), U(105, 150), U(5, 30)
            a[f"{s}sh_flex"], a[f"{s}elbow"] = U(20, 85), U(10, 90)
            a[f"{s}ankle"] = U(10, 35)
    elif family == "lunge":
        front, back = sides
        a[f"{front}hip_flex"], a[f"{front}knee"] = U(50, 95), U(50, 100)
        a[f"{back}hip_flex"], a[f"{back}knee"] = U(-30, -10), U(0, 40)
        a[f"{back}ankle"] = U(10, 40)
        a["spine_flex"] = U(-5, 20)
        if U() < 0.5:
            for s in "lr":
                a[f"{s}sh_flex"], a[f"{s}sh_abd"], a[f"{s}elbow"] = U(40, 170), U(0, 60), U(0, 60)
    elif family == "kicking":
        kick, stand = sides
        a[f"{kick}hip_flex"], a[f"{kick}knee"] = U(30, 95), U(0, 70)
        a[f"{stand}knee"] = U(0, 20)
        a["spine_flex"] = U(-15, 10)
        for s in "lr":
            a[f"{s}sh_abd"], a[f"{s}sh_flex"] = U(15, 75), U(-10, 45)
    elif family != "standing":
        raise ValueError(f"unknown pose family {family!r}; known: {', '.join(FAMILIES)}")
    out = {}
    for (key, value), noise in zip(a.items(), rng.normal(0, 3, len(a)).tolist()):
        lo, hi = _LIMITS[key[1:] if key[0] in "lr" and key[1:] in _LIMITS else key]
        out[key] = np.radians(min(max(float(value) + noise, lo), hi))
    return out
