"""Deployment back ends: ONNX export equal to PyTorch, ONNX Runtime fp32 and int8 through `svbench infer`,
clear errors for a corrupt or mismatched ONNX file."""

import json

import mlflow
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from mlflow.tracking import MlflowClient



def test_export_equals_pytorch_on_short_and_long_utterances_and_logs_the_onnx_flavor(tiny_model, tiny_corpus,
                                                                                     tmp_path):
    from bench.eval.deploy import OnnxEmbedder, load_session
    from bench.eval.scoring import load_model
    from bench.tracking import naming, store

    store.setup_tracking()
    exp = store.set_experiment("deploy-test")
    run = MlflowClient().create_run(exp, tags={naming.TAG_OUT: str(tiny_model.parent.resolve())})
    MlflowClient().set_terminated(run.info.run_id, "FAILED")  # an export never changes a run's status
    before = MlflowClient().get_run(run.info.run_id).info
    onnx_file = tmp_path / "m.onnx"
    proc = run_cli("export", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint", tiny_model,
                   "--format", "onnx", "--out", onnx_file, "--int8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max |ONNX - PyTorch|" in proc.stdout and "int8 (static-qdq" in proc.stdout
    model = load_model(tiny_model, torch.device("cpu"))
    onnx_model = OnnxEmbedder(load_session(onnx_file, model.spec.n_mels))
    gen = torch.Generator().manual_seed(1)
    for seconds in (1.0, 1.3, 7.7, 20.0):  # whole utterances of 1-20 s, batch 1 and 3
        for batch in (1, 3):
            feats = torch.randn(batch, int(seconds * 100), model.spec.n_mels, generator=gen)
            with torch.no_grad():
                ref = model.extractor(feats)
            np.testing.assert_allclose(onnx_model(feats).numpy(), ref.numpy(), atol=1e-4, rtol=0)
    flavors = {m.name for m in MlflowClient().search_logged_models([exp])}
    assert {"onnx_model", "onnx_model_int8"} <= flavors  # logged beside the variant's PyTorch model
    logged = next(m for m in MlflowClient().search_logged_models([exp]) if m.name == "onnx_model")
    assert logged.source_run_id == run.info.run_id
    after = MlflowClient().get_run(run.info.run_id).info
    assert (after.status, after.end_time) == ("FAILED", before.end_time)
    sess = mlflow.pyfunc.load_model(logged.model_uri)  # the onnx flavor served by onnxruntime
    feats = torch.randn(2, 250, model.spec.n_mels, generator=gen)
    got = sess.predict(feats.numpy())
    got = np.asarray(got["embedding"] if isinstance(got, dict) else got)
    with torch.no_grad():
        np.testing.assert_allclose(got, model.extractor(feats).numpy(), atol=1e-4, rtol=0)


def test_infer_runs_every_backend_with_paired_eer_difference(tiny_model, tiny_corpus, tmp_path):
    proc = run_cli("infer", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint", tiny_model,
                   "--precision", "fp32,onnx-fp32,onnx-int8", "--json", "--eval.latency", "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])
    assert set(rows) == {"fp32", "onnx-fp32", "onnx-int8"}
    fp32, onnx32, int8 = rows["fp32"], rows["onnx-fp32"], rows["onnx-int8"]
    assert abs(onnx32["metrics"]["synth"]["eer_pct"] - fp32["metrics"]["synth"]["eer_pct"]) < 0.5
    assert np.isfinite(int8["metrics"]["synth"]["eer_pct"]) and 0 <= int8["metrics"]["synth"]["eer_pct"] <= 100
    lo, hi = int8["eer_diff_ci"]["synth"]
    assert lo <= int8["eer_diff_pct"]["synth"] <= hi
    assert int8["backend"]["mode"] == "static-qdq" and int8["backend"]["quantized_ops"].get("Conv", 0) > 0
    assert int8["model_size_mb"] < onnx32["model_size_mb"]
    for r in rows.values():
        assert r["utt_per_s"] > 0 and r["latency_p95_ms"] >= r["latency_p50_ms"] > 0 and r["energy.source"]
        assert r["backend"]["device"] == "cpu" and r["warmup_s"] > 0  # warmed up outside its windows
    for r in (onnx32, int8):  # ONNX Runtime on the model's device, with its own mean embedding and cohort
        assert r["backend"]["execution_provider"] == "CPUExecutionProvider" and r["statistics_s"] > 0
    assert fp32["statistics_s"] is None  # PyTorch fp32 scores with the checkpoint's own
    assert "latency p95 from 30 timed calls (low count" in proc.stdout  # the tiny preset's 30 samples


def test_corrupt_or_mismatched_onnx_is_a_one_line_error(tiny_model, tiny_corpus, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    args = ["infer", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint", tiny_model,
            "--precision", "onnx-fp32"]
    assert_one_line_error(run_cli(*args, "--onnx", bad, cwd=tmp_path), "cannot be loaded", "svbench export")
    other = tmp_path / "other.onnx"  # a valid ONNX model, but of 40-bin features
    x = helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", "frames", 40])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "frames", 40])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["fbank"], ["embedding"])], "g",
                                                  [x], [y]), opset_imports=[helper.make_opsetid("", 17)]), str(other))
    assert_one_line_error(run_cli(*args, "--onnx", other, cwd=tmp_path), "does not match the checkpoint")


