"""The one place that knows MLflow names: params, metric keys, tags and artifacts of a variant run.

Metric keys are identical across runs (DESIGN.md): ``eer_pct/<trials>``, ``min_dcf_p01/<trials>``,
``min_dcf_p05/<trials>``, ``train/energy_j`` ... ``infer/energy_j_per_1k_trials``, ``model/params_m``.
The tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bench.config import Config, config_to_yaml, flat_params
from bench.energy.reading import reading_from_state
from bench.errors import BenchError
from bench.evaluate import load_model
from bench.machine import cpu_model
from bench.tracking.spool import PENDING, RunLog, enqueue_unsent, shorten_http_retries, transient
from bench.tracking.spool import finish as finish_spools

DEFAULT_URI = "sqlite:///mlflow.db"
TAG_KIND = "svbench.kind"  # sweep | variant | study | trial
TAG_VARIANT = "svbench.variant"
TAG_SWEEP = "svbench.sweep"
TAG_SERIES = "svbench.series"
TAG_OUT = "svbench.out_dir"
PARENT = "mlflow.parentRunId"


def setup_tracking() -> str:
    for name in ("mlflow", "alembic"):  # keep the CLI's stderr for our messages and real warnings
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's system-metrics sampler stops at a tracking outage (it is not spooled): no warnings for that
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    shorten_http_retries()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_URI)
    return mlflow.get_tracking_uri()


def send_leftovers(out: str | Path) -> None:
    """At the start of a command (the server answers): send what an earlier outage left under ``out`` first."""
    if enqueue_unsent(out):
        RunLog(out).settle()


def finish(out: str | Path, wait_s: float) -> bool:
    """At the end of a command: send what is left under ``out``, waiting at most ``wait_s`` for a server that
    is down; True when the server has everything."""
    return finish_spools(out, wait_s) == 0


def take_outer_run() -> str | None:
    """The run ``mlflow run`` created for this command (``MLFLOW_RUN_ID``), taken out of the environment so
    that no nested ``start_run`` and no child process adopts it by accident; None outside ``mlflow run``."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def experiment_of(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def set_experiment(name: str) -> str:
    setup_tracking()
    try:
        return mlflow.set_experiment(name).experiment_id
    except Exception as exc:  # server down, bad URI
        raise _unreachable(exc) from None


def check_reachable() -> None:
    setup_tracking()
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # server down, bad URI
        raise _unreachable(exc) from None


def _unreachable(exc: Exception) -> BenchError:
    return BenchError(f"cannot reach MLflow tracking at {mlflow.get_tracking_uri()} "
                      f"({str(exc).splitlines()[0][:120]}); start the server or unset MLFLOW_TRACKING_URI")


# ---------------------------------------------------------------- names
def variant_params(cfg: Config, spec) -> dict:
    params = flat_params(cfg)
    params.update({"model.depth": spec.depth, "model.stages": spec.stages_str, "model.width_mult": spec.width_mult,
                   "model.block": spec.block, "model.channels": "-".join(map(str, spec.channels)),
                   "model.family": spec.family, "model.embed_dim": spec.embed_dim, "model.pooling": spec.pooling})
    return {k: ("" if v is None else v) for k, v in params.items()}


def stat_key(key: str, stat: str) -> str:
    """The one naming scheme for a statistic of a metric: ``<key>/<stat>`` with stat std, ci_low or ci_high
    (``eer_pct/vox1-O/ci_low``, ``train/energy_j/std``)."""
    return f"{key}/{stat}"


STATS = ("/std", "/ci_low", "/ci_high")


def result_metrics(result) -> dict[str, float]:
    m: dict[str, float] = {}
    for trials, r in result.metrics.items():
        m[f"eer_pct/{trials}"] = r["eer_pct"]
        m[f"min_dcf_p01/{trials}"] = r["min_dcf_p01"]
        m[f"min_dcf_p05/{trials}"] = r["min_dcf_p05"]
        for key, (low, high) in r.get("ci", {}).items():
            m[stat_key(f"{key}/{trials}", "ci_low")] = low
            m[stat_key(f"{key}/{trials}", "ci_high")] = high
    m.update({k: v for k, v in result.energy_metrics.items() if v is not None})
    m.update(inference_metrics(result.inference))
    m["model/params_m"] = result.profile["params"] / 1e6
    m["model/params_with_head_m"] = result.profile["params_with_head"] / 1e6
    m["model/gmacs_per_s_audio"] = result.profile["gmacs_per_s_audio"]
    m["train/steps"] = result.train["steps"]
    for key, value in result.cohort.items():
        m[f"eval/cohort_{key}"] = value
    if result.forecast:
        for key in ("energy_j", "time_s", "probe_energy_j", "error_pct"):
            if result.forecast.get(key) is not None:
                m[f"forecast/{key}"] = result.forecast[key]
    return m


