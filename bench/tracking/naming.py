"""The one place that names what a variant run logs: tags, params and metric keys."""
from __future__ import annotations

from pathlib import Path

from bench.config import Config, flat_params
from bench.eval.results import BackendResult, ListResult
from bench.eval.statistics import METRICS

TAG_KIND = "svbench.kind"  # sweep | variant | study | trial


TAG_VARIANT = "svbench.variant"


TAG_SWEEP = "svbench.sweep"


TAG_SERIES = "svbench.series"


TAG_OUT = "svbench.out_dir"


TAG_PRUNE_REASON = "svbench.prune_reason"  # on a pruned trial's run: the energy forecast, or a dominated curve


PARENT = "mlflow.parentRunId"


# ---------------------------------------------------------------- names
def variant_params(cfg: Config, spec) -> dict:
    """The config flattened, the model's resolved shape, and ``data.root`` as an absolute path (a report pairs
    two runs only on the same data root)."""
    params = flat_params(cfg)
    params["data.root"] = str(Path(cfg.data.root).resolve())
    params.update({"model.depth": spec.depth, "model.stages": spec.stages_str, "model.width_mult": spec.width_mult,
                   "model.block": spec.block, "model.channels": "-".join(map(str, spec.channels)),
                   "model.family": spec.family, "model.embed_dim": spec.embed_dim, "model.pooling": spec.pooling})
    return {k: ("" if v is None else v) for k, v in params.items()}


def stat_key(key: str, stat: str) -> str:
    """The one naming scheme for a statistic of a metric: ``<key>/<stat>`` with stat std, ci_low or ci_high
    (``eer_pct/vox1-O/ci_low``, ``train/energy_j/std``)."""
    return f"{key}/{stat}"


STATS = ("/std", "/ci_low", "/ci_high")


def list_metrics(name: str, r: ListResult) -> dict[str, float]:
    """``<metric>/<trial list>`` and its interval's ``/ci_low``, ``/ci_high``."""
    m = {f"{key}/{name}": getattr(r, key) for key in METRICS}
    for key, (low, high) in r.ci.items():
        m[stat_key(f"{key}/{name}", "ci_low")] = low
        m[stat_key(f"{key}/{name}", "ci_high")] = high
    return m


def result_tags(result) -> dict[str, str]:
    """The run's tags from a ``VariantResult``: its energy labels, why training stopped, and each validation
    EER target it never reached (never logged as a 0 metric)."""
    tags = {**result.energy_tags, "train.stop_reason": result.train.stop_reason}
    for t in result.train.to_target:
        if not t.reached:
            tags[f"train.energy_to_val_eer/{t.target_eer_pct:g}"] = "not reached"
    return tags


def result_metrics(result) -> dict[str, float]:
    """Every metric of a ``VariantResult`` (bench.orchestration.variant)."""
    m: dict[str, float] = {}
    for trials, r in result.metrics.items():
        m.update(list_metrics(trials, r))
    m.update({k: v for k, v in result.energy_metrics.items() if v is not None})
    m.update(inference_metrics(result.inference))
    m["model/params_m"] = result.profile.params / 1e6
    m["model/params_with_head_m"] = result.profile.params_with_head / 1e6
    m["model/gmacs_per_s_audio"] = result.profile.gmacs_per_s_audio
    m["train/steps"] = result.train.steps
    for t in result.train.to_target:
        if t.reached:
            m[f"train/time_to_val_eer/{t.target_eer_pct:g}"] = t.time_s
            if t.energy_j is not None:
                m[f"train/energy_to_val_eer/{t.target_eer_pct:g}"] = t.energy_j
    for key, value in result.cohort.items():
        m[f"eval/cohort_{key}"] = value
    if result.forecast:
        for key in ("energy_j", "time_s", "probe_energy_j", "error_pct"):
            if getattr(result.forecast, key) is not None:
                m[f"forecast/{key}"] = getattr(result.forecast, key)
    return m


INFER_KEYS = ("energy_j_per_utt", "energy_j_per_1k_trials", "co2_g_per_1k_trials", "utt_per_s", "time_s",
              "model_size_mb", "warmup_s", "statistics_s")
LATENCY_KEYS = ("latency_p50_ms", "latency_p95_ms", "rtf", "throughput_utt_per_s", "throughput_low_utt_per_s",
                "throughput_high_utt_per_s", "best_batch_size", "latency_samples")


def inference_metrics(inference: dict[str, BackendResult], fp32_eer: bool = False) -> dict[str, float]:
    """``infer/<key>`` for fp32 and ``infer_<back end>/<key>`` for the others. The fp32 EER is the run's
    ``eer_pct/<trials>``; ``fp32_eer`` also logs it as ``infer/eer_pct/<trials>`` (a run of ``svbench infer``
    alone)."""
    m: dict[str, float] = {}
    for backend, row in inference.items():
        prefix = "infer" if backend == "fp32" else f"infer_{backend}"
        figures = [(key, getattr(row, key)) for key in INFER_KEYS]
        if row.latency is not None:
            figures += [(key, getattr(row.latency, key)) for key in LATENCY_KEYS]
        m.update({f"{prefix}/{key}": value for key, value in figures if value is not None})
        if backend != "fp32" or fp32_eer:
            m.update({f"{prefix}/eer_pct/{trials}": eer for trials, eer in row.eer_pct.items()})
        for trials, diff in row.eer_diff_pct.items():  # to PyTorch fp32, paired bootstrap interval
            key = f"{prefix}/eer_diff_pct/{trials}"
            m[key] = diff
            if trials in row.eer_diff_ci:
                m[stat_key(key, "ci_low")], m[stat_key(key, "ci_high")] = row.eer_diff_ci[trials]
    return m
