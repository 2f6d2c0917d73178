"""Evaluation: whole-utterance embeddings batched by length, cosine scoring after subtracting the
training mean embedding, optional AS-norm against a cohort of training-speaker mean embeddings,
several trial lists, score files ``label score enroll test``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import numpy as np
import pandas as pd
import torch

from bench.config import Config
from bench.data.features import Fbank
from bench.data.loader import BATCH_UTTS, LENGTH_TOLERANCE, eval_batches
from bench.data.manifest import EVAL_MANIFEST, TRAIN_MANIFEST, data_root, read_manifest
from bench.data.trials import AVERAGE, TrialList, check_against, find_trial_lists, read_trials, write_scores
from bench.errors import BenchError
from bench.eval.metrics import verification_metrics
from bench.eval.results import ListResult
from bench.eval.statistics import METRICS, ListBootstrap, bootstrap_list, macro_average, percentile_interval
from bench.models import ResNetSpec, build_model
from bench.models.extraction import compile_extractor, extraction_model
from bench.models.resnet import min_samples
from bench.training import checkpoint as ckpt
from bench.training.precision import autocast


@dataclass
class LoadedModel:
    embedder: torch.nn.Module  # the trained architecture, as logged to MLflow
    spec: ResNetSpec
    payload: dict
    extractor: torch.nn.Module  # eager inference form (BN folded, channels-last): latency runs it
    list_extractor: torch.nn.Module  # what whole trial lists are extracted with: ``extractor`` or, with
    # eval.compile, its compiled form (latency stays eager so no compile lands inside a timed call)


def load_model(path: str | Path, device: torch.device, channels_last: bool = False,
               compiled: bool = False) -> LoadedModel:
    payload = ckpt.load(path)
    if "model" not in payload or "spec" not in payload:
        raise BenchError(f"checkpoint {path} holds no model spec; give a model.pt written by `svbench train`")
    spec_d = {k: v for k, v in payload["spec"].items() if k != "depth"}
    spec_d = {k: tuple(v) if isinstance(v, list) else v for k, v in spec_d.items()}
    spec = ResNetSpec(**spec_d)
    embedder = build_model(spec)
    try:
        embedder.load_state_dict(payload["model"])
    except RuntimeError:
        raise BenchError(f"checkpoint {path} does not match its model spec (mismatched weights); retrain or use the "
                         "matching checkpoint") from None
    embedder = embedder.to(device).eval()
    # channels-last is for inference only: see docs/PERFORMANCE.md for why CPU training stays contiguous
    extractor = extraction_model(embedder, channels_last)
    return LoadedModel(embedder, spec, payload, extractor, compile_extractor(extractor) if compiled else extractor)


@torch.no_grad()
def extract_embeddings(embedder: torch.nn.Module, fbank: Fbank, utt_ids: list[str], paths: list[Path],
                       num_samples: list[int], batch_frames: int, device: torch.device,
                       precision: str = "fp32", tolerance: float = LENGTH_TOLERANCE,
                       batch_utts: int = BATCH_UTTS) -> np.ndarray:
    """(N, D) float32 embeddings in the order of ``utt_ids``; each depends on its utterance alone
    (``bench.data.loader.eval_batches``), so ids whose files are the same (``unique_files``: the sets of one root
    that share files, VoxCeleb1-O/E/H) are extracted once and share it."""
    first, unique = unique_files(paths)
    index = {utt_ids[j]: k for k, j in enumerate(unique)}
    out = None
    for batch in eval_batches([utt_ids[i] for i in unique], [paths[i] for i in unique],
                              [num_samples[i] for i in unique], batch_frames, hop=fbank.hop, win=fbank.win,
                              sample_rate=fbank.sample_rate, min_samples=min_samples(fbank.hop, fbank.win),
                              tolerance=tolerance, batch_utts=batch_utts):
        feats = fbank(batch.wav.to(device))
        with autocast(device, precision, inference=True):
            emb = embedder(feats)
        emb = emb[:len(batch.utt_ids)].float().cpu().numpy()
        if out is None:
            out = np.zeros((len(unique), emb.shape[1]), dtype=np.float32)
        for u, e in zip(batch.utt_ids, emb):
            out[index[u]] = e
    return out[[index[utt_ids[f]] for f in first]]


def unique_files(paths: list[Path]) -> tuple[list[int], list[int]]:
    """(for each path, the position of the first path naming the same file (resolved); the positions of those
    firsts): what ``extract_embeddings`` extracts, once per file."""
    seen: dict[str, int] = {}
    first = [seen.setdefault(os.path.realpath(p), i) for i, p in enumerate(paths)]
    return first, sorted(seen.values())


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


@dataclass
class Scorer:
    """Cosine scoring of one back end's embeddings: each utterance's embedding minus the training mean,
    length-normalised; with a cohort, each utterance's adaptive S-norm statistics (mean and std of its top-n
    cohort scores), computed once for all utterances and shared by every trial list.

    Streamed: embeddings are held once per utterance, and neither the trials x dimension gathers nor the
    utterances x cohort matrix is ever whole: trials are scored ``chunk`` at a time and the cohort statistics
    ``chunk // 64`` utterances at a time, so a CommonBench-sized list (10M trials) needs memory in the size of
    its embeddings (``benchmarks/streamed_scoring.py``). The result is the same as the whole-matrix way."""
    x: np.ndarray
    index: dict[str, int]
    norm: tuple[np.ndarray, np.ndarray] | None = None
    chunk: int = 1 << 18

    @classmethod
    def build(cls, emb: np.ndarray, utt_ids: list[str], mean: np.ndarray | None = None,
              cohort: np.ndarray | None = None, top_n: int = 100,
              enrolments: dict[str, list[str]] | None = None, chunk: int = 1 << 18) -> "Scorer":
        """``enrolments``: model id -> its utterances; a model's embedding is the mean of their length-normalised
        embeddings (WeSpeaker's and the CN-Celeb recipes' practice), scored like one utterance."""
        x = _normalise(emb - mean if mean is not None else emb)
        utt_ids = list(utt_ids)
        if enrolments:
            index = {u: i for i, u in enumerate(utt_ids)}
            models = sorted(enrolments)
            x = np.concatenate([x, _normalise(np.stack([x[[index[u] for u in enrolments[m]]].mean(axis=0)
                                                        for m in models]))])
            utt_ids += models
        norm = None
        if cohort is not None:
            c = _normalise(cohort - mean if mean is not None else cohort).T
            n = min(top_n, c.shape[1])
            mu, sd = np.empty(len(x)), np.empty(len(x))
            rows = max(1, chunk // 64)
            for i in range(0, len(x), rows):  # (rows, cohort) at a time
                top = -np.partition(-(x[i:i + rows] @ c), n - 1, axis=1)[:, :n]
                mu[i:i + rows], sd[i:i + rows] = top.mean(axis=1), top.std(axis=1) + 1e-9
            norm = (mu, sd)
        return cls(x, {u: i for i, u in enumerate(utt_ids)}, norm, chunk)

    def scores(self, trials: TrialList) -> np.ndarray:
        e = np.fromiter((self.index[u] for u in trials.enroll), dtype=np.int64, count=len(trials))
        t = np.fromiter((self.index[u] for u in trials.test), dtype=np.int64, count=len(trials))
        scores = np.empty(len(trials))
        for i in range(0, len(trials), self.chunk):
            a, b = e[i:i + self.chunk], t[i:i + self.chunk]
            scores[i:i + self.chunk] = np.einsum("ij,ij->i", self.x[a], self.x[b])
        if self.norm is None:
            return scores
        mu, sd = self.norm
        return 0.5 * ((scores - mu[e]) / sd[e] + (scores - mu[t]) / sd[t])


@torch.no_grad()
def training_statistics(embedder, fbank, root: Path, batch_frames: int, device: torch.device,
                        max_utts: int = 2000, seed: int = 0, cohort_utts_per_speaker: int = 3,
                        cohort_speakers: int = 6000, precision: str = "fp32", tolerance: float = LENGTH_TOLERANCE,
                        batch_utts: int = BATCH_UTTS) -> dict:
    """Mean embedding over a seeded sample of ``max_utts`` training utterances, and the AS-norm cohort as
    WeSpeaker builds it: one mean embedding per training speaker (up to ``cohort_speakers`` speakers, a
    seeded choice when there are more), each over up to ``cohort_utts_per_speaker`` of its utterances."""
    df = read_manifest(root / TRAIN_MANIFEST)
    mean_rows = df.sample(n=min(max_utts, len(df)), random_state=seed)
    speakers = sorted(df["speaker"].unique())
    if len(speakers) > cohort_speakers:
        speakers = sorted(np.random.default_rng(seed).choice(speakers, cohort_speakers, replace=False))
    cohort_rows = (df[df["speaker"].isin(speakers)].sample(frac=1.0, random_state=seed)
                   .groupby("speaker", sort=True).head(cohort_utts_per_speaker))
    rows = pd.concat([mean_rows, cohort_rows]).drop_duplicates("utt_id").reset_index(drop=True)
    ids = rows["utt_id"].tolist()
    emb = extract_embeddings(embedder, fbank, ids, [root / p for p in rows["path"]], rows["num_samples"].tolist(),
                             batch_frames, device, precision, tolerance, batch_utts)
    index = {u: i for i, u in enumerate(ids)}
    mean = emb[[index[u] for u in mean_rows["utt_id"]]].mean(axis=0)
    by_speaker = cohort_rows.groupby("speaker", sort=True)["utt_id"]
    cohort = np.stack([emb[[index[u] for u in utts]].mean(axis=0) for _, utts in by_speaker])
    return {"train_mean": torch.from_numpy(mean), "cohort": torch.from_numpy(cohort),
            "cohort_utts": int(len(cohort_rows))}


def statistics_for(extractor, cfg: Config, device: torch.device, precision: str = "fp32") -> dict:
    """``training_statistics`` with the config's settings, for one extractor at one precision."""
    return training_statistics(extractor, make_fbank(cfg, device), data_root(cfg.data.root), cfg.eval.batch_frames,
                               device, max_utts=cfg.eval.stats_max_utts, seed=cfg.train.seed,
                               cohort_utts_per_speaker=cfg.eval.cohort_utts_per_speaker,
                               cohort_speakers=cfg.eval.cohort_speakers, precision=precision,
                               tolerance=cfg.eval.length_tolerance, batch_utts=cfg.eval.batch_utts)