def inference_metrics(inference: dict[str, dict], fp32_eer: bool = False) -> dict[str, float]:
    """``infer/<key>`` for fp32 and ``infer_<precision>/<key>`` for the others, from rows whose ``eer_pct`` maps
    trial list -> EER. The fp32 EER is the run's ``eer_pct/<trials>``; ``fp32_eer`` also logs it as
    ``infer/eer_pct/<trials>`` (a run of ``svbench infer`` alone)."""
    m: dict[str, float] = {}
    for precision, row in inference.items():
        prefix = "infer" if precision == "fp32" else f"infer_{precision}"
        for key in ("energy_j_per_utt", "energy_j_per_1k_trials", "co2_g_per_1k_trials", "utt_per_s", "time_s",
                    "latency_p50_ms", "latency_p95_ms", "rtf", "throughput_utt_per_s", "best_batch_size",
                    "model_size_mb"):
            if row.get(key) is not None:
                m[f"{prefix}/{key}"] = row[key]
        if precision != "fp32" or fp32_eer:
            m.update({f"{prefix}/eer_pct/{trials}": eer for trials, eer in row["eer_pct"].items()})
        for trials, diff in row.get("eer_diff_pct", {}).items():  # to PyTorch fp32, paired bootstrap interval
            key = f"{prefix}/eer_diff_pct/{trials}"
            m[key] = diff
            if trials in row.get("eer_diff_ci", {}):
                m[stat_key(key, "ci_low")], m[stat_key(key, "ci_high")] = row["eer_diff_ci"][trials]
    return m


def log_to_outer_run(run_id: str, params: dict, metrics: dict[str, float], tags: dict | None = None,
                     artifacts: list[Path] = (), artifact_dir: str | None = None) -> None:
    """What a command without a run of its own (infer, report, data) logs into the run ``mlflow run`` made."""
    client = MlflowClient()
    log_new_params(run_id, params)
    client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()
                              if v is not None],
                     tags=[RunTag(k, str(v)) for k, v in {**environment_tags(), **(tags or {})}.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_dir)


def log_new_params(run_id: str, params: dict) -> None:
    """Log the params the run does not hold yet (``mlflow run`` logs its entry point's parameters, such as
    ``seeds`` or ``out``, itself; a param's value can never change)."""
    client = MlflowClient()
    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


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


def log_datasets(log: RunLog, run: str, cfg: Config) -> None:
    """The training manifest and each trial list as MLflow datasets of ``run`` (name, digest, source): the
    runs table's Datasets column shows what each run used."""
    from bench.data.manifest import TRAIN_MANIFEST, data_root, read_manifest
    from bench.data.trials import find_trial_lists, read_trials

    root = data_root(cfg.data.root)
    name = root.resolve().name
    tables = [(read_manifest(root / TRAIN_MANIFEST), root / TRAIN_MANIFEST, "train", "training")]
    for path in find_trial_lists(root, cfg.data.trials):
        t = read_trials(path)
        tables.append((pd.DataFrame({"label": t.labels, "enroll": t.enroll, "test": t.test}), path, t.name,
                       "evaluation"))
    with warnings.catch_warnings():  # MLflow's hints (integer schema, local source kinds) are not for datasets
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        log.log_inputs(run, [(mlflow.data.from_pandas(df, source=str(path.resolve()), name=f"{name}/{label}"), context)
                             for df, path, label, context in tables])


