"""Fake GPUs installed into Zeus's own device layer (``zeus.device.gpu``), for tests only.

Each fake GPU draws a constant power and has a monotonically rising energy counter,
``watts x (now - t0)``, the same in every process that reads it (``t0`` is shared through the
environment), like NVML's counter of a real board. ``CUDA_VISIBLE_DEVICES`` is honoured as
Zeus's NVIDIA layer does, so a process that is given GPU 1 sees it as its index 0.

Installed by ``sitecustomize.py`` beside this file in every Python process whose environment has
``FAKE_ZEUS_GPU_W`` (comma-separated watts per physical GPU) and ``PYTHONPATH`` naming this folder;
``FAKE_ZEUS_RAPL_DIR`` points Zeus's RAPL reader at a powercap tree a test drives.
``FAKE_ZEUS_GPU_NO_COUNTER=1`` makes the boards pre-Volta: no energy counter, power readings only.

Power limits (as NVML has them): each board's range is 100-700 W and its default limit 700 W. With
``FAKE_ZEUS_GPU_STATE`` (a JSON file) a limit is device state shared by every process and outliving them, as on a
real board: the file keeps each board's limit changes, its draw is ``min(watts, limit)`` and its energy counter the
integral of that. ``FAKE_ZEUS_GPU_NO_PERMISSION=1`` makes setting a limit fail as NVML does without root.
A capped board also runs slower, as a real one does when its clocks drop: in a process that trains (a PyTorch
optimizer step hook, torch's public ``register_optimizer_step_post_hook``), each step is stretched by
``(watts / capped draw) ** STRETCH_EXPONENT``, so a 400 W board capped at 150 W takes 1.63x the time and spends
0.61x the energy, the shape of the trade-off Zeus measures on real boards (the figures themselves are a GPU's).
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from zeus.device.gpu.common import GPU, GPUs, ZeusGPUNoPermissionError, ZeusGPUNotSupportedError

RANGE_MW = (100_000, 700_000)
STRETCH_EXPONENT = 0.5
_installed: "FakeGPUs | None" = None


def _state() -> dict:
    path = os.environ.get("FAKE_ZEUS_GPU_STATE")
    if not path or not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _set_limit(physical: int, watts: float) -> None:
    path = os.environ.get("FAKE_ZEUS_GPU_STATE")
    if not path:
        raise ZeusGPUNotSupportedError("power limits are simulated only with FAKE_ZEUS_GPU_STATE")
    if os.environ.get("FAKE_ZEUS_GPU_NO_PERMISSION") == "1":
        raise ZeusGPUNoPermissionError("Insufficient permissions")
    state = _state()
    state.setdefault(str(physical), []).append([time.time(), watts])
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)


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

    def _limits(self) -> list[tuple[float, float]]:
        """(since, watts) of the board's limit changes, the default first."""
        return [(float("-inf"), RANGE_MW[1] / 1000), *map(tuple, _state().get(str(self.physical_index), []))]

    def get_instant_power_usage(self) -> int:
        return int(min(self.watts, self._limits()[-1][1]) * 1000)  # mW

    def get_average_power_usage(self) -> int:
        return self.get_instant_power_usage()

    def supports_get_total_energy_consumption(self) -> bool:
        return os.environ.get("FAKE_ZEUS_GPU_NO_COUNTER") != "1"

    def get_total_energy_consumption(self) -> int:
        now, joules = time.time(), 0.0
        limits = self._limits()
        for (since, cap), (until, _) in zip(limits, [*limits[1:], (now, 0.0)]):
            lo, hi = max(since, self.t0), min(until, now)
            if hi > lo:
                joules += min(self.watts, cap) * (hi - lo)
        return int(joules * 1000)  # mJ

    def get_power_management_limit_constraints(self) -> tuple[int, int]:
        return RANGE_MW

    def get_power_management_limit(self) -> int:
        return int(self._limits()[-1][1] * 1000)

    def set_power_management_limit(self, power_limit_mw: int, block: bool = True) -> None:
        _set_limit(self.physical_index, power_limit_mw / 1000)

    def reset_power_management_limit(self, block: bool = True) -> None:
        _set_limit(self.physical_index, RANGE_MW[1] / 1000)

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
        global _installed
        _installed = FakeGPUs([float(w) for w in watts.split(",")], t0)
        zgpu._gpus = _installed  # the singleton get_gpus() returns
        if os.environ.get("FAKE_ZEUS_GPU_STATE"):
            _install_time_stretch()


def stretch_factor() -> float:
    """How much slower the process's boards run under their present limits (1: uncapped)."""
    boards = _installed.gpus if _installed is not None else []
    draws = [(g.watts, min(g.watts, g.get_power_management_limit() / 1000)) for g in boards]
    return max([1.0, *[(watts / capped) ** STRETCH_EXPONENT for watts, capped in draws]])


def _install_time_stretch() -> None:
    """Stretch each training step's compute (from the first forward of a trainable layer to the end of the
    optimizer step, through torch's public global hooks) by ``stretch_factor``: the step is slept again x
    (factor - 1). Data loading and evaluation are left as they are."""
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    began: list[float | None] = [None]

    def on_forward(module, _args) -> None:
        if began[0] is None and module.training and torch.is_grad_enabled() and \
                any(p.requires_grad for p in module.parameters(recurse=False)):
            began[0] = time.perf_counter()

    def after_step(_optimizer, _args, _kwargs) -> None:
        if began[0] is not None and (factor := stretch_factor()) > 1.0:
            time.sleep((factor - 1.0) * (time.perf_counter() - began[0]))
        began[0] = None

    register_module_forward_pre_hook(on_forward)
    register_optimizer_step_post_hook(after_step)
