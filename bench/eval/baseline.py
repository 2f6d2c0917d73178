"""No-training baseline: cosine of per-utterance mean log-mel vectors.

Tells how hard a trial list is before any model is trained: each utterance is
its mean (unnormalised) log-mel fbank vector minus the mean over all evaluated
utterances, scored by cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.audio import load_audio
from bench.data.features import Fbank
from bench.data.manifest import EVAL_MANIFEST, read_manifest
from bench.data.trials import TrialList, check_against
from bench.eval.metrics import verification_metrics


def mean_logmel_baseline(root: str | Path, trials: TrialList, n_mels: int = 80) -> dict[str, float]:
    root = Path(root)
    df = read_manifest(root / EVAL_MANIFEST)
    check_against(trials, set(df["utt_id"]), str(root / EVAL_MANIFEST))
    fbank = Fbank(n_mels=n_mels, mean_norm=False)
    index = {u: i for i, u in enumerate(trials.utterances)}
    paths = dict(zip(df["utt_id"], df["path"]))
    vecs = np.zeros((len(index), n_mels), dtype=np.float64)
    for u, i in index.items():
        wav = torch.from_numpy(load_audio(root / paths[u]))
        vecs[i] = fbank(wav).mean(dim=1).squeeze(0).double().numpy()
    vecs -= vecs.mean(axis=0, keepdims=True)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12
    e = np.array([index[u] for u in trials.enroll])
    t = np.array([index[u] for u in trials.test])
    scores = np.einsum("ij,ij->i", vecs[e], vecs[t])
    return verification_metrics(scores, trials.labels)
