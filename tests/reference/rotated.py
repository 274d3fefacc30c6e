"""Independent references for oriented boxes, per pair in plain Python floats and NumPy (nothing here
imports detloss):

- :func:`polygon_iou`: the exact IoU by Sutherland–Hodgman clipping of one rectangle by the other's
  four edges and the shoelace formula, in world coordinates;
- :func:`probiou`: Llerena et al. 2021 (Gaussian Bounding Boxes and Probabilistic IoU), the
  Bhattacharyya distance of the two boxes' Gaussians with full 2×2 matrices, with or without the eps
  placements of ultralytics 8.4.190's ``utils/metrics.py`` ``probiou``;
- :func:`kld_similarity`, :func:`gwd_similarity`: the Kullback–Leibler divergence (Yang et al.,
  NeurIPS 2021) and the Wasserstein-2 distance (Yang et al., ICML 2021) of the Gaussians, the latter
  through a matrix square root (``scipy.linalg.sqrtm``, not the trace–determinant identity), post-
  processed as mmrotate 1.x's ``GDLoss(fun="log1p", tau=1.0)`` with its clamps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import sqrtm


def corners(box: list[float]) -> list[tuple[float, float]]:
    """The 4 corners of an xywhr box, counter-clockwise (θ rotates the width axis from the x axis)."""
    x, y, w, h, t = box
    c, s = math.cos(t), math.sin(t)
    out = []
    for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        px, py = a * w / 2, b * h / 2
        out.append((x + c * px - s * py, y + s * px + c * py))
    return out


def shoelace(poly: list[tuple[float, float]]) -> float:
    n = len(poly)
    return 0.5 * sum(poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))


def clip(subject: list[tuple[float, float]], clipper: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sutherland–Hodgman: ``subject`` clipped by the convex, counter-clockwise ``clipper``."""
    out = subject
    for i in range(len(clipper)):
        (ax, ay), (bx, by) = clipper[i], clipper[(i + 1) % len(clipper)]

        def side(p: tuple[float, float], ax: float = ax, ay: float = ay, bx: float = bx,
                 by: float = by) -> float:
            return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)  # >= 0: left of a→b, inside

        inp, out = out, []
        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not out:
            return []
    return out


def polygon_iou(b1: list[float], b2: list[float], eps: float = 0.0) -> float:
    """Exact IoU of two xywhr rectangles (positive sides): ``I / (A₁ + A₂ − I + eps)``."""
    inter = abs(shoelace(clip(corners(b1), corners(b2))))
    union = b1[2] * b1[3] + b2[2] * b2[3] - inter
    return inter / (union + eps) if union + eps > 0 else 0.0


def _gaussian(box: list[float], scale: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    x, y, w, h, t = box
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return np.array([x, y]), r @ np.diag([w * w * scale + floor, h * h * scale + floor]) @ r.T


def probiou(b1: list[float], b2: list[float], eps: float | None = None, floor: float = 0.0) -> float:
    """ProbIoU = 1 − Hellinger distance of the boxes' Gaussians (Σ = R·diag(w²/12, h²/12)·Rᵀ + floor).

    ``eps=None``: the paper's formula, ``B = ⅛·ΔᵀΣ⁻¹Δ + ½·ln(det Σ / √(det Σ₁ det Σ₂))`` with
    ``Σ = (Σ₁ + Σ₂)/2`` and ``1 − √(1 − e^(−B))``. A number: ultralytics' placements, ``S = Σ₁ + Σ₂``,
    ``¼·Δᵀ adj(S) Δ / (det S + eps) + ½·ln(det S / (4√(det Σ₁ det Σ₂) + eps) + eps)`` clamped to
    [eps, 100], then ``1 − √(1 − e^(−B) + eps)``.
    """
    m1, s1 = _gaussian(b1, 1 / 12, floor)
    m2, s2 = _gaussian(b2, 1 / 12, floor)
    d = m1 - m2
    if eps is None:
        sig = (s1 + s2) / 2
        bd = d @ np.linalg.inv(sig) @ d / 8 + 0.5 * math.log(
            np.linalg.det(sig) / math.sqrt(np.linalg.det(s1) * np.linalg.det(s2))
        )
        return 1.0 - math.sqrt(1.0 - math.exp(-bd))
    s = s1 + s2
    det = float(np.linalg.det(s))
    adj = np.array([[s[1, 1], -s[0, 1]], [-s[1, 0], s[0, 0]]])
    det1, det2 = max(float(np.linalg.det(s1)), 0.0), max(float(np.linalg.det(s2)), 0.0)
    bd = 0.25 * (d @ adj @ d) / (det + eps) + 0.5 * math.log(det / (4 * math.sqrt(det1 * det2) + eps) + eps)
    bd = min(max(bd, eps), 100.0)
    return 1.0 - math.sqrt(1.0 - math.exp(-bd) + eps)


def _gd(box: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """mmrotate's Gaussian: sides clamped to [1e-7, 1e7], Σ = R·diag(w/2, h/2)²·Rᵀ."""
    x, y, w, h, t = box
    w, h = min(max(w, 1e-7), 1e7), min(max(h, 1e-7), 1e7)
    return _gaussian([x, y, w, h, t], 0.25, 0.0)


def _log1p_similarity(distance: float) -> float:
    return 1.0 / (1.0 + math.log1p(distance))  # 1 − (1 − 1/(τ + log1p(d))), τ = 1


def kld_similarity(pred: list[float], target: list[float], eps: float = 1e-7) -> float:
    """``1 / (1 + ln(1 + √max(KL, eps)))`` with mmrotate's direction ``KL(N_target ‖ N_pred)`` =
    ½[Δᵀ Σ_p⁻¹ Δ + tr(Σ_p⁻¹ Σ_t) − 2 + ln(det Σ_p / det Σ_t)]."""
    mp, sp = _gd(pred)
    mt, st = _gd(target)
    inv = np.linalg.inv(sp)
    d = mp - mt
    kl = 0.5 * (d @ inv @ d + np.trace(inv @ st) - 2 + math.log(np.linalg.det(sp) / np.linalg.det(st)))
    return _log1p_similarity(math.sqrt(max(kl, eps)))


def gwd_similarity(pred: list[float], target: list[float], eps: float = 1e-7) -> float:
    """``1 / (1 + ln(1 + W/scale))``: W² = |Δ|² + tr(Σ_p + Σ_t − 2(Σ_p^½ Σ_t Σ_p^½)^½), scale =
    2·(det Σ_p det Σ_t)^(1/8) (mmrotate's ``normalize=True``, its clamps at eps)."""
    mp, sp = _gd(pred)
    mt, st = _gd(target)
    root = np.real(sqrtm(sp))
    cross = np.real(sqrtm(root @ st @ root))
    det = math.sqrt(max(np.linalg.det(sp) * np.linalg.det(st), 0.0))
    det_root = max(det, math.sqrt(eps))
    # mmrotate's coupling √max(tr(Σ_pΣ_t) + 2·max(√(det Σ_p det Σ_t), √eps), eps), where
    # tr(Σ_pΣ_t) + 2√(det Σ_p det Σ_t) = tr((Σ_p^½ Σ_t Σ_p^½)^½)²
    coupling = math.sqrt(max(float(np.trace(cross)) ** 2 + 2 * (det_root - det), eps))
    w2 = float((mp - mt) @ (mp - mt) + np.trace(sp + st) - 2 * coupling)
    scale = 2 * max(math.sqrt(max(math.sqrt(max(det_root, eps)), eps)), eps)
    return _log1p_similarity(math.sqrt(max(w2, eps)) / scale)
