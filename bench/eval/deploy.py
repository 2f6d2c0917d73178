"""Deployment back ends: the trained embedder exported to ONNX and run by ONNX Runtime, in fp32 or int8.

* ``export_onnx``: the extraction model (batch norm folded) through ``torch.onnx.export`` (the dynamo
  exporter), dynamic batch and time axes: (batch, frames >= 16, n_mels) log-mel features -> (batch, dim).
* ``quantize_int8``: ONNX Runtime's static QDQ quantization (int8 weights per channel, uint8 activations)
  calibrated on a seeded sample of training utterances; dynamic quantization where static fails. Which op
  types ended up quantized is recorded.
* ``OnnxEmbedder``: an ONNX Runtime session behind the same call as a torch embedder (features tensor in,
  embeddings tensor out), so evaluation, latency and energy windows run it unchanged. Its intra-op threads
  follow ``eval.threads`` (0: all cores), as PyTorch's do.

Back ends are named ``onnx-fp32`` and ``onnx-int8`` wherever precisions are (``svbench infer --precision``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.atomic import atomic_path, write_text_atomic
from bench.config import INFER_BACKENDS
from bench.data.audio import load_audio
from bench.data.manifest import TRAIN_MANIFEST, data_root, read_manifest
from bench.errors import BenchError
from bench.eval.scoring import make_fbank

ONNX_BACKENDS = tuple(b for b in INFER_BACKENDS if b.startswith("onnx-"))
INT8_OPS = ("Conv", "MatMul", "Gemm")  # the compute: quantizing the cheap element-wise ops only adds Q/DQ pairs
CALIBRATION_MAX_S = 6.0  # each calibration utterance is cut to this
INPUT = "fbank"
OUTPUT = "embedding"


@dataclass
class Quantized:
    path: Path
    mode: str  # static-qdq | dynamic
    quantized_ops: dict[str, int]  # op type -> how many nodes run on int8 inputs
    fallback_reason: str | None = None


@contextlib.contextmanager
def _only_errors(logger: str | None):
    """Messages below ERROR of ``logger`` (None: the root logger) are dropped while the block runs."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_onnx(extractor: torch.nn.Module, n_mels: int, path: str | Path) -> Path:
    """Export the extraction model (eval mode, contiguous weights, CPU) with dynamic batch and frames."""
    path = Path(path)
    model = copy.deepcopy(extractor).to(memory_format=torch.contiguous_format).cpu().eval()  # caller's stays as is
    example = torch.randn(2, 300, n_mels)
    batch, frames = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("frames", min=16, max=100000)
    # _only_errors: the exporter logs "torchvision is not installed. Skipping torchvision::nms" and three more
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), _only_errors("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecations of torch internals
        torch.onnx.export(model, (example,), str(tmp), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: batch, 1: frames},), external_data=False, verbose=False, report=False)
    return path


def execution_provider(device: torch.device) -> str:
    """The ONNX Runtime execution provider on the model's device: CPU, or CUDA where this ONNX Runtime has it.
    ONNX back ends never run on another device than the PyTorch ones they are compared with: a CUDA model
    without ONNX Runtime's CUDA provider is refused."""
    import onnxruntime as ort

    if device.type == "cpu":
        return "CPUExecutionProvider"
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return "CUDAExecutionProvider"
    raise BenchError(f"the ONNX back ends cannot run on {device} here (ONNX Runtime offers "
                     f"{', '.join(ort.get_available_providers())}), and a CPU run would not compare like for like; "
                     "install onnxruntime-gpu, or use --train.device cpu for every back end")


def load_session(path: str | Path, n_mels: int, threads: int = 0, device: torch.device = torch.device("cpu")):
    """An ONNX Runtime session on ``device`` (``execution_provider``); a file that is not ONNX, or not an
    embedder of ``n_mels`` log-mel features, is a one-line error."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"ONNX model {path} does not exist; export one with `svbench export --checkpoint ...`")
    provider = execution_provider(device)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"ONNX model {path} cannot be loaded ({first}); re-export it with `svbench export`") from None
    inputs = sess.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if shape is None or len(shape) != 3 or shape[-1] != n_mels:
        got = ", ".join(f"{i.name}{i.shape}" for i in inputs)
        raise BenchError(f"ONNX model {path} does not match the checkpoint: it takes {got}, the checkpoint's model "
                         f"takes (batch, frames, {n_mels}) features; export it from this checkpoint")
    return sess


class OnnxEmbedder:
    """An ONNX Runtime session called like the torch extraction model: (B, T, F) tensor -> (B, D) tensor."""
    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: feats.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OnnxEmbedder":
        return self


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feature arrays (one utterance each)."""
    def __init__(self, feats: list[np.ndarray]):
        self.items = iter([{INPUT: f} for f in feats])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # not needed by the MinMax calibrator; part of the protocol
        pass


