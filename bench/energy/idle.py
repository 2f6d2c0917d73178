"""A machine's idle profile: its idle power per component, measured once while the node was held exclusively
(``svbench energy idle``), stored with how and when it was measured, and read by runs on a shared node, where
an idle reading taken at their start would hold the neighbours' work.

The profile measures every GPU the process sees and keeps the node meter as its rest after them, as a shared
run does with ``energy.node_gpu_command``; a shared run is given its CPU-time share of the machine-level idle
power, window by window, and its own GPUs' idle power whole (by index: profile a node of identical boards).
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.atomic import write_text_atomic
from bench.energy.plan import EXCLUSIVE
from bench.errors import BenchError


@dataclass(frozen=True)
class IdleProfile:
    host: str
    measured_at: str  # UTC, ISO 8601
    seconds: float
    meters: str  # what measured it (MeterSet.describe)
    idle_power_w: dict[str, float]  # component -> W

    def label(self, path: str | Path) -> str:
        return (f"profile {Path(path).name}: measured on {self.host} at {self.measured_at} over {self.seconds:.0f} s, "
                "node held exclusively")


def measure_profile(meters, seconds: float) -> IdleProfile:
    """Sleep ``seconds`` inside the meters (which must hold the node exclusively) and keep the mean powers."""
    if meters.attribution != EXCLUSIVE:
        raise BenchError("the node is shared with other jobs: an idle profile would hold their work; run "
                         "`svbench energy idle` in a job that holds the node (sbatch --exclusive)")
    power = meters.measure_idle(seconds)
    if not power:
        raise BenchError("no meter measured anything to profile; configure energy.meters / energy.node_command")
    return IdleProfile(socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds,
                       meters.describe(), dict(power))


def write_profile(profile: IdleProfile, path: str | Path) -> None:
    write_text_atomic(Path(path), json.dumps(asdict(profile), indent=2) + "\n")


def read_profile(path: str | Path) -> IdleProfile:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"idle profile {path} does not exist; write one with `svbench energy idle --out {path}`")
    try:
        d = json.loads(path.read_text())
        profile = IdleProfile(str(d["host"]), str(d["measured_at"]), float(d["seconds"]), str(d["meters"]),
                              {str(k): float(v) for k, v in d["idle_power_w"].items()})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchError(f"idle profile {path} is not one `svbench energy idle` writes ({type(exc).__name__}); "
                         "write it again") from None
    if not all(math.isfinite(w) and w >= 0 for w in profile.idle_power_w.values()):
        raise BenchError(f"idle profile {path} holds a negative or non-finite power; write it again")
    return profile
