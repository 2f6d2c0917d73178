"""Validation EER during training: the held-out speakers' list (``bench.data.validation_split``) scored with the
model as it stands after an epoch. Cosine scoring of the embeddings minus their own mean (the training mean is
not at hand mid-training), no score normalisation, no bootstrap: a curve point, not a reported result."""

from __future__ import annotations

import numpy as np
import torch

from bench.config import Config
from bench.data.manifest import data_root
from bench.data.validation_split import ValidationSplit
from bench.eval.metrics import eer, error_rates
from bench.eval.scoring import Scorer, extract_embeddings, make_fbank


def validation_eer(embedder: torch.nn.Module, split: ValidationSplit, cfg: Config, device: torch.device) -> float:
    """EER (%) of ``embedder`` on the validation list."""
    rows = split.utterances
    root = data_root(cfg.data.root)
    utts = rows["utt_id"].tolist()
    emb = extract_embeddings(embedder, make_fbank(cfg, device), utts, [root / p for p in rows["path"]],
                             rows["num_samples"].tolist(), cfg.eval.batch_frames, device,
                             tolerance=cfg.eval.length_tolerance, batch_utts=cfg.eval.batch_utts)
    scores = Scorer.build(emb, utts, mean=emb.mean(axis=0)).scores(split.trials)
    return 100.0 * eer(*error_rates(scores, np.asarray(split.trials.labels)))[0]
