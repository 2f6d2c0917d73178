"""GPU check: every CUDA path of the suite, run and measured once, in one command on a bare GPU node.

    python benchmarks/gpu_check.py [--device cuda] [--out gpu_check] [--data DIR] [--budget-s 480] [--quick]

Steps (each with its own time budget; a step that fails is recorded with its error and the others go on):

1. ``train_throughput``: samples/s and J/sample of training steps, ours (raw-wave crops, fbank batched on the
   device) against per-sample fbank in CPU DataLoader workers (WeSpeaker-style), for tiny-ResNet-50-D, ResNet34
   and ResNet-50-D at batch 128 x 200 frames, in fp32 and bf16 autocast, with and without channels-last and
   ``torch.compile``.
2. ``energy_crosscheck``: Zeus's NVML energy counter against the integral of its PowerMonitor samples over the
   same training window (they must agree within 5%), the idle power and the dynamic share.
3. ``end_to_end``: a short train + eval through ``run_variant`` (tracking off) with the study's settings (bf16
   AMP, channels-last, AAM); its energy must be labelled ``gpu:nvml`` on a GPU.
4. ``extraction``: length-bucketed embedding extraction against batch size 1.
5. ``inference``: J/1k trials, latency p50/p95 and EER per precision (fp32, fp16, bf16) on the end-to-end model.
6. ``peak_memory``: measured peak training memory of ResNet34 and ResNet-50-D at batch 128 against the estimate.
7. ``power_limit``: only with ``--power-limits`` (it changes the board's settings, restored after each window):
   energy and time of the same ResNet34 training steps at the board's own limit, the middle of its range and its
   minimum (``power_limit_sweep.py``); without the permission to set limits it is skipped, saying so.

Writes ``OUT/gpu_check.json`` (after every step, so a cut run keeps what it did) and ``OUT/gpu_check.md``, the
table the README's Performance section takes as is. ``--device cpu --quick`` runs every step on the CPU in a
few minutes (a test runs it). Needs no MLflow; on a GPU node without a package registry, bring the wheels of
the project's dependencies the node lacks (README "GPU check", ``make gpu-check-bundle``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks this one reuses

from extraction import batch_one, timed, trained_like  # noqa: E402
from power_limit_sweep import board_limits_w, sweep  # noqa: E402
from train_throughput import run as train_steps  # noqa: E402

from bench.config import load_config  # noqa: E402
from bench.data.loader import TrainCrops  # noqa: E402
from bench.data.manifest import read_manifest  # noqa: E402
from bench.data.synth import generate_corpus  # noqa: E402
from bench.energy.meters import create_meters  # noqa: E402
from bench.energy.plan import measurement_plan  # noqa: E402
from bench.eval.inference import measure_inference  # noqa: E402
from bench.eval.scoring import extract_embeddings, load_model, make_fbank  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from bench.models import build_model, get_spec  # noqa: E402
from bench.models.extraction import extraction_model  # noqa: E402
from bench.models.profile import estimate_train_memory_mb, measure_train_memory_mb  # noqa: E402
from bench.orchestration.variant import run_variant  # noqa: E402
from bench.signals import end_on_sigterm  # noqa: E402

AGREEMENT_PCT = 5.0  # counter vs integral of power samples


class Skipped(Exception):
    """A step that cannot run on this machine (no GPU visible to Zeus): recorded as skipped, not failed."""


@dataclass
class Settings:
    device: torch.device
    quick: bool
    data: Path
    out: Path
    models: list[str]
    batch: int
    steps: int
    workers: int
    memory_models: list[str]
    combos: list[tuple[str, bool, bool]]  # (amp, channels_last, compile)
    power_limits: bool = False
    budgets_s: dict[str, float] = field(default_factory=dict)
    shared: dict = field(default_factory=dict)  # what one step hands the next (the end-to-end model)


def settings(args) -> Settings:
    device = torch.device(args.device)
    quick = args.quick
    full_combos = [(amp, cl, comp) for comp in (False, True) for amp in ("fp32", "bf16") for cl in (False, True)]
    total = args.budget_s
    shares = {"train_throughput": 0.42, "energy_crosscheck": 0.08, "end_to_end": 0.2, "extraction": 0.08,
              "inference": 0.14, "peak_memory": 0.08}
    if args.power_limits:  # its share from the throughput step's
        shares |= {"train_throughput": 0.34, "power_limit": 0.08}
    return Settings(
        device=device, quick=quick, data=Path(args.data), out=Path(args.out),
        models=["tiny-ResNet-50-D"] if quick else ["tiny-ResNet-50-D", "ResNet34", "ResNet-50-D"],
        batch=8 if quick else 128, steps=2 if quick else 10, workers=1 if quick else 8,
        memory_models=["tiny-ResNet-50-D"] if quick else ["ResNet34", "ResNet-50-D"],
        combos=[("fp32", False, False), ("bf16", device.type == "cuda", False)] if quick else full_combos,
        power_limits=args.power_limits, budgets_s={k: v * total for k, v in shares.items()})


# ---------------------------------------------------------------- steps
def step_train_throughput(s: Settings, deadline: float) -> dict:
    cfg = load_config("demo", {"data.root": str(s.data), "data.crop_frames": 200})
    crops = TrainCrops(read_manifest(s.data / "train.csv"), s.data, cfg.data, seed=0)
    meters = create_meters(cfg.energy, measurement_plan(s.device.type))
    rows, cut = [], []
    try:
        for model in s.models:
            for amp, cl, comp in s.combos:
                for side in ("ours", "baseline"):
                    if time.time() > deadline:
                        cut.append(f"{model} {side} {amp} cl={cl} compile={comp}")
                        continue
                    window = meters.window(f"{model}/{side}/{amp}/{cl}/{comp}")
                    sps = train_steps(model, crops, s.batch, s.steps, side, s.device, amp, cl, comp, s.workers,
                                      measured=window)
                    r = meters.readings[-1]
                    rows.append({"model": model, "side": side, "amp": amp, "channels_last": cl, "compile": comp,
                                 "samples_per_s": sps, "j_per_sample": _per(r.total_j, s.batch * s.steps),
                                 "energy_source": r.tags()["energy.source"]})
                    print(f"  {model:18s} {side:8s} {amp} cl={cl!s:5s} compile={comp!s:5s} {sps:8.1f} samples/s")
    finally:
        meters.close()
    return {"rows": rows, "verdicts": _throughput_verdicts(rows), "cut_by_budget": cut,
            "batch": s.batch, "frames": 200, "timed_steps": s.steps, "baseline_workers": s.workers}


def _throughput_verdicts(rows: list[dict]) -> list[str]:
    """Per model and setting: ours / baseline; and the fastest setting of each model."""
    out = []
    key = lambda r: (r["model"], r["amp"], r["channels_last"], r["compile"])  # noqa: E731
    by = {(key(r), r["side"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        pairs = [(k, by[(k, "ours")], by[(k, "baseline")]) for k in dict.fromkeys(key(r) for r in rows)
                 if k[0] == model and (k, "ours") in by and (k, "baseline") in by]
        for k, o, b in pairs:
            ratio = o["samples_per_s"] / b["samples_per_s"]
            out.append(f"{model} {k[1]} channels_last={k[2]} compile={k[3]}: ours {ratio:.2f}x the baseline "
                       f"({'ours' if ratio > 1 else 'baseline'} wins by {abs(ratio - 1) * 100:.0f}%)")
        best = max((r for r in rows if r["model"] == model), key=lambda r: r["samples_per_s"], default=None)
        if best:
            out.append(f"{model}: fastest is {best['side']} {best['amp']} channels_last={best['channels_last']} "
                       f"compile={best['compile']} at {best['samples_per_s']:.1f} samples/s")
    return out


def step_energy_crosscheck(s: Settings, deadline: float) -> dict:
    """Zeus directly: the NVML counter (ZeusMonitor) and the power samples (PowerMonitor) over one window."""
    from zeus.device import get_gpus
    from zeus.monitor import PowerMonitor, ZeusMonitor

    try:
        gpus = get_gpus()
    except Exception as exc:  # ZeusGPUInitError: no NVML / AMDSMI on this machine
        raise Skipped(f"no GPU visible to Zeus ({type(exc).__name__})") from None
    if len(gpus) == 0:
        raise Skipped("no GPU visible to Zeus")
    cfg = load_config("demo", {"data.root": str(s.data), "data.crop_frames": 200})
    crops = TrainCrops(read_manifest(s.data / "train.csv"), s.data, cfg.data, seed=0)
    monitor = ZeusMonitor(gpu_indices=[0], cpu_indices=[], sync_execution_with="torch")
    power = PowerMonitor(gpu_indices=[0], update_period=0.1, power_domains=["device_instant"])
    try:
        idle_s = 2.0 if s.quick else 10.0
        _wait_for(lambda: power.get_power() is not None, 60.0)  # the sampler process is up (slow under load)
        monitor.begin_window("idle", sync_execution=False)
        time.sleep(idle_s)
        idle = monitor.end_window("idle", sync_execution=False)
        idle_w = idle.gpu_energy[0] / idle.time
        load_s = 3.0 if s.quick else 30.0
        t0 = time.time()
        monitor.begin_window("load", sync_execution=s.device.type == "cuda")
        steps = 0
        while time.time() - t0 < load_s and time.time() < deadline:
            train_steps(s.models[0], crops, s.batch, s.steps, "ours", s.device, "bf16" if s.device.type == "cuda"
                        else "fp32", s.device.type == "cuda")
            steps += s.steps
        load = monitor.end_window("load", sync_execution=s.device.type == "cuda")
        t1 = time.time()
        time.sleep(0.5)  # the sampler's queue delivers the window's last changes
        timeline = power.get_power_timeline("device_instant").get(0, [])
    finally:
        power.stop()
    integral, samples = _integral_j(timeline, t0, t1)
    counter = load.gpu_energy[0]
    diff_pct = 100.0 * abs(integral - counter) / counter if counter else float("nan")
    return {"counter_j": counter, "power_integral_j": integral, "samples": samples,
            "difference_pct": diff_pct, "agree_within_5pct": bool(diff_pct <= AGREEMENT_PCT),
            "window_s": load.time, "idle_w": idle_w, "load_w": counter / load.time,
            "dynamic_share_pct": 100.0 * max(0.0, 1 - idle_w * load.time / counter) if counter else float("nan"),
            "gpu_index": 0}


def _wait_for(ready, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not ready() and time.time() < deadline:
        time.sleep(0.1)


def _integral_j(timeline: list[tuple[float, float]], start: float, end: float) -> tuple[float, int]:
    """The integral of the power samples over [start, end] and how many were used. Zeus's sampler records a
    reading only when it changes, so each value holds until the next one (zero-order hold): the window
    starts at the last reading before it."""
    before = [x for x in timeline if x[0] <= start]
    inside = [x for x in timeline if start < x[0] < end]
    if not before and not inside:
        return float("nan"), 0
    points = [(start, (before or inside)[-1 if before else 0][1]), *inside, (end, 0.0)]
    return float(sum((t2 - t1) * w1 for (t1, w1), (t2, _) in zip(points, points[1:]))), len(inside) + bool(before)


def step_end_to_end(s: Settings, deadline: float) -> dict:
    cuda = s.device.type == "cuda"
    over = {"data.root": str(s.data), "train.device": s.device.type, "train.amp": "bf16" if cuda else "none",
            "train.channels_last": cuda, "head.type": "aam", "train.epochs": 1 if s.quick else 2,
            "eval.infer_precisions": ["fp32"], "eval.latency": False}
    cfg = load_config("tiny" if s.quick else "demo", over)
    out = s.out / "end_to_end"
    t = time.perf_counter()
    res = run_variant(cfg, out, progress=False, force=True)
    source = res.energy_tags.get("energy.source", "none")
    s.shared["model"] = out / "model.pt"
    s.shared["cfg"] = cfg
    return {"time_s": time.perf_counter() - t, "eer_pct": {k: m.eer_pct for k, m in res.metrics.items()},
            "train_energy_j": res.energy_metrics.get("train/energy_j"), "energy_source": source,
            "gpu_nvml_labelled": "gpu:nvml" in source, "expected_gpu_nvml": cuda,
            "settings": {k: over[k] for k in ("train.amp", "train.channels_last", "head.type", "train.epochs")}}


def step_extraction(s: Settings, deadline: float) -> dict:
    df = read_manifest(s.data / "eval.csv").head(48 if s.quick else 480)
    paths, ids, lengths = [s.data / p for p in df["path"]], df["utt_id"].tolist(), df["num_samples"].tolist()
    model = trained_like(build_model(get_spec(s.models[-1]).replace(n_mels=80)).eval()).to(s.device)
    fbank = make_fbank(load_config("demo"), s.device)
    ours_model = extraction_model(model, channels_last=s.device.type == "cuda")
    extract_embeddings(ours_model, fbank, ids[:8], paths[:8], lengths[:8], 60000, s.device)  # warm-up
    batch_one(model, fbank, paths[:2], s.device)
    t_ours, emb = timed(lambda: _synced(s.device, lambda: extract_embeddings(ours_model, fbank, ids, paths, lengths,
                                                                                60000, s.device)))
    t_one, base = timed(lambda: _synced(s.device, lambda: batch_one(model, fbank, paths, s.device)))
    cos = np.sum(emb * base, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(base, axis=1))
    return {"model": s.models[-1], "utts": len(paths), "ours_utt_per_s": len(paths) / t_ours,
            "batch1_utt_per_s": len(paths) / t_one, "ratio": t_one / t_ours, "min_cosine": float(cos.min())}


def step_inference(s: Settings, deadline: float) -> dict:
    if "model" not in s.shared:
        raise Skipped("needs the end-to-end step's model")
    cfg = s.shared["cfg"]
    cfg.eval.latency = True
    model = load_model(s.shared["model"], s.device, cfg.eval.channels_last)
    precisions = ["fp32", "fp16", "bf16"] if s.device.type == "cuda" else ["fp32", "bf16"]
    meters = create_meters(cfg.energy, measurement_plan(s.device.type))
    try:
        rows = measure_inference(model, cfg, s.device, meters, precisions)
    finally:
        meters.close()
    fp32 = rows["fp32"].eer_pct
    out = {}
    for p, r in rows.items():
        out[p] = {"utt_per_s": r.utt_per_s, "j_per_1k_trials": r.energy_j_per_1k_trials,
                  "latency_p50_ms": r.latency.latency_p50_ms if r.latency else None,
                  "latency_p95_ms": r.latency.latency_p95_ms if r.latency else None,
                  "eer_pct": r.eer_pct, "eer_diff_to_fp32_pct": {n: e - fp32[n] for n, e in r.eer_pct.items()},
                  "energy_source": r.energy_labels["energy.source"]}
    return out


def step_peak_memory(s: Settings, deadline: float) -> dict:
    out = {}
    for name in s.memory_models:
        spec = get_spec(name).replace(n_mels=80)
        est = estimate_train_memory_mb(spec, s.batch, 200, 5994)
        if s.device.type == "cuda":
            measured, how = measure_train_memory_mb(spec, s.batch, 200, 5994), "torch.cuda.max_memory_allocated"
        else:
            measured, how = _cpu_peak_mb(spec, s.batch), "process RSS growth over one training step"
        out[name] = {"estimate_mb": est, "measured_mb": measured, "measured_by": how,
                     "estimate_error_pct": 100.0 * (est - measured) / measured if measured else None}
    return out


def _cpu_peak_mb(spec, batch: int) -> float:
    """Peak RSS growth over one training step (model, head, optimizer state, activations), sampled every
    millisecond by a thread: the CPU has no allocator statistics like torch.cuda's."""
    import threading

    import psutil

    from bench.models.heads import MarginHead

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model, head = build_model(spec).train(), MarginHead(spec.embed_dim, 5994)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    y = torch.randint(0, 5994, (batch,))
    torch.nn.functional.cross_entropy(head(model(torch.randn(batch, 200, spec.n_mels)), y), y).backward()
    opt.step()
    done.set()
    sampler.join()
    return (peak[0] - before) / 2**20


