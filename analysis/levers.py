"""The carbon levers of a sweep or a study: gCO2e of its training as run, if it had started at once, at the start
a carbon-aware plan chose, and at each model's lowest-carbon GPU power limit, each labelled with its source."""

from __future__ import annotations

import pandas as pd

MEASURED = "the runs' logged energy (its source above) x the intensity at the hours they ran"
FORECAST = "forecast: the carbon-aware plan's, before the runs"
FORECAST_SEARCH = FORECAST + "; likely an overestimate (every trial forecast as the search's longest to train)"


def carbon_levers(table: pd.DataFrame, parent_metrics: dict[str, float], search: bool = False) -> pd.DataFrame:
    """One row per lever (``lever``, ``co2_g``, ``source``); a lever the runs cannot show says why. ``search``: the
    runs are a search's trials, whose plan forecast each as the longest to train (so its figures likely exceed what
    the trials emit; not a bound: the probes extrapolate, and a trial at a higher power limit may draw more)."""
    as_run = table["train_co2_g"].sum(min_count=1)
    rows = [("as run", as_run, MEASURED)]
    forecast = FORECAST_SEARCH if search else FORECAST
    if "carbon_plan/if_started_now_g" in parent_metrics:
        rows += [("if started at once", parent_metrics["carbon_plan/if_started_now_g"], forecast),
                 ("at the planned start", parent_metrics["carbon_plan/expected_g"], forecast)]
    else:
        rows.append(("start time", float("nan"),
                     f"not planned: run the {'search' if search else 'sweep'} with --carbon-aware"))
    limits = table.dropna(subset=["train_co2_g"]).copy()
    limits["model"] = limits["stages"].astype(str) + " x" + limits["width"].astype(str)
    limits["limit"] = limits["gpu_power_limit_w"].fillna(-1.0)  # -1: the board's own limit
    several = limits.groupby("model")["limit"].nunique() > 1
    if several.any():
        best = limits[limits["model"].isin(several[several].index)].groupby("model")["train_co2_g"].min()
        rest = limits[~limits["model"].isin(several[several].index)]["train_co2_g"].sum()
        rows.append(("at each model's best power limit", float(best.sum() + rest), MEASURED))
    else:
        rows.append(("GPU power limit", float("nan"), "no model was trained at several limits "
                                                      "(train.gpu_power_limit_w, search.power_limits_w)"))
    return pd.DataFrame(rows, columns=["lever", "co2_g", "source"])
