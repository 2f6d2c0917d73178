"""Training loop: SGD with warm-up + exponential decay per iteration, margin schedule, AMP,
channels-last, gradient clipping, seeded data, checkpoints with exact resume, DDP.

Progress goes to tqdm; per-epoch loss, accuracy, lr and margin go to callbacks (objects with any of
``on_train_begin(info)``, ``on_epoch_end(epoch, metrics)``, ``on_train_end(summary)``); MLflow is wired
in ``bench.tracking``. ``epoch_window(name)`` is an optional context manager factory wrapped around each
epoch (the energy meters use it).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bench import checkpoint as ckpt
from bench.config import Config, config_to_yaml
from bench.data.features import Fbank
from bench.data.loader import EpochBatchSampler, TrainCrops, collate_crops
from bench.data.manifest import TRAIN_MANIFEST, data_root, read_manifest
from bench.distributed import all_reduce_sum, barrier, init_distributed
from bench.energy.accounting import gather_ranks
from bench.energy.reading import reading_from_state, reading_to_state, sum_windows
from bench.errors import BenchError
from bench.models import build_model, spec_from_config
from bench.models.heads import MarginHead
from bench.precision import autocast
from bench.schedule import lr_at, margin_at


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


def _call(callbacks, name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def train(cfg: Config, out_dir: str | Path, resume: bool = False, callbacks: list | None = None,
          epoch_window: Callable[[str], ContextManager] | None = None, progress: bool = True) -> TrainResult:
    """Train one variant into ``out_dir`` (checkpoints/, model.pt); returns a summary."""
    callbacks = callbacks or []
    epoch_window = epoch_window or (lambda name: contextlib.nullcontext())
    out_dir = Path(out_dir)
    ck_dir = out_dir / "checkpoints"
    dev_probe = select_device(cfg.train.device)
    dist_info = init_distributed(dev_probe.type)
    device = select_device(cfg.train.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    root = data_root(cfg.data.root)
    manifest = read_manifest(root / TRAIN_MANIFEST)
    seed_everything(cfg.train.seed)
    dataset = TrainCrops(manifest, root, cfg.data, seed=cfg.train.seed, sample_rate=cfg.features.sample_rate)
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    net = SpeakerNet(spec, dataset.num_classes, cfg.head).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    fbank = Fbank(cfg.features.n_mels, cfg.features.sample_rate, cfg.features.frame_length_ms,
                  cfg.features.frame_shift_ms).to(device)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov and cfg.train.momentum > 0,
                          weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=(cfg.train.amp == "fp16"))
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, dist_info.rank, dist_info.world)
    steps_per_epoch = sampler.batches_per_epoch()
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup_steps = int(cfg.train.warmup_epochs * steps_per_epoch)
    margin_start = int(cfg.head.margin_warmup_epochs * steps_per_epoch)
    margin_ramp = int(cfg.head.margin_ramp_epochs * steps_per_epoch)

    step, epoch, batch_in_epoch = 0, 0, 0
    acc = _new_accumulators()
    resumed_mid_epoch = False
    history: list[dict] = []
    skipped_total = 0
    last = ck_dir / "last.pt"
    if resume and last.is_file():
        state = ckpt.load(last)
        _check_compatible(state, spec, dataset.num_classes, last)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        acc = {**_new_accumulators(), **state["accumulators"]}
        resumed_mid_epoch = batch_in_epoch > 0
        history = list(state["history"])
        skipped_total = int(state["skipped_total"])
        torch.set_rng_state(state["rng_torch"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
    elif resume and dist_info.is_main:
        print(f"no checkpoint in {ck_dir}; starting from scratch")

    model_for_ddp = net
    if dist_info.enabled:
        model_for_ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(ep: int, bie: int) -> None:
        if not dist_info.is_main:
            return
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                 "step": step, "epoch": ep, "batch_in_epoch": bie, "accumulators": dict(acc),
                 "history": history, "skipped_total": skipped_total, "rng_torch": torch.get_rng_state(),
                 "spec": spec.to_dict(), "num_classes": dataset.num_classes, "config_yaml": config_to_yaml(cfg)}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        ckpt.save(state, last)

    _call(callbacks, "on_train_begin", {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                        "num_classes": dataset.num_classes, "spec": spec, "world": dist_info.world,
                                        "history": list(history) if dist_info.is_main else []})
    loader_kwargs = {"num_workers": cfg.data.num_workers, "collate_fn": collate_crops,
                     "pin_memory": device.type == "cuda"}
    t_start = time.perf_counter()
    net.train()
    while epoch < cfg.train.epochs and step < total_steps:
        sampler.set_epoch(epoch, batch_in_epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)
        bar = tqdm(loader, total=len(sampler), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step",
                   disable=(not progress) or (not dist_info.is_main) or None, leave=False)
        # the epoch's energy window is cut at each mid-epoch checkpoint, and the part before it is saved in
        # the checkpoint, so a resumed epoch still counts the energy spent before the kill
        window_name = f"train/epoch_{epoch + 1}"
        stack = contextlib.ExitStack()
        window = stack.enter_context(epoch_window(window_name))
        try:
            t_epoch = time.perf_counter()
            for wav, labels, skipped in bar:
                skipped_total += skipped
                acc["skipped"] += skipped
                if wav.numel() == 0:
                    batch_in_epoch += 1
                    continue
                lr = lr_at(step, total_steps, cfg.train.lr, cfg.train.final_lr, warmup_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                margin = margin_at(step, cfg.head.margin, margin_start, margin_ramp)
                net.head.set_margin(margin)
                wav = wav.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                feats = fbank(wav)
                with autocast(device, cfg.train.amp):
                    logits = model_for_ddp(feats, labels)
                    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise BenchError(f"loss became {loss.item()} at step {step} (epoch {epoch + 1}); lower train.lr or set train.grad_clip")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                scaler.step(opt)
                scaler.update()
                step += 1
                _call(callbacks, "on_step_end", step)
                batch_in_epoch += 1
                acc["loss_sum"] += loss.item() * labels.shape[0]
                acc["correct"] += (logits.argmax(1) == labels).sum().item()
                acc["seen"] += labels.shape[0]
                if progress and dist_info.is_main:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
                if cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0 \
                        and batch_in_epoch < steps_per_epoch:
                    acc["time_s"] += time.perf_counter() - t_epoch
                    stack.close()
                    _keep_segment(window, acc)
                    window = stack.enter_context(epoch_window(window_name))  # saving is part of the next segment
                    t_epoch = time.perf_counter()
                    save_state(epoch, batch_in_epoch)
                if step >= total_steps:
                    break
            acc["time_s"] += time.perf_counter() - t_epoch
        finally:
            stack.close()
        _keep_segment(window, acc)
        seen = all_reduce_sum(acc["seen"], dist_info, device)
        metrics = {
            "loss": all_reduce_sum(acc["loss_sum"], dist_info, device) / max(seen, 1.0),
            "accuracy": all_reduce_sum(acc["correct"], dist_info, device) / max(seen, 1.0),
            "lr": opt.param_groups[0]["lr"],
            "margin": net.head.margin,
            "skipped_files": acc["skipped"],
            "time_s": acc["time_s"],
            "step": step,
        }
        reading = None
        if acc["energy_segments"]:
            reading = sum_windows([reading_from_state(d) for d in acc["energy_segments"]], window_name)
            reading = gather_ranks(reading, dist_info)  # the epoch's energy over all ranks, like the total
            if resumed_mid_epoch:
                reading.incomplete["killed-run-tail"] = ("the work of a killed run after its last checkpoint "
                                                         "was not measured (it was redone and measured)")
            metrics["energy_j"] = reading.total_j
            metrics["energy"] = reading_to_state(reading)
        resumed_mid_epoch = False
        history.append({"epoch": epoch + 1, **metrics})
        epoch += 1
        batch_in_epoch = 0
        acc = _new_accumulators()
        if dist_info.is_main:
            ckpt.save({"model": net.embedder.state_dict(), "epoch": epoch}, ck_dir / f"epoch_{epoch:03d}.pt")
        save_state(epoch, 0)
        _call(callbacks, "on_epoch_end", epoch, metrics)
    barrier(dist_info)
    time_s = time.perf_counter() - t_start
    model_path = out_dir / "model.pt"
    if dist_info.is_main:
        k = cfg.train.average_last
        # this run's last k epochs only (a file of an earlier run in the same folder is never one of them)
        epoch_files = [ck_dir / f"epoch_{e:03d}.pt" for e in range(max(1, epoch - k + 1), epoch + 1)]
        state_dict = ckpt.average_state_dicts(epoch_files) if len(epoch_files) > 1 else net.embedder.state_dict()
        ckpt.save({"model": state_dict, "spec": spec.to_dict(), "speakers": list(dataset.speakers),
                   "config_yaml": config_to_yaml(cfg), "averaged_epochs": len(epoch_files) if len(epoch_files) > 1 else 1},
                  model_path)
    result = TrainResult(out_dir, model_path, step, epoch, time_s, skipped_total, history)
    _call(callbacks, "on_train_end", result)
    return result


def check_fresh_out(out_dir: str | Path, force: bool, clear: bool = True) -> None:
    """A new run (not ``--resume``) in a folder that holds another run's checkpoints: a one-line error, or with
    ``force`` those checkpoints removed (by the caller that ``clear``s: rank 0 under torchrun)."""
    import shutil

    ck_dir = Path(out_dir) / "checkpoints"
    old = sorted(ck_dir.glob("*.pt")) if ck_dir.is_dir() else []
    if not old:
        return
    if not force:
        raise BenchError(f"{out_dir} holds {len(old)} checkpoint(s) of an earlier run; pass --resume to continue "
                         "it, --force to replace it, or a new --out")
    if clear:
        shutil.rmtree(ck_dir)
        for name in ("model.pt", "result.json"):
            (Path(out_dir) / name).unlink(missing_ok=True)


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
    diff = [k for k in mine if saved.get(k) != mine[k] and not (isinstance(mine[k], tuple) and list(mine[k]) == saved.get(k))]
    if diff or state.get("num_classes") != num_classes:
        what = ", ".join(diff) if diff else "number of speakers"
        raise BenchError(f"checkpoint {path} was made for another model or data set ({what} differ); use a new --out or the matching config")


def steps_per_epoch(cfg: Config, world: int = 1) -> int:
    """Optimizer steps per epoch for this config's training manifest (the sampler's own count)."""
    n = len(read_manifest(data_root(cfg.data.root) / TRAIN_MANIFEST))
    return EpochBatchSampler(n, cfg.train.batch_size, cfg.train.seed, world=world).batches_per_epoch()