def make_fbank(cfg: Config, device: torch.device) -> Fbank:
    return Fbank(cfg.features.n_mels, cfg.features.sample_rate, cfg.features.frame_length_ms,
                 cfg.features.frame_shift_ms).to(device)


def load_trial_lists(cfg: Config, names: list[str] | None = None) -> tuple[Path, list[TrialList], pd.DataFrame]:
    root = data_root(cfg.data.root)
    df = read_manifest(root / EVAL_MANIFEST)
    lists = [read_trials(p) for p in find_trial_lists(root, names or cfg.data.trials)]
    known = set(df["utt_id"])
    for t in lists:
        check_against(t, known, str(root / EVAL_MANIFEST))
    return root, lists, df


def evaluate(model: LoadedModel, cfg: Config, device: torch.device, out_dir: Path | None = None,
             trial_names: list[str] | None = None, precision: str = "fp32",
             measured: ContextManager | None = None, label: str | None = None,
             boots_out: dict | None = None, intervals: bool = True) -> dict[str, ListResult]:
    """Metrics per trial list (and score files under ``out_dir/scores`` when given, ``<list>.txt`` for fp32 and
    ``<list>.<label>.txt`` for another back end; ``label`` defaults to the precision).

    ``measured`` (an energy window) is entered around the embeddings and the scoring only: loading the
    trial lists, the bootstrap intervals (``intervals``) and writing score files stay outside it.
    ``boots_out`` receives trial list name -> its ``ListBootstrap`` (observed metrics, and the resampled ones
    when ``intervals``)."""
    root, lists, df = load_trial_lists(cfg, trial_names)
    averaged = average_lists(cfg, [t.name for t in lists], chosen=trial_names is not None)
    needed = sorted(set().union(*[set(t.utterances) for t in lists]))
    rows = df.set_index("utt_id").loc[needed]
    mean = model.payload.get("train_mean") if cfg.eval.subtract_mean else None
    mean = mean.numpy() if mean is not None else None
    cohort = model.payload.get("cohort") if cfg.eval.as_norm else None
    if cfg.eval.as_norm and cohort is None:
        raise BenchError("eval.as_norm needs a cohort, but this checkpoint has none; re-run `svbench train` or "
                         "disable as_norm")
    paths = [root / p for p in rows["path"]]
    with measured if measured is not None else contextlib.nullcontext():
        fbank = make_fbank(cfg, device)
        emb = extract_embeddings(model.list_extractor, fbank, needed, paths, rows["num_samples"].tolist(),
                                 cfg.eval.batch_frames, device, precision, cfg.eval.length_tolerance,
                                 cfg.eval.batch_utts)
        scorer = Scorer.build(emb, needed, mean, cohort.numpy() if cohort is not None else None,
                              cfg.eval.as_norm_top_n, {m: u for t in lists for m, u in t.enrolments.items()})
        all_scores = [scorer.scores(t) for t in lists]
    results, boots = {}, {}
    label = label or precision
    for t, scores in zip(lists, all_scores):
        result = ListResult(**verification_metrics(scores, t.labels))
        if intervals and cfg.eval.bootstrap_resamples:
            boots[t.name] = bootstrap_list(t, scores, cfg.eval.bootstrap_resamples)
            _set_intervals(result, boots[t.name], cfg.eval.ci_level)
        else:
            boots[t.name] = ListBootstrap({k: getattr(result, k) for k in METRICS}, {}, len(t), 0)
        if out_dir is not None:
            path = Path(out_dir) / "scores" / f"{t.name}{'' if label == 'fp32' else '.' + label}.txt"
            write_scores(path, t, scores)
            result.score_file = str(path)
        results[t.name] = result
    if boots_out is not None:
        boots_out.update(boots)
    if averaged:
        avg = macro_average([boots[n] for n in averaged])
        results[AVERAGE] = ListResult(**avg.observed, eer_threshold=float("nan"), min_dcf_p01_threshold=float("nan"),
                                      min_dcf_p05_threshold=float("nan"), n_trials=avg.n_trials,
                                      n_target=sum(results[n].n_target for n in averaged))
        if avg.resampled:
            _set_intervals(results[AVERAGE], avg, cfg.eval.ci_level)
    return results


def average_lists(cfg: Config, evaluated: list[str], chosen: bool = False) -> list[str]:
    """The lists whose macro average is logged as ``avg``: ``eval.average_lists``, or every evaluated list;
    none when fewer than two. A configured list that is not evaluated is a one-line error, unless the command
    chose its lists (``--trials``): then there is no average."""
    names = cfg.eval.average_lists or evaluated
    missing = [n for n in names if n not in evaluated]
    if missing and chosen:
        return []
    if missing:
        raise BenchError(f"eval.average_lists names {', '.join(missing)}, not among the evaluated trial lists "
                         f"({', '.join(evaluated)}); fix eval.average_lists or data.trials")
    return list(names) if len(names) >= 2 else []


def _set_intervals(result: ListResult, boot, level: float) -> None:
    ci = {k: percentile_interval(v, level) for k, v in boot.resampled.items()}
    result.ci = {k: (i.low, i.high) for k, i in ci.items()}
    result.ci_level, result.ci_resamples = level, ci["eer_pct"].n_resamples
