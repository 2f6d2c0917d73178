"""Trainer callbacks that log to MLflow (through the run's spool)."""
from __future__ import annotations

from bench.energy.reading import reading_from_state
from bench.tracking.runlog import RunLog


# ---------------------------------------------------------------- callbacks
class EpochLogger:
    """Trainer callback: per-epoch loss, accuracy, lr, margin, energy and time with step = epoch, into the
    run's spool (the sender sends them; an outage never stops the epoch loop)."""

    KEYS = {"loss": "train/epoch_loss", "accuracy": "train/epoch_accuracy", "lr": "train/epoch_lr",
            "margin": "train/epoch_margin", "energy_j": "train/epoch_energy_j", "time_s": "train/epoch_time_s",
            "skipped_files": "train/epoch_skipped_files", "energy_j_cum": "train/energy_j_cum",
            "val_eer_pct": "val/eer_pct", "val_energy_j": "val/epoch_energy_j", "val_time_s": "val/epoch_time_s"}

    def __init__(self, log: RunLog, run_id: str):
        self.log = log
        self.run_id = run_id

    def on_train_begin(self, info: dict) -> None:
        """After a resume: record each restored epoch's metrics that never reached the spool (killed between
        the checkpoint and the record), never twice; checked per metric, not per epoch."""
        history = info.get("history", [])
        if not history:
            return
        logged = self.log.spool.logged_steps(self.run_id)
        for h in history:
            self._log(h["epoch"], h, skip=lambda name, epoch: epoch in logged.get(name, ()))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._log(epoch, metrics)

    def _log(self, epoch: int, metrics: dict, skip=lambda name, epoch: False) -> None:
        """One record, one ``log_batch``: one transaction in the tracking store, so a kill leaves all or none."""
        batch = {name: metrics[k] for k, name in self.KEYS.items()
                 if metrics.get(k) is not None and not skip(name, epoch)}
        # the epoch's labels come with its energy, so a run killed before its end is labelled too
        tags = reading_from_state(metrics["energy"]).tags() if batch and metrics.get("energy") else {}
        if batch:
            self.log.log_batch(self.run_id, metrics=batch, tags=tags, step=epoch)
