"""CPU time of the measured work (bench.energy.cpu_time): a job's cgroup v2 cpu.stat as CEEMS reads it, or the
whole process tree, reaped descendants included; the node's busy time without steal and without guest twice."""

import os
import subprocess
import sys
import textwrap
from collections import namedtuple

import psutil
import pytest

from bench.energy import cpu_time
from bench.energy.cpu_time import WorkCpuTime, slurm_job_cgroup, machine_busy_cpu_seconds
from bench.energy.plan import holds_node_exclusively
from bench.energy.share import UsageSampler, interval_share
from bench.errors import BenchError

# a child that starts a grandchild burning ~1.5 CPU-s, waits for it (reaps it), then stays alive
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 1.5\\n"
                    "while time.process_time() < end: pass"])
    print("reaped", flush=True)
    sys.stdin.read()
""")


def test_a_grandchild_reaped_by_a_live_child_still_counts_in_the_process_tree():
    before = cpu_time.process_tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "reaped"
        assert psutil.Process(child.pid).children() == []  # the grandchild is gone from the tree
        assert cpu_time.process_tree_cpu_seconds() - before >= 1.4
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_a_job_cgroup_cpu_stat_is_the_work_cpu_time(tmp_path):
    """A cgroup v2 folder as the kernel lays it out (``cpu.stat``: usage_usec, user_usec, system_usec ...): its
    usage_usec, which holds every process of the job, reaped or not, is the work's CPU time and share."""
    stat = tmp_path / "cpu.stat"

    def write(usage_s):
        stat.write_text(f"usage_usec {int(usage_s * 1e6)}\nuser_usec {int(usage_s * 0.9e6)}\n"
                        f"system_usec {int(usage_s * 0.1e6)}\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")

    write(100.0)
    work = WorkCpuTime(str(tmp_path))
    assert work.source == f"cgroup:{tmp_path}" and work.seconds() == pytest.approx(100.0)
    sampler = UsageSampler(0.2, process_cpu_s=work.seconds)
    try:
        first = sampler.sample()
        write(100.0 + 1e6)  # far more than the machine could have been busy: the share is capped at 1
        last = sampler.sample()
    finally:
        sampler.close()
    assert last.process_cpu_s - first.process_cpu_s == pytest.approx(1e6)
    assert interval_share(first, last) in (0.0, 1.0)  # 0 only if the machine did no work at all in between
    (tmp_path / "cpu.stat").write_text("nr_periods 0\n")
    with pytest.raises(BenchError, match="usage_usec"):
        WorkCpuTime(str(tmp_path))


def test_a_slurm_job_cgroup_path_is_found_at_the_job_level():
    assert slurm_job_cgroup("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0") == \
        "system.slice/slurmstepd.scope/job_4242"
    assert slurm_job_cgroup("/user.slice/user-0.slice/session-3.scope") is None


def test_busy_time_leaves_out_steal_and_counts_guest_once(monkeypatch):
    """/proc/stat's user already holds guest and nice holds guest_nice; steal is another guest's time."""
    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    monkeypatch.setattr(psutil, "cpu_times", lambda: Times(100.0, 10.0, 20.0, 500.0, 7.0, 1.0, 2.0, 30.0, 40.0, 5.0))
    assert machine_busy_cpu_seconds() == pytest.approx(133.0)


def test_whole_node_partitions_hold_their_node_exclusively():
    """``scontrol show -o`` records as Slurm prints them: a job on a partition with OverSubscribe=EXCLUSIVE says
    OverSubscribe=OK itself; a partition's OverSubscribe=NO still packs jobs on one node (on separate cores)."""
    job = "JobId=7 JobName=svbench UserId=me(1000) Partition=gpu OverSubscribe=OK Contiguous=0 NumNodes=1"
    assert holds_node_exclusively(job, "PartitionName=gpu AllowGroups=ALL OverSubscribe=EXCLUSIVE State=UP")
    assert not holds_node_exclusively(job, "PartitionName=gpu AllowGroups=ALL OverSubscribe=NO State=UP")
    assert not holds_node_exclusively(job, None)
    assert holds_node_exclusively(job.replace("OverSubscribe=OK", "OverSubscribe=NO"), None)


def test_the_search_cost_is_shared_as_its_trials_on_a_packed_node(tmp_path, monkeypatch):
    """The search's own window follows the node's sharing, as its trials do: inside a Slurm job that does not hold
    its node, the study cost is its CPU-time share; with --exclusive (OverSubscribe=NO) it is the whole node.
    ``scontrol`` here is a stand-in printing the one-line records Slurm prints for ``show job -o`` / ``show
    partition -o``."""
    from bench.config import load_config
    from bench.orchestration.search.cost import study_plan

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\ncase "$2" in\n'
                        '  job) echo "JobId=$4 JobName=svbench Partition=gpu OverSubscribe=${JOB_OVERSUBSCRIBE} '
                        'NumNodes=1" ;;\n'
                        '  partition) echo "PartitionName=gpu AllowGroups=ALL OverSubscribe=NO State=UP" ;;\n'
                        'esac\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = load_config("tiny", {})
    monkeypatch.setenv("JOB_OVERSUBSCRIBE", "OK")
    assert study_plan(cfg, [["0"], ["1"]]).attribution == "cpu-time-share"
    monkeypatch.setenv("JOB_OVERSUBSCRIBE", "NO")
    assert study_plan(cfg, [["0"], ["1"]]).attribution == "exclusive"