def calibration_features(train_rows, root: Path, fbank, n_utts: int, seed: int,
                         max_s: float = CALIBRATION_MAX_S) -> list[np.ndarray]:
    """Log-mel features of a seeded sample of training utterances (each cut to ``max_s``)."""
    rows = train_rows.sample(n=min(n_utts, len(train_rows)), random_state=seed)
    out = []
    for p in rows["path"]:
        wav = load_audio(root / p)[: int(max_s * fbank.sample_rate)]
        with torch.no_grad():
            out.append(fbank(torch.from_numpy(wav)[None]).numpy().astype(np.float32))
    return out


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: list[np.ndarray]) -> Quantized:
    """Static QDQ int8 (per-channel weights) calibrated on ``calibration``; dynamic int8 where static fails."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    # the quantizer reports per-tensor notes on the root logger
    with tempfile.TemporaryDirectory(prefix="svbench-quant-") as tmp, _only_errors(None):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with atomic_path(out_path, suffix=".onnx") as dst:
            try:
                quantize_static(str(pre), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(INT8_OPS))
                mode, reason = "static-qdq", None
            except Exception as exc:  # an op the static quantizer cannot handle: weights-only int8
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))
                mode = "dynamic"
    return Quantized(out_path, mode, quantized_ops(out_path), reason)


def quantized_ops(path: str | Path) -> dict[str, int]:
    """Op types that run on int8, and how many nodes: in QDQ form the nodes whose weight comes through a
    DequantizeLinear of an int8 initializer; in dynamic form the integer ops (ConvInteger, MatMulInteger)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    int8_weights = {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits for o in n.output}
    count: Counter[str] = Counter()
    for n in graph.node:
        if "Integer" in n.op_type or n.op_type.startswith("QLinear") or any(i in int8_weights for i in n.input[1:]):
            count[n.op_type] += 1
    return dict(sorted(count.items()))


def model_size_mb(path: str | Path) -> float:
    """On-disk size, external data files included."""
    path = Path(path)
    extra = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data"))
    return (path.stat().st_size + extra) / 2**20


# ------------------------------------------------------------------ back ends for inference
@dataclass
class Backend:
    """What ``measure_inference`` runs for one back end: a LoadedModel whose extractors are the back end's,
    the autocast precision (fp32 for ONNX Runtime), its size on disk and what it is."""
    model: object  # bench.eval.scoring.LoadedModel
    precision: str
    size_mb: float
    details: dict


def torch_weights_mb(module: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20


def prepare_backends(model, cfg, names: list[str], checkpoint: str | Path | None = None,
                     onnx_path: str | Path | None = None, device: torch.device = torch.device("cpu")
                     ) -> dict[str, Backend]:
    """PyTorch precisions as they are; ONNX back ends exported from ``checkpoint`` (cached beside it as
    ``<stem>.onnx``, rebuilt when older than it, and ``<stem>.int8.onnx``, rebuilt unless its sidecar holds the
    same ``int8_key``) or, for onnx-fp32, ``onnx_path``."""
    from dataclasses import replace

    out: dict[str, Backend] = {}
    size = torch_weights_mb(model.embedder)
    for name in names:
        if name not in ONNX_BACKENDS:
            out[name] = Backend(model, name, size, {"engine": "pytorch", "device": str(device)})
    wanted = [n for n in names if n in ONNX_BACKENDS]
    if not wanted:
        return out
    provider = execution_provider(device)  # before any export: a device mismatch is refused at once
    if onnx_path is None and checkpoint is None:
        raise BenchError("the ONNX back ends need the checkpoint they are exported from (--checkpoint) or --onnx")
    fp32 = Path(onnx_path) if onnx_path else Path(checkpoint).with_suffix(".onnx")
    if onnx_path is None and _stale(fp32, Path(checkpoint)):
        export_onnx(model.extractor, model.spec.n_mels, fp32)
    threads = cfg.eval.threads or torch.get_num_threads()
    paths = {"onnx-fp32": fp32}
    on = {"engine": "onnxruntime", "device": str(device), "execution_provider": provider, "threads": threads}
    details = {"onnx-fp32": {**on, "path": str(fp32)}}
    if "onnx-int8" in wanted:
        int8 = fp32.with_name(f"{fp32.stem}.int8.onnx")
        load_session(fp32, model.spec.n_mels, threads)  # a corrupt or mismatched source: its one-line error first
        root = data_root(cfg.data.root)
        key = int8_key(Path(checkpoint) if checkpoint else fp32, cfg.eval.int8_calibration_utts, root, cfg.train.seed)
        side = _read_quant_json(int8)
        if not int8.is_file() or side.get("key") != key:
            fbank = make_fbank(cfg, torch.device("cpu"))
            calib = calibration_features(read_manifest(root / TRAIN_MANIFEST), root, fbank,
                                         cfg.eval.int8_calibration_utts, cfg.train.seed)
            q = quantize_int8(fp32, int8, calib)
            side = {"mode": q.mode, "quantized_ops": q.quantized_ops, "fallback_reason": q.fallback_reason,
                    "calibration_utts": len(calib), "key": key}
            write_text_atomic(int8.parent / f"{int8.name}.json", json.dumps(side))
        paths["onnx-int8"] = int8
        details["onnx-int8"] = {**on, "path": str(int8), **{k: v for k, v in side.items() if k != "key"}}
    for name in wanted:
        emb = OnnxEmbedder(load_session(paths[name], model.spec.n_mels, threads, device))
        out[name] = Backend(replace(model, extractor=emb, list_extractor=emb), "fp32", model_size_mb(paths[name]),
                            details[name])
    return out


def _stale(target: Path, source: Path) -> bool:
    return not target.is_file() or target.stat().st_mtime < source.stat().st_mtime


def int8_key(source: Path, calibration_utts: int, root: Path, seed: int) -> str:
    """What an int8 model is built from: the source model's content (checkpoint, or the ONNX file given), the
    calibration settings, the data root and the seed. A cached int8 model is reused only under the same key."""
    h = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({"calibration_utts": calibration_utts, "calibration_max_s": CALIBRATION_MAX_S,
                         "ops": INT8_OPS, "root": str(root.resolve()), "seed": seed}).encode())
    return h.hexdigest()


def _read_quant_json(path: Path) -> dict:
    """The sidecar of an int8 model (mode, int8 ops, calibration, key); empty when there is none."""
    side = path.parent / f"{path.name}.json"
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
