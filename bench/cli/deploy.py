"""``svbench infer | export``: inference energy per back end, and ONNX export."""
from __future__ import annotations

import json
from pathlib import Path

from bench.cli.common import KEYS_EPILOG, add_config_args, config_from_args
from bench.config import INFER_BACKENDS
from bench.errors import BenchError

EXPORT_TOLERANCE = 1e-4  # max |ONNX - PyTorch| of an embedding


def cmd_infer(args, extra) -> int:
    import pandas as pd

    from bench.energy.meters import create_meters
    from bench.energy.plan import measurement_plan
    from bench.eval.inference import measure_inference
    from bench.eval.scoring import load_model
    from bench.training.trainer import select_device

    cfg = config_from_args(args, extra)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in INFER_BACKENDS]
    if bad or not precisions:
        raise BenchError(f"--precision takes a comma list of {', '.join(INFER_BACKENDS)} (got {args.precision})")
    if args.batch_frames:
        cfg.eval.batch_frames = args.batch_frames
    device = select_device(cfg.train.device)
    model = load_model(args.checkpoint, device, cfg.eval.channels_last, cfg.eval.compile)
    meters = create_meters(cfg.energy, measurement_plan(cfg.train.device))
    try:
        rows = measure_inference(model, cfg, device, meters, precisions, Path(args.out) if args.out else None,
                                 args.trials or None, checkpoint=args.checkpoint, onnx_path=args.onnx)
    finally:
        meters.close()
    table = pd.DataFrame([{"back end": p, "utt_per_s": r.utt_per_s, "energy_j_per_utt": r.energy_j_per_utt,
                           "energy_j_per_1k_trials": r.energy_j_per_1k_trials,
                           "co2_g_per_1k_trials": r.co2_g_per_1k_trials,
                           "latency_p50_ms": r.latency.latency_p50_ms if r.latency else None,
                           "model_size_mb": r.model_size_mb,
                           **{f"eer_pct/{n}": m.eer_pct for n, m in r.lists.items()},
                           **{f"eer_diff_pct/{n}": d for n, d in r.eer_diff_pct.items()},
                           **{f"min_dcf_p01/{n}": m.min_dcf_p01 for n, m in r.lists.items()},
                           "energy.source": r.energy_labels["energy.source"],
                           "energy.estimated": r.energy_labels["energy.estimated"]}
                          for p, r in rows.items()])
    print(table.to_string(index=False))
    if args.json:
        print(json.dumps({p: r.as_row() for p, r in rows.items()}, indent=2, default=str))
    from bench.energy import accounting
    from bench.eval.latency import MIN_P95_SAMPLES
    from bench.tracking import naming, store

    for p, r in rows.items():
        if r.latency is not None and r.latency.low_count:
            print(f"{p}: latency p95 from {r.latency.latency_samples} timed calls (low count: fewer than "
                  f"{MIN_P95_SAMPLES}; raise eval.latency_samples)")
        if r.details.get("quantized_ops"):
            print(f"{p}: {r.details['mode']} quantization, int8 ops {r.details['quantized_ops']}")
    outer = store.take_outer_run()
    if outer:  # launched by `mlflow run`: the figures go into its run
        backend_params = {f"{p}.{k}": v for p, r in rows.items() for k, v in r.details.items()
                          if k in ("engine", "device", "execution_provider", "mode", "threads", "calibration_utts")}
        store.log_to_outer_run(outer, args.out or Path(args.checkpoint).resolve().parent,
                               {"checkpoint": Path(args.checkpoint).resolve(), "precision": args.precision,
                                "data.root": cfg.data.root, "eval.batch_frames": cfg.eval.batch_frames,
                                **backend_params},
                               naming.inference_metrics(rows, fp32_eer=True),
                               accounting.combined_energy_tags([r.energy_labels for r in rows.values()]),
                               wait_s=cfg.tracking.outage_wait_s)
    return 0


