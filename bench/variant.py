"""One variant end to end: ``run_variant(config) -> VariantResult``.

Every entry point (train, sweep, search) is a thin caller of this function.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench import checkpoint as ckpt
from bench.atomic import write_text_atomic
from bench.config import Config, config_to_yaml, flat_params
from bench.data.manifest import data_root
from bench.distributed import init_distributed, shutdown
from bench.evaluate import evaluate, load_model, make_fbank, training_statistics
from bench.models import spec_from_config
from bench.models.profile import profile_model
from bench.train import select_device, train


@dataclass
class VariantResult:
    name: str
    out_dir: str
    spec: dict
    profile: dict
    metrics: dict[str, dict]
    train: dict
    config: dict
    energy: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def run_variant(cfg: Config, out_dir: str | Path, resume: bool = False, callbacks: list | None = None,
                epoch_window=None, progress: bool = True) -> VariantResult | None:
    """Train, evaluate on every configured trial list, write ``out_dir/result.json``.

    Under torchrun only rank 0 evaluates and returns a result; other ranks return None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", config_to_yaml(cfg))
    tr = train(cfg, out_dir, resume=resume, callbacks=callbacks, epoch_window=epoch_window, progress=progress)
    dist_info = init_distributed(select_device(cfg.train.device).type)
    if not dist_info.is_main:
        shutdown(dist_info)
        return None
    device = select_device(cfg.train.device, dist_info.local_rank)
    model = load_model(tr.model_path, device)
    t0 = time.perf_counter()
    stats = training_statistics(model.embedder, make_fbank(cfg, device), data_root(cfg.data.root),
                                cfg.eval.batch_frames, device, seed=cfg.train.seed)
    model.payload.update(stats)
    ckpt.save(model.payload, tr.model_path)
    metrics = evaluate(model, cfg, device, out_dir)
    eval_time_s = time.perf_counter() - t0
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    prof = profile_model(spec, num_classes=len(model.payload["speakers"]) * (3 if cfg.data.augment.speed_perturb else 1))
    result = VariantResult(
        name=cfg.name, out_dir=str(out_dir), spec=spec.to_dict(), profile=prof.to_dict(), metrics=metrics,
        train={"steps": tr.steps, "epochs": tr.epochs, "time_s": tr.time_s, "eval_time_s": eval_time_s,
               "skipped_files": tr.skipped_files, "history": tr.history, "world": dist_info.world,
               "device": str(device), "torch_threads": torch.get_num_threads()},
        config=flat_params(cfg),
    )
    write_text_atomic(out_dir / "result.json", result.to_json())
    shutdown(dist_info)
    return result
