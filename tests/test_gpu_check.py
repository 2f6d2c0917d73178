"""The GPU check proven on the CPU: `--device cpu --quick` runs every step, on a machine whose (fake) GPU
Zeus sees, so the NVML counter vs power-sample cross-check runs through Zeus's own monitors."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_runs_every_step(tiny_corpus, tmp_path, fake_machine):
    state = tmp_path / "gpu_state.json"  # the board's power limit, as device state (tests/fakehw)
    env = fake_machine(gpu_w=[250], FAKE_ZEUS_GPU_STATE=str(state))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--power-limits", "--data", str(tiny_corpus), "--out", str(tmp_path / "gc")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == ["train_throughput", "energy_crosscheck", "end_to_end", "extraction", "inference",
                           "peak_memory", "power_limit"]
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
    # the same steps at the board's own 700 W, the middle of its range and its minimum: a 250 W board draws 250 W
    # under 700 and 400 W and 100 W under its minimum (the energy-vs-time trade-off itself is asserted by the solo
    # power-limit search in test_energy_hardware.py, where no other test's load moves the times)
    pl = {r["limit_w"]: r for r in steps["power_limit"]["result"]["rows"]}
    assert set(pl) == {700.0, 400.0, 100.0}
    assert pl[400.0]["mean_w"] == pytest.approx(250, rel=0.05) and pl[100.0]["mean_w"] == pytest.approx(100, rel=0.05)
    assert {"energy_saved_pct", "time_added_pct", "j_per_sample"} <= set(pl[100.0])
    assert [w for _, w in json.loads(state.read_text())["0"]][-1] == 700  # restored
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "torch" in md and "| energy_crosscheck | ok |" in md and "| tiny-ResNet-50-D | ours |" in md