def cmd_export(args, extra) -> int:
    """The checkpoint's extraction model to ONNX (dynamic batch and time), checked against PyTorch on 1 s and
    20 s of features, optionally int8; logged to the variant's MLflow run with the mlflow.onnx flavor."""
    import torch

    from bench.eval.deploy import (OnnxEmbedder, calibration_features, export_onnx, load_session, model_size_mb,
                                   quantize_int8)
    from bench.eval.scoring import load_model, make_fbank

    cfg = config_from_args(args, extra)
    model = load_model(args.checkpoint, torch.device("cpu"))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    export_onnx(model.extractor, model.spec.n_mels, out)
    onnx_model = OnnxEmbedder(load_session(out, model.spec.n_mels))
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for seconds in (1.0, 20.0):
        feats = torch.randn(1, int(seconds * 100), model.spec.n_mels, generator=gen)
        with torch.no_grad():
            worst = max(worst, float((onnx_model(feats) - model.extractor(feats).float()).abs().max()))
    print(f"exported {out} ({model_size_mb(out):.2f} MB): max |ONNX - PyTorch| {worst:.1e} on 1 s and 20 s of features")
    if worst > EXPORT_TOLERANCE:
        raise BenchError(f"the exported model differs from PyTorch by {worst:.1e} (> {EXPORT_TOLERANCE}); "
                         "report this with the checkpoint's model name")
    files = [out]
    if args.int8:
        from bench.data.manifest import TRAIN_MANIFEST, data_root, read_manifest

        root = data_root(cfg.data.root)
        calib = calibration_features(read_manifest(root / TRAIN_MANIFEST), root, make_fbank(cfg, torch.device("cpu")),
                                     cfg.eval.int8_calibration_utts, cfg.train.seed)
        q = quantize_int8(out, out.with_name(f"{out.stem}.int8.onnx"), calib)
        print(f"int8 ({q.mode}, {len(calib)} calibration utterances): {q.path} ({model_size_mb(q.path):.2f} MB), "
              f"int8 ops {q.quantized_ops}")
        files.append(q.path)
    run_id = args.run_id or _run_of_checkpoint(args.checkpoint)
    if run_id:
        _log_onnx(run_id, files)
        print(f"logged to MLflow run {run_id} (flavor onnx)")
    return 0


def _run_of_checkpoint(checkpoint) -> str | None:
    """The variant run that trained ``checkpoint`` (its svbench.out_dir is the checkpoint's folder), if any."""
    from mlflow.tracking import MlflowClient

    from bench.tracking import naming, store

    store.setup_tracking()
    out = str(Path(checkpoint).resolve().parent)
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`{naming.TAG_OUT}` = '{out}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exps else []
    return runs[0].info.run_id if runs else None


def _log_onnx(run_id: str, files: list[Path]) -> None:
    import mlflow
    import onnx

    from bench.tracking import store

    store.setup_tracking()
    for path in files:  # into the run by id, not by reopening it: its status (FAILED, FINISHED) stays as it was
        name = "onnx_model_int8" if path.name.endswith(".int8.onnx") else "onnx_model"
        mlflow.onnx.log_model(onnx.load(str(path)), name=name, run_id=run_id)


def register(sub) -> None:
    i = sub.add_parser("infer", help="inference energy per precision: J/utt, J/1k trials, utt/s, EER",
                        epilog=KEYS_EPILOG)
    add_config_args(i)
    i.add_argument("--checkpoint", required=True)
    i.add_argument("--trials", nargs="*", default=None)
    i.add_argument("--precision", default="fp32,bf16",
                   help="comma list of back ends: fp32, bf16, fp16 (CUDA), onnx-fp32, onnx-int8 (ONNX Runtime)")
    i.add_argument("--onnx", default=None, help="ONNX model for onnx-fp32 (default: exported from --checkpoint)")
    i.add_argument("--batch-frames", type=int, default=None, help="frames per evaluation batch")
    i.add_argument("--out", default=None, help="folder for score files")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_infer)
    x = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch and time), optionally int8")
    add_config_args(x)
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", default=None, help="ONNX file (default: beside the checkpoint, .onnx)")
    x.add_argument("--int8", action="store_true", help="also static int8 (calibrated on data.root's training set)")
    x.add_argument("--run-id", default=None, help="MLflow run to log to (default: the run that trained it)")
    x.set_defaults(func=cmd_export)