def _synced(device: torch.device, fn):
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def _per(total: float | None, n: int) -> float | None:
    return None if total is None else total / n


def step_power_limit(s: Settings, deadline: float) -> dict:
    """The same training steps at three power limits (``power_limit_sweep``), each restored after its window."""
    from bench.errors import BenchError

    if not s.power_limits:
        raise Skipped("it changes the board's power limit: run with --power-limits on a GPU you may administer")
    try:
        limits = board_limits_w()
    except Exception as exc:  # ZeusGPUInitError: no NVML / AMDSMI on this machine
        raise Skipped(f"no GPU visible to Zeus ({type(exc).__name__})") from None
    cfg = load_config("demo", {"data.root": str(s.data), "data.crop_frames": 200})
    crops = TrainCrops(read_manifest(s.data / "train.csv"), s.data, cfg.data, seed=0)
    batch, steps = (4, 8) if s.quick else (s.batch, max(s.steps, 20))  # quick: the tiny corpus's 12 batches of 4
    try:
        return sweep(s.models[0] if s.quick else "ResNet34", crops, batch, steps, s.device, limits)
    except BenchError as err:  # no permission to set limits: nothing was changed
        raise Skipped(str(err)) from None


STEPS = [("train_throughput", step_train_throughput), ("energy_crosscheck", step_energy_crosscheck),
         ("end_to_end", step_end_to_end), ("extraction", step_extraction), ("inference", step_inference),
         ("peak_memory", step_peak_memory), ("power_limit", step_power_limit)]