# ---------------------------------------------------------------- callbacks
class EpochLogger:
    """Trainer callback: per-epoch loss, accuracy, lr, margin, energy and time with step = epoch, into the
    run's spool (the sender sends them; an outage never stops the epoch loop)."""

    KEYS = {"loss": "train/epoch_loss", "accuracy": "train/epoch_accuracy", "lr": "train/epoch_lr",
            "margin": "train/epoch_margin", "energy_j": "train/epoch_energy_j", "time_s": "train/epoch_time_s",
            "skipped_files": "train/epoch_skipped_files"}

    def __init__(self, log: RunLog, run_id: str):
        self.log = log
        self.run_id = run_id

    def on_train_begin(self, info: dict) -> None:
        """After a resume: record each restored epoch's metrics that never reached the spool (killed between
        the checkpoint and the record), never twice; checked per metric, not per epoch."""
        history = info.get("history", [])
        if not history:
            return
        logged = self.log.spool.logged_steps(self.run_id)
        for h in history:
            self._log(h["epoch"], h, skip=lambda name, epoch: epoch in logged.get(name, ()))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._log(epoch, metrics)

    def _log(self, epoch: int, metrics: dict, skip=lambda name, epoch: False) -> None:
        """One record, one ``log_batch``: one transaction in the tracking store, so a kill leaves all or none."""
        batch = {name: metrics[k] for k, name in self.KEYS.items()
                 if metrics.get(k) is not None and not skip(name, epoch)}
        # the epoch's labels come with its energy, so a run killed before its end is labelled too
        tags = reading_from_state(metrics["energy"]).tags() if batch and metrics.get("energy") else {}
        if batch:
            self.log.log_batch(self.run_id, metrics=batch, tags=tags, step=epoch)


# ---------------------------------------------------------------- artifacts
def _det_plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from bench.metrics import det_points

    fig, ax = plt.subplots(figsize=(5, 5))
    for trials, r in result.metrics.items():
        rows = [ln.split() for ln in Path(r["score_file"]).read_text().splitlines()]
        labels = np.array([int(x[0]) for x in rows])
        scores = np.array([float(x[1]) for x in rows])
        fpr, fnr = det_points(scores, labels)
        clip = lambda v: np.clip(v, 1e-4, 1 - 1e-4)  # noqa: E731
        ax.plot(norm.ppf(clip(fpr)), norm.ppf(clip(fnr)), label=f"{trials} (EER {r['eer_pct']:.2f}%)")
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
        hist = result.train["history"]
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
        if r.get("score_file") and Path(r["score_file"]).is_file():
            log.log_file(run, r["score_file"], "scores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _det_plot(result, tmp / "det.png")
        _energy_plot(result, out_dir, tmp / "energy.png")
        log.log_file(run, tmp / "det.png")
        log.log_file(run, tmp / "energy.png")
    if (out_dir / "energy_timeline.csv").is_file():
        log.log_file(run, out_dir / "energy_timeline.csv")
    windows = pd.DataFrame([{"epoch": h["epoch"], "time_s": h["time_s"], "energy_j": h.get("energy_j")}
                            for h in result.train["history"]])
    log.log_text(run, windows.to_csv(index=False), "energy_per_epoch.csv")
    model = load_model(model_path, torch.device("cpu"))
    summary = (f"{model.embedder}\n\nspec: {json.dumps(result.spec, indent=1)}\n"
               f"profile: {json.dumps(result.profile, indent=1)}\n")
    log.log_text(run, summary, "model_summary.txt")
    if log_model:
        log.log_model(run, model_path)


# ---------------------------------------------------------------- one tracked variant
def find_child_runs(parent_run_id: str, experiment_id: str) -> list:
    return MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'",
                                      max_results=5000)


