"""A GPU power limit for the work of one process (``train.gpu_power_limit_w``), set through Zeus's device layer
(NVML on NVIDIA boards) and restored afterwards, whatever ends the work.

A power limit trades time for energy: the board is capped, kernels run longer, and the energy of the same
training often falls (Zeus's authors report 15-76% saved at equal accuracy). The limit is device state that
outlives the process, so it is restored in a ``finally``; a limit outside the board's range, a process without
the permission to set it (NVML needs root or an administrator's grant), or a shared node where the job does not
hold its GPUs through Slurm is a one-line error before the work starts.
"""

from __future__ import annotations

import contextlib
import logging
import os

from bench.energy.plan import node_shared_with_other_jobs
from bench.errors import BenchError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def power_limited(watts: float | None, gpu_indices: tuple[int, ...]):
    """Cap the GPUs ``gpu_indices`` (Zeus indices) at ``watts`` for the ``with`` block; nothing when ``watts`` is
    None. Yields the limits that were in force before (mW per index)."""
    if watts is None:
        yield {}
        return
    if not gpu_indices:
        raise BenchError("train.gpu_power_limit_w needs a GPU, and this run uses none; drop the setting on CPU")
    held = any(os.environ.get(v) for v in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"))
    if os.environ.get("SLURM_JOB_ID") and node_shared_with_other_jobs() and not held:
        raise BenchError("train.gpu_power_limit_w on a shared node needs GPUs this job holds (--gpus-per-node); "
                         "other jobs' GPUs are not ours to cap")
    from zeus.device.gpu import get_gpus
    from zeus.device.gpu.common import ZeusGPUNoPermissionError, ZeusGPUNotSupportedError

    gpus, target_mw, before = get_gpus(), int(round(watts * 1000)), {}
    try:  # one try from the first change to the end of the work: a Ctrl-C anywhere in it still restores
        for i in gpu_indices:
            low, high = gpus.get_power_management_limit_constraints(i)
            if not low <= target_mw <= high:
                raise BenchError(f"train.gpu_power_limit_w {watts:g} W is outside GPU {i}'s range "
                                 f"({low / 1000:g}-{high / 1000:g} W)")
            before[i] = gpus.get_power_management_limit(i)  # noted first: restoring an unchanged limit is harmless
            try:
                gpus.set_power_management_limit(i, target_mw, block=True)
            except (ZeusGPUNoPermissionError, ZeusGPUNotSupportedError) as exc:
                del before[i]  # not changed, and not ours to set back
                raise BenchError(f"cannot set a GPU power limit ({str(exc).splitlines()[0][:120]}): it needs root "
                                 "or the administrator's permission; run with it or drop train.gpu_power_limit_w")\
                    from None
        logger.info(f"GPU power limit {watts:g} W on GPU {', '.join(map(str, gpu_indices))} (was "
                    f"{', '.join(f'{mw / 1000:g} W' for mw in before.values())})")
        yield before
    finally:
        _restore(gpus, before)


def _restore(gpus, before: dict[int, int]) -> None:
    for i, mw in before.items():
        try:
            gpus.set_power_management_limit(i, mw, block=True)
        except Exception as exc:  # noqa: BLE001 - told, never hiding the work's own error
            logger.warning(f"GPU {i}'s power limit could not be restored to {mw / 1000:g} W ({exc}); set it back "
                           f"with `nvidia-smi -i {i} -pl {mw / 1000:g}`")
