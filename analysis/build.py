"""``svbench report``: pull runs with ``mlflow.search_runs`` into pandas and write ``report.md``,
``report.csv`` and figures (EER vs training energy with the Pareto front and knee, EER vs params,
inference J/1k trials per variant and precision, the study-style depth / width / stage tables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.atomic import write_text_atomic  # noqa: E402
from bench.data.trials import AVERAGE
from bench.errors import BenchError  # noqa: E402
from analysis.compare import Comparisons, comparisons_markdown, compare_variants, report_variants
from analysis.learning_curves import fig_validation_curves, validation_curves
from analysis.levers import carbon_levers
from analysis.pareto import knee_index, marginal_gains, pareto_mask  # noqa: E402
from analysis.selection import mark_front_on_validation, selection_markdown, validation_eer
from bench.tracking import naming, store


def noise_note(t: pd.DataFrame, c: Comparisons) -> str:
    """What the intervals mean, with this report's own list size and interval widths."""
    note = ("EER intervals are bootstrap intervals over speakers (and over seeds, for the seed mean of a variant "
            "with several). Whether two variants differ is decided by a paired bootstrap of their difference "
            "with Holm's correction (see the last table), not by comparing these intervals.")
    sized = c.scored[0] if c.scored else None
    widths = (t["eer_ci_high"] - t["eer_ci_low"]).dropna()
    if sized is not None and len(widths):
        note += (f" On `{c.trials}` ({sized.bootstrap.n_trials:,} trials, {sized.bootstrap.n_speakers} speakers) "
                 f"they are {widths.min():.2g} to {widths.max():.2g} EER points wide.")
    return note


def load_runs(experiment: str | None = None, sweep_key: str | None = None, parent_run_id: str | None = None,
              extra_filter: str | None = None) -> pd.DataFrame:
    store.setup_tracking()
    if experiment is None and parent_run_id is None:
        raise BenchError("give --experiment NAME or --parent-run ID for the report")
    if parent_run_id:
        parent = store.find_run(parent_run_id)
        exp_ids, parent_run_id = [parent.info.experiment_id], parent.info.run_id
    else:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            raise BenchError(f"no MLflow experiment '{experiment}' at {mlflow.get_tracking_uri()}; run a sweep first")
        exp_ids = [exp.experiment_id]
    filters = ["attributes.status = 'FINISHED'"]
    if sweep_key:
        filters.append(f"tags.`{naming.TAG_SWEEP}` = '{sweep_key}'")
    elif parent_run_id:  # a sweep's runs may hang under several parents (re-runs); otherwise the parent's children
        filters.append(f"tags.`{naming.PARENT}` = '{parent_run_id}'")
    if extra_filter:
        filters.append(extra_filter)
    df = mlflow.search_runs(exp_ids, filter_string=" and ".join(filters), max_results=10000,
                            order_by=["attributes.start_time DESC"])
    kind_col = f"tags.{naming.TAG_KIND}"
    if df.empty or kind_col not in df.columns:
        return df.iloc[0:0]
    df = df[df[kind_col].isin(["variant", "trial"])]
    if "tags.optuna.state" in df.columns:  # pruned and failed trials have no EER to report
        df = df[~df["tags.optuna.state"].isin(["PRUNED", "FAIL"])]
    df = df.drop_duplicates(subset=[f"tags.{naming.TAG_VARIANT}"], keep="first")  # latest run per variant
    return df.reset_index(drop=True)