# ---------------------------------------------------------------- report
def machine_header(device: torch.device) -> dict:
    head = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "python": platform.python_version(),
            "cpu": cpu_model(), "device": str(device)}
    if device.type == "cuda":
        head["gpu"] = torch.cuda.get_device_name(device)
        try:
            import pynvml

            pynvml.nvmlInit()
            head["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:  # the table says why the driver is missing
            head["driver"] = f"unknown ({type(exc).__name__})"
    return head


def markdown(result: dict) -> str:
    h = result["machine"]
    lines = [f"GPU check on {h.get('gpu', h['cpu'])} (driver {h.get('driver', '-')}, torch {h['torch']}, "
             f"CUDA {h['cuda']}; `python benchmarks/gpu_check.py {result['argv']}`)", ""]
    lines += ["| step | status | time (s) | result |", "|---|---|---|---|"]
    for name, st in result["steps"].items():
        lines.append(f"| {name} | {st['status']} | {st['time_s']:.0f} | {_summary(name, st)} |")
    tt = result["steps"].get("train_throughput", {}).get("result")
    if tt:
        lines += ["", "| model | side | amp | channels-last | compile | samples/s | J/sample | source |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in tt["rows"]:
            j = "-" if r["j_per_sample"] is None else f"{r['j_per_sample']:.3g}"
            lines.append(f"| {r['model']} | {r['side']} | {r['amp']} | {r['channels_last']} | {r['compile']} | "
                         f"{r['samples_per_s']:.1f} | {j} | {r['energy_source']} |")
        lines += [""] + [f"- {v}" for v in tt["verdicts"]]
    return "\n".join(lines) + "\n"


def _summary(name: str, st: dict) -> str:
    if st["status"] != "ok":
        return st.get("error", "").replace("|", "/")[:160]
    r = st["result"]
    if name == "energy_crosscheck":
        return (f"counter {r['counter_j']:.1f} J vs samples {r['power_integral_j']:.1f} J "
                f"({r['difference_pct']:.1f}%); "
                f"idle {r['idle_w']:.0f} W, load {r['load_w']:.0f} W, dynamic {r['dynamic_share_pct']:.0f}%")
    if name == "end_to_end":
        return f"energy source {r['energy_source']}; EER {r['eer_pct']}"
    if name == "extraction":
        return f"buckets {r['ours_utt_per_s']:.0f} utt/s vs batch 1 {r['batch1_utt_per_s']:.0f} ({r['ratio']:.1f}x)"
    if name == "inference":
        return "; ".join(f"{p}: {v['j_per_1k_trials'] or 0:.3g} J/1k trials, p50 {v['latency_p50_ms'] or 0:.1f} ms, "
                         f"EER diff {max(v['eer_diff_to_fp32_pct'].values(), key=abs):+.2f}" for p, v in r.items())
    if name == "peak_memory":
        return "; ".join(f"{m}: {v['measured_mb']:.0f} MB measured, {v['estimate_mb']:.0f} MB estimated"
                         for m, v in r.items())
    if name == "power_limit":
        return "; ".join(f"{row['limit_w']:g} W: {row['j_per_sample']:.3g} J/sample, {row['samples_per_s']:.0f}/s "
                         f"({row['energy_saved_pct']:+.0f}% energy saved, {row['time_added_pct']:+.0f}% time)"
                         for row in r["rows"])
    return f"{len(r['rows'])} runs, {len(r['cut_by_budget'])} cut by the budget"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (proving the script)")
    ap.add_argument("--quick", action="store_true", help="small models, batch 8, 2 steps: every step in minutes")
    ap.add_argument("--data", default="data/gpu-check", help="corpus (generated there when missing)")
    ap.add_argument("--out", default="gpu_check")
    ap.add_argument("--budget-s", type=float, default=480.0, help="time for all steps together (default 8 min)")
    ap.add_argument("--power-limits", action="store_true",
                    help="also the power-limit step (sets the board's limits for a while, restored after each)")
    args = ap.parse_args(argv)
    end_on_sigterm()  # `timeout` ends the check through every finally (a power limit restored)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device visible to torch; use --device cpu to prove the script here",
              file=sys.stderr)
        return 2
    s = settings(args)
    s.out.mkdir(parents=True, exist_ok=True)
    if not (s.data / "train.csv").is_file():
        print(f"[gpu-check] generating the {'tiny' if s.quick else 'demo'} corpus into {s.data}")
        generate_corpus(s.data, seed=0, size="tiny" if s.quick else "demo", progress=False)
    result = {"machine": machine_header(s.device), "argv": " ".join(sys.argv[1:] if argv is None else argv),
              "steps": {}}
    print(f"[gpu-check] {result['machine']}")
    for name, fn in STEPS:
        budget = s.budgets_s.get(name, 0.0)
        print(f"[gpu-check] {name} (budget {budget:.0f} s)", flush=True)
        t = time.perf_counter()
        try:
            st = {"status": "ok", "result": fn(s, time.time() + budget)}
        except Skipped as why:
            st = {"status": "skipped", "error": str(why)}
        except Exception as exc:  # recorded; the other steps go on
            st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-3000:]}
        st["time_s"] = time.perf_counter() - t
        st["budget_s"] = budget
        result["steps"][name] = st
        print(f"[gpu-check] {name}: {st['status']} in {st['time_s']:.0f} s"
              + (f" ({st['error']})" if "error" in st else ""), flush=True)
        (s.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (s.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
