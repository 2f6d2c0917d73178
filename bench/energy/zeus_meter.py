"""Zeus meter: GPU energy from NVML counters and CPU/DRAM from RAPL (``zeus.monitor.ZeusMonitor``);
GPU power timelines from ``zeus.monitor.PowerMonitor`` with an explicit ``update_period``."""

from __future__ import annotations

import time
import warnings


class ZeusMeter:
    kind = "zeus"

    def __init__(self, gpu_indices: list[int] | None = None, cpu_indices: list[int] | None = None,
                 power_timeline: bool = True, update_period_s: float = 0.1, sync_cuda: bool = False):
        from zeus.monitor import ZeusMonitor

        self.sync_cuda = sync_cuda  # wait for queued CUDA work at window edges (only when computing there)
        self.missing_cpu_reason: str | None = None  # set when nothing else covers the CPU: listed as incomplete
        self.monitor = ZeusMonitor(gpu_indices=gpu_indices, cpu_indices=cpu_indices, sync_execution_with="torch")
        self.gpu_indices = list(self.monitor.gpu_indices)
        self.cpu_indices = list(self.monitor.cpu_indices)
        self.has_dram = {i: bool(self.monitor.cpus.supports_get_dram_energy_consumption(i)) for i in self.cpu_indices}
        self.power = None
        if self.gpu_indices and power_timeline:
            from zeus.monitor import PowerMonitor

            try:  # the timeline is optional: energy comes from the counters; a slow start must not lose them
                self.power = PowerMonitor(gpu_indices=self.gpu_indices, update_period=update_period_s,
                                          power_domains=["device_instant"])
            except Exception as exc:
                warnings.warn(f"no GPU power timeline ({type(exc).__name__}: {exc}); GPU energy still comes "
                              "from the energy counters", stacklevel=2)
        self._start: dict[str, float] = {}

    @property
    def machine_level(self) -> bool:
        """RAPL packages measure the whole machine (shared by its processes)."""
        return bool(self.cpu_indices)

    def machine_energy_j(self) -> float:
        """The RAPL packages' and DRAM counters now, summed, in joules (for per-interval shares)."""
        total_mj = 0.0
        for i in self.cpu_indices:
            m = self.monitor.cpus.get_total_energy_consumption(i)
            total_mj += m.cpu_mj + (m.dram_mj or 0.0)
        return total_mj / 1000.0

    @property
    def measures_anything(self) -> bool:
        return bool(self.gpu_indices or self.cpu_indices)

    def describe(self) -> str:
        return f"zeus(gpus={self.gpu_indices}, cpus={self.cpu_indices})"

    def begin(self, window: str) -> None:
        self._start[window] = time.time()
        self.monitor.begin_window(window, sync_execution=self.sync_cuda)

    def end(self, window: str) -> dict:
        start = self._start.pop(window)
        out = {"joules": {}, "sources": {}, "incomplete": {}, "timeline": {}}
        try:
            m = self.monitor.end_window(window, sync_execution=self.sync_cuda)
        except Exception as exc:  # a read error must not stop the run
            warnings.warn(f"Zeus could not read window {window}: {exc}", stacklevel=2)
            for i in self.gpu_indices:
                out["incomplete"][f"gpu:{i}"] = f"zeus read error: {exc}"
                out["sources"][f"gpu:{i}"] = "nvml"
                out["joules"][f"gpu:{i}"] = float("nan")
            for i in self.cpu_indices:
                out["incomplete"][f"cpu:{i}"] = f"zeus read error: {exc}"
                out["sources"][f"cpu:{i}"] = "rapl"
                out["joules"][f"cpu:{i}"] = float("nan")
            return out
        for i, j in (m.gpu_energy or {}).items():
            out["joules"][f"gpu:{i}"] = float(j)
            out["sources"][f"gpu:{i}"] = "nvml"
        for i, j in (m.cpu_energy or {}).items():
            out["joules"][f"cpu:{i}"] = float(j)
            out["sources"][f"cpu:{i}"] = "rapl"
        for i, j in (m.dram_energy or {}).items():
            if self.has_dram.get(i, True):
                out["joules"][f"dram:{i}"] = float(j)
                out["sources"][f"dram:{i}"] = "rapl"
        if self.missing_cpu_reason:
            out["joules"]["cpu"] = float("nan")
            out["sources"]["cpu"] = "rapl"
            out["incomplete"]["cpu"] = self.missing_cpu_reason
        if self.power is not None:
            try:
                tl = self.power.get_power_timeline("device_instant", start_time=start, end_time=time.time())
                for i, samples in tl.items():
                    out["timeline"][f"gpu:{i}"] = [(float(t), float(w)) for t, w in samples]
            except Exception as exc:
                warnings.warn(f"no GPU power timeline for {window}: {exc}", stacklevel=2)
        return out

    def close(self) -> None:
        if self.power is not None:
            self.power.stop()
