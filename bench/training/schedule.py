"""Per-iteration schedules (one step counter drives both, as in WeSpeaker).

Learning rate: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then exponential decay
reaching ``final_lr`` at the last step. Margin: 0 until ``start_step``, then a linear ramp to
``margin`` over ``ramp_steps``.
"""

from __future__ import annotations


def lr_at(step: int, total_steps: int, lr: float, final_lr: float, warmup_steps: int) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr * (final_lr / lr) ** progress


def margin_at(step: int, margin: float, start_step: int, ramp_steps: int) -> float:
    if step < start_step:
        return 0.0
    if ramp_steps <= 0:
        return margin
    return margin * min(1.0, (step - start_step + 1) / ramp_steps)
