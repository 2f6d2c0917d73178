"""The report's learning curves: validation EER against cumulative training energy for every variant that
logged a validation curve (``data.val_speakers``), the Pareto front over all their epochs (the best EER any
variant had reached by each energy level), and the diminishing-returns table per epoch along each curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.pareto import pareto_mask  # noqa: E402

VAL_EER = "val/eer_pct"
ENERGY_CUM = "train/energy_j_cum"


def validation_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per validated epoch of every run with a validation curve: variant, epoch, cumulative training
    energy (J), validation EER (%) and the gain from the previous validated epoch in EER points per kJ."""
    if f"metrics.{VAL_EER}" not in runs.columns:
        return pd.DataFrame()
    client, rows = MlflowClient(), []
    for _, run in runs[runs[f"metrics.{VAL_EER}"].notna()].iterrows():
        eer = {m.step: m.value for m in client.get_metric_history(run["run_id"], VAL_EER)}
        energy = {m.step: m.value for m in client.get_metric_history(run["run_id"], ENERGY_CUM)}
        prev = None
        for epoch in sorted(eer):
            e = energy.get(epoch)
            gain = (np.nan if prev is None or e is None or e <= prev[1]
                    else (prev[0] - eer[epoch]) / ((e - prev[1]) / 1000.0))
            rows.append({"variant": run["tags.svbench.variant"], "epoch": epoch, "train_energy_j_cum": e,
                         "val_eer_pct": eer[epoch], "gain_pct_per_kj": gain})
            prev = (eer[epoch], e) if e is not None else None
    return pd.DataFrame(rows)


def curve_front(curves: pd.DataFrame) -> pd.DataFrame:
    """The epochs, of any variant, that no other epoch beats on both cumulative energy and validation EER."""
    ok = curves.dropna(subset=["train_energy_j_cum", "val_eer_pct"])
    mask = pareto_mask(ok["train_energy_j_cum"].to_numpy(), ok["val_eer_pct"].to_numpy())
    return ok[mask].sort_values("train_energy_j_cum")


def fig_validation_curves(curves: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, c in curves.groupby("variant", sort=True):
        ax.plot(c["train_energy_j_cum"], c["val_eer_pct"], "o-", ms=3, label=variant)
    front = curve_front(curves)
    ax.step(front["train_energy_j_cum"], front["val_eer_pct"], where="post", color="black", ls="--", lw=1,
            label="front (best EER reached by each energy)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training energy (J, log; validation not included)")
    ax.set_ylabel("validation EER %")
    ax.set_title("Validation EER as training energy is spent")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