def default_trials(runs: pd.DataFrame, logged: list[str]) -> str:
    """The first of the runs' ``data.trials`` (as everywhere: ``bench.data.trials.default_trial_list``); with
    none configured, the first logged list (lists found on disk are taken in sorted order)."""
    configured = runs["params.data.trials"].dropna() if "params.data.trials" in runs.columns else []
    first = next((v.split(",")[0] for v in configured if v), None)
    return first if first in logged else sorted(logged)[0]


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of the runs table, or NaN for every run when no run logged it."""
    return runs[name] if name in runs.columns else pd.Series([np.nan] * len(runs), index=runs.index)


def text_column(runs: pd.DataFrame, name: str, default: str) -> pd.Series:
    """A tag or parameter column as text, ``default`` where a run did not log it (an all-missing column is
    float NaN, which pandas will not fill with a string)."""
    return column(runs, name).astype(object).fillna(default)


def variant_table(runs: pd.DataFrame, trials: str | None = None,
                  select_on: str | None = None) -> tuple[pd.DataFrame, str]:
    """One row per variant; ``pareto`` marks the front on the test EER, or, for a search that selected on
    validation, the front it chose (``analysis.selection``)."""
    eer_cols = sorted(c for c in runs.columns if c.startswith("metrics.eer_pct/") and c.count("/") == 1)
    if not eer_cols:
        raise BenchError("the runs have no eer_pct metrics")
    logged = [c.split("/", 1)[1] for c in eer_cols]
    if trials and trials not in logged:
        why = "; an average needs two or more trial lists" if trials == AVERAGE else ""
        raise BenchError(f"the runs logged no eer_pct/{trials} (they have {', '.join(sorted(logged))}){why}")
    trials = trials or default_trials(runs, logged)
    col = lambda name: column(runs, name)  # noqa: E731
    t = pd.DataFrame({
        "variant": runs["tags.svbench.variant"],
        "series": text_column(runs, "tags.svbench.series", ""),
        "stages": col("params.model.stages"),
        "width": pd.to_numeric(col("params.model.width_mult"), errors="coerce"),
        "depth": pd.to_numeric(col("params.model.depth"), errors="coerce"),
        "params_m": col("metrics.model/params_m"),
        "gmacs_per_s": col("metrics.model/gmacs_per_s_audio"),
        "eer_pct": col(f"metrics.eer_pct/{trials}"),
        "val_eer_pct": validation_eer(runs),
        "eer_ci_low": col(f"metrics.eer_pct/{trials}/ci_low"),
        "eer_ci_high": col(f"metrics.eer_pct/{trials}/ci_high"),
        "eer_std": col(f"metrics.eer_pct/{trials}/std"),
        "train_energy_j_std": col("metrics.train/energy_j/std"),
        "seeds": col("metrics.seeds"),
        "min_dcf_p01": col(f"metrics.min_dcf_p01/{trials}"),
        "train_energy_j": col("metrics.train/energy_j"),
        "train_energy_kwh": col("metrics.train/energy_kwh"),
        "train_co2_g": col("metrics.train/co2_g"),
        "train_time_s": col("metrics.train/time_s"),
        "batch_size": pd.to_numeric(col("params.train.batch_size"), errors="coerce"),
        "gpu_power_limit_w": pd.to_numeric(col("params.train.gpu_power_limit_w"), errors="coerce"),
        "infer_j_per_1k_trials": col("metrics.infer/energy_j_per_1k_trials"),
        "infer_bf16_j_per_1k_trials": col("metrics.infer_bf16/energy_j_per_1k_trials"),
        "energy_source": col("tags.energy.source"),
        "data_root": text_column(runs, "params.data.root", ""),
        # search trials over budget are not feasible
        "feasible": text_column(runs, "tags.optuna.feasible", "true") != "false",
        "run_id": runs["run_id"],
    })
    t = t.sort_values("train_energy_j").reset_index(drop=True)
    if select_on == "validation":
        mark_front_on_validation(t)
        return t, trials
    ok = t["train_energy_j"].notna() & t["eer_pct"].notna() & t["feasible"]
    t["pareto"] = False
    if ok.any():
        t.loc[ok, "pareto"] = pareto_mask(t.loc[ok, "train_energy_j"].to_numpy(), t.loc[ok, "eer_pct"].to_numpy())
    return t, trials


def _fig_eer_vs_energy(t: pd.DataFrame, trials: str, path: Path, knee: str | None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = t[t["pareto"]].sort_values("train_energy_j")
    yerr = None
    if t["eer_ci_low"].notna().any():  # bootstrap interval over speakers
        yerr = np.vstack([(t["eer_pct"] - t["eer_ci_low"]).clip(lower=0).fillna(0),
                          (t["eer_ci_high"] - t["eer_pct"]).clip(lower=0).fillna(0)])
    xerr = t["train_energy_j_std"].fillna(0).to_numpy() if t["train_energy_j_std"].notna().any() else None
    ax.errorbar(t["train_energy_j"], t["eer_pct"], yerr=yerr, xerr=xerr, fmt="none", ecolor="gray", alpha=0.6,
                capsize=3, zorder=2, label="bootstrap interval (speakers)" if yerr is not None else None)
    if t["eer_std"].notna().any():  # seed spread
        ax.errorbar(t["train_energy_j"], t["eer_pct"], yerr=t["eer_std"].fillna(0), fmt="none", ecolor="tab:orange",
                    elinewidth=3, alpha=0.5, zorder=2, label="std over seeds")
    ax.scatter(t["train_energy_j"], t["eer_pct"], c=["tab:red" if p else "tab:blue" for p in t["pareto"]], zorder=3)
    ax.plot(front["train_energy_j"], front["eer_pct"], "--", color="tab:red", label="Pareto front")
    for _, r in t.iterrows():
        ax.annotate(r["variant"] + (" (knee)" if r["variant"] == knee else ""), (r["train_energy_j"], r["eer_pct"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"training energy (J, log) [{', '.join(sorted(set(t['energy_source'].dropna())))}]")
    ax.set_ylabel(f"EER % ({trials})")
    ax.set_title("How much accuracy does each joule buy?")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_eer_vs_params(t: pd.DataFrame, trials: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(t["params_m"], t["eer_pct"])
    for _, r in t.iterrows():
        ax.annotate(r["variant"], (r["params_m"], r["eer_pct"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions, without head, log)")
    ax.set_ylabel(f"EER % ({trials})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_inference(t: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(t))
    ax.bar(x - 0.2, t["infer_j_per_1k_trials"], width=0.4, label="fp32")
    if t["infer_bf16_j_per_1k_trials"].notna().any():
        ax.bar(x + 0.2, t["infer_bf16_j_per_1k_trials"], width=0.4, label="bf16")
    ax.set_xticks(x, t["variant"], rotation=30, ha="right")
    ax.set_ylabel("inference energy (J per 1k trials)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bootstrap_settings(runs: pd.DataFrame) -> tuple[int, float]:
    """The runs' eval.bootstrap_resamples and eval.ci_level (1000 and 0.95 when not logged or 0)."""
    def first(col: str, default: float) -> float:
        vals = pd.to_numeric(runs[col], errors="coerce").dropna() if col in runs.columns else []
        return float(vals.iloc[0]) if len(vals) and vals.iloc[0] > 0 else default

    return int(first("params.eval.bootstrap_resamples", 1000)), first("params.eval.ci_level", 0.95)


