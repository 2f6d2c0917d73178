"""Fake GPUs installed into Zeus's own device layer (``zeus.device.gpu``), for tests only.

Each fake GPU draws a constant power and has a monotonically rising energy counter,
``watts x (now - t0)``, the same in every process that reads it (``t0`` is shared through the
environment), like NVML's counter of a real board. ``CUDA_VISIBLE_DEVICES`` is honoured as
Zeus's NVIDIA layer does, so a process that is given GPU 1 sees it as its index 0.

Installed by ``sitecustomize.py`` beside this file in every Python process whose environment has
``FAKE_ZEUS_GPU_W`` (comma-separated watts per physical GPU) and ``PYTHONPATH`` naming this folder;
``FAKE_ZEUS_RAPL_DIR`` points Zeus's RAPL reader at a powercap tree a test drives.
``FAKE_ZEUS_GPU_NO_COUNTER=1`` makes the boards pre-Volta: no energy counter, power readings only.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from zeus.device.gpu.common import GPU, GPUs, ZeusGPUNotSupportedError


def _unsupported(*_args, **_kwargs):
    raise ZeusGPUNotSupportedError("not simulated by the fake GPU")


class FakeGPU(GPU):
    def __init__(self, gpu_index: int, physical_index: int, watts: float, t0: float):
        super().__init__(gpu_index)
        self.physical_index = physical_index
        self.watts = watts
        self.t0 = t0

    def supports_nonblocking_setters(self) -> bool:
        return False

    def get_name(self) -> str:
        return "Fake GPU"

    def get_instant_power_usage(self) -> int:
        return int(self.watts * 1000)  # mW

    def get_average_power_usage(self) -> int:
        return int(self.watts * 1000)

    def supports_get_total_energy_consumption(self) -> bool:
        return os.environ.get("FAKE_ZEUS_GPU_NO_COUNTER") != "1"

    def get_total_energy_consumption(self) -> int:
        return int(self.watts * (time.time() - self.t0) * 1000)  # mJ

    get_power_management_limit_constraints = get_power_management_limit = _unsupported
    set_power_management_limit = reset_power_management_limit = _unsupported
    set_persistence_mode = get_persistence_mode = _unsupported
    get_supported_memory_clocks = set_memory_locked_clocks = reset_memory_locked_clocks = _unsupported
    get_supported_graphics_clocks = set_gpu_locked_clocks = reset_gpu_locked_clocks = _unsupported
    get_average_memory_power_usage = get_gpu_temperature = _unsupported


class FakeGPUs(GPUs):
    def __init__(self, watts: list[float], t0: float, ensure_homogeneous: bool = False):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = list(range(len(watts))) if visible is None else [int(x) for x in visible.split(",") if x.strip()]
        self._gpus = [FakeGPU(i, p, watts[p], t0) for i, p in enumerate(physical)]

    def __del__(self) -> None:
        pass

    @property
    def gpus(self) -> Sequence[GPU]:
        return self._gpus


def install_from_env() -> None:
    watts = os.environ.get("FAKE_ZEUS_GPU_W")
    rapl_dir = os.environ.get("FAKE_ZEUS_RAPL_DIR")
    if rapl_dir:
        import zeus.device.cpu.rapl as rapl

        rapl.RAPL_DIR = rapl_dir
    if watts:
        import zeus.device.gpu as zgpu

        t0 = float(os.environ.get("FAKE_ZEUS_GPU_T0", "0"))
        zgpu._gpus = FakeGPUs([float(w) for w in watts.split(",")], t0)  # the singleton get_gpus() returns
