"""What a run carries besides metrics: environment tags, datasets, plots, score files, config, model."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from bench.config import Config, config_to_yaml
from bench.data.manifest import TRAIN_MANIFEST, data_root
from bench.data.trials import find_trial_lists, read_trials
from bench.eval.metrics import det_points
from bench.eval.scoring import load_model
from bench.machine import cpu_model
from bench.training.trainer import training_split
from bench.tracking.runlog import RunLog


def environment_tags() -> dict[str, str]:
    tags = {"torch.version": torch.__version__, "cuda.version": str(torch.version.cuda),
            "cpu.model": cpu_model(), "cpu.count": str(os.cpu_count()),
            "gpu.count": str(torch.cuda.device_count()), "git.commit": _git_commit()}
    if torch.cuda.is_available():
        tags["gpu.model"] = torch.cuda.get_device_name(0)
    return tags


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


SKIPPED_PARAM = "data.skipped_trials"  # .<list>: trials `data add-eval --skip-missing` dropped from it


def log_datasets(log: RunLog, run: str, cfg: Config) -> None:
    """The training manifest (without validation speakers), the validation list (with ``data.val_speakers``) and
    each trial list as MLflow datasets of ``run`` (name, digest, source, context): the runs table's Datasets
    column shows what each run used. A list that ``--skip-missing`` reduced logs ``data.skipped_trials.<list>``."""
    root = data_root(cfg.data.root)
    name = root.resolve().name
    train, val = training_split(cfg)
    lists = [(val.trials, root / TRAIN_MANIFEST, "validation")] if val is not None else []  # from the manifest
    lists += [(read_trials(path), path, "evaluation") for path in find_trial_lists(root, cfg.data.trials)]
    tables = [(train, root / TRAIN_MANIFEST, "train", "training")]
    tables += [(pd.DataFrame({"label": t.labels, "enroll": t.enroll, "test": t.test}), path, t.name, context)
               for t, path, context in lists]
    with warnings.catch_warnings():  # MLflow's hints (integer schema, local source kinds) are not for datasets
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        log.log_inputs(run, [(mlflow.data.from_pandas(df, source=str(path.resolve()), name=f"{name}/{label}"), context)
                             for df, path, label, context in tables])
    reduced = {f"{SKIPPED_PARAM}.{t.name}": t.skipped_trials for t, _, _ in lists if t.skipped_trials}
    if reduced:
        log.log_batch(run, params=reduced)


# ---------------------------------------------------------------- artifacts
def _det_plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    fig, ax = plt.subplots(figsize=(5, 5))
    for trials, r in result.metrics.items():
        if not r.score_file:  # the average over lists has no curve of its own
            continue
        rows = [ln.split() for ln in Path(r.score_file).read_text().splitlines()]
        labels = np.array([int(x[0]) for x in rows])
        scores = np.array([float(x[1]) for x in rows])
        fpr, fnr = det_points(scores, labels)
        clip = lambda v: np.clip(v, 1e-4, 1 - 1e-4)  # noqa: E731
        ax.plot(norm.ppf(clip(fpr)), norm.ppf(clip(fnr)), label=f"{trials} (EER {r.eer_pct:.2f}%)")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5]
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlabel("false acceptance rate")
    ax.set_ylabel("false rejection rate")
    ax.set_title(f"DET: {result.name}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _energy_plot(result, out_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    tl = out_dir / "energy_timeline.csv"
    if tl.is_file():
        df = pd.read_csv(tl)
        for comp, g in df.groupby("component"):
            ax.plot(g["time_unix_s"] - df["time_unix_s"].min(), g["power_w"], label=comp)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("power (W)")
    else:
        hist = result.train.history
        ax.bar([h["epoch"] for h in hist], [h.get("energy_j") or 0 for h in hist])
        ax.set_xlabel("epoch")
        ax.set_ylabel("energy (J)")
    ax.set_title(f"training energy ({result.energy_tags.get('energy.source', 'none')})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_artifacts(log: RunLog, run: str, result, cfg: Config, model_path: Path, log_model: bool) -> None:
    out_dir = Path(result.out_dir)
    log.log_text(run, config_to_yaml(cfg), "config.yaml")
    log.log_dict(run, json.loads(result.to_json()), "result.json")
    for r in result.metrics.values():
        if r.score_file and Path(r.score_file).is_file():
            log.log_file(run, r.score_file, "scores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _det_plot(result, tmp / "det.png")
        _energy_plot(result, out_dir, tmp / "energy.png")
        log.log_file(run, tmp / "det.png")
        log.log_file(run, tmp / "energy.png")
    if (out_dir / "energy_timeline.csv").is_file():
        log.log_file(run, out_dir / "energy_timeline.csv")
    windows = pd.DataFrame([{"epoch": h["epoch"], "time_s": h["time_s"], "energy_j": h.get("energy_j")}
                            for h in result.train.history])
    log.log_text(run, windows.to_csv(index=False), "energy_per_epoch.csv")
    model = load_model(model_path, torch.device("cpu"))
    summary = (f"{model.embedder}\n\nspec: {json.dumps(result.spec, indent=1)}\n"
               f"profile: {json.dumps(asdict(result.profile), indent=1)}\n")
    log.log_text(run, summary, "model_summary.txt")
    if log_model:
        log.log_model(run, model_path)


def _score_artifacts(run_id: str) -> list[str]:
    return [a.path for a in MlflowClient().list_artifacts(run_id, "scores") if a.path.count(".") == 1]


def score_lists(run_id: str) -> list[str]:
    """The trial lists a run logged fp32 score files for, without downloading them."""
    return sorted(Path(n).stem for n in _score_artifacts(run_id))


def run_scores(run_id: str, only: str | None = None) -> dict[str, Path]:
    """The fp32 score files a run logged (``scores/<trials>.txt``; with ``only``, that list's alone),
    downloaded: trial list -> local path."""
    names = [n for n in _score_artifacts(run_id) if only is None or Path(n).stem == only]
    if not names:
        return {}
    local = Path(tempfile.mkdtemp(prefix="svbench-scores-"))
    return {Path(n).stem: Path(MlflowClient().download_artifacts(run_id, n, str(local))) for n in names}
