"""Inference energy: embedding extraction plus scoring, measured per back end.

Back ends: the PyTorch precisions (fp32, bf16, fp16 where the device supports it) and ONNX Runtime
(``onnx-fp32``, ``onnx-int8``: ``bench.eval.deploy``). For each: J per utterance, J per 1k trials, gCO2e per 1k
trials, utterances/s, EER/minDCF, latency at batch size 1, size on disk, and for every back end but PyTorch
fp32 the EER difference to it with its paired speaker-bootstrap interval (both on the same resamples).

The trial lists of one data root are extracted in one window per back end: a file that several lists name
(VoxCeleb1-O, -E and -H share theirs) is extracted once and its energy counted once (``n_utts`` counts files).
The window's energy is split across the lists by their trials: each list's share is its trials times the J per 1k
trials of the whole window.

Like for like, per back end, before its energy and latency windows and outside them:

* **its own scoring statistics**: the training mean embedding and the AS-norm cohort are extracted with the
  back end itself (PyTorch fp32 reuses the checkpoint's, extracted by the same model): a setup cost a
  deployment pays once, logged as ``statistics_s``;
* **a warm-up pass** over utterances of representative lengths (shortest to longest, single and batched), so
  first-call costs (allocations, kernel choice, ``eval.compile``'s compiles and its bf16 recompile) are paid
  there, logged as ``warmup_s``. With ``eval.compile``, windows run under the compiler's
  ``eager_on_recompile`` stance: a shape the warm-up did not cover runs eagerly instead of compiling inside
  the window.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.config import Config
from bench.energy.accounting import intensity_series
from bench.energy.carbon import carbon_of, grid_region
from bench.energy.meters import MeterSet
from bench.energy.reading import sum_windows
from bench.eval.deploy import Backend, prepare_backends
from bench.eval.latency import measure_latency
from bench.eval.results import BackendResult
from bench.eval.scoring import (LoadedModel, evaluate, extract_embeddings, load_trial_lists, make_fbank,
                                statistics_for, unique_files)
from bench.eval.statistics import paired_difference


def measure_inference(model: LoadedModel, cfg: Config, device: torch.device, meters: MeterSet,
                      precisions: list[str], out_dir: Path | None = None, trial_names: list[str] | None = None,
                      series=None, checkpoint: str | Path | None = None,
                      onnx_path: str | Path | None = None) -> dict[str, BackendResult]:
    root, lists, df = load_trial_lists(cfg, trial_names)
    needed = df.set_index("utt_id").loc[sorted(set().union(*[set(t.utterances) for t in lists]))]
    n_utts = len(unique_files([root / p for p in needed["path"]])[1])  # files shared by lists: extracted once
    n_trials = sum(len(t) for t in lists)
    series = series if series is not None else intensity_series(cfg.energy)
    backends = prepare_backends(model, cfg, precisions, checkpoint, onnx_path, device)
    out: dict[str, BackendResult] = {}
    boots: dict[str, dict] = {name: {} for name in precisions}  # back end -> trial list -> ListBootstrap
    readings: dict[str, list] = {name: [] for name in precisions}
    with _threads(cfg.eval.threads):
        setup = {name: _set_up(backends[name], name, cfg, device, root, needed) for name in precisions}
        passes = cfg.eval.infer_repeats if len(precisions) > 1 else 1
        for rep in range(passes):
            first = rep == 0  # the pass whose scores, score files and intervals are kept
            for name in precisions if rep % 2 == 0 else precisions[::-1]:  # A B, B A, ...: order does not decide
                b = backends[name]
                window = meters.window(f"infer/{name}")  # embeddings and scoring only (see evaluate)
                with _no_compile(cfg.eval.compile):
                    lists_result = evaluate(b.model, cfg, device, out_dir if first else None, trial_names,
                                            precision=b.precision, measured=window, label=name,
                                            boots_out=boots[name] if first else None, intervals=first)
                readings[name].append(meters.readings[-1])
                if first:
                    out[name] = BackendResult(details=b.details, model_size_mb=b.size_mb, time_s=0.0,
                                              utt_per_s=None, n_utts=n_utts, n_trials=n_trials, energy_labels={},
                                              lists=lists_result, warmup_s=setup[name][0],
                                              statistics_s=setup[name][1])
        for name, row in out.items():
            _add_energy(row, readings[name], cfg, series)
            if cfg.eval.latency:
                b = backends[name]
                row.latency = measure_latency(b.model.extractor, make_fbank(cfg, device),
                                              [root / p for p in df["path"]], device, b.precision,
                                              samples=cfg.eval.latency_samples, seed=cfg.train.seed,
                                              batch_sizes=tuple(cfg.eval.throughput_batch_sizes))
    if "fp32" in boots:
        for name, row in out.items():
            if name != "fp32":
                row.eer_diff_pct, row.eer_diff_ci = _difference_to_fp32(boots[name], boots["fp32"], cfg.eval.ci_level)
    return out


def _difference_to_fp32(mine: dict, ref: dict, level: float) -> tuple[dict, dict]:
    """EER of this back end minus PyTorch fp32's per trial list, with the paired bootstrap interval (from the
    bootstraps ``evaluate`` made; without resamples, the difference alone)."""
    diff, ci = {}, {}
    for name, a in mine.items():
        b = ref[name]
        if not a.resampled:
            diff[name] = a.observed["eer_pct"] - b.observed["eer_pct"]
            continue
        d = paired_difference(a.observed, b.observed, a.resampled, b.resampled, level)["eer_pct"]
        diff[name], ci[name] = d.value, (d.interval.low, d.interval.high)
    return diff, ci


def _set_up(b: Backend, name: str, cfg: Config, device: torch.device, root: Path, needed) -> tuple:
    """Before any window: the back end's own scoring statistics (all but PyTorch fp32, which has the
    checkpoint's), then its warm-up. Returns (warm-up s, statistics s or None)."""
    statistics_s = None
    if name != "fp32" and (cfg.eval.subtract_mean or cfg.eval.as_norm):
        t0 = time.perf_counter()
        stats = statistics_for(b.model.list_extractor, cfg, device, b.precision)
        b.model = replace(b.model, payload={**b.model.payload, **stats})
        statistics_s = time.perf_counter() - t0
    return _warm_up(b.model.list_extractor, cfg, device, b.precision, root, needed), statistics_s


