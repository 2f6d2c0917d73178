"""Energy and time of the same training steps at several GPU power limits: the GPU check's power-limit step, and
a command of its own.

    python benchmarks/power_limit_sweep.py [--device cuda] [--limits-w 700,450,200] [--data DIR] [--steps 20]

Each limit is set through the suite's own ``bench.energy.power_limit.power_limited`` (Zeus's device layer, NVML on
NVIDIA boards) and restored after its window, whatever ends it. The window is Zeus's energy counter
(``ZeusMonitor``) around the timed steps of ``train_throughput.run`` (the suite's training step, bf16 autocast on
a GPU), so every limit trains the same model on the same batches. By default the limits are the board's own,
the middle of its range and its minimum. Changing a limit needs root or the administrator's grant; without it the
sweep says so and changes nothing. It changes the board's settings while it runs, so the GPU check runs it only
when asked (``--power-limits``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import run as train_steps  # noqa: E402

from bench.config import load_config  # noqa: E402
from bench.data.loader import TrainCrops  # noqa: E402
from bench.data.manifest import read_manifest  # noqa: E402
from bench.energy.power_limit import power_limited  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.signals import end_on_sigterm  # noqa: E402


class ZeusWindow:
    """One ZeusMonitor window as a context manager (what ``train_throughput.run`` enters around its timed steps)."""

    def __init__(self, monitor, name: str, sync: bool):
        self.monitor, self.name, self.sync, self.measurement = monitor, name, sync, None

    def __enter__(self):
        self.monitor.begin_window(self.name, sync_execution=self.sync)
        return self

    def __exit__(self, *exc) -> None:
        self.measurement = self.monitor.end_window(self.name, sync_execution=self.sync)


def board_limits_w(gpu_index: int = 0) -> list[float]:
    """The board's own limit, the middle of its range, and its minimum (watts)."""
    from zeus.device import get_gpus

    gpus = get_gpus()
    low, _ = gpus.get_power_management_limit_constraints(gpu_index)
    own = gpus.get_power_management_limit(gpu_index)
    return [own / 1000, round((low + own) / 2000), low / 1000]


def sweep(model_name: str, crops: TrainCrops, batch: int, steps: int, device: torch.device,
          limits_w: list[float]) -> dict:
    """One row per limit (GPU 0): samples/s, window time and energy, J/sample, mean power; and, against the first
    limit, the energy saved and time added (%)."""
    from zeus.monitor import ZeusMonitor

    cuda = device.type == "cuda"
    monitor = ZeusMonitor(gpu_indices=[0], cpu_indices=[], sync_execution_with="torch")
    rows = []
    for watts in limits_w:
        window = ZeusWindow(monitor, f"limit-{watts:g}", cuda)
        with power_limited(watts, (0,)):
            sps = train_steps(model_name, crops, batch, steps, "ours", device, "bf16" if cuda else "fp32",
                              measured=window)
        m = window.measurement
        joules = m.gpu_energy[0]
        rows.append({"limit_w": watts, "samples_per_s": sps, "time_s": m.time, "energy_j": joules,
                     "j_per_sample": joules / (batch * steps), "mean_w": joules / m.time if m.time else None})
    first = rows[0]
    for r in rows:
        r["energy_saved_pct"] = 100.0 * (1 - r["energy_j"] / first["energy_j"]) if first["energy_j"] else None
        r["time_added_pct"] = 100.0 * (r["time_s"] / first["time_s"] - 1) if first["time_s"] else None
    return {"model": model_name, "batch": batch, "timed_steps": steps, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", default="data/gpu-check", help="a corpus with train.csv (svbench data synth)")
    ap.add_argument("--model", default="ResNet34")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--limits-w", default=None, help="comma-separated watts (default: own, middle, minimum)")
    args = ap.parse_args(argv)
    end_on_sigterm()  # a `timeout` or kill ends the sweep through power_limited's finally: the board restored
    data = Path(args.data)
    cfg = load_config("demo", {"data.root": str(data), "data.crop_frames": 200})
    crops = TrainCrops(read_manifest(data / "train.csv"), data, cfg.data, seed=0)
    limits = [float(w) for w in args.limits_w.split(",")] if args.limits_w else board_limits_w()
    try:
        result = sweep(args.model, crops, args.batch, args.steps, torch.device(args.device), limits)
    except BenchError as err:
        print(f"power_limit_sweep: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
