"""Seed repeats: one variant trained with several seeds, the mean, spread and seed-mean intervals."""
from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.data

from bench.config import Config, build_config
from bench.data.trials import read_scores
from bench.energy.accounting import combined_energy_tags
from bench.eval.statistics import bootstrap_list, mean_std, percentile_interval, seed_bootstrap
from bench.models import spec_from_config
from bench.orchestration.tracked import logged_so_far, run_tracked
from bench.tracking.artifacts import environment_tags, run_scores
from bench.tracking.naming import (PARENT, STATS, TAG_KIND, TAG_OUT, TAG_VARIANT, result_metrics, stat_key,
                                   variant_params)
from bench.tracking.runlog import RunLog, unlogged_params
from bench.tracking.faults import Fault, classify
from bench.tracking.spool import PENDING
from bench.tracking.store import find_child_runs


def _finished_seeds(run_id: str, exp_id: str) -> dict:
    """seed -> the seed runs a continued variant run has on the server ({} when it does not answer: a search
    trial's run is continued while the server may be down, and its seeds are then all run)."""
    if run_id.startswith(PENDING):
        return {}
    try:
        return {r.data.tags.get("svbench.seed"): r for r in find_child_runs(run_id, exp_id)
                if r.data.tags.get(TAG_KIND) == "seed"}
    except Exception as exc:  # noqa: BLE001
        if classify(exc).fault is Fault.RETRY:
            return {}
        raise


# ---------------------------------------------------------------- seed repeats
SPREAD_KEYS = ("eer_pct/", "min_dcf_p01/", "min_dcf_p05/", "train/energy_j", "train/co2_g", "train/energy_kwh",
               "infer/energy_j_per_1k_trials")


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over seeds, plus ``<key>/std`` for EER, minDCF, energy and carbon. The seeds'
    own intervals are not averaged (an average of bounds is no interval): see ``seed_mean_intervals``."""
    keys = sorted(k for k in set().union(*per_seed) if not k.endswith(STATS))
    out: dict[str, float] = {}
    for k in keys:
        mean, std = mean_std([m.get(k) for m in per_seed])
        out[k] = mean
        if k.startswith(SPREAD_KEYS):
            out[stat_key(k, "std")] = std
    out["seeds"] = float(len(per_seed))
    return out


def seed_mean_intervals(files: list[dict[str, Path]], level: float, n_resamples: int,
                        variant: str) -> dict[str, float]:
    """``<metric>/<trials>/ci_low|ci_high`` of the seed mean, by the two-level bootstrap (seeds, then speakers:
    ``bench.eval.statistics.seed_bootstrap``), so the interval covers training randomness too."""
    out: dict[str, float] = {}
    for trials in sorted(set.intersection(*[set(f) for f in files])) if files else []:
        per_seed = [bootstrap_list(*read_scores(f[trials], trials), n_resamples) for f in files]
        for key, values in seed_bootstrap(per_seed, variant).resampled.items():
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
        existing, _ = logged_so_far(log, run_id)
        done = _finished_seeds(run_id, exp_id)
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    params = {k: v for k, v in variant_params(cfg, spec).items() if k != "train.seed"}
    log.log_batch(run_id, params=unlogged_params(existing, params, run_id))
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
            seed_scores.append({t: Path(r.score_file) for t, r in res.metrics.items() if r.score_file})
        summary = seed_summary(per_seed)
        if cfg.eval.bootstrap_resamples:
            summary.update(seed_mean_intervals(seed_scores, cfg.eval.ci_level, cfg.eval.bootstrap_resamples, name))
        log.log_batch(run_id, metrics={k: v for k, v in summary.items() if v == v},  # not NaN
                      tags=combined_energy_tags(seed_tags_seen))
    except BaseException:
        log.set_terminated(run_id, "FAILED")
        raise
    log.set_terminated(run_id, "FINISHED")
    log.settle()
    return run_id, summary