def _add_energy(row: BackendResult, windows: list, cfg: Config, series) -> None:
    """Time, throughput and energy of one back end: the mean over its windows (one per pass)."""
    r = sum_windows(windows, windows[0].name)
    n = len(windows)
    row.time_s, row.energy_labels = r.time_s / n, r.tags()
    row.utt_per_s = row.n_utts / row.time_s if row.time_s > 0 else None
    if r.total_j is not None:
        carbon = carbon_of(windows, cfg.energy.pue, grid_region(cfg.energy), series)
        row.energy_j = r.total_j / n
        row.energy_j_per_utt = row.energy_j / row.n_utts
        row.energy_j_per_1k_trials = row.energy_j / row.n_trials * 1000.0
        row.co2_g_per_1k_trials = carbon.co2_g / n / row.n_trials * 1000.0


WARMUP_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # length quantiles of the trial lists' utterances
WARMUP_RUN = 4  # consecutive utterances (by length) at each, so that batched shapes are warmed too


def _warm_up(extractor, cfg: Config, device: torch.device, precision: str, root: Path, rows) -> float:
    """Seconds of one untimed extraction over a few of ``rows`` (utterance id -> path, num_samples) at
    representative lengths, with the back end's precision and batching."""
    ordered = rows.sort_values("num_samples")
    picks = sorted({min(len(ordered) - WARMUP_RUN, int(q * len(ordered))) + k for q in WARMUP_POINTS
                    for k in range(WARMUP_RUN)} & set(range(len(ordered))))
    sub = ordered.iloc[picks]
    t0 = time.perf_counter()
    extract_embeddings(extractor, make_fbank(cfg, device), sub.index.tolist(), [root / p for p in sub["path"]],
                       sub["num_samples"].tolist(), cfg.eval.batch_frames, device, precision,
                       cfg.eval.length_tolerance, cfg.eval.batch_utts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _no_compile(compiled: bool):
    """With eval.compile, a window never compiles: a shape the warm-up missed runs eagerly."""
    return torch.compiler.set_stance("eager_on_recompile") if compiled else contextlib.nullcontext()


@contextlib.contextmanager
def _threads(n: int):
    """``eval.threads`` for PyTorch while inference runs (ONNX Runtime sessions get the same number)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

