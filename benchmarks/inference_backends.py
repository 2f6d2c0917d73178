"""Deployment back ends on the CPU: PyTorch fp32 (eager extraction model) against ONNX Runtime fp32 and int8
(static QDQ), on the demo corpus's 480 test utterances and its 3,399 trials.

    .venv/bin/python benchmarks/inference_backends.py [--data data/demo] [--models tiny-ResNet-50-D,ResNet34]
        [--epochs 2] [--max-steps 0] [--repeats 2]

Each model is first trained on the demo corpus (``--epochs``; ``--max-steps`` caps the steps of the big
ones) so the EER difference means something, then every back end extracts all test utterances and scores
the trials through ``svbench infer``'s own path (``measure_inference``: embeddings + scoring inside one
energy window, latency at batch size 1). The back ends alternate ``--repeats`` times and each keeps its best
throughput, so a neighbour's load does not decide the ratio. Energy is whatever ``energy.meters auto``
finds here (an estimate on a VM without RAPL: labelled). Threads: ``eval.threads`` for both PyTorch and ONNX
Runtime (default: all cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bench.config import load_config
from bench.data.synth import generate_corpus
from bench.energy.meters import create_meters
from bench.energy.plan import measurement_plan
from bench.eval.inference import measure_inference
from bench.eval.results import BackendResult
from bench.eval.scoring import load_model
from bench.machine import cpu_model
from bench.orchestration.variant import run_variant

BACKENDS = ["fp32", "onnx-fp32", "onnx-int8"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--models", default="tiny-ResNet-50-D,ResNet34")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=0, help="cap on training steps per model (0: none)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-backends")
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "train.csv").is_file():
        generate_corpus(root, seed=0, size="demo", progress=False)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    for name in args.models.split(","):
        out = Path(args.out) / name
        cfg = load_config("demo", {"data.root": str(root), "model.name": name, "train.epochs": args.epochs,
                                   "train.max_steps": args.max_steps, "eval.infer_precisions": ["fp32"],
                                   "eval.latency": True, "eval.bootstrap_resamples": 1000,
                                   # every speaker trains, as when the README's figures were measured: this
                                   # benchmark is about inference, not learning curves
                                   "data.val_speakers": 0.0, "train.eer_targets": []})
        if not (out / "model.pt").is_file():
            t = time.perf_counter()
            run_variant(cfg, out, progress=False, force=True)
            print(f"{name}: trained in {time.perf_counter() - t:.0f} s")
        model = load_model(out / "model.pt", torch.device("cpu"), cfg.eval.channels_last)
        best: dict[str, BackendResult] = {}
        for _ in range(args.repeats):
            for backend in BACKENDS:
                meters = create_meters(cfg.energy, measurement_plan("cpu"))
                try:
                    row = measure_inference(model, cfg, torch.device("cpu"), meters, ["fp32", backend]
                                            if backend != "fp32" else ["fp32"], checkpoint=out / "model.pt")[backend]
                finally:
                    meters.close()
                if backend not in best or row.utt_per_s > best[backend].utt_per_s:
                    best[backend] = row
        base = best["fp32"].utt_per_s
        print(f"\n{name} ({best['fp32'].n_utts} utterances, {best['fp32'].n_trials} trials, "
              f"energy {best['fp32'].energy_labels['energy.source']})")
        print(f"{'back end':10s} {'utt/s':>8s} {'x fp32':>7s} {'J/1k trials':>12s} {'p50 ms':>7s} {'EER %':>7s} "
              f"{'dEER [95% CI]':>22s} {'MB':>6s}")
        for backend in BACKENDS:
            r = best[backend]
            t = next(iter(r.lists))
            diff, ci = r.eer_diff_pct.get(t), r.eer_diff_ci.get(t)
            d = f"{diff:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if diff is not None else "-"
            p50 = r.latency.latency_p50_ms if r.latency else 0
            print(f"{backend:10s} {r.utt_per_s:8.1f} {r.utt_per_s / base:7.2f} "
                  f"{r.energy_j_per_1k_trials or float('nan'):12.1f} {p50:7.1f} "
                  f"{r.lists[t].eer_pct:7.2f} {d:>22s} {r.model_size_mb or 0:6.2f}")
        q = best["onnx-int8"].details
        print(f"int8: {q.get('mode')}, int8 ops {q.get('quantized_ops')}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