def deployment_table(runs: pd.DataFrame, trials: str) -> pd.DataFrame:
    """One row per variant and inference back end (PyTorch precisions, ONNX Runtime fp32/int8): J per 1k trials,
    EER, its difference to PyTorch fp32, size on disk; ``pareto`` marks the deployment front (J/1k vs EER)."""
    rows = []
    for _, r in runs.iterrows():
        for col in runs.columns:
            head, _, key = col.removeprefix("metrics.").partition("/")
            if not col.startswith("metrics.infer") or key != "energy_j_per_1k_trials" or pd.isna(r[col]):
                continue
            backend = "fp32" if head == "infer" else head.removeprefix("infer_")
            eer = r.get(f"metrics.eer_pct/{trials}") if backend == "fp32" else r.get(f"metrics.{head}/eer_pct/{trials}")
            if eer is None or pd.isna(eer):
                continue
            diff_key = f"metrics.{head}/eer_diff_pct/{trials}"
            low, high = r.get(f"{diff_key}/ci_low"), r.get(f"{diff_key}/ci_high")
            rows.append({"variant": r["tags.svbench.variant"], "back end": backend, "j_per_1k_trials": r[col],
                         "eer_pct": eer, "eer_diff_pct": r.get(diff_key),
                         "eer_diff_ci": f"[{low:+.2f}, {high:+.2f}]" if pd.notna(low) and pd.notna(high) else "",
                         "utt_per_s": r.get(f"metrics.{head}/utt_per_s"),
                         "model_size_mb": r.get(f"metrics.{head}/model_size_mb")})
    t = pd.DataFrame(rows, columns=["variant", "back end", "j_per_1k_trials", "eer_pct", "eer_diff_pct", "eer_diff_ci",
                                    "utt_per_s", "model_size_mb"])
    t["pareto"] = pareto_mask(t["j_per_1k_trials"].to_numpy(), t["eer_pct"].to_numpy()) if len(t) else []
    return t.sort_values("j_per_1k_trials").reset_index(drop=True)


