"""Inference energy: embedding extraction plus scoring, measured per precision.

Reports J per utterance, J per 1k trials, gCO2e per 1k trials, utterances/s and EER/minDCF for each
precision (fp32, bf16, fp16 where the device supports it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import Config
from bench.energy.accounting import intensity_series
from bench.energy.carbon import carbon_of
from bench.energy.meters import MeterSet
from bench.evaluate import LoadedModel, evaluate, load_trial_lists, make_fbank
from bench.latency import measure_latency


def measure_inference(model: LoadedModel, cfg: Config, device: torch.device, meters: MeterSet,
                      precisions: list[str], out_dir: Path | None = None, trial_names: list[str] | None = None,
                      series=None) -> dict[str, dict]:
    _, lists, _ = load_trial_lists(cfg, trial_names)
    n_utts = len(set().union(*[set(t.utterances) for t in lists]))
    n_trials = sum(len(t) for t in lists)
    series = series if series is not None else intensity_series(cfg.energy)
    out: dict[str, dict] = {}
    for precision in precisions:
        window = meters.window(f"infer/{precision}")  # embeddings and scoring only (see evaluate)
        metrics = evaluate(model, cfg, device, out_dir, trial_names, precision=precision, measured=window)
        r = meters.readings[-1]
        row = {"time_s": r.time_s, "utt_per_s": n_utts / r.time_s if r.time_s > 0 else None, "n_utts": n_utts,
               "n_trials": n_trials, **r.tags(), "metrics": metrics}
        if r.total_j is not None:
            carbon = carbon_of([r], cfg.energy.pue, cfg.energy.region, series)
            row.update(energy_j=r.total_j, energy_j_per_utt=r.total_j / n_utts,
                       energy_j_per_1k_trials=r.total_j / n_trials * 1000.0,
                       co2_g_per_1k_trials=carbon.co2_g / n_trials * 1000.0)
        if cfg.eval.latency:
            root, df = load_trial_lists(cfg, trial_names)[0::2]
            row.update(measure_latency(model.extractor, make_fbank(cfg, device), [root / p for p in df["path"]],
                                       device, precision, seed=cfg.train.seed))
        out[precision] = row
    return out


def eer_by_list(rows: dict[str, dict]) -> dict[str, dict]:
    """Rows of ``measure_inference`` with their per-list metrics reduced to ``eer_pct``: trial list -> EER."""
    return {p: {k: v for k, v in row.items() if k != "metrics"}
            | {"eer_pct": {n: m["eer_pct"] for n, m in row["metrics"].items()}} for p, row in rows.items()}
