import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from conftest import REPO

from bench.config import EnergyConfig
from bench.energy.carbon import HourlySeries, carbon_of, lookup
from bench.energy.meters import MeterSet, create_meters
from bench.energy.node_meter import NodeMeter
from bench.energy.plan import measurement_plan
from bench.energy.reading import EnergyReading, sum_ranks, sum_windows
from bench.errors import BenchError

HERE = Path(__file__).parent


def _rapl(tmp_path, start_uj, seconds=4.0):  # long enough that a writer thread lagging ~40 ms under load stays < 2%
    proc = subprocess.run([sys.executable, str(HERE / "rapl_child.py"), str(tmp_path / "powercap"), "50", "5",
                           str(start_uj), str(seconds)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_zeus_reads_rapl_tree(tmp_path):
    r = _rapl(tmp_path, start_uj=0)
    assert r["sources"] == {"cpu:0": "rapl", "dram:0": "rapl"}
    assert r["source"] == "cpu:rapl,dram:rapl" and r["estimated"] is False
    assert r["joules"]["cpu:0"] == pytest.approx(50 * r["time_s"], rel=0.02)
    assert r["joules"]["dram:0"] == pytest.approx(5 * r["time_s"], rel=0.02)
    assert r["total_j"] == pytest.approx(55 * r["time_s"], rel=0.02)


def test_zeus_rapl_wraparound(tmp_path):
    # package counter starts 30 J below its 1000 J range: it wraps after 0.6 s of the window
    r = _rapl(tmp_path, start_uj=1e9 - 30e6)
    assert r["joules"]["cpu:0"] == pytest.approx(50 * r["time_s"], rel=0.02)


WATTS_SCRIPT = "import sys; print('Instantaneous power reading: ' + sys.argv[1] + ' Watts')"


def test_node_meter_integrates_real_subprocess():
    meter = NodeMeter([sys.executable, "-c", WATTS_SCRIPT, "123.5"], regex=r"([0-9.]+)\s*Watts", period_s=0.1)
    ms = MeterSet([meter])
    with ms.window("w") as w:
        time.sleep(1.5)
    ms.close()
    r = w.reading
    assert r.source_tag == "node:command" and not r.incomplete
    assert r.total_j == pytest.approx(123.5 * r.time_s, rel=0.02)
    assert len(r.timeline["node"]) >= 5


def test_node_meter_failing_past_its_gap_limit_is_labelled_never_dropped(tmp_path):
    """Reads that fail for longer than energy.node_max_gap_s: the node figure bridges the gap (80 W held) and
    is labelled incomplete with the seconds and the reason; the total stays the node's, never a component sum."""
    flag = tmp_path / "watts"
    flag.write_text("80")
    script = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); print(p.read_text() + ' W')"
    meter = NodeMeter([sys.executable, "-c", script, str(flag)], period_s=0.1, max_gap_s=0.2)
    ms = MeterSet([meter])
    with ms.window("ok") as good:
        time.sleep(0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ms.window("broken") as bad:
            flag.unlink()  # the command now exits 1
            time.sleep(0.5)
    ms.close()
    assert not good.reading.incomplete and good.reading.total_j == pytest.approx(80 * good.reading.time_s, rel=0.05)
    assert "node" in bad.reading.incomplete and "exit code 1" in bad.reading.incomplete["node"]
    assert "interpolated" in bad.reading.incomplete["node"] and bad.reading.gap_s["node"] > 0.2
    assert bad.reading.total_j == pytest.approx(80 * bad.reading.time_s, rel=0.05)
    assert bad.reading.tags()["energy.incomplete"] == "node"
    assert any("failed" in str(c.message) for c in caught)


def test_node_meter_command_that_never_works():
    with pytest.raises(BenchError, match="failed"):
        NodeMeter([sys.executable, "-c", "print('no number')"], period_s=0.1)
    with pytest.raises(BenchError, match="argv list"):
        NodeMeter("ipmitool dcmi power reading")


def test_estimate_is_labelled_and_used_only_when_nothing_measures():
    ms = create_meters(EnergyConfig(meters=["auto"]), measurement_plan("cpu"))  # no GPU, no RAPL here
    with ms.window("w") as w:
        sum(i * i for i in range(300000))
    ms.close()
    if w.reading.source_tag.startswith("cpu:estimate"):
        assert w.reading.estimated and w.reading.total_j > 0
        assert set(w.reading.sources.values()) == {"estimate"}
    else:  # a machine with real counters never falls back to the estimate
        assert not w.reading.estimated


def test_without_gpu_or_rapl_zeus_monitor_is_not_even_imported(tmp_path):
    """Zeus's device layer finds no GPU and no RAPL tree (its path pointed at an empty folder, as the fake machine
    does): `auto` measures with the labelled estimate without importing ``zeus.monitor`` (and scikit-learn with
    it), and `zeus` alone is the one-line error, as when a monitor finds nothing."""
    code = ("import json, sys\nimport zeus.device.cpu.rapl as rapl\n"
            f"rapl.RAPL_DIR = rapl.CONTAINER_RAPL_DIR = {str(tmp_path / 'no-powercap')!r}\n"
            "from bench.config import EnergyConfig\nfrom bench.energy.meters import create_meters\n"
            "from bench.energy.plan import measurement_plan\nfrom bench.errors import BenchError\n"
            "ms = create_meters(EnergyConfig(meters=['auto']), measurement_plan('cpu'))\n"
            "with ms.window('w') as w:\n    sum(i * i for i in range(100000))\nms.close()\n"
            "try:\n    create_meters(EnergyConfig(meters=['zeus']), measurement_plan('cpu'))\n    error = None\n"
            "except BenchError as exc:\n    error = str(exc)\n"
            "print(json.dumps({'source': w.reading.source_tag, 'estimated': w.reading.estimated, 'error': error,\n"
            "                  'imported': sorted(m for m in ('zeus.monitor', 'sklearn') if m in sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["source"] == "cpu:estimate,dram:estimate" and out["estimated"] is True
    assert out["imported"] == []
    assert "Zeus finds no NVML GPU and no RAPL counters" in out["error"]


def test_total_rule_node_wins_and_missing_is_absent():
    r = EnergyReading("w", 0.0, 10.0, {"gpu:0": 100.0, "cpu:0": 50.0, "node": 400.0},
                      {"gpu:0": "nvml", "cpu:0": "rapl", "node": "command"})
    assert r.total_j == 400.0 and r.source_tag == "gpu:nvml,cpu:rapl,node:command"
    r.incomplete["node"] = "interpolated over 90 s"  # labelled, and still the total: never the GPUs alone
    assert r.total_j == 400.0 and r.dram_j is None
    r.joules["node"] = float("nan")  # read nothing at all: no total, never a sum of the other components
    assert r.total_j is None and r.node_j is None


def test_node_without_its_gpus_adds_the_process_gpus():
    """CEEMS's rule on a GPU node: the node's rest (node minus GPUs) plus the job's own GPUs."""
    r = EnergyReading("w", 0.0, 10.0, {"gpu:0": 4000.0, "node": 1200.0}, {"gpu:0": "nvml", "node": "command"},
                      node_excludes_gpus=True, node_gpus="command")
    assert r.total_j == 5200.0 and r.tags()["energy.node_gpus"] == "command"
    two = sum_windows([r, r], "train")
    assert two.total_j == 10400.0 and two.node_excludes_gpus


def test_idle_baseline_gives_dynamic_energy():
    r = EnergyReading("w", 0.0, 10.0, {"node": 1000.0}, {"node": "command"}, idle_power_w={"node": 60.0})
    assert r.dynamic_j == pytest.approx(400.0)


def test_ranks_count_shared_meters_once_per_host():
    def rank(gpu):
        return EnergyReading("train", 0.0, 10.0, {f"gpu:{gpu}": 100.0, "cpu:0": 40.0, "node": 500.0},
                             {f"gpu:{gpu}": "nvml", "cpu:0": "rapl", "node": "command"})
    one_host = sum_ranks([rank(0), rank(1)], ["a", "a"])
    assert one_host.gpu_j == 200.0 and one_host.cpu_j == 40.0 and one_host.node_j == 500.0
    two_hosts = sum_ranks([rank(0), rank(1), rank(0), rank(1)], ["a", "a", "b", "b"])
    assert two_hosts.gpu_j == 400.0 and two_hosts.cpu_j == 80.0 and two_hosts.node_j == 1000.0
    assert two_hosts.total_j == 1000.0
    seq = sum_windows([rank(0), rank(0)], "train")
    assert seq.time_s == 20.0 and seq.gpu_j == 200.0


def test_carbon_table_lookups_equal_shipped_csv():
    import pandas as pd

    table = pd.read_csv(REPO / "bench" / "energy" / "data" / "carbon_intensity.csv").set_index("iso3")
    for iso in ("FRA", "DEU", "USA", "WLD"):
        assert lookup(iso).g_per_kwh == pytest.approx(float(table.loc[iso, "intensity_g_per_kwh"]))
        assert "codecarbon" in lookup(iso).source
    with pytest.warns(UserWarning, match="world average"):
        unknown = lookup("XXX")
    assert unknown.fallback and unknown.g_per_kwh == lookup("WLD").g_per_kwh


def test_hourly_series_splits_energy_across_two_hours(tmp_path):
    csv = tmp_path / "ci.csv"
    csv.write_text("timestamp,g_per_kwh\n2026-01-01T10:00:00Z,100\n2026-01-01T11:00:00Z,300\n"
                   "2026-01-01T12:00:00Z,300\n")
    series = HourlySeries.from_csv(csv)
    t_start = pd_ts("2026-01-01T10:30:00Z")
    # 1 kWh spread evenly over 10:30-11:30: half at 100, half at 300 -> 200 g
    r = EnergyReading("w", t_start, 3600.0, {"node": 3.6e6}, {"node": "command"})
    c = carbon_of([r], pue=1.0, series=series)
    assert c.co2_g == pytest.approx(200.0)
    # PUE applied once, to energy
    c2 = carbon_of([r], pue=1.5, series=series)
    assert c2.co2_g == pytest.approx(300.0) and c2.facility_kwh == pytest.approx(1.5)
    fra = carbon_of([r], pue=1.5, region="FRA")
    assert fra.co2_g == pytest.approx(1.5 * lookup("FRA").g_per_kwh)


def test_series_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,value\n1,2\n")
    with pytest.raises(BenchError, match="timestamp,g_per_kwh"):
        HourlySeries.from_csv(bad)
    with pytest.raises(BenchError, match="does not exist"):
        HourlySeries.from_csv(tmp_path / "none.csv")


def pd_ts(s):
    import pandas as pd

    return pd.Timestamp(s).timestamp()


def test_a_run_across_three_hours_is_charged_each_hour_and_past_the_series_the_table(tmp_path):
    """Three 1-hour epochs of 1 kWh each over a stored series of 100, 300 and 50 g/kWh: 450 g, each epoch at its
    own hour (the span of their summed times would be the same here, but not their order). A fourth epoch past
    the series' last hour is charged the region's yearly average and labelled: no exception after the work."""
    from bench.energy.accounting import summarise

    csv = tmp_path / "ci.csv"
    csv.write_text("timestamp,g_per_kwh\n2026-01-01T10:00:00Z,100\n2026-01-01T11:00:00Z,300\n"
                   "2026-01-01T12:00:00Z,50\n")
    series = HourlySeries.from_csv(csv)
    t0 = pd_ts("2026-01-01T10:00:00Z")
    epochs = [EnergyReading(f"train/epoch_{i}", t0 + 3600 * i, 3600.0, {"node": 3.6e6}, {"node": "command"})
              for i in range(3)]
    cfg = EnergyConfig(region="DEU")
    metrics, tags = summarise("train", epochs, cfg, series)
    assert metrics["train/co2_g"] == pytest.approx(450.0) and metrics["train/energy_kwh"] == pytest.approx(3.0)
    assert tags["train.carbon.intensity_source"] == "csv:ci.csv"
    # out of order in time, the same hours: the same carbon (each window keeps its own hours)
    assert summarise("train", epochs[::-1], cfg, series)[0]["train/co2_g"] == pytest.approx(450.0)
    late = EnergyReading("train/epoch_3", t0 + 3600 * 4, 3600.0, {"node": 3.6e6}, {"node": "command"})
    metrics, tags = summarise("train", [*epochs, late], cfg, series)
    assert metrics["train/co2_g"] == pytest.approx(450.0 + lookup("DEU").g_per_kwh)
    assert "1 of 4 window(s) outside it: DEU" in tags["train.carbon.intensity_source"]


def test_carbon_tags_name_the_factor_and_an_unset_region():
    from bench.energy.accounting import carbon_tags

    unset = carbon_tags(EnergyConfig(), None)
    assert unset["carbon.region"] == "FRA" and unset["carbon.factor"] == "lifecycle"
    assert "energy.region is not set" in unset["carbon.region_unset"]
    chosen = carbon_tags(EnergyConfig(region="DEU"), None)
    assert chosen["carbon.region"] == "DEU" and "carbon.region_unset" not in chosen


def test_run_total_counts_every_joule_once_and_no_idle_on_a_shared_node():
    """A probe window with its measured steps nested inside, and the training after it: the run's total is the
    outer windows' sum. On a shared node the idle baseline is not measured (a neighbour would be in it)."""
    from bench.energy.accounting import run_total_j
    from bench.energy.plan import CPU_TIME_SHARE, MeasurePlan

    meter = NodeMeter(["echo", "100 W"], period_s=0.05)
    ms = MeterSet([meter])
    with ms.window("probe") as outer:
        time.sleep(0.2)
        with ms.window("probe/steps") as inner:
            time.sleep(0.2)
    with ms.window("train/epoch_0") as epoch:
        time.sleep(0.2)
    ms.close()
    assert inner.reading.within == ("probe",)
    assert run_total_j(ms.readings) == pytest.approx(outer.reading.total_j + epoch.reading.total_j)
    shared = create_meters(EnergyConfig(meters=["node"], node_command=["echo", "100 W"], node_period_s=0.05,
                                        idle_baseline_s=0.5, cgroup="none"), MeasurePlan((), CPU_TIME_SHARE))
    shared.close()
    assert shared.idle_power_w == {} and "shared" in shared.idle_note and shared.readings == []


def test_a_negative_dynamic_figure_is_flagged_not_reported():
    """An idle baseline above the window's draw (taken while something else ran) is no baseline of this work."""
    from bench.energy.accounting import summarise

    r = EnergyReading("train/epoch_0", 0.0, 10.0, {"node": 1000.0}, {"node": "command"}, idle_power_w={"node": 150.0})
    metrics, tags = summarise("train", [r], EnergyConfig(region="FRA"), None)
    assert "train/dynamic_energy_j" not in metrics and metrics["train/energy_j"] == 1000.0
    assert tags["train.energy.dynamic"].startswith("negative (-500 J)")


def test_an_idle_profile_is_stored_on_a_held_node_and_gives_a_shared_run_its_share(tmp_path):
    """`svbench energy idle` measures the idle power while the node is held and stores it with how and when; a run
    on a shared node uses it (a baseline read at its start would hold the neighbours' work), given its share of it
    window by window: its dynamic figure is never negative. On a shared node the command refuses to profile."""
    from conftest import assert_one_line_error, run_cli

    from bench.energy.plan import CPU_TIME_SHARE, MeasurePlan

    profile = tmp_path / "idle.json"
    node = ["--energy.meters", "[node]", "--energy.node_command", "[echo,60 W]", "--energy.node_period_s", "0.1"]
    proc = run_cli("energy", "idle", "--seconds", "0.5", "--out", profile, *node)
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(profile.read_text())
    assert stored["idle_power_w"]["node"] == pytest.approx(60.0, rel=0.02) and stored["seconds"] == 0.5
    assert {"host", "measured_at", "meters"} <= set(stored)
    shared = run_cli("energy", "idle", "--seconds", "0.5", "--out", tmp_path / "other.json", *node,
                     env={"SLURM_JOB_ID": "999999999"})  # a job Slurm does not know: taken as shared
    assert_one_line_error(shared, "the node is shared", "sbatch --exclusive")
    assert not (tmp_path / "other.json").exists()

    ms = create_meters(EnergyConfig(meters=["node"], node_command=["echo", "100 W"], node_period_s=0.1,
                                    share_period_s=0.25, idle_profile=str(profile), cgroup="none"),
                       MeasurePlan((), CPU_TIME_SHARE))
    with ms.window("w") as w:
        end = time.time() + 1.5
        while time.time() < end:
            sum(i * i for i in range(1000))
    ms.close()
    r = w.reading
    assert ms.idle_note.startswith("profile idle.json: measured on")
    fraction = r.joules["node"] / (100.0 * r.time_s)
    assert 0.0 < fraction <= 1.0  # whatever else runs beside it: the idle power follows its share
    assert r.idle_power_w["node"] == pytest.approx(stored["idle_power_w"]["node"] * fraction, rel=0.05)
    assert r.dynamic_j is not None and r.dynamic_j >= 0


def test_a_gpu_without_an_energy_counter_is_measured_from_its_power_and_says_so(tmp_path, fake_machine):
    """A pre-Volta board (no energy counter), simulated in Zeus's device layer: Zeus integrates its polled power,
    and the label says so (``gpu:nvml-power``), never the counter's ``gpu:nvml``. Constant fake power: not
    sensitive to load, so not a solo test."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import json, time
        from bench.config import EnergyConfig
        from bench.energy.meters import create_meters
        from bench.energy.plan import measurement_plan


        def main():
            meters = create_meters(EnergyConfig(meters=["zeus"]), measurement_plan("cuda:0", shared=False))
            with meters.window("w") as w:
                time.sleep(2.0)
            meters.close()
            r = w.reading
            print(json.dumps({"gpu_j": r.gpu_j, "time_s": r.time_s, "tags": r.tags()}))


        if __name__ == "__main__":  # Zeus's power monitor is a spawned process that imports this file
            main()
    """))
    env = fake_machine(gpu_w=[150], FAKE_ZEUS_GPU_NO_COUNTER="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["tags"]["energy.source"] == "gpu:nvml-power"
    assert r["tags"]["energy.incomplete"] == "cpu"  # this fake machine has no RAPL: the CPU is listed missing
    assert r["gpu_j"] == pytest.approx(150.0 * r["time_s"], rel=0.05)
