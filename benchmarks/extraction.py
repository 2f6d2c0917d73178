"""Embedding extraction over variable-length utterances: ours (length-bucketed batches, batched
fbank, batch norm folded, channels-last: the extraction model of `svbench eval`) vs batch size 1
with the trained model as it is (WeSpeaker's evaluation: one utterance at a time).

    .venv/bin/python benchmarks/extraction.py [--data data/demo] [--model tiny-ResNet-50-D] [--utts 480]
        [--repeats 3] [--compile]

Target on this CPU: >= 3x. Audio is read from disk on both sides. The two sides alternate
``--repeats`` times and each keeps its best time, so a neighbour's load on a shared machine
does not decide the ratio. ``--compile`` adds `eval.compile` (torch.compile, dynamic shapes): its
first pass (compile included) and its best later pass are printed separately.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.data.audio import load_audio
from bench.data.features import Fbank
from bench.data.manifest import read_manifest
from bench.data.synth import generate_corpus
from bench.eval.scoring import extract_embeddings
from bench.models import build_model, get_spec
from bench.models.extraction import compile_extractor, extraction_model


@torch.no_grad()
def batch_one(model, fbank, paths, device: torch.device | None = None):
    out = []
    for p in paths:
        w = torch.from_numpy(load_audio(p)).unsqueeze(0).to(device or torch.device("cpu"))
        out.append(model(fbank(w)).float().cpu().numpy()[0])
    return np.stack(out)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch-norm statistics away from (0, 1), as after training, so folding them is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    return model


def cosine(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--model", default="tiny-ResNet-50-D")
    ap.add_argument("--utts", type=int, default=480)
    ap.add_argument("--batch-frames", type=int, default=60000)
    ap.add_argument("--tolerance", type=float, default=0.02, help="eval.length_tolerance")
    ap.add_argument("--batch-utts", type=int, default=4, help="eval.batch_utts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time eval.compile")
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "eval.csv").is_file():
        generate_corpus(root, seed=0, size="demo", progress=False)
    df = read_manifest(root / "eval.csv").head(args.utts)
    paths = [root / p for p in df["path"]]
    ids, lengths = df["utt_id"].tolist(), df["num_samples"].tolist()
    torch.manual_seed(0)
    base_model = trained_like(build_model(get_spec(args.model).replace(n_mels=80)).eval())
    fbank = Fbank()
    dev = torch.device("cpu")
    sides = {"ours": extraction_model(base_model, channels_last=True)}
    if args.compile:
        sides["compiled"] = compile_extractor(extraction_model(base_model, channels_last=True))

    def ours(model):
        return lambda: extract_embeddings(model, fbank, ids, paths, lengths, args.batch_frames, dev,
                                          tolerance=args.tolerance, batch_utts=args.batch_utts)

    def baseline():
        return batch_one(base_model, fbank, paths)

    extract_embeddings(sides["ours"], fbank, ids[:16], paths[:16], lengths[:16], args.batch_frames, dev)  # warm-up
    batch_one(base_model, fbank, paths[:4])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in [*sides, "baseline"]}
    first_compiled = None
    for _ in range(args.repeats):
        t, base = timed(baseline)
        times["baseline"].append(t)
        for name, model in sides.items():
            t, emb = timed(ours(model))
            if name == "compiled" and first_compiled is None:
                first_compiled = t  # includes compiling (and recompiling for new shape ranges)
                continue
            times[name].append(t)
            if name == "ours":
                cos = cosine(emb, base)
    best = {k: min(v) for k, v in times.items() if v}
    hours = df["duration_s"].sum() / 3600
    print(f"{len(paths)} utterances ({hours * 60:.1f} min of audio), model {args.model}, {torch.get_num_threads()} "
          "threads, "
          f"best of {args.repeats} alternating runs")
    print(f"ours      {best['ours']:.2f} s  ({len(paths) / best['ours']:.1f} utt/s, length-bucketed, batch_frames "
          f"{args.batch_frames}, "
          f"batch norm folded, channels-last)")
    print(f"baseline  {best['baseline']:.2f} s  ({len(paths) / best['baseline']:.1f} utt/s, batch size 1, model as "
          "trained)")
    print(f"ratio     {best['baseline'] / best['ours']:.2f}x   embeddings cosine vs batch-1: min {cos.min():.4f} "
          f"(buckets cut <= {args.tolerance:.0%} of frames)")
    if "compiled" in best:
        print(f"compiled  {best['compiled']:.2f} s  after a first pass of {first_compiled:.1f} s (compiling); "
              f"ratio {best['baseline'] / best['compiled']:.2f}x, {best['baseline'] / first_compiled:.2f}x counting "
              "the compile")


if __name__ == "__main__":
    main()
