"""Embedding extraction over variable-length utterances: ours (length-bucketed batches, batched
fbank) vs batch size 1 (WeSpeaker's evaluation: one utterance at a time).

    .venv/bin/python benchmarks/extraction.py [--data data/demo] [--model tiny-ResNet-50-D] [--utts 240]

Target on this CPU: >= 3x. Audio is read from disk on both sides.
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
from bench.evaluate import extract_embeddings
from bench.models import build_model, get_spec


@torch.no_grad()
def batch_one(model, fbank, paths):
    out = []
    for p in paths:
        w = torch.from_numpy(load_audio(p)).unsqueeze(0)
        out.append(model(fbank(w)).numpy()[0])
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--model", default="tiny-ResNet-50-D")
    ap.add_argument("--utts", type=int, default=240)
    ap.add_argument("--batch-frames", type=int, default=60000)
    ap.add_argument("--tolerance", type=float, default=0.02, help="eval.length_tolerance")
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "eval.csv").is_file():
        generate_corpus(root, seed=0, size="demo", progress=False)
    df = read_manifest(root / "eval.csv").head(args.utts)
    paths = [root / p for p in df["path"]]
    spec = get_spec(args.model).replace(n_mels=80)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    fbank = Fbank()
    dev = torch.device("cpu")
    base_model = model
    model = build_model(spec).eval()
    model.load_state_dict(base_model.state_dict())
    model = model.to(memory_format=torch.channels_last)  # what `svbench eval` does (eval.channels_last)
    extract_embeddings(model, fbank, df["utt_id"].tolist()[:16], paths[:16], df["num_samples"].tolist()[:16],
                       args.batch_frames, dev)  # warm-up
    t = time.perf_counter()
    ours = extract_embeddings(model, fbank, df["utt_id"].tolist(), paths, df["num_samples"].tolist(), args.batch_frames, dev,
                              tolerance=args.tolerance)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    base = batch_one(base_model, fbank, paths)
    t_base = time.perf_counter() - t
    cos = np.sum(ours * base, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(base, axis=1))
    hours = df["duration_s"].sum() / 3600
    print(f"{len(paths)} utterances ({hours * 60:.1f} min of audio), model {args.model}, {torch.get_num_threads()} threads")
    print(f"ours      {t_ours:.2f} s  ({len(paths) / t_ours:.1f} utt/s, length-bucketed, batch_frames {args.batch_frames}, channels-last)")
    print(f"baseline  {t_base:.2f} s  ({len(paths) / t_base:.1f} utt/s, batch size 1, contiguous)")
    print(f"ratio     {t_base / t_ours:.2f}x   embeddings cosine vs batch-1: min {cos.min():.4f} (buckets cut <= {args.tolerance:.0%} of frames)")


if __name__ == "__main__":
    main()
