"""Polled power commands: a user-given command that prints the whole node's power in watts (e.g.
``ipmitool dcmi power reading``, a smart PDU or wattmeter CLI), or every GPU's of the node, one per
line (``nvidia-smi --query-gpu=power.draw --format=csv,noheader``, a DCGM or CEEMS exporter's client),
is run every ``period_s`` in a background thread, parsed with a regex (every match summed for the GPUs)
and integrated by trapezoid. The command is an argv list (never a shell string).

A failed read (non-zero exit, time-out, no match) leaves a gap that the trapezoid bridges by linear
interpolation between the readings on either side. The seconds so bridged are recorded with the window
(``gap_s``); only when they exceed ``max_gap_s`` is the figure labelled incomplete. A window with no
reading at all has no number.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import warnings

import numpy as np

from bench.energy.reading import WindowPart
from bench.errors import BenchError


class NodeMeter:
    kind = "node"
    measures_anything = True

    def __init__(self, argv: list[str], regex: str = r"([0-9]+(?:\.[0-9]+)?)\s*W", period_s: float = 1.0,
                 timeout_s: float = 10.0, max_gap_s: float = 60.0, sum_matches: bool = False,
                 key: str = "energy.node_command"):
        if not argv or isinstance(argv, str):
            raise BenchError(f"{key} must be a non-empty argv list such as [ipmitool, dcmi, power, reading]")
        try:
            self.pattern = re.compile(regex)
        except re.error as exc:
            raise BenchError(f"energy.node_regex is not a valid regular expression ({exc})") from None
        if self.pattern.groups < 1:
            raise BenchError("energy.node_regex needs one capture group around the watts number")
        self.argv = [str(a) for a in argv]
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.max_gap_s = max_gap_s
        self.sum_matches = sum_matches  # every match is one device (a GPU per line): the node's sum
        self.samples: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start: dict[str, float] = {}
        self._warned = False
        first = self._sample()  # fail fast on a command that never works
        if first is not None:
            raise BenchError(f"node power command {' '.join(self.argv)} failed: {first}")
        self._thread = threading.Thread(target=self._run, name="node-meter", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        return f"node({' '.join(self.argv)}, every {self.period_s}s)"

    def _sample(self) -> str | None:
        t = time.time()
        try:
            proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._fail(t, f"{type(exc).__name__}: {exc}")
        if proc.returncode != 0:
            return self._fail(t, f"exit code {proc.returncode}")
        found = self.pattern.findall(proc.stdout)
        found = found if self.sum_matches else found[:1]
        if not found:
            return self._fail(t, f"no watts matching {self.pattern.pattern!r} in {proc.stdout.strip()[:60]!r}")
        watts = float(sum(float(m if isinstance(m, str) else m[0]) for m in found))
        with self._lock:
            self.samples.append(((t + time.time()) / 2.0, watts))
        return None

    def _fail(self, t: float, reason: str) -> str:
        with self._lock:
            self.failures.append((t, reason))
        if not self._warned and self.samples:
            warnings.warn(f"node power command failed ({reason}); affected windows bridge the gap and record its "
                          "seconds", stacklevel=2)
            self._warned = True
        return reason

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._sample()
            next_t += self.period_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    machine_level = True  # the whole node, shared by its processes and jobs

    def failures_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t, _ in self.failures if start <= t <= end)

    def begin(self, window: str) -> None:
        self._start[window] = time.time()

    def energy_between_j(self, start: float, end: float) -> float | None:
        """Joules drawn over [start, end] from the readings so far (None before the first)."""
        with self._lock:
            samples = list(self.samples)
        return self.integrate(samples, start, end) if samples else None

    def wait_past(self, end: float) -> None:
        """Wait (at most two periods and a time-out) for a read at or after ``end``, so that the last interval is
        interpolated, not extrapolated."""
        deadline = time.time() + self.period_s * 2 + self.timeout_s
        while time.time() < deadline and not self._stop.is_set():
            with self._lock:
                if (self.samples and self.samples[-1][0] >= end) or (self.failures and self.failures[-1][0] >= end):
                    return
            time.sleep(min(0.01, self.period_s / 10))

    def gap_s(self, start: float, end: float) -> float:
        """Seconds of [start, end] that the trapezoid bridges over failed reads: the part of each stretch between
        two successive readings that is longer than one period."""
        with self._lock:
            times = [s[0] for s in self.samples]
        edges = [t for t in times if start < t < end]
        before = [t for t in times if t <= start]
        after = [t for t in times if t >= end]
        points = [before[-1] if before else start, *edges, after[0] if after else end]
        gap = 0.0
        for a, b in zip(points, points[1:]):
            inside = min(b, end) - max(a, start)
            gap += max(0.0, min(inside, (b - a) - self.period_s))
        return gap

    def end(self, window: str) -> WindowPart:
        start, end = self._start.pop(window), time.time()
        self.wait_past(end)
        with self._lock:
            samples = list(self.samples)
            failures = [f for f in self.failures if start - self.period_s <= f[0] <= end + self.period_s]
        out = WindowPart({"node": self.integrate(samples, start, end)}, {"node": "command"},
                         timeline={"node": [s for s in samples if start <= s[0] <= end]})
        if not samples:
            out.incomplete["node"] = "no power reading" + (f" ({failures[0][1]})" if failures else "")
            return out
        if failures:
            gap = self.gap_s(start, end)
            out.gap_s["node"] = gap
            if gap > self.max_gap_s:
                out.incomplete["node"] = (f"{gap:.0f} s interpolated over {len(failures)} failed read(s), more than "
                                          f"energy.node_max_gap_s {self.max_gap_s:g}; first: {failures[0][1]}")
        return out

    @staticmethod
    def integrate(samples: list[tuple[float, float]], start: float, end: float) -> float:
        """Joules over [start, end]: trapezoid over the samples, linearly interpolated at the edges
        (held constant beyond the first/last sample); NaN without any sample."""
        if not samples or end <= start:
            return float("nan") if not samples else 0.0
        t = np.array([s[0] for s in samples])
        w = np.array([s[1] for s in samples])
        inside = (t > start) & (t < end)
        ts = np.concatenate([[start], t[inside], [end]])
        ws = np.interp(ts, t, w)
        return float(np.trapezoid(ws, ts))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)
