"""Training loop: SGD with warm-up + exponential decay per iteration, margin schedule, AMP,
channels-last, gradient clipping, seeded data, checkpoints with exact resume, DDP.

Progress goes to tqdm; per-epoch loss, accuracy, lr and margin go to callbacks (objects with any of
``on_train_begin(info)``, ``on_epoch_end(epoch, metrics)``, ``on_train_end(summary)``); MLflow is wired
in ``bench.tracking.callbacks``. ``epoch_window(name)`` is an optional context manager factory wrapped around each
epoch (the energy meters use it).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bench.config import Config, config_to_yaml
from bench.data.features import Fbank
from bench.data.loader import EpochBatchSampler, TrainCrops, collate_crops
from bench.data.manifest import TRAIN_MANIFEST, data_root, read_manifest
from bench.data.validation_split import ValidationSplit, split_validation
from bench.energy.accounting import gather_ranks
from bench.energy.reading import reading_from_state, reading_to_state, sum_windows
from bench.errors import BenchError
from bench.models import build_model, spec_from_config
from bench.models.heads import MarginHead
from bench.training import checkpoint as ckpt
from bench.training.distributed import all_reduce_sum, barrier, init_distributed
from bench.training.curves import cumulative, curve_points, stop_reason
from bench.training.precision import autocast
from bench.training.schedule import lr_at, margin_at

logger = logging.getLogger(__name__)


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"train.device is {name} but no CUDA GPU is visible; use --train.device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SpeakerNet(torch.nn.Module):
    """Embedding network + margin head, the unit DDP wraps."""

    def __init__(self, spec, num_classes: int, head_cfg):
        super().__init__()
        self.embedder = build_model(spec)
        self.head = MarginHead(spec.embed_dim, num_classes, head_cfg.scale, head_cfg.margin, head_cfg.type)

    def forward(self, feats, labels):
        return self.head(self.embedder(feats), labels)


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    steps: int
    epochs: int
    time_s: float
    skipped_files: int
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "epochs"  # "epochs", "max_steps", or the energy-aware rule's reason


def _call(callbacks, name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


Validator = Callable[[torch.nn.Module, ValidationSplit], float]


def train(cfg: Config, out_dir: str | Path, resume: bool = False, callbacks: list | None = None,
          epoch_window: Callable[[str], ContextManager] | None = None, progress: bool = True,
          validate: Validator | None = None) -> TrainResult:
    """Train one variant into ``out_dir`` (checkpoints/, model.pt); returns a summary. ``validate(embedder,
    split)`` gives the validation EER (%) after every ``train.val_every_epochs`` epochs when
    ``data.val_speakers`` holds speakers out."""
    return Trainer(cfg, out_dir, callbacks, epoch_window, progress, validate).run(resume)


def training_split(cfg: Config) -> tuple[pd.DataFrame, ValidationSplit | None]:
    """The training manifest without the validation speakers, and the validation split (None without one)."""
    manifest = read_manifest(data_root(cfg.data.root) / TRAIN_MANIFEST)
    split = split_validation(manifest, cfg.data.val_speakers, cfg.data.val_speakers_max)
    return (split.train if split else manifest), split


class Trainer:
    """One training run. Its steps, in order: ``__init__`` (device, data, model, optimizer, schedule),
    ``restore`` (a checkpoint's exact state), then per epoch ``run_epoch`` (its energy windows and steps,
    ``train_step`` each), ``validation`` (its own energy window) and ``end_epoch`` (metrics, epoch checkpoint,
    the stop rule), and at the end ``average`` (model.pt)."""

    def __init__(self, cfg: Config, out_dir: str | Path, callbacks: list | None = None,
                 epoch_window: Callable[[str], ContextManager] | None = None, progress: bool = True,
                 validate: Validator | None = None):
        self.cfg, self.callbacks, self.progress, self.validate = cfg, callbacks or [], progress, validate
        self.epoch_window = epoch_window or (lambda name: contextlib.nullcontext())
        self.out_dir = Path(out_dir)
        self.ck_dir = self.out_dir / "checkpoints"
        self.last = self.ck_dir / "last.pt"
        self.dist = init_distributed(select_device(cfg.train.device).type)
        self.device = select_device(cfg.train.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        root = data_root(cfg.data.root)
        seed_everything(cfg.train.seed)
        manifest, self.val = training_split(cfg)
        self.dataset = TrainCrops(manifest, root, cfg.data, seed=cfg.train.seed, sample_rate=cfg.features.sample_rate)
        self.spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
        self.net = SpeakerNet(self.spec, self.dataset.num_classes, cfg.head).to(self.device)
        if cfg.train.channels_last and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.fbank = Fbank(cfg.features.n_mels, cfg.features.sample_rate, cfg.features.frame_length_ms,
                           cfg.features.frame_shift_ms).to(self.device)
        self.params = list(self.net.parameters())
        t = cfg.train
        self.opt = torch.optim.SGD(self.params, lr=t.scaled_lr(self.dist.world), momentum=t.momentum,
                                   nesterov=t.nesterov and t.momentum > 0, weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(t.amp == "fp16"))
        self.sampler = EpochBatchSampler(len(self.dataset), t.batch_size, t.seed, self.dist.rank, self.dist.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.warmup_steps = int(t.warmup_epochs * self.steps_per_epoch)
        self.margin_start = int(cfg.head.margin_warmup_epochs * self.steps_per_epoch)
        self.margin_ramp = int(cfg.head.margin_ramp_epochs * self.steps_per_epoch)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.acc = _new_accumulators()
        self.resumed_mid_epoch = False
        self.history: list[dict] = []
        self.skipped_total = 0
        self.stopped: str | None = None

    def run(self, resume: bool) -> TrainResult:
        if resume:
            self.restore()
        self.model = self.net
        if self.dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        _call(self.callbacks, "on_train_begin", {
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "num_classes": self.dataset.num_classes, "spec": self.spec, "world": self.dist.world,
            "history": list(self.history) if self.dist.is_main else []})
        t_start = time.perf_counter()
        self.net.train()
        while self.epoch < self.cfg.train.epochs and self.step < self.total_steps and not self.stopped:
            self.end_epoch(self.run_epoch())
        barrier(self.dist)
        reason = self.stopped or ("epochs" if self.epoch >= self.cfg.train.epochs else "max_steps")
        time_s = time.perf_counter() - t_start
        model_path = self.out_dir / "model.pt"
        if self.dist.is_main:
            self.average(model_path)
        result = TrainResult(self.out_dir, model_path, self.step, self.epoch, time_s, self.skipped_total,
                             self.history, reason)
        _call(self.callbacks, "on_train_end", result)
        return result

    def restore(self) -> None:
        """Continue from ``checkpoints/last.pt``: weights, optimizer, scaler, position, RNG, history."""
        if not self.last.is_file():
            if self.dist.is_main:
                logger.info(f"no checkpoint in {self.ck_dir}; starting from scratch")
            return
        state = ckpt.load(self.last)
        _check_compatible(state, self.spec, self.dataset.num_classes, self.last)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.acc = {**_new_accumulators(), **state["accumulators"]}
        self.resumed_mid_epoch = self.batch_in_epoch > 0
        self.history = list(state["history"])
        self.skipped_total = int(state["skipped_total"])
        self.stopped = self.stop_rule()  # a run killed after its rule said stop does not train on
        torch.set_rng_state(state["rng_torch"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def save_state(self, epoch: int, batch_in_epoch: int) -> None:
        """``checkpoints/last.pt``: everything an exact resume needs (rank 0 writes it)."""
        if not self.dist.is_main:
            return
        state = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": self.step, "epoch": epoch,
                 "batch_in_epoch": batch_in_epoch, "accumulators": dict(self.acc), "history": self.history,
                 "skipped_total": self.skipped_total, "rng_torch": torch.get_rng_state(),
                 "spec": self.spec.to_dict(), "num_classes": self.dataset.num_classes,
                 "config_yaml": config_to_yaml(self.cfg)}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        ckpt.save(state, self.last)

    def run_epoch(self) -> str:
        """The epoch's steps inside its energy window. The window is cut at each mid-epoch checkpoint and the
        part before it saved in the checkpoint, so a resumed epoch still counts the energy spent before a kill.
        Returns the window's name."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                            collate_fn=collate_crops, pin_memory=self.device.type == "cuda")
        bar = tqdm(loader, total=len(self.sampler), desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", unit="step",
                   disable=(not self.progress) or (not self.dist.is_main) or None, leave=False)
        window_name = f"train/epoch_{self.epoch + 1}"
        stack = contextlib.ExitStack()
        window = stack.enter_context(self.epoch_window(window_name))
        try:
            t_epoch = time.perf_counter()
            for wav, labels, skipped in bar:
                self.skipped_total += skipped
                self.acc["skipped"] += skipped
                if wav.numel() == 0:
                    self.batch_in_epoch += 1
                    continue
                loss, lr = self.train_step(wav, labels)
                if self.progress and self.dist.is_main:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
                every = cfg.train.checkpoint_every_steps
                if every and self.step % every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                    self.acc["time_s"] += time.perf_counter() - t_epoch
                    stack.close()
                    _keep_segment(window, self.acc)
                    window = stack.enter_context(self.epoch_window(window_name))  # saving is in the next segment
                    t_epoch = time.perf_counter()
                    self.save_state(self.epoch, self.batch_in_epoch)
                if self.step >= self.total_steps:
                    break
            self.acc["time_s"] += time.perf_counter() - t_epoch
        finally:
            stack.close()
        _keep_segment(window, self.acc)
        return window_name

    def train_step(self, wav: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One optimizer step at the scheduled lr and margin; returns (loss, lr)."""
        cfg = self.cfg
        lr = lr_at(self.step, self.total_steps, cfg.train.scaled_lr(self.dist.world), cfg.train.final_lr,
                   self.warmup_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.net.head.set_margin(margin_at(self.step, cfg.head.margin, self.margin_start, self.margin_ramp))
        wav = wav.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        feats = self.fbank(wav)
        with autocast(self.device, cfg.train.amp):
            logits = self.model(feats, labels)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise BenchError(f"loss became {loss.item()} at step {self.step} (epoch {self.epoch + 1}); "
                             "lower train.lr or set train.grad_clip")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        _call(self.callbacks, "on_step_end", self.step)
        self.batch_in_epoch += 1
        self.acc["loss_sum"] += loss.item() * labels.shape[0]
        self.acc["correct"] += (logits.argmax(1) == labels).sum().item()
        self.acc["seen"] += labels.shape[0]
        return loss.item(), lr

    def end_epoch(self, window_name: str) -> None:
        """The epoch's metrics over all ranks (its energy too), the epoch checkpoint, the callbacks."""
        acc, dist, device = self.acc, self.dist, self.device
        seen = all_reduce_sum(acc["seen"], dist, device)
        metrics = {"loss": all_reduce_sum(acc["loss_sum"], dist, device) / max(seen, 1.0),
                   "accuracy": all_reduce_sum(acc["correct"], dist, device) / max(seen, 1.0),
                   "lr": self.opt.param_groups[0]["lr"], "margin": self.net.head.margin,
                   "skipped_files": acc["skipped"], "time_s": acc["time_s"], "step": self.step}
        if acc["energy_segments"]:
            reading = sum_windows([reading_from_state(d) for d in acc["energy_segments"]], window_name)
            reading = gather_ranks(reading, dist)  # the epoch's energy over all ranks, like the total
            if self.resumed_mid_epoch:
                reading.incomplete["killed-run-tail"] = ("the work of a killed run after its last checkpoint "
                                                         "was not measured (it was redone and measured)")
            metrics["energy_j"] = reading.total_j
            metrics["energy"] = reading_to_state(reading)
        metrics["energy_j_cum"] = cumulative([*self.history, metrics])[-1][0]
        metrics.update(self.validation(self.epoch + 1))
        self.resumed_mid_epoch = False
        self.history.append({"epoch": self.epoch + 1, **metrics})
        self.epoch += 1
        self.batch_in_epoch = 0
        self.acc = _new_accumulators()
        if dist.is_main:
            ckpt.save({"model": self.net.embedder.state_dict(), "epoch": self.epoch},
                      self.ck_dir / f"epoch_{self.epoch:03d}.pt")
        self.stopped = self.stop_rule()
        self.save_state(self.epoch, 0)
        _call(self.callbacks, "on_epoch_end", self.epoch, metrics)

    def validation(self, epoch: int) -> dict:
        """The validation EER after ``epoch`` (every ``train.val_every_epochs`` and after the last), in its own
        energy window ``val/epoch_<n>`` (not training energy); rank 0 scores, every rank gets the figure."""
        t = self.cfg.train
        if self.val is None or self.validate is None or (epoch % t.val_every_epochs and epoch < t.epochs):
            return {}
        rng = torch.get_rng_state()
        self.net.embedder.eval()
        t0 = time.perf_counter()
        with self.epoch_window(f"val/epoch_{epoch}") as window:
            eer_pct = self.validate(self.net.embedder, self.val) if self.dist.is_main else 0.0
            barrier(self.dist)
        out = {"val_eer_pct": all_reduce_sum(eer_pct, self.dist, self.device), "val_time_s": time.perf_counter() - t0,
               "val_target_trials": int(self.val.trials.labels.sum())}
        self.net.embedder.train()
        torch.set_rng_state(rng)
        reading = getattr(window, "reading", None)
        if reading is not None:
            reading = gather_ranks(reading, self.dist)
            out.update(val_energy_j=reading.total_j, val_energy=reading_to_state(reading))
        return out

    def stop_rule(self) -> str | None:
        t = self.cfg.train
        return stop_reason(curve_points(self.history), t.stop_gain_pct_per_kj, t.stop_window_epochs)

    def average(self, model_path: Path) -> None:
        """``model.pt``: the mean of this run's last ``train.average_last`` epoch weights (never an earlier
        run's file in the same folder)."""
        k, epoch = self.cfg.train.average_last, self.epoch
        epoch_files = [self.ck_dir / f"epoch_{e:03d}.pt" for e in range(max(1, epoch - k + 1), epoch + 1)]
        averaged = len(epoch_files) > 1
        state_dict = ckpt.average_state_dicts(epoch_files) if averaged else self.net.embedder.state_dict()
        ckpt.save({"model": state_dict, "spec": self.spec.to_dict(), "speakers": list(self.dataset.speakers),
                   "config_yaml": config_to_yaml(self.cfg), "averaged_epochs": len(epoch_files) if averaged else 1},
                  model_path)


def _new_accumulators() -> dict:
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "skipped": 0.0, "time_s": 0.0, "energy_segments": []}


def _keep_segment(window, acc: dict) -> None:
    """Append the energy of an ended window segment (if a meter measured it) to the epoch's segments."""
    reading = getattr(window, "reading", None)
    if reading is not None:
        acc["energy_segments"] = [*acc["energy_segments"], reading_to_state(reading)]


def _check_compatible(state: dict, spec, num_classes: int, path: Path) -> None:
    saved = state.get("spec", {})
    mine = spec.to_dict()
    diff = [k for k in mine
            if saved.get(k) != mine[k] and not (isinstance(mine[k], tuple) and list(mine[k]) == saved.get(k))]
    if diff or state.get("num_classes") != num_classes:
        what = ", ".join(diff) if diff else "number of speakers"
        raise BenchError(f"checkpoint {path} was made for another model or data set ({what} differ); "
                         "use a new --out or the matching config")


def steps_per_epoch(cfg: Config, world: int = 1) -> int:
    """Optimizer steps per epoch for this config's training manifest (the sampler's own count)."""
    n = len(training_split(cfg)[0])
    return EpochBatchSampler(n, cfg.train.batch_size, cfg.train.seed, world=world).batches_per_epoch()