def run_tracked(cfg: Config, out_dir: str | Path, run_id: str | None = None, parent_run_id: str | None = None,
                experiment_id: str | None = None, run_name: str | None = None, extra_tags: dict | None = None,
                resume: bool = False, progress: bool = True, meters=None, callbacks: list | None = None,
                force: bool = False):
    """``run_variant`` inside an MLflow run (a new one, or ``run_id`` continued); returns (run_id, result).
    ``callbacks`` are trainer callbacks beside the epoch logger; ``force`` replaces an earlier run's checkpoints.
    Every write goes through the spool of ``out_dir`` (``bench.tracking.spool``)."""
    from bench.models import spec_from_config
    from bench.variant import run_variant

    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    log = RunLog(out_dir)
    tags = {TAG_KIND: "variant", TAG_VARIANT: run_name or cfg.name, TAG_OUT: str(Path(out_dir).resolve()),
            **environment_tags(), **(extra_tags or {})}
    if run_id is None:
        rid = log.create_run(experiment_id, run_name or cfg.name,
                             {**tags, **({PARENT: parent_run_id} if parent_run_id else {})})
        existing, has_inputs = {}, False
    else:
        rid = run_id
        log.reopen(rid)
        log.log_batch(rid, tags=tags)
        existing, has_inputs = _logged_so_far(log, rid)
    params = {k: v for k, v in variant_params(cfg, spec).items() if k not in existing}
    log.log_batch(rid, params=params)
    if not has_inputs:  # a resumed run has its datasets already
        log_datasets(log, rid, cfg)
    monitor = _system_metrics(rid) if cfg.tracking.system_metrics else None
    try:
        result = run_variant(cfg, out_dir, resume=resume, callbacks=[EpochLogger(log, rid), *(callbacks or [])],
                             progress=progress, meters=meters, force=force)
        if result is not None:
            log.log_batch(rid, metrics=result_metrics(result), tags=result.energy_tags)
            log_artifacts(log, rid, result, cfg, Path(out_dir) / "model.pt", cfg.tracking.log_model)
    except BaseException:
        log.set_terminated(rid, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    log.set_terminated(rid, "FINISHED")
    log.settle()
    return rid, result


def _logged_so_far(log: RunLog, run_id: str) -> tuple[dict, bool]:
    """(params, has dataset inputs) of a run being continued: the server's, when it answers, and what the
    spool of its folder holds."""
    params = log.spool.logged_params(run_id)
    has_inputs = any(r.op == "log_inputs" and r.run == run_id for r in log.spool.records())
    if not run_id.startswith(PENDING):
        try:
            run = MlflowClient().get_run(run_id)
            params.update(run.data.params)
            has_inputs = has_inputs or bool(run.inputs.dataset_inputs)
        except Exception:  # noqa: BLE001 - unreachable: the params are logged again, with the same values
            pass
    return params, has_inputs


def _finished_seeds(run_id: str, exp_id: str) -> dict:
    """seed -> the seed runs a continued variant run has on the server ({} when it does not answer: a search
    trial's run is continued while the server may be down, and its seeds are then all run)."""
    if run_id.startswith(PENDING):
        return {}
    try:
        return {r.data.tags.get("svbench.seed"): r for r in find_child_runs(run_id, exp_id)
                if r.data.tags.get(TAG_KIND) == "seed"}
    except Exception as exc:  # noqa: BLE001
        if transient(exc):
            return {}
        raise


def _system_metrics(run_id: str):
    """MLflow's own system-metrics sampler for a run the server holds (it is not spooled: it stops at an
    outage and loses those samples)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    if run_id.startswith(PENDING):
        return None
    monitor = SystemMetricsMonitor(run_id, resume_logging=True)
    monitor.start()
    return monitor


# ---------------------------------------------------------------- seed repeats
SPREAD_KEYS = ("eer_pct/", "min_dcf_p01/", "min_dcf_p05/", "train/energy_j", "train/co2_g", "train/energy_kwh",
               "infer/energy_j_per_1k_trials")


def combined_energy_tags(per_run: list[dict]) -> dict[str, str]:
    """The labels of a figure made from several runs' figures (a seed mean): every source, estimated when
    any part is, every incomplete component."""
    def values(key: str) -> set[str]:
        return {t[key] for t in per_run if t.get(key)}

    return {"energy.source": ",".join(sorted(values("energy.source") - {"none"})) or "none",
            "energy.estimated": str("true" in values("energy.estimated")).lower(),
            "energy.incomplete": ",".join(sorted(values("energy.incomplete") - {"none"})) or "none",
            "energy.attribution": ",".join(sorted(values("energy.attribution"))) or "exclusive"}


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over seeds, plus ``<key>/std`` for EER, minDCF, energy and carbon. The seeds'
    own intervals are not averaged (an average of bounds is no interval): see ``seed_mean_intervals``."""
    from bench.statistics import mean_std

    keys = sorted(k for k in set().union(*per_seed) if not k.endswith(STATS))
    out: dict[str, float] = {}
    for k in keys:
        mean, std = mean_std([m.get(k) for m in per_seed])
        out[k] = mean
        if k.startswith(SPREAD_KEYS):
            out[stat_key(k, "std")] = std
    out["seeds"] = float(len(per_seed))
    return out


def run_scores(run_id: str) -> dict[str, Path]:
    """The fp32 score files a run logged (``scores/<trials>.txt``), downloaded: trial list -> local path."""
    client = MlflowClient()
    names = [a.path for a in client.list_artifacts(run_id, "scores") if a.path.count(".") == 1]
    if not names:
        return {}
    local = Path(tempfile.mkdtemp(prefix="svbench-scores-"))
    return {Path(n).stem: Path(client.download_artifacts(run_id, n, str(local))) for n in names}


def seed_mean_intervals(files: list[dict[str, Path]], level: float, n_resamples: int) -> dict[str, float]:
    """``<metric>/<trials>/ci_low|ci_high`` of the seed mean: every seed's scores on the same speaker
    resamples, each resample's metric averaged over seeds, then the percentile interval."""
    from bench.data.trials import read_scores
    from bench.statistics import percentile_interval, resampled_metrics, seed_mean, speaker_of, speaker_resamples

    out: dict[str, float] = {}
    for trials in sorted(set.intersection(*[set(f) for f in files])) if files else []:
        per_seed = []
        res = None
        for f in files:
            t, scores = read_scores(f[trials], trials)
            spk_e, spk_t = [speaker_of(u) for u in t.enroll], [speaker_of(u) for u in t.test]
            res = res or speaker_resamples(spk_e, spk_t, n_resamples)
            per_seed.append(resampled_metrics(scores, t.labels, spk_e, spk_t, res))
        for key, values in seed_mean(per_seed).items():
            ci = percentile_interval(values, level)
            out[stat_key(f"{key}/{trials}", "ci_low")] = ci.low
            out[stat_key(f"{key}/{trials}", "ci_high")] = ci.high
    return out


def run_tracked_seeds(cfg: Config, out_dir: str | Path, run_id: str | None = None, parent_run_id: str | None = None,
                      experiment_id: str | None = None, run_name: str | None = None, extra_tags: dict | None = None,
                      resume: bool = False, progress: bool = True, meters=None,
                      callbacks: list | None = None, force: bool = False) -> tuple[str, dict]:
    """One variant over ``cfg.seeds`` seeds. With one seed this is ``run_tracked``; with several, the
    variant run is the parent of one run per seed and logs the mean and standard deviation.
    Returns (variant run id, metrics) where metrics are the variant's (mean) metrics."""
    if cfg.seeds <= 1:
        rid, res = run_tracked(cfg, out_dir, run_id, parent_run_id, experiment_id, run_name, extra_tags, resume,
                               progress, meters, callbacks, force)
        return rid, (result_metrics(res) if res is not None else {})
    from bench.config import build_config
    from bench.models import spec_from_config

    log = RunLog(out_dir)
    name = run_name or cfg.name
    tags = {TAG_KIND: "variant", TAG_VARIANT: name, TAG_OUT: str(Path(out_dir).resolve()), **environment_tags(),
            **(extra_tags or {})}
    exp_id = experiment_id or mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    done = {}
    if run_id is None:
        run_id = log.create_run(exp_id, name, {**tags, **({PARENT: parent_run_id} if parent_run_id else {})})
        existing = {}
    else:
        log.reopen(run_id)
        log.log_batch(run_id, tags=tags)
        existing, _ = _logged_so_far(log, run_id)
        done = _finished_seeds(run_id, exp_id)
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    log.log_batch(run_id, params={k: v for k, v in variant_params(cfg, spec).items()
                                  if k not in existing and k != "train.seed"})
    per_seed = []
    seed_tags_seen: list[dict] = []
    seed_scores: list[dict[str, Path]] = []
    try:
        for i in range(cfg.seeds):
            seed = cfg.train.seed + i
            prev = done.get(str(seed))
            if prev is not None and prev.info.status == "FINISHED":
                per_seed.append(dict(prev.data.metrics))
                seed_tags_seen.append(dict(prev.data.tags))
                seed_scores.append(run_scores(prev.info.run_id))
                continue
            scfg = build_config({**cfg.model_dump(mode="json"), "seeds": 1,
                                 "train": {**cfg.train.model_dump(mode="json"), "seed": seed}})
            seed_tags = {**(extra_tags or {}), TAG_KIND: "seed", "svbench.seed": str(seed)}
            srid, res = run_tracked(scfg, Path(out_dir) / f"seed{seed}", run_id=prev.info.run_id if prev else None,
                                 parent_run_id=run_id, experiment_id=exp_id, run_name=f"{name}/seed{seed}",
                                 extra_tags=seed_tags, resume=prev is not None or resume, progress=progress,
                                 meters=meters, callbacks=callbacks, force=force)
            per_seed.append(result_metrics(res))
            seed_tags_seen.append(res.energy_tags)
            seed_scores.append({t: Path(r["score_file"]) for t, r in res.metrics.items() if r.get("score_file")})
        summary = seed_summary(per_seed)
        if cfg.eval.bootstrap_resamples:
            summary.update(seed_mean_intervals(seed_scores, cfg.eval.ci_level, cfg.eval.bootstrap_resamples))
        log.log_batch(run_id, metrics={k: v for k, v in summary.items() if v == v},  # not NaN
                      tags=combined_energy_tags(seed_tags_seen))
    except BaseException:
        log.set_terminated(run_id, "FAILED")
        raise
    log.set_terminated(run_id, "FINISHED")
    log.settle()
    return run_id, summary
