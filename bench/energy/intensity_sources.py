"""Hourly carbon-intensity series from outside the suite: the forecast a carbon-aware start is planned on, and
the history a run is charged.

Offline by default: ``energy.intensity_csv``, a series the user provides (timestamp,g_per_kwh), is the forecast
and also what the runs are charged afterwards. Where the user opts in (``energy.electricitymaps_zone`` or
``energy.electricitymaps_location`` set, and a token in ``ELECTRICITYMAPS_TOKEN``), both come from ElectricityMaps:
the forecast from ``GET /v3/carbon-intensity/forecast?zone=FR`` (or ``?lat=..&lon=..``) with ``horizonHours`` the
smallest of the API's horizons (6, 24, 48, 72 h) that reaches the deadline from the current hour, and, after the
work, the place's last 24 hours from ``/v3/carbon-intensity/history``, so the realised gCO2e of a carbon-aware start
is at the hours the work ran. Requests carry the header ``auth-token``; each answer's ``forecast`` or ``history``
list holds ``{"datetime", "carbonIntensity"}`` per hour, in gCO2e/kWh, lifecycle factors (the API's default) in
both, so a plan and the charge it is compared with use one factor type. ``ELECTRICITYMAPS_API_URL`` replaces the
public host (a company proxy, or a test's server). Nothing is fetched unless the user set these.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import requests

from bench.energy.carbon import HourlySeries
from bench.errors import BenchError

TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"
URL_ENV = "ELECTRICITYMAPS_API_URL"
PUBLIC_URL = "https://api.electricitymap.org"
TIMEOUT_S = 20.0
FORECAST_HORIZONS_H = (6, 24, 48, 72)  # the forecast endpoint's horizonHours values


def forecast_source_error(energy) -> str | None:
    """Why no forecast can be had from these settings (None: one can)."""
    if energy.intensity_csv:
        return None
    if energy.electricitymaps_zone or energy.electricitymaps_location:
        if not os.environ.get(TOKEN_ENV):
            return (f"the ElectricityMaps forecast needs an API token: export {TOKEN_ENV}=<token>, or give "
                    "--energy.intensity_csv for an offline forecast")
        return None
    return ("--carbon-aware needs an hourly intensity forecast: set --energy.intensity_csv to a CSV "
            "(timestamp,g_per_kwh) that covers now to the deadline, or --energy.electricitymaps_zone (with "
            f"{TOKEN_ENV}) to fetch ElectricityMaps' forecast")


def forecast_series(energy, now_s: float, deadline_s: float) -> HourlySeries:
    """The forecast the settings name (see the module), to reach from now to ``deadline_s`` (unix seconds); a
    one-line error when there is none."""
    why = forecast_source_error(energy)
    if why:
        raise BenchError(why)
    if energy.intensity_csv:
        return HourlySeries.from_csv(energy.intensity_csv, energy.intensity_factor)
    need_h = math.ceil((deadline_s - (now_s - now_s % 3600)) / 3600)  # hourly rows from the current hour on
    hours = next((h for h in FORECAST_HORIZONS_H if h >= need_h), None)
    if hours is None:
        raise BenchError(f"ElectricityMaps forecasts {FORECAST_HORIZONS_H[-1]} h from the current hour: give an "
                         "earlier --deadline, or --energy.intensity_csv with a longer forecast")
    return _electricitymaps({**electricitymaps_place(energy), "horizonHours": hours}, "forecast")


def electricitymaps_place(energy) -> dict:
    """The request's place: ``zone``, or ``lat`` and ``lon``."""
    if energy.electricitymaps_zone:
        return {"zone": energy.electricitymaps_zone}
    lat, lon = energy.electricitymaps_location
    return {"lat": lat, "lon": lon}


def electricitymaps_history(energy) -> HourlySeries:
    """The last 24 hours' intensity at the configured place (``GET /v3/carbon-intensity/history``), what a run
    that set ``energy.electricitymaps_zone`` or ``energy.electricitymaps_location`` is charged after its work."""
    return _electricitymaps(electricitymaps_place(energy), "history")


def _electricitymaps(where: dict, kind: str) -> HourlySeries:
    """One of ElectricityMaps' hourly series (``kind``: forecast or history): the answer's ``<kind>`` list."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise BenchError(f"ElectricityMaps needs an API token: export {TOKEN_ENV}=<token>, or unset "
                         "energy.electricitymaps_zone / energy.electricitymaps_location")
    base_url = os.environ.get(URL_ENV) or PUBLIC_URL
    url = f"{base_url.rstrip('/')}/v3/carbon-intensity/{kind}"
    place = ", ".join(f"{k} {v}" for k, v in where.items() if k in ("zone", "lat", "lon"))
    try:
        resp = requests.get(url, params=where, headers={"auth-token": token}, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise BenchError(f"cannot reach ElectricityMaps at {base_url} ({type(exc).__name__}); give "
                         "--energy.intensity_csv for an offline series") from None
    if resp.status_code in (401, 403):
        raise BenchError(f"ElectricityMaps refused the token (HTTP {resp.status_code}): check {TOKEN_ENV} and that "
                         f"its plan includes the {kind}")
    if resp.status_code != 200:
        raise BenchError(f"ElectricityMaps answered HTTP {resp.status_code} for the {kind} of {place}; check the "
                         "zone, or give --energy.intensity_csv")
    try:
        rows = resp.json()[kind]
        times = pd.to_datetime([r["datetime"] for r in rows], utc=True)
        values = np.array([float(r["carbonIntensity"]) for r in rows])
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"ElectricityMaps' {kind} for {place} is not the documented shape "
                         f"({type(exc).__name__}: {exc}); give --energy.intensity_csv") from None
    if len(values) == 0 or np.any(~np.isfinite(values)) or np.any(values < 0):
        raise BenchError(f"ElectricityMaps' {kind} for {place} is empty or has invalid values")
    order = np.argsort(times.to_numpy())
    return HourlySeries(np.array([times[i].timestamp() for i in order]), values[order],
                        f"electricitymaps-{kind}:{place}")
