"""Per-interval CPU-time shares of a shared machine (bench.energy.share): never more than the machine drew."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

from bench.energy.share import UsageSample, attribute, interval_share


def _node(energy_j):
    """interval_energy_j of a node whose meter counted ``energy_j(t0, t1)`` joules over [t0, t1]."""
    return lambda a, b: {"node": energy_j(a.time_s, b.time_s)}


def _piecewise(powers_w, step_s):
    """Cumulative energy of a node drawing powers_w[i] watts over [i*step_s, (i+1)*step_s)."""
    def energy(t0, t1):
        total = 0.0
        for i, w in enumerate(powers_w):
            lo, hi = max(t0, i * step_s), min(t1, (i + 1) * step_s)
            total += w * max(0.0, hi - lo)
        return total
    return energy


def test_out_of_step_windows_are_never_given_more_than_the_machine_drew():
    """The worked example of docs/ENERGY.md: the machine draws 100 W over 0-10 s and 10 W over 10-20 s (one core
    busy throughout). Window A covers 0-20 s and is busy in its second half; window B covers 0-10 s, busy
    throughout. One share per window gives A 550 J and B 1000 J (1550 J of 1100 J drawn); per interval, 100 J
    and 1000 J."""
    energy = _node(_piecewise([100.0, 10.0], 10.0))
    machine = [(0.0, 0.0), (10.0, 10.0), (20.0, 20.0)]  # grid instants, busy CPU s
    a = [UsageSample(t, c, busy) for (t, busy), c in zip(machine, [0.0, 0.0, 10.0])]
    b = [UsageSample(t, c, busy) for (t, busy), c in zip(machine[:2], [0.0, 10.0])]
    given_a, given_b = attribute(a, 0.0, 20.0, energy), attribute(b, 0.0, 10.0, energy)
    assert given_a.given_j["node"] == 100.0 and given_b.given_j["node"] == 1000.0
    assert given_a.drawn_j["node"] == 1100.0
    once_a = (10.0 - 0.0) / (20.0 - 0.0) * 1100.0  # the once-per-window rule this replaces
    assert once_a + given_b.given_j["node"] == 1550.0


def _edge_rule(cpu, busy, energy, start, end, grid):
    """The rule this replaces: samples at the window's own (off-grid) edges and the grid instants between."""
    times = [start, *[g for g in grid if start < g < end], end]
    return sum((cpu(t1) - cpu(t0)) / (busy(t1) - busy(t0)) * energy(t0, t1)
               for t0, t1 in zip(times, times[1:]) if busy(t1) > busy(t0))


def test_windows_ending_off_the_grid_out_of_step_never_sum_above_the_draw():
    """A node meter and two processes on a 1 s grid, each busy on one core for 0.5 s: A over 0-0.5 s in a
    window 0-1.5 s, B over 0.5-1.0 s in a window 0.5-2.0 s. The node draws 10 W, but 200 W over 0.5-1.0 s: 115 J
    over 0-2 s. Shares taken at each window's own edges (as before, when 198 J were given of 119 J drawn) give A
    52.5 J and B 100 J: 152.5 J of 115 J. On the shared grid, edge intervals pro-rated by time, never more."""
    energy_j = _piecewise([10.0, 200.0, 10.0, 10.0], 0.5)
    drawn = energy_j(0.0, 2.0)

    def cpu_a(t):
        return min(t, 0.5)

    def cpu_b(t):
        return min(max(t - 0.5, 0.0), 0.5)

    def busy(t):
        return min(t, 1.0) + 1e-9 * t  # one core busy over 0-1 s; nothing after

    old = (_edge_rule(cpu_a, busy, energy_j, 0.0, 1.5, [1.0]) + _edge_rule(cpu_b, busy, energy_j, 0.5, 2.0, [1.0]))
    assert old > drawn  # the case the grid fixes: 152.5 J of 115 J

    grid = [0.0, 1.0, 2.0]
    given = 0.0
    for cpu, start, end in ((cpu_a, 0.0, 1.5), (cpu_b, 0.5, 2.0)):
        samples = [UsageSample(t, cpu(t), busy(t)) for t in grid]
        given += attribute(samples, start, end, _node(energy_j)).given_j["node"]
    assert given <= drawn, (given, drawn)


