"""Model profiling: parameters, multiply-accumulates per second of audio, peak training memory.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory,
no compute), for 100 frames = 1 s of audio at a 10 ms shift; MACs = FLOPs / 2.
Peak training memory is measured with ``torch.cuda.max_memory_allocated`` on a GPU; without one it
is an estimate (weights, gradients and momentum in fp32 plus every module output kept for backward)
and is labelled so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.models.heads import MarginHead
from bench.models.registry import build_model
from bench.models.resnet import count_params
from bench.models.spec import ResNetSpec

FRAMES_PER_S = 100
VOXCELEB2_SPEAKERS = 5994


@dataclass
class ModelProfile:
    params: int
    params_with_head: int
    num_classes: int
    gmacs_per_s_audio: float
    peak_train_memory_mb: float | None = None
    peak_train_memory_source: str | None = None  # "cuda:measured" or "estimate"

    def to_dict(self) -> dict:
        return asdict(self)


def meta_model(spec: ResNetSpec) -> torch.nn.Module:
    """The model of ``spec`` on the meta device (shapes only), in eval mode."""
    with torch.device("meta"):
        return build_model(spec).eval()


def count_macs_per_s(spec: ResNetSpec, model: torch.nn.Module | None = None) -> float:
    """MACs of one second of audio through ``model`` (built from ``spec`` on the meta device when not given). The
    forward runs outside ``torch.device("meta")``: its input is already there, and the device context would
    intercept every call (1.2x the time)."""
    model = meta_model(spec) if model is None else model
    x = torch.empty(1, FRAMES_PER_S, spec.n_mels, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2.0


def estimate_train_memory_mb(spec: ResNetSpec, batch_size: int, frames: int, num_classes: int) -> float:
    """Estimate (CPU) of peak training memory: fp32 weights + grads + momentum + saved activations."""
    model = meta_model(spec).train()
    x = torch.empty(2, frames, spec.n_mels, device="meta")
    act_bytes = 0

    def hook(_m, _i, out):
        nonlocal act_bytes
        if isinstance(out, torch.Tensor):
            act_bytes += out.numel() * 4 // 2  # per example (the probe batch is 2)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    model(x)
    for h in handles:
        h.remove()
    params = count_params(model) + spec.embed_dim * num_classes
    return (3 * params * 4 + act_bytes * batch_size) / 2**20


def measure_train_memory_mb(spec: ResNetSpec, batch_size: int, frames: int, num_classes: int) -> float:
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(dev)
    model = build_model(spec).to(dev).train()
    head = MarginHead(spec.embed_dim, num_classes).to(dev)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, frames, spec.n_mels, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    loss = torch.nn.functional.cross_entropy(head(model(x), y), y)
    loss.backward()
    opt.step()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20
    del model, head, opt, x, y, loss
    torch.cuda.empty_cache()
    return peak


def profile_model(spec: ResNetSpec, num_classes: int = VOXCELEB2_SPEAKERS, batch_size: int | None = None,
                  frames: int = 200) -> ModelProfile:
    model = meta_model(spec)  # built once for both counts
    params = count_params(model)
    prof = ModelProfile(params=params, params_with_head=params + spec.embed_dim * num_classes,
                        num_classes=num_classes, gmacs_per_s_audio=count_macs_per_s(spec, model) / 1e9)
    if batch_size:
        if torch.cuda.is_available():
            prof.peak_train_memory_mb = measure_train_memory_mb(spec, batch_size, frames, num_classes)
            prof.peak_train_memory_source = "cuda:measured"
        else:
            prof.peak_train_memory_mb = estimate_train_memory_mb(spec, batch_size, frames, num_classes)
            prof.peak_train_memory_source = "estimate"
    return prof
