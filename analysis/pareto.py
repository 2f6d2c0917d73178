"""Pareto front (minimise both objectives) and the diminishing-returns knee along it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where no other point is <= in both and < in one (both minimised)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mask = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        mask[i] = not dominated.any()
    return mask


def marginal_gains(front: pd.DataFrame, energy_col: str, eer_col: str) -> pd.DataFrame:
    """Along the front sorted by energy: EER points gained per extra kWh from the previous point."""
    f = front.sort_values(energy_col).reset_index(drop=True).copy()
    kwh = f[energy_col] / 3.6e6
    f["extra_kwh"] = kwh.diff()
    f["eer_gain_pct_points"] = -f[eer_col].diff()
    f["eer_gain_per_kwh"] = f["eer_gain_pct_points"] / f["extra_kwh"]
    return f


def knee_index(front: pd.DataFrame, energy_col: str, eer_col: str) -> int | None:
    """Index (in the energy-sorted front) of the knee: farthest point below the chord between the
    cheapest and the most accurate ends, with energy on a log scale. None with < 3 points."""
    f = front.sort_values(energy_col).reset_index(drop=True)
    if len(f) < 3:
        return None
    x = np.log10(f[energy_col].to_numpy(float))
    y = f[eer_col].to_numpy(float)
    xn = (x - x.min()) / (np.ptp(x) or 1.0)
    yn = (y - y.min()) / (np.ptp(y) or 1.0)
    # distance from the chord (0, yn0) -> (1, yn_last)
    x0, y0, x1, y1 = xn[0], yn[0], xn[-1], yn[-1]
    d = np.abs((y1 - y0) * xn - (x1 - x0) * yn + x1 * y0 - y1 * x0) / np.hypot(y1 - y0, x1 - x0)
    return int(np.argmax(d))


def hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` (both objectives minimised) and bounded by ``ref``: the staircase under
    the non-dominated points, sorted by the first objective."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts < ref).all(axis=1)]
    if not len(pts):
        return 0.0
    front = pts[pareto_mask(pts[:, 0], pts[:, 1])]
    front = front[np.argsort(front[:, 0])]
    widths = np.diff(np.append(front[:, 0], ref[0]))
    return float(np.sum(widths * (ref[1] - np.minimum.accumulate(front[:, 1]))))