def test_each_component_is_split_by_its_own_energy():
    """RAPL's CPU and DRAM and the node's rest are each weighted by their own interval energies: a process busy
    only while the package draws little is given little of the package, whatever the node meter did."""
    samples = [UsageSample(0.0, 0.0, 0.0, {"cpu:0": 0.0}), UsageSample(1.0, 1.0, 1.0, {"cpu:0": 10.0}),
               UsageSample(2.0, 1.0, 2.0, {"cpu:0": 110.0})]

    def energy(a, b):
        return {"cpu:0": b.counters_j["cpu:0"] - a.counters_j["cpu:0"], "node": 300.0 if a.time_s == 0 else 30.0}

    got = attribute(samples, 0.0, 2.0, energy)
    assert got.given_j["cpu:0"] == 10.0 and got.given_j["node"] == 300.0
    assert got.fraction("cpu:0") == pytest.approx(10.0 / 110.0)


def test_idle_intervals_give_nothing_and_shares_are_capped():
    assert interval_share(UsageSample(0.0, 0.0, 5.0), UsageSample(1.0, 0.0, 5.0)) == 0.0  # no busy CPU: no share
    assert interval_share(UsageSample(0.0, 0.0, 0.0), UsageSample(1.0, 3.0, 2.0)) == 1.0  # children late: cap 1


CHILD = textwrap.dedent("""
    import json, sys, time
    from bench.config import EnergyConfig
    from bench.energy.meters import create_meters
    from bench.energy.plan import MeasurePlan

    delay_s, busy_s, window_s = map(float, sys.argv[1:4])
    # the meter's command is a cheap one, as a power meter's client is: a Python interpreter started every 0.25 s
    # costs the window's process (its parent) up to 0.1 CPU-s each on a slow machine, a share of the node that
    # made A's 5 s of sleep count for 60 J
    meters = create_meters(EnergyConfig(meters=["node"], node_command=["echo", "100 W"],
                                        node_period_s=0.25, share_period_s=0.5),
                           MeasurePlan((), "cpu-time-share"))
    start = time.time()
    with meters.window("work") as w:
        time.sleep(delay_s)
        end = time.time() + busy_s
        while time.time() < end:
            sum(i * i for i in range(1000))
        time.sleep(max(0.0, start + window_s - time.time()))
    meters.close()
    r = w.reading
    print(json.dumps({"node_j": r.joules["node"], "start": r.start_time, "end": r.end_time,
                      "attribution": r.attribution}))
""")


@pytest.mark.solo  # each process is expected to get most of the node: nothing else may run
def test_two_processes_out_of_step_on_a_node_meter_sum_to_at_most_the_draw(tmp_path):
    """Two real processes share a 100 W node meter with out-of-step windows (as the example above): A waits
    5 s then computes for 5 s; B computes for 5 s. Their attributed energies never exceed what the node drew
    over the union of their windows."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    a = subprocess.Popen([sys.executable, str(script), "5", "5", "10"], stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(0.2)
    b = subprocess.Popen([sys.executable, str(script), "0", "5", "5"], stdout=subprocess.PIPE, text=True, env=env)
    ra, rb = (json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in (a, b))
    union_s = max(ra["end"], rb["end"]) - min(ra["start"], rb["start"])
    drawn = 100.0 * union_s
    assert ra["attribution"] == rb["attribution"] == "cpu-time-share"
    assert ra["node_j"] + rb["node_j"] <= drawn * 1.03, (ra, rb, drawn)
    # each computed alone for about 5 s (B first, then A) and is given most of the node's 500 J of that time
    assert 250.0 < ra["node_j"] < 550.0 and 250.0 < rb["node_j"] < 550.0, (ra, rb)
