"""The trained embedder as an MLflow PyTorch model."""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec


def log_embedder(embedder: torch.nn.Module, n_mels: int, run_id: str, model_id: str) -> None:
    """Log ``embedder`` into the logged model ``model_id`` of run ``run_id``: its pyfunc takes log-mel
    features of any batch size and any number of frames (a whole utterance):
    (batch, frames, n_mels) float32 -> (batch, embed_dim)."""
    example = np.zeros((2, 200, n_mels), dtype=np.float32)  # batch 2: MLflow's torch.export keeps batch dynamic
    with torch.no_grad():
        dim = embedder(torch.from_numpy(example)).shape[1]
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_mels))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))
    mlflow.pytorch.log_model(embedder, name="model", signature=signature, input_example=example, run_id=run_id,
                             model_id=model_id, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
