# %% [markdown]
# # The study's figures, from any experiment
#
# A percent-format script: it runs as a script and opens as a notebook (Jupyter with jupytext, VS Code, PyCharm).
# It reads the finished runs of one MLflow experiment (a sweep, a search) back into pandas with the report's own
# table (`analysis.build.variant_table`) and draws the reference study's figures (docs/STUDY.md):
#
# 1. EER against training energy, with the Pareto front;
# 2. the depth and the width series: EER against parameters;
# 3. diminishing returns: EER points gained per extra kWh along the front;
# 4. inference energy per 1k trials at fp32 against bf16.
#
# ```bash
# MLFLOW_TRACKING_URI=sqlite:///mlflow.db python -m analysis.study_figures --experiment svbench-demo --out figures
# ```
#
# A figure whose runs lack the figures it needs (no bf16 inference, a single variant) says so in its panel
# instead of drawing an empty axis.

# %%
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.build import load_runs, variant_table  # noqa: E402
from analysis.pareto import marginal_gains, pareto_mask  # noqa: E402

FIGURES = ("eer_vs_energy.png", "series.png", "diminishing_returns.png", "inference_precision.png")


def _say_why(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


# %% [markdown]
# ## 1. EER against training energy, with the front

# %%
def eer_vs_energy(t: pd.DataFrame, trials: str, ax) -> None:
    ok = t.dropna(subset=["train_energy_j", "eer_pct"])
    if ok.empty:
        return _say_why(ax, "no run logged both train/energy_j and an EER")
    ax.scatter(ok["train_energy_j"] / 3.6e6, ok["eer_pct"], color="tab:blue")
    for _, r in ok.iterrows():
        ax.annotate(r["variant"], (r["train_energy_j"] / 3.6e6, r["eer_pct"]), fontsize=7)
    front = ok[pareto_mask(ok["eer_pct"].to_numpy(), ok["train_energy_j"].to_numpy())]
    front = front.sort_values("train_energy_j")
    ax.plot(front["train_energy_j"] / 3.6e6, front["eer_pct"], color="tab:red", label="Pareto front")
    ax.set(xscale="log", xlabel="training energy (kWh)", ylabel=f"EER % ({trials})", title="EER against energy")
    ax.legend()


# %% [markdown]
# ## 2. The depth and the width series

# %%
def series(t: pd.DataFrame, trials: str, ax) -> None:
    drawn = 0
    for name, marker in (("depth", "o"), ("width", "s")):
        s = t[t["series"].str.split(",").apply(lambda parts, n=name: n in parts)].dropna(subset=["params_m"])
        if len(s):
            s = s.sort_values("params_m")
            ax.plot(s["params_m"], s["eer_pct"], marker=marker, label=f"{name} series")
            drawn += 1
    if not drawn:
        return _say_why(ax, "no run is tagged with a depth or width series (svbench.series); sweep a grid with "
                            "series, e.g. paper-depth")
    ax.set(xscale="log", xlabel="parameters (M)", ylabel=f"EER % ({trials})", title="Depth and width")
    ax.legend()


# %% [markdown]
# ## 3. Diminishing returns along the front

# %%
def diminishing_returns(t: pd.DataFrame, ax) -> None:
    ok = t.dropna(subset=["train_energy_j", "eer_pct"])
    front = ok[pareto_mask(ok["eer_pct"].to_numpy(), ok["train_energy_j"].to_numpy())]
    if len(front) < 2:
        return _say_why(ax, f"the front has {len(front)} variant(s): a gain per kWh needs two")
    gains = marginal_gains(front, "train_energy_j", "eer_pct").iloc[1:]
    ax.bar(gains["variant"], gains["eer_gain_per_kwh"], color="tab:green")
    ax.set(ylabel="EER points gained per extra kWh", title="Diminishing returns along the front")
    ax.tick_params(axis="x", rotation=30, labelsize=7)


# %% [markdown]
# ## 4. Inference energy per 1k trials: fp32 against bf16

# %%
def inference_precision(t: pd.DataFrame, ax) -> None:
    ok = t.dropna(subset=["infer_j_per_1k_trials", "infer_bf16_j_per_1k_trials"])
    if ok.empty:
        return _say_why(ax, "no run measured inference at both fp32 and bf16 (eval.infer_precisions)")
    x = range(len(ok))
    ax.bar([i - 0.2 for i in x], ok["infer_j_per_1k_trials"], width=0.4, label="fp32")
    ax.bar([i + 0.2 for i in x], ok["infer_bf16_j_per_1k_trials"], width=0.4, label="bf16")
    ax.set_xticks(list(x), ok["variant"], rotation=30, fontsize=7)
    ax.set(ylabel="J per 1k trials", title="Inference energy by precision")
    ax.legend()


# %% [markdown]
# ## All four, from one experiment

# %%
def draw(experiment: str, out: Path, trials: str | None = None) -> list[Path]:
    """The four figures of ``experiment``'s runs, as PNG files under ``out``; returns their paths."""
    runs = load_runs(experiment=experiment)
    t, trials = variant_table(runs, trials)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in zip(FIGURES, (lambda ax: eer_vs_energy(t, trials, ax), lambda ax: series(t, trials, ax),
                                    lambda ax: diminishing_returns(t, ax), lambda ax: inference_precision(t, ax))):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot(ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the study's figures from an MLflow experiment")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", default="figures")
    p.add_argument("--trials", default=None, help="the trial list whose EER is drawn (default: the first)")
    args = p.parse_args(argv)
    for path in draw(args.experiment, Path(args.out), args.trials):
        print(path)
    return 0


# %%
if __name__ == "__main__" and "ipykernel" not in sys.modules:
    sys.exit(main(sys.argv[1:]))
