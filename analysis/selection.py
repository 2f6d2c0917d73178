"""What a search's front was chosen on: the validation hold-out (the default), whose front is reported with each
member's test EER, its interval and the selection gap; or the test list, labelled optimistic on every report."""

from __future__ import annotations

import mlflow
import pandas as pd

from bench.orchestration.search.study import SELECTED_ON_TEST, VAL_EER_KEY, VAL_FINAL_EER_KEY
from analysis.pareto import pareto_mask


def selection_of(parent_run_id: str | None) -> str | None:
    """``validation`` or ``test`` for a study parent run (its ``search.select_on`` tag); None for anything else."""
    if not parent_run_id:
        return None
    return mlflow.get_run(parent_run_id).data.tags.get("search.select_on")


def validation_eer(runs: pd.DataFrame) -> pd.Series:
    """Each run's final validation EER (a search trial's, the mean over its seeds), else its last logged one."""
    final, last = f"metrics.{VAL_FINAL_EER_KEY}", f"metrics.{VAL_EER_KEY}"
    out = pd.Series([float("nan")] * len(runs), index=runs.index)
    for col in (last, final):  # the final one wins where both are there
        if col in runs.columns:
            out = runs[col].where(runs[col].notna(), out)
    return out


def mark_front_on_validation(t: pd.DataFrame) -> None:
    """``pareto`` marks the front chosen on validation EER and training energy (feasible runs only)."""
    t["pareto"] = False
    ok = t["train_energy_j"].notna() & t["val_eer_pct"].notna() & t["feasible"]
    if ok.any():
        t.loc[ok, "pareto"] = pareto_mask(t.loc[ok, "train_energy_j"].to_numpy(), t.loc[ok, "val_eer_pct"].to_numpy())


def selection_markdown(t: pd.DataFrame, select_on: str | None, trials: str, md) -> list[str]:
    """The report's section on what the front was chosen on (nothing for a sweep); ``md`` writes a table."""
    if select_on == "test":
        return [f"**This search was {SELECTED_ON_TEST}** (`search.select_on test`): the front was chosen on "
                f"`{trials}` itself, and the more trials the search ran, the further its EERs sit below what the "
                "same models would score on unseen speakers.", ""]
    if select_on != "validation":
        return []
    front = t[t["pareto"]].sort_values("train_energy_j").copy()
    front["selection_gap_pct"] = front["eer_pct"] - front["val_eer_pct"]
    gap = front["selection_gap_pct"].mean() if len(front) else float("nan")
    cols = ["variant", "val_eer_pct", "eer_pct", "eer_ci_low", "eer_ci_high", "selection_gap_pct", "train_energy_j"]
    return ["## The front, chosen on validation", "",
            f"The search chose its front on the validation EER (speakers held out of training) and training energy; "
            f"`eer_pct` is each member's EER on the test list `{trials}`, with its bootstrap interval. Those test "
            "EERs are unbiased only because nothing was selected on them. `selection_gap_pct` is test minus "
            f"validation EER; over the front it averages **{gap:+.2f}** EER points.", "",
            md(front[cols]), ""]
