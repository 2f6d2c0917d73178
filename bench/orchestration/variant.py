"""One variant end to end: ``run_variant(config) -> VariantResult``.

Every entry point (train, sweep, search) is a thin caller of this function. Training and evaluation
each run inside their own energy window; per-epoch energy goes to the callbacks through the
trainer's history; with ``energy.forecast`` a probe forecasts the training energy first and the
forecast error is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.atomic import write_text_atomic
from bench.config import Config, config_to_yaml, flat_params
from bench.energy.accounting import (carbon_tags, history_readings, intensity_series, run_total_j, summarise,
                                     write_timeline_csv)
from bench.energy.meters import create_meters
from bench.energy.plan import CPU_TIME_SHARE, measurement_plan
from bench.energy.power_limit import power_limited
from bench.eval.inference import measure_inference
from bench.eval.results import BackendResult, ListResult
from bench.eval.scoring import load_model, statistics_for
from bench.eval.validation import validation_eer
from bench.models import spec_from_config
from bench.models.profile import ModelProfile, profile_model
from bench.orchestration.forecast import Forecast, probe_training
from bench.training import checkpoint as ckpt
from bench.training.distributed import barrier, init_distributed, shutdown
from bench.training.checkpoint import check_fresh_out
from bench.training.curves import TargetReached, curve_points, energy_to_target
from bench.training.trainer import select_device, train

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    steps: int
    epochs: int
    time_s: float
    skipped_files: int  # unreadable training files left out
    history: list[dict]  # one row per epoch (loss, lr, time; energy is in the run's epoch metrics)
    world: int  # DDP ranks
    device: str
    torch_threads: int
    stop_reason: str = "epochs"  # "epochs", "max_steps" or the energy-aware stop's reason
    to_target: list[TargetReached] = field(default_factory=list)  # train.eer_targets on the validation curve


@dataclass
class VariantResult:
    name: str
    out_dir: str
    spec: dict
    profile: ModelProfile
    metrics: dict[str, ListResult]  # trial list -> PyTorch fp32 metrics
    train: TrainSummary
    config: dict
    energy_metrics: dict = field(default_factory=dict)  # metric name (train/energy_j, ...) -> value
    energy_tags: dict = field(default_factory=dict)
    inference: dict[str, BackendResult] = field(default_factory=dict)  # back end -> its figures
    forecast: Forecast | None = None
    cohort: dict = field(default_factory=dict)  # AS-norm cohort size: speakers, utterances

    def to_json(self) -> str:
        d = asdict(self)
        d["inference"] = {name: row.as_row() for name, row in self.inference.items()}
        return json.dumps(d, indent=2, default=str)


def run_variant(cfg: Config, out_dir: str | Path, resume: bool = False, callbacks: list | None = None,
                progress: bool = True, meters=None, force: bool = False) -> VariantResult | None:
    """Train, evaluate on every configured trial list, measure energy, write ``out_dir/result.json``.

    Under torchrun only rank 0 evaluates and returns a result; other ranks return None. A new run (not
    ``resume``) in a folder with another run's checkpoints is an error, or with ``force`` replaces them.
    """
    out_dir = Path(out_dir)
    dist_info = init_distributed(select_device(cfg.train.device).type)
    if not resume:
        check_fresh_out(out_dir, force, clear=dist_info.is_main)
    barrier(dist_info)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", config_to_yaml(cfg))
    device = select_device(cfg.train.device, dist_info.local_rank)
    own_meters = meters is None
    if meters is None:
        plan = measurement_plan(cfg.train.device, dist_info.local_rank)
        # one node meter per host, unless each rank is given its own CPU-time share of the node
        own_node_meter = dist_info.local_rank == 0 or plan.attribution == CPU_TIME_SHARE
        meters = create_meters(cfg.energy, plan, machine_meters=own_node_meter)
    series = intensity_series(cfg.energy)  # read now, so that a bad series stops the run before any work
    limit = contextlib.ExitStack()  # the GPU power limit, restored in the finally whatever ends the run
    try:
        limit.enter_context(power_limited(cfg.train.gpu_power_limit_w,
                                          measurement_plan(cfg.train.device, dist_info.local_rank).gpu_indices))
        forecast = None
        if cfg.energy.forecast and dist_info.enabled and dist_info.is_main:
            logger.info("energy.forecast is skipped under torchrun (the probe is a single-process run)")
        if cfg.energy.forecast and not dist_info.enabled and not resume:
            forecast = probe_training(cfg, meters)
        tr = train(cfg, out_dir, resume=resume, callbacks=callbacks, epoch_window=meters.window, progress=progress,
                   validate=functools.partial(validation_eer, cfg=cfg, device=device))
        limit.close()  # the power limit is the training's: evaluation runs at the board's own limit
        if not dist_info.is_main:
            return None
        model = load_model(tr.model_path, device, cfg.eval.channels_last, cfg.eval.compile)
        with meters.window("eval/train_statistics"):
            stats = statistics_for(model.list_extractor, cfg, device)
        cohort_utts = stats.pop("cohort_utts")
        model.payload.update(stats)
        ckpt.save(model.payload, tr.model_path)
        precisions = ["fp32"] + [p for p in cfg.eval.infer_precisions if p != "fp32"]
        inference = measure_inference(model, cfg, device, meters, precisions, out_dir, series=series,
                                      checkpoint=tr.model_path)
        metrics = inference["fp32"].lists
        spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
        n_classes = len(model.payload["speakers"]) * (3 if cfg.data.augment.speed_perturb else 1)
        prof = profile_model(spec, num_classes=n_classes)
        energy_metrics, energy_tags = energy_summary(cfg, tr.history, meters)
        if forecast is not None and forecast.energy_j and energy_metrics.get("train/energy_j"):
            measured_j = energy_metrics["train/energy_j"]
            forecast.error_pct = 100.0 * (forecast.energy_j - measured_j) / measured_j
        write_timeline_csv(meters.readings, out_dir / "energy_timeline.csv")
        result = VariantResult(
            name=cfg.name, out_dir=str(out_dir), spec=spec.to_dict(), profile=prof, metrics=metrics,
            train=TrainSummary(steps=tr.steps, epochs=tr.epochs, time_s=tr.time_s, skipped_files=tr.skipped_files,
                               history=[{k: v for k, v in h.items() if k not in ("energy", "val_energy")}
                                        for h in tr.history],
                               world=dist_info.world, device=str(device), torch_threads=torch.get_num_threads(),
                               stop_reason=tr.stop_reason,
                               to_target=[energy_to_target(curve_points(tr.history), t)
                                          for t in cfg.train.eer_targets]),
            config=flat_params(cfg), energy_metrics=energy_metrics, energy_tags=energy_tags, inference=inference,
            forecast=forecast,
            cohort={"speakers": int(stats["cohort"].shape[0]), "utts": cohort_utts},
        )
        write_text_atomic(out_dir / "result.json", result.to_json())
        return result
    finally:
        limit.close()
        if own_meters:
            meters.close()
        shutdown(dist_info)


def energy_summary(cfg: Config, history: list[dict], meters) -> tuple[dict, dict]:
    """(metrics, tags) of the run's energy: training and validation from the trainer's history (epochs already
    summed over ranks), evaluation from its fp32 window, and ``run/energy_j``, every joule the run measured once.
    The intensity series is read after the work, so that it covers its hours (a service that fails now leaves the
    run charged the region's yearly average, labelled, rather than failing the work done)."""
    series = intensity_series(cfg.energy, after_work=True)
    train_readings = history_readings(history)
    val_readings = history_readings(history, "val_energy")
    eval_reading = next(r for r in reversed(meters.readings) if r.name == "infer/fp32")
    metrics, tags = {}, {}
    for prefix, readings in (("train", train_readings), ("eval", [eval_reading]), ("val", val_readings)):
        if readings or prefix != "val":
            m, t = summarise(prefix, readings, cfg.energy, series)
            metrics.update(m)
            tags.update(t)
    others = [r for r in meters.readings if not r.name.startswith(("train/", "val/"))]
    metrics["run/energy_j"] = run_total_j([*train_readings, *val_readings, *others])
    tags.update(carbon_tags(cfg.energy, series))
    # the run's labels are its training energy's
    tags.update({k.removeprefix("train."): v for k, v in tags.items() if k.startswith("train.energy.")})
    tags["energy.meters"] = meters.describe()
    tags["energy.idle"] = meters.idle_note
    return metrics, tags
