"""Per-interval CPU-time shares of a shared machine (bench.energy.share): never more than the machine drew."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

from bench.energy.share import UsageSample, attributed_fraction


def test_out_of_step_windows_are_never_given_more_than_the_machine_drew():
    """The worked example of the README: the machine draws 100 W over 0-10 s and 10 W over 10-20 s (one core
    busy throughout). Window A covers 0-20 s and is busy in its second half; window B covers 0-10 s, busy
    throughout. One share per window gives A 550 J and B 1000 J (1550 J of 1100 J drawn); per interval, 100 J
    and 1000 J."""
    machine = [(0.0, 0.0, 0.0), (10.0, 10.0, 1000.0), (20.0, 20.0, 1100.0)]  # t, busy CPU s, energy J
    cpu_a = [0.0, 0.0, 10.0]
    cpu_b = [0.0, 10.0]
    a = [UsageSample(t, c, busy, e) for (t, busy, e), c in zip(machine, cpu_a)]
    b = [UsageSample(t, c, busy, e) for (t, busy, e), c in zip(machine[:2], cpu_b)]
    drawn_a, drawn_b = 1100.0, 1000.0  # what the meter counted over each window
    given_a, given_b = attributed_fraction(a) * drawn_a, attributed_fraction(b) * drawn_b
    assert given_a == 100.0 and given_b == 1000.0
    assert given_a + given_b <= 1100.0
    # the once-per-window rule this replaces
    once_a = (cpu_a[-1] - cpu_a[0]) / (machine[-1][1] - machine[0][1]) * drawn_a
    assert once_a + given_b == 1550.0


def test_idle_intervals_give_nothing_and_shares_are_capped():
    idle = [UsageSample(0.0, 0.0, 5.0, 0.0), UsageSample(1.0, 0.0, 5.0, 50.0)]  # no busy CPU: no share, never 1
    assert attributed_fraction(idle) == 0.0
    over = [UsageSample(0.0, 0.0, 0.0, None), UsageSample(1.0, 3.0, 2.0, None)]  # children counted late: cap 1
    assert attributed_fraction(over) == 1.0


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
