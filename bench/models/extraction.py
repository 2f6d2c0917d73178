"""Inference-time forms of a trained embedder: batch norm folded into the convolution before it,
channels-last weights, optionally ``torch.compile``. The training model is left untouched; each
transform returns a new module whose embeddings equal the original's to float rounding."""

from __future__ import annotations

import copy
import itertools
import os
import shutil

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bench.errors import BenchError


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy in eval mode where every ``Conv2d`` directly followed by a ``BatchNorm2d`` (stem,
    basic/bottleneck blocks, shortcuts, the second conv of pre-activation blocks) carries the
    normalisation in its weights and bias; the batch norm becomes ``Identity``. A batch norm that
    comes after an activation or at a block input (pre-activation) cannot be folded and stays."""
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(list(parent.named_children())):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent.register_module(conv_name, fuse_conv_bn_eval(conv, bn))
                parent.register_module(bn_name, nn.Identity())
    return folded


def _need_cpp_compiler() -> None:
    """On the CPU, inductor builds C++ kernels with ``$CXX`` or the first of g++, clang++, c++ on PATH (as
    inductor looks for them): say so up front instead of failing mid-extraction."""
    cxx = os.environ.get("CXX", "").split()
    if not (shutil.which(cxx[0]) if cxx else any(shutil.which(c) for c in ("g++", "clang++", "c++"))):
        raise BenchError("eval.compile on the CPU needs a C++ compiler (g++ or clang++, or $CXX); "
                         "install one or run with --eval.compile false")


def extraction_model(embedder: nn.Module, channels_last: bool = True) -> nn.Module:
    """The eager module `svbench eval` extracts with: batch norm folded, channels-last weights (the
    input follows, see ``ResNetSpeaker.forward``)."""
    model = fold_batchnorm(embedder)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def compile_extractor(model: nn.Module) -> nn.Module:
    """``torch.compile(dynamic=True)``: variable batch sizes and utterance lengths share a few graphs
    (one per shape range inductor distinguishes) instead of one per shape."""
    if next(model.parameters()).device.type == "cpu":
        _need_cpp_compiler()
    return torch.compile(model, dynamic=True)
