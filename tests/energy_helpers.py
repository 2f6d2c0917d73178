"""Fake hardware for energy tests: a powercap tree whose counters advance at known watts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FakeRapl:
    """``root/intel-rapl:0`` (package) with an ``intel-rapl:0:0`` dram subzone, advanced by a thread."""

    def __init__(self, root: Path, package_w: float, dram_w: float, max_uj: float = 2e8,
                 package_start_uj: float = 0.0, period_s: float = 0.005):
        self.root = Path(root)
        self.pkg = self.root / "intel-rapl:0"
        self.dram = self.pkg / "intel-rapl:0:0"
        self.dram.mkdir(parents=True, exist_ok=True)
        (self.pkg / "name").write_text("package-0\n")
        (self.dram / "name").write_text("dram\n")
        for zone in (self.pkg, self.dram):
            (zone / "max_energy_range_uj").write_text(f"{int(max_uj)}\n")
        self.rates = {self.pkg: package_w, self.dram: dram_w}
        self.start = {self.pkg: package_start_uj, self.dram: 0.0}
        self.max_uj = max_uj
        self.period_s = period_s
        self.t0 = time.time()
        self._lock = threading.Lock()
        self.tick()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        """Write the counters for now. Under a lock, so a value computed earlier never lands after a later one:
        a caller that ticks right before a read reads the counters of that instant, however late the ticker
        thread is scheduled."""
        with self._lock:
            dt = time.time() - self.t0
            for zone, watts in self.rates.items():
                value = (self.start[zone] + watts * dt * 1e6) % self.max_uj
                _write(zone / "energy_uj", f"{int(value)}\n")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            time.sleep(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class FakeRaplProcess:
    """A ``FakeRapl`` ticking in a process of its own: its counters never wait for the test's process (a test
    that polls checkpoints with ``torch.load`` holds its GIL for tens of ms, and a counter read while its
    ticker waits reads short)."""

    def __init__(self, root: Path, package_w: float, dram_w: float, max_uj: float = 2e8):
        self.root, self.args = Path(root), [str(root), str(package_w), str(dram_w), str(max_uj)]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, *self.args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ticking":  # the tree exists before anyone reads it
            raise RuntimeError("the fake RAPL process did not start")
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()  # the ticker ends at the end of its stdin
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    root, package_w, dram_w, max_uj = sys.argv[1], *(float(a) for a in sys.argv[2:5])
    try:  # a hardware counter advances whatever the load: the ticker runs before the busy test processes
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:  # not root: the ordinary scheduler (counters may lag by a time slice under load)
        pass
    with FakeRapl(Path(root), package_w, dram_w, max_uj=max_uj):
        print("ticking", flush=True)
        sys.stdin.read()
