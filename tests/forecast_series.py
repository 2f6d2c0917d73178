"""Hourly intensity forecasts for the carbon-aware tests: a series with a trough, and its CSV."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from bench.energy.carbon import HourlySeries


def hourly_series(start_s: float, hours: int, trough: tuple[int, int], low: float = 40.0, high: float = 400.0):
    """Hourly gCO2e/kWh from ``start_s``: ``high`` except hours [trough) after it, ``low`` there."""
    values = np.array([low if trough[0] <= h < trough[1] else high for h in range(hours)], dtype=float)
    return HourlySeries(start_s + 3600.0 * np.arange(hours), values, "test")


def forecast_csv(tmp_path, trough: tuple[int, int] = (7, 11)):
    """A 50-hour forecast CSV from the hour before now: 400 g/kWh, with a 40 g trough ``trough`` hours after that
    first hour (by default 6-10 h from now, so work that really runs now is charged 400 g)."""
    real_now = time.time()
    hour0 = real_now - real_now % 3600 - 3600
    csv = tmp_path / "forecast.csv"
    s = hourly_series(hour0, 50, trough)
    pd.DataFrame({"timestamp": [datetime.fromtimestamp(t, timezone.utc).isoformat() for t in s.times],
                  "g_per_kwh": s.values}).to_csv(csv, index=False)
    return real_now, hour0, csv