def test_int8_model_is_rebuilt_when_its_calibration_changes(tiny_model, tiny_corpus, tmp_path):
    """The cached int8 model is keyed by the checkpoint, calibration settings, data root and seed: the same
    settings reuse it, another eval.int8_calibration_utts rebuilds it (and its sidecar says so)."""
    import shutil

    from bench.config import load_config
    from bench.eval.deploy import prepare_backends
    from bench.eval.scoring import load_model

    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_model, ckpt)
    model = load_model(ckpt, torch.device("cpu"))

    def int8(utts: int):
        cfg = load_config("tiny", {"data.root": str(tiny_corpus), "eval.int8_calibration_utts": utts})
        b = prepare_backends(model, cfg, ["onnx-int8"], checkpoint=ckpt)["onnx-int8"]
        path = tmp_path / "model.int8.onnx"
        return b.details["calibration_utts"], path.stat().st_mtime_ns, json.loads(path.with_name(
            "model.int8.onnx.json").read_text())["key"]

    first = int8(8)
    assert int8(8) == first  # same settings: reused
    again = int8(12)
    assert again[0] == 12 and again[1] != first[1] and again[2] != first[2]


def test_onnx_back_ends_never_run_on_another_device_than_the_model():
    import onnxruntime as ort

    from bench.errors import BenchError
    from bench.eval.deploy import execution_provider

    assert execution_provider(torch.device("cpu")) == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert execution_provider(torch.device("cuda")) == "CUDAExecutionProvider"
    else:  # a CUDA model is not compared with ONNX Runtime on the CPU: refused with one line
        with pytest.raises(BenchError, match="cannot run on cuda.*not compare like for like"):
            execution_provider(torch.device("cuda"))


@pytest.mark.slow
def test_compiled_inference_compiles_only_in_its_warm_up(tiny_model, tiny_corpus, tmp_path):
    """Back ends are measured in alternating order. `eval.compile`: torch.compile with dynamic shapes over
    every bucket shape of the trial list gives the eager scores to float rounding; every compile (fp32, and
    bf16's recompile) happens in the warm-up before each back end's window, whose time is logged apart:
    replaying the windows' extraction with recompiles forbidden passes."""
    from bench.config import load_config
    from bench.energy.meters import create_meters
    from bench.energy.plan import measurement_plan
    from bench.eval.inference import measure_inference
    from bench.eval.scoring import evaluate, load_model

    cpu = torch.device("cpu")
    cfg = load_config("tiny", {"data.root": str(tiny_corpus), "eval.compile": True, "eval.latency": False,
                               "eval.bootstrap_resamples": 0})
    model = load_model(tiny_model, cpu, cfg.eval.channels_last, compiled=True)
    meters = create_meters(cfg.energy, measurement_plan("cpu"))
    try:
        rows = measure_inference(model, cfg, cpu, meters, ["fp32", "bf16"], tmp_path)
    finally:
        meters.close()
    assert all(r.warmup_s > 0 for r in rows.values())
    # two passes in alternating order (A B, B A), each back end's figures the mean of its two windows
    windows = [r for r in meters.readings if r.name.startswith("infer/")]
    assert [r.name for r in windows] == ["infer/fp32", "infer/bf16", "infer/bf16", "infer/fp32"]
    assert rows["fp32"].time_s == pytest.approx((windows[0].time_s + windows[3].time_s) / 2)
    eager = evaluate(load_model(tiny_model, cpu), cfg, cpu, tmp_path / "eager", trial_names=["synth"])
    a = np.loadtxt(eager["synth"].score_file, usecols=1)
    b = np.loadtxt(rows["fp32"].lists["synth"].score_file, usecols=1)
    assert len(a) == len(b) > 100
    assert np.abs(a - b).max() < 1e-4
    assert np.abs(a).max() > 1e-3  # real scores, not zeros
    with torch.compiler.set_stance("fail_on_recompile"):
        for precision in ("fp32", "bf16"):
            evaluate(model, cfg, cpu, precision=precision)
