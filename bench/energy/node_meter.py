"""Node meter: samples a user-given command that prints the whole node's power in watts (e.g.
``ipmitool dcmi power reading``, a smart PDU or wattmeter CLI) every ``period_s`` in a background
thread, parses it with a regex and integrates by trapezoid. The command is an argv list (never a
shell string). A failing command (non-zero exit, time-out, no match) marks the windows it touches
incomplete, with a warning, and the run goes on.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import warnings

import numpy as np

from bench.errors import BenchError


class NodeMeter:
    kind = "node"
    measures_anything = True

    def __init__(self, argv: list[str], regex: str = r"([0-9]+(?:\.[0-9]+)?)\s*W", period_s: float = 1.0,
                 timeout_s: float = 10.0):
        if not argv or isinstance(argv, str):
            raise BenchError("energy.node_command must be a non-empty argv list such as [ipmitool, dcmi, power, "
                             "reading]")
        try:
            self.pattern = re.compile(regex)
        except re.error as exc:
            raise BenchError(f"energy.node_regex is not a valid regular expression ({exc})") from None
        if self.pattern.groups < 1:
            raise BenchError("energy.node_regex needs one capture group around the watts number")
        self.argv = [str(a) for a in argv]
        self.period_s = period_s
        self.timeout_s = timeout_s
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
        m = self.pattern.search(proc.stdout)
        if not m:
            return self._fail(t, f"no watts matching {self.pattern.pattern!r} in {proc.stdout.strip()[:60]!r}")
        watts = float(m.group(1))
        with self._lock:
            self.samples.append(((t + time.time()) / 2.0, watts))
        return None

    def _fail(self, t: float, reason: str) -> str:
        with self._lock:
            self.failures.append((t, reason))
        if not self._warned and self.samples:
            warnings.warn(f"node power command failed ({reason}); affected windows are marked incomplete", stacklevel=2)
            self._warned = True
        return reason

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._sample()
            next_t += self.period_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    machine_level = True  # the whole node, shared by its processes and jobs

    def machine_energy_j(self) -> float | None:
        """Joules the node drew from its first sample until now (for per-interval shares)."""
        with self._lock:
            samples = list(self.samples)
        return self.integrate(samples, samples[0][0], time.time()) if samples else None

    def begin(self, window: str) -> None:
        self._start[window] = time.time()

    def end(self, window: str) -> dict:
        start, end = self._start.pop(window), time.time()
        # wait for one sample at or after the end so the last interval is interpolated, not extrapolated
        deadline = time.time() + self.period_s * 2 + self.timeout_s
        while time.time() < deadline and not self._stop.is_set():
            with self._lock:
                if (self.samples and self.samples[-1][0] >= end) or (self.failures and self.failures[-1][0] >= end):
                    break
            time.sleep(min(0.01, self.period_s / 10))
        with self._lock:
            samples = list(self.samples)
            failures = [f for f in self.failures if start - self.period_s <= f[0] <= end + self.period_s]
        out = {"joules": {"node": self.integrate(samples, start, end)}, "sources": {"node": "command"},
               "incomplete": {}, "timeline": {"node": [s for s in samples if start <= s[0] <= end]}}
        if failures:
            out["incomplete"]["node"] = f"{len(failures)} failed sample(s), first: {failures[0][1]}"
        elif not samples:
            out["incomplete"]["node"] = "no power sample"
        return out

    @staticmethod
    def integrate(samples: list[tuple[float, float]], start: float, end: float) -> float:
        """Joules over [start, end]: trapezoid over the samples, linearly interpolated at the edges
        (held constant beyond the first/last sample)."""
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
