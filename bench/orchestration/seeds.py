"""Seed repeats: one variant trained with several seeds, the mean, spread and seed-mean intervals."""
from __future__ import annotations

from dataclasses import dataclass
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
from bench.tracking.spool import PENDING, Spool
from bench.tracking.store import find_child_runs


@dataclass(frozen=True)
class FinishedSeed:
    """A seed run that ended FINISHED: its metrics and tags, and its fp32 score files (trial list -> path)."""
    run_id: str
    metrics: dict
    tags: dict
    scores: dict[str, Path]


def _seed_runs(run_id: str, exp_id: str, out_dir: Path, seeds: list[int]) -> tuple[dict[str, FinishedSeed],
                                                                                   dict[str, str]]:
    """(seed -> its FINISHED run: on the server, or, where the server does not have it (down, or the records not
    sent yet: a requeued Slurm job, a sweep re-run during an outage), in the spool of its seed folder;
    seed -> the id of its unfinished run on the server, to continue)."""
    found = finished_in_spools(out_dir, seeds)
    if run_id.startswith(PENDING):
        return found, {}
    try:
        runs = [r for r in find_child_runs(run_id, exp_id) if r.data.tags.get(TAG_KIND) == "seed"]
    except Exception as exc:  # noqa: BLE001
        if classify(exc).fault is Fault.RETRY:
            return found, {}
        raise
    unfinished = {}
    for r in runs:
        seed = r.data.tags.get("svbench.seed")
        if r.info.status == "FINISHED":
            found[seed] = FinishedSeed(r.info.run_id, dict(r.data.metrics), dict(r.data.tags),
                                       run_scores(r.info.run_id))
        elif seed not in found:
            unfinished[seed] = r.info.run_id
    return found, unfinished


def finished_in_spools(out_dir: Path, seeds: list[int]) -> dict[str, FinishedSeed]:
    """The seeds whose run the spool of ``out_dir/seed<N>`` created and ended FINISHED, with the final metrics
    and tags it recorded (step 0) and the score files the seed wrote."""
    out = {}
    for seed in seeds:
        folder = Path(out_dir) / f"seed{seed}"
        spool = Spool(folder)
        records = spool.records()
        create = next((r for r in records if r.op == "create_run"
                       and r.args.get("tags", {}).get("svbench.seed") == str(seed)), None)
        if create is None:
            continue
        refs = {create.run, spool.created_runs().get(create.run, create.run)}
        if not any(r.op == "set_status" and r.run in refs and r.args.get("status") == "FINISHED" for r in records):
            continue
        metrics, tags = {}, {}
        for r in records:
            if r.op == "log_batch" and r.run in refs:
                metrics |= {key: value for key, value, _, step in r.args.get("metrics", []) if step == 0}
                tags |= r.args.get("tags", {})
        scores = {p.stem: p for p in sorted((folder / "scores").glob("*.txt")) if "." not in p.stem}
        out[str(seed)] = FinishedSeed(spool.created_runs().get(create.run, create.run), metrics, tags, scores)
    return out


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
    done, unfinished = {}, {}
    if run_id is None:
        run_id = log.create_run(exp_id, name, {**tags, **({PARENT: parent_run_id} if parent_run_id else {})})
        existing = {}
    else:
        log.reopen(run_id)
        log.log_batch(run_id, tags=tags)
        existing, _ = logged_so_far(log, run_id)
        done, unfinished = _seed_runs(run_id, exp_id, Path(out_dir), [cfg.train.seed + i for i in range(cfg.seeds)])
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
            if prev is not None:
                per_seed.append(prev.metrics)
                seed_tags_seen.append(prev.tags)
                seed_scores.append(prev.scores)
                continue
            scfg = build_config({**cfg.model_dump(mode="json"), "seeds": 1,
                                 "train": {**cfg.train.model_dump(mode="json"), "seed": seed}})
            seed_tags = {**(extra_tags or {}), TAG_KIND: "seed", "svbench.seed": str(seed)}
            again = unfinished.get(str(seed))
            srid, res = run_tracked(scfg, Path(out_dir) / f"seed{seed}", run_id=again,
                                 parent_run_id=run_id, experiment_id=exp_id, run_name=f"{name}/seed{seed}",
                                 extra_tags=seed_tags, resume=again is not None or resume, progress=progress,
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
