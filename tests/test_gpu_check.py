"""The GPU check proven on the CPU: `--device cpu --quick` runs every step, on a machine whose (fake) GPU
Zeus sees, so the NVML counter vs power-sample cross-check runs through Zeus's own monitors."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_runs_every_step(tiny_corpus, tmp_path, fake_machine):
    env = fake_machine(gpu_w=[250])
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--data", str(tiny_corpus), "--out", str(tmp_path / "gc")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == ["train_throughput", "energy_crosscheck", "end_to_end", "extraction", "inference",
                           "peak_memory"]
    assert all(st["status"] == "ok" for st in steps.values()), {k: v.get("error") for k, v in steps.items()}
    rows = steps["train_throughput"]["result"]["rows"]
    assert {r["side"] for r in rows} == {"ours", "baseline"} and all(r["samples_per_s"] > 0 for r in rows)
    assert steps["train_throughput"]["result"]["verdicts"]
    x = steps["energy_crosscheck"]["result"]
    assert x["agree_within_5pct"] and x["samples"] >= 1
    assert abs(x["load_w"] - 250) < 5 and abs(x["idle_w"] - 250) < 5  # the fake board draws 250 W throughout
    e2e = steps["end_to_end"]["result"]
    assert e2e["energy_source"] != "none" and not e2e["expected_gpu_nvml"]  # --device cpu measures no GPU
    inf = steps["inference"]["result"]
    assert set(inf) == {"fp32", "bf16"} and inf["fp32"]["latency_p95_ms"] >= inf["fp32"]["latency_p50_ms"] > 0
    assert steps["peak_memory"]["result"]["tiny-ResNet-50-D"]["measured_mb"] > 0
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "torch" in md and "| energy_crosscheck | ok |" in md and "| tiny-ResNet-50-D | ours |" in md