def _fig_deployment(d: pd.DataFrame, trials: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend, g in d.groupby("back end"):
        ax.scatter(g["j_per_1k_trials"], g["eer_pct"], label=backend, zorder=3)
    front = d[d["pareto"]].sort_values("j_per_1k_trials")
    ax.plot(front["j_per_1k_trials"], front["eer_pct"], "--", color="tab:red", label="deployment front")
    for _, r in d.iterrows():
        ax.annotate(r["variant"], (r["j_per_1k_trials"], r["eer_pct"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("inference energy (J per 1k trials, log)")
    ax.set_ylabel(f"EER % ({trials})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TO_TARGET = "train/energy_to_val_eer/"


def energy_to_target_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the training energy (J) at which validation EER first reached each logged target
    (``train.eer_targets``), "not reached" where it never did, and why training stopped; empty without targets."""
    prefixes = (f"metrics.{TO_TARGET}", f"tags.{TO_TARGET.replace('/', '.', 1)}")  # reached, not reached
    targets = sorted({c.removeprefix(p) for c in runs.columns for p in prefixes if c.startswith(p)}, key=float)
    if not targets:
        return pd.DataFrame()
    t = pd.DataFrame({"variant": runs["tags.svbench.variant"]})
    for x in targets:
        j = pd.to_numeric(column(runs, f"{prefixes[0]}{x}"), errors="coerce")
        missed = column(runs, f"{prefixes[1]}{x}") == "not reached"
        t[f"j_to_val_eer_{x}"] = [("not reached" if m else "") if pd.isna(v) else f"{v:.4g}" for v, m in zip(j, missed)]
    t["stop_reason"] = text_column(runs, "tags.train.stop_reason", "")
    return t.sort_values("variant").reset_index(drop=True)


def gains_table(gains: pd.DataFrame) -> pd.DataFrame:
    """The diminishing-returns rows in units a reader scans: energy in kJ, the extra in Wh, the gain in EER points
    per Wh; the cheapest point's empty cells say why."""
    out = pd.DataFrame({"variant": gains["variant"], "train_energy_kj": gains["train_energy_j"] / 1e3,
                        "eer_pct": gains["eer_pct"], "extra_wh": gains["extra_kwh"] * 1e3,
                        "eer_gain_points": gains["eer_gain_pct_points"],
                        "eer_gain_points_per_wh": gains["eer_gain_per_kwh"] / 1e3})
    out = out.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    out.iloc[0, 3:] = "(cheapest)"
    return out


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4g")


@dataclass
class Report:
    """A written report: its folder (report.md, report.csv, figures), the variant table, the knee variant and the
    trial list whose EER it plots."""
    dir: Path
    table: pd.DataFrame
    knee: str | None
    trials: str
    select_on: str | None = None  # a search's: what its front was chosen on


def _is_search(runs: pd.DataFrame) -> bool:
    """Whether the runs are a search's trials (rather than a sweep's variants)."""
    kind = f"tags.{naming.TAG_KIND}"
    return kind in runs.columns and bool((runs[kind] == "trial").any())


def build_report(runs: pd.DataFrame, out_dir: str | Path, title: str, trials: str | None = None,
                 select_on: str | None = None, parent_metrics: dict[str, float] | None = None) -> Report:
    """Write report.md, report.csv and figures into ``out_dir``; returns paths and the table. ``select_on``: a
    search's (``validation`` or ``test``), what its front was chosen on; ``parent_metrics``: the sweep's or
    study's parent run's (its carbon-aware plan, for the carbon levers)."""
    if runs.empty:
        raise BenchError("no finished runs to report on; run a sweep or search first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t, trials = variant_table(runs, trials, select_on)
    front = t[t["pareto"]]
    k = knee_index(front, "train_energy_j", "eer_pct") if len(front) else None
    knee = front.sort_values("train_energy_j").reset_index(drop=True).iloc[k]["variant"] if k is not None else None
    gains = marginal_gains(front, "train_energy_j", "eer_pct") if len(front) else front
    _fig_eer_vs_energy(t, trials, out / "eer_vs_energy.png", knee)
    _fig_eer_vs_params(t, trials, out / "eer_vs_params.png")
    _fig_inference(t, out / "inference_energy.png")
    t.to_csv(out / "report.csv", index=False)
    n_res, level = _bootstrap_settings(runs)
    comparisons = compare_variants(report_variants(t, trials, n_res), trials, level)
    sources = ", ".join(sorted(set(t["energy_source"].dropna())))
    estimated = " (**estimates**, not measurements)" if "estimate" in sources else ""
    lines = [f"# {title}", "", f"Trial list: `{trials}`. Energy source: `{sources}`{estimated}.", "",
             noise_note(t, comparisons), "", *selection_markdown(t, select_on, trials, _md),
             "## All variants (sorted by training energy; `pareto` marks the front)", "",
             _md(t[["variant", "stages", "width", "params_m", "gmacs_per_s", "val_eer_pct", "eer_pct", "eer_ci_low",
                    "eer_ci_high",
                    "eer_std", "min_dcf_p01", "train_energy_j", "train_energy_j_std", "train_co2_g",
                    "infer_j_per_1k_trials", "pareto"]].dropna(axis=1, how="all")), "",
             "![EER vs energy](eer_vs_energy.png)", ""]
    to_target = energy_to_target_table(runs)
    if len(to_target):
        lines += ["## Training energy to a validation EER", "", "Cumulative training energy (J, validation not "
                  "included) when the validation EER first reached each target, interpolated between epochs.", "",
                  _md(to_target), ""]
    curves = validation_curves(runs)
    if len(curves):
        fig_validation_curves(curves, out / "validation_curves.png")
        curves.to_csv(out / "validation_curves.csv", index=False)
        lines += ["## Learning curves: validation EER against training energy", "",
                  "![validation curves](validation_curves.png)", "", "Per validated epoch, the gain from the "
                  "previous one in EER points per kJ of training energy (diminishing returns inside a training):",
                  "", _md(curves), ""]
    lines += ["## Diminishing returns along the front", ""]
    if len(gains) > 1:
        lines += ["Each point of the front against the cheaper one before it: the extra training energy and the EER "
                  "points it bought (the cheapest point has none before it).", "", _md(gains_table(gains)), ""]
    else:
        lines += [f"The front has {len(gains)} point(s): a gain needs two.", ""]
    lines += [f"Knee of the front: **{knee}** (the point farthest below the line from the cheapest to the most "
              "accurate end, energy on a log scale)." if knee else
              f"No knee: the front has {len(gains)} point(s), and a knee needs 3.", "",
              "![EER vs params](eer_vs_params.png)", "", "## Inference", "", "![inference](inference_energy.png)", ""]
    lines += ["## Carbon levers", "", "gCO2e of the training, as run and with each lever, with its source:", "",
              _md(carbon_levers(t, parent_metrics or {}, search=_is_search(runs))), ""]
    deploy = deployment_table(runs, trials)
    if len(deploy):
        _fig_deployment(deploy, trials, out / "deployment.png")
        deploy.to_csv(out / "deployment.csv", index=False)
        lines += ["### Deployment: inference energy against EER per back end", "",
                  "`pareto` marks the deployment front (no other variant and back end has both fewer J per 1k "
                  "trials and a lower EER); `eer_diff_pct` is the back end's EER minus PyTorch fp32's, "
                  "`eer_diff_ci` its paired speaker-bootstrap interval (both on the same resamples).", "",
                  _md(deploy), "", "![deployment](deployment.png)", ""]
    for series in ("depth", "width", "stages"):
        sub = t[t["series"].str.split(",").apply(lambda s: series in s)]
        if len(sub):
            order = {"depth": "depth", "width": "width", "stages": "variant"}[series]
            lines += [f"## {series.capitalize()} series", "",
                      _md(sub.sort_values(order)[["variant", "stages", "width", "depth", "params_m", "eer_pct",
                                                  "min_dcf_p01", "train_energy_kwh", "train_co2_g",
                                                  "infer_j_per_1k_trials"]]), ""]
    lines += ["## Which differences are real?", "", comparisons_markdown(comparisons), ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return Report(out, t, knee, trials, select_on)


def terminal_table(report: Report) -> str:
    t = report.table.copy()
    cols = ["variant", "params_m", "eer_pct", "eer_ci", "min_dcf_p01", "train_energy_j", "train_co2_g",
            "infer_j_per_1k_trials", "pareto"]
    t["eer_ci"] = [f"[{lo:.2f}, {hi:.2f}]" if lo == lo and hi == hi else ""
                   for lo, hi in zip(t["eer_ci_low"], t["eer_ci_high"])]
    if t["eer_std"].notna().any():
        cols.insert(4, "eer_std")
    if report.select_on == "validation":  # the EER the front was chosen on, beside the test EER
        cols.insert(2, "val_eer_pct")
    return t[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
