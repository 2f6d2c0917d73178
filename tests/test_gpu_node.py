"""A shared GPU node as CEEMS counts it, simulated through the measuring libraries: fake GPUs in Zeus's device
layer, a node meter command that prints the node's watts as ``ipmitool dcmi power reading`` does, and a GPU
command that prints every GPU's watts as ``nvidia-smi --query-gpu=power.draw --format=csv,noheader`` does."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

pytestmark = pytest.mark.solo  # the shares are of this machine's busy CPU time: nothing else may run

GPU_W = [400.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0]  # ours at work, seven idle
NODE_W = 1340.0  # what the node meter reads: the GPUs' 750 W and 590 W for the rest (CPUs, DRAM, fans)
IPMI = "Instantaneous power reading:                  {watts:.0f} Watts"
NVIDIA_SMI = "\n".join(f"{w:.2f} W" for w in GPU_W)

CHILD = textwrap.dedent("""
    import json, sys, time
    from bench.config import EnergyConfig
    from bench.energy.meters import create_meters
    from bench.energy.plan import measurement_plan


    def main():
        device, seconds = sys.argv[1], float(sys.argv[2])
        node_cmd, gpu_cmd = json.loads(sys.argv[3]), json.loads(sys.argv[4])
        cfg = EnergyConfig(meters=["auto"], node_command=node_cmd, node_regex=r"([0-9.]+) Watts", node_period_s=0.25,
                           node_gpu_command=gpu_cmd, share_period_s=0.5, cgroup="none")
        meters = create_meters(cfg, measurement_plan(device, shared=True))
        print("ready", flush=True)
        sys.stdin.readline()  # both processes open their windows together
        with meters.window("work") as w:
            end = time.time() + seconds
            while time.time() < end:
                sum(i * i for i in range(1000))
        meters.close()
        r = w.reading
        print(json.dumps({"total_j": r.total_j, "gpu_j": r.gpu_j, "node_j": r.node_j, "time_s": r.time_s,
                          "start": r.start_time, "end": r.end_time, "tags": r.tags(), "gap_s": r.gap_s}))


    if __name__ == "__main__":  # Zeus's power monitor is a spawned process that imports this file
        main()
""")


def _start(script, env, device, seconds, node_cmd, gpu_cmd):
    return subprocess.Popen([sys.executable, str(script), device, str(seconds), json.dumps(node_cmd),
                             json.dumps(gpu_cmd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def _finish(proc):
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_job_on_one_gpu_and_a_cpu_heavy_neighbour_split_the_node_as_ceems_does(tmp_path, fake_machine):
    """This job computes on GPU 0 (400 W) of an 8-GPU node; a neighbour computes on the CPU with no GPU. The job
    is given its GPU's joules whole plus its CPU-time share of the node's rest (node - every GPU); the neighbour
    only its share of the rest, never our GPU. Together with the seven idle GPUs (no job's) they make up what
    the node drew."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    node_cmd = ["echo", IPMI.format(watts=NODE_W)]
    gpu_cmd = ["printf", NVIDIA_SMI + "\\n"]
    env = fake_machine(gpu_w=GPU_W)
    ours = _start(script, {**env, "CUDA_VISIBLE_DEVICES": "0"}, "cuda:0", 6.0, node_cmd, gpu_cmd)
    neighbour = _start(script, env, "cpu", 6.0, node_cmd, gpu_cmd)
    for p in (ours, neighbour):
        assert p.stdout.readline().strip() == "ready"
    for p in (ours, neighbour):
        p.stdin.write("go\n")
        p.stdin.flush()
    a, b = _finish(ours), _finish(neighbour)
    rest_w = NODE_W - sum(GPU_W)
    assert a["gpu_j"] == pytest.approx(400.0 * a["time_s"], rel=0.03)  # our GPU, whole
    assert b["gpu_j"] is None
    assert a["tags"]["energy.node_gpus"] == b["tags"]["energy.node_gpus"] == "command"
    assert a["tags"]["energy.attribution"] == "cpu-time-share" and a["tags"]["energy.incomplete"] == "none"
    # each computed on one of the two cores: about half of the rest each, and the neighbour none of our GPU
    assert a["total_j"] == pytest.approx(a["gpu_j"] + a["node_j"])
    assert 0.3 * rest_w * a["time_s"] < a["node_j"] < 0.7 * rest_w * a["time_s"], a
    assert 0.3 * rest_w * b["time_s"] < b["total_j"] < 0.7 * rest_w * b["time_s"], b
    union_s = max(a["end"], b["end"]) - min(a["start"], b["start"])
    idle_gpus_j = sum(GPU_W[1:]) * union_s
    drawn = NODE_W * union_s
    assert a["total_j"] + b["total_j"] + idle_gpus_j == pytest.approx(drawn, rel=0.03), (a, b)
    assert a["total_j"] + b["total_j"] + idle_gpus_j <= drawn * 1.001


def test_one_failed_node_read_mid_run_keeps_the_total_and_records_the_gap(tmp_path, fake_machine):
    """A GPU at 200 W on a node drawing 300 W whose meter times out once (exit 1 here) mid-window: the total
    stays the node's (within 2% of 300 W x time), not the GPU alone, and the bridged seconds are recorded."""
    flag = tmp_path / "fail-once"
    meter = ["sh", "-c", f'if [ -e {flag} ]; then rm -f {flag}; exit 1; fi; echo "{IPMI.format(watts=300)}"']
    code = textwrap.dedent(f"""
        import json, pathlib, time
        from bench.config import EnergyConfig
        from bench.energy.meters import create_meters
        from bench.energy.plan import measurement_plan
        cfg = EnergyConfig(meters=["auto"], node_command={meter!r}, node_regex=r"([0-9.]+) Watts",
                           node_period_s=0.25)
        meters = create_meters(cfg, measurement_plan("cuda:0", shared=False))
        with meters.window("epoch") as w:
            time.sleep(1.0)
            pathlib.Path({str(flag)!r}).touch()  # the next read fails
            time.sleep(1.5)
        meters.close()
        r = w.reading
        print(json.dumps({{"total_j": r.total_j, "time_s": r.time_s, "gpu_j": r.gpu_j, "gap_s": r.gap_s,
                          "tags": r.tags()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=fake_machine(gpu_w=[200]), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not flag.exists()  # the meter did fail once
    assert r["total_j"] == pytest.approx(300.0 * r["time_s"], rel=0.02)
    assert r["gpu_j"] == pytest.approx(200.0 * r["time_s"], rel=0.03)
    assert r["gap_s"]["node"] > 0 and float(r["tags"]["energy.interpolated_s"]) > 0
    assert r["tags"]["energy.incomplete"] == "none" and "node:command" in r["tags"]["energy.source"]
    assert r["tags"]["energy.node_gpus"] == "own"  # exclusive: the node's rest beside our GPU, the total the node's

