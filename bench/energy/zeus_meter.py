"""Zeus meter: GPU energy from the GPUs' energy counters (NVML, AMD SMI) or, on GPUs without one, from their
polled power (``approx_instant_energy``: a window shorter than the counter's update period is power x time,
never 0); CPU/DRAM from RAPL (``zeus.monitor.ZeusMonitor``); GPU power timelines from
``zeus.monitor.PowerMonitor`` with an explicit ``update_period``.

Each GPU's source label says what Zeus measured: ``nvml`` / ``amdsmi`` (the energy counter) or
``nvml-power`` / ``amdsmi-power`` (polled power, integrated). A GPU window that still reads 0 J is labelled
incomplete, never reported as 0.
"""

from __future__ import annotations

import time
import warnings

from bench.energy.reading import WindowPart


def gpu_source(gpus, index: int) -> str:
    """What Zeus reads for one GPU: the vendor's library, and ``-power`` where it has no energy counter."""
    from zeus.device.gpu import AMDGPUs

    vendor = "amdsmi" if isinstance(gpus, AMDGPUs) else "nvml"
    return vendor if gpus.supports_get_total_energy_consumption(index) else f"{vendor}-power"


class ZeusMeter:
    kind = "zeus"

    def __init__(self, gpu_indices: list[int] | None = None, cpu_indices: list[int] | None = None,
                 power_timeline: bool = True, update_period_s: float = 0.1, sync_cuda: bool = False):
        from zeus.monitor import ZeusMonitor

        self.sync_cuda = sync_cuda  # wait for queued CUDA work at window edges (only when computing there)
        self.missing_cpu_reason: str | None = None  # set when nothing else covers the CPU: listed as incomplete
        self.monitor = ZeusMonitor(gpu_indices=gpu_indices, cpu_indices=cpu_indices, sync_execution_with="torch",
                                   approx_instant_energy=True)
        self.gpu_indices = list(self.monitor.gpu_indices)
        self.gpu_sources = {i: gpu_source(self.monitor.gpus, i) for i in self.gpu_indices}
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

    def counters_j(self) -> dict[str, float]:
        """The RAPL packages' and DRAM counters and the GPUs' energy counters now, in joules, per component (for
        per-interval shares)."""
        out: dict[str, float] = {}
        for i in self.cpu_indices:
            m = self.monitor.cpus.get_total_energy_consumption(i)
            out[f"cpu:{i}"] = m.cpu_mj / 1000.0
            if m.dram_mj is not None and self.has_dram.get(i, True):
                out[f"dram:{i}"] = m.dram_mj / 1000.0
        for i in self.gpu_indices:
            if self.monitor.gpus.supports_get_total_energy_consumption(i):
                out[f"gpu:{i}"] = self.monitor.gpus.get_total_energy_consumption(i) / 1000.0
        return out

    @property
    def measures_anything(self) -> bool:
        return bool(self.gpu_indices or self.cpu_indices)

    def describe(self) -> str:
        return f"zeus(gpus={self.gpu_indices}, cpus={self.cpu_indices})"

    def begin(self, window: str) -> None:
        self._start[window] = time.time()
        self.monitor.begin_window(window, sync_execution=self.sync_cuda)

    def end(self, window: str) -> WindowPart:
        start = self._start.pop(window)
        out = WindowPart()
        try:
            m = self.monitor.end_window(window, sync_execution=self.sync_cuda)
        except Exception as exc:  # a read error must not stop the run
            warnings.warn(f"Zeus could not read window {window}: {exc}", stacklevel=2)
            for comp, source in [*((f"gpu:{i}", self.gpu_sources[i]) for i in self.gpu_indices),
                                 *((f"cpu:{i}", "rapl") for i in self.cpu_indices)]:
                out.joules[comp], out.sources[comp] = float("nan"), source
                out.incomplete[comp] = f"zeus read error: {exc}"
            return out
        for i, j in (m.gpu_energy or {}).items():
            out.joules[f"gpu:{i}"], out.sources[f"gpu:{i}"] = float(j), self.gpu_sources.get(i, "nvml")
            if j == 0.0:  # neither the counter nor the polled power saw the window
                out.incomplete[f"gpu:{i}"] = "window too short for the GPU's energy counter and power reading"
        for i, j in (m.cpu_energy or {}).items():
            out.joules[f"cpu:{i}"], out.sources[f"cpu:{i}"] = float(j), "rapl"
        for i, j in (m.dram_energy or {}).items():
            if self.has_dram.get(i, True):
                out.joules[f"dram:{i}"], out.sources[f"dram:{i}"] = float(j), "rapl"
        if self.missing_cpu_reason:
            out.joules["cpu"], out.sources["cpu"] = float("nan"), "rapl"
            out.incomplete["cpu"] = self.missing_cpu_reason
        if self.power is not None:
            try:
                tl = self.power.get_power_timeline("device_instant", start_time=start, end_time=time.time())
                for i, samples in tl.items():
                    out.timeline[f"gpu:{i}"] = [(float(t), float(w)) for t, w in samples]
            except Exception as exc:
                warnings.warn(f"no GPU power timeline for {window}: {exc}", stacklevel=2)
        return out

    def close(self) -> None:
        if self.power is not None:
            self.power.stop()
