"""train / eval / infer sub-commands."""

from __future__ import annotations

import json
from pathlib import Path

from bench.config import INFER_BACKENDS, empty_as_none
from bench.errors import BenchError


def _config(args, extra):
    from bench.config import load_config, parse_overrides

    overrides = parse_overrides(extra)
    if getattr(args, "experiment", None):
        overrides["tracking.experiment"] = args.experiment
    if getattr(args, "model", None):
        overrides["model.name"] = args.model
    return load_config(args.preset, overrides)


def cmd_train(args, extra) -> int:
    import os

    from bench.models import spec_from_config
    from bench.variant import run_variant

    cfg = _config(args, extra)
    spec_from_config(cfg.model, n_mels=cfg.features.n_mels)  # fail fast on a bad model
    if args.no_track or int(os.environ.get("RANK", "0")) != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        result = run_variant(cfg, args.out, resume=args.resume, force=args.force)
    else:
        from bench import tracking

        run_id = tracking.take_outer_run()  # launched by `mlflow run`: log into that run
        exp_id = None if run_id else tracking.set_experiment(cfg.tracking.experiment)
        tracking.send_leftovers(args.out)  # what an earlier outage left in this folder goes first
        if run_id is None and args.resume:
            run_id = _previous_run(exp_id, args.out)
        tracking.setup_tracking()
        rid, result = tracking.run_tracked(cfg, args.out, run_id=run_id, experiment_id=exp_id, resume=args.resume,
                                           force=args.force)
        tracking.finish(args.out, cfg.tracking.outage_wait_s)
        print(f"MLflow run {rid} at {tracking.setup_tracking()}")
    if result is not None:
        for name, m in result.metrics.items():
            print(f"{name}: EER {m['eer_pct']:.2f}%  minDCF(0.01) {m['min_dcf_p01']:.3f}  minDCF(0.05) {m['min_dcf_p05']:.3f}  ({m['n_trials']} trials)")
        print(f"train: {result.train['steps']} steps in {result.train['time_s']:.1f} s; result: {Path(args.out) / 'result.json'}")
    return 0


def _previous_run(exp_id, out) -> str | None:
    from mlflow.tracking import MlflowClient

    from bench import tracking

    out = str(Path(out).resolve())
    runs = MlflowClient().search_runs([exp_id], filter_string=f"tags.`{tracking.TAG_OUT}` = '{out}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs and runs[0].info.status != "FINISHED" else None


def cmd_eval(args, extra) -> int:

    from bench.evaluate import evaluate, load_model
    from bench.train import select_device

    cfg = _config(args, extra)
    device = select_device(cfg.train.device)
    model = load_model(args.checkpoint, device, cfg.eval.channels_last, cfg.eval.compile)
    trial_names = args.trials or None
    for t in trial_names or []:
        if not Path(t).is_file() and "/" in t:
            raise BenchError(f"trial list {t} does not exist")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    results = evaluate(model, cfg, device, out, trial_names, precision=args.precision)
    for name, m in results.items():
        print(f"{name}: EER {m['eer_pct']:.2f}%  minDCF(0.01) {m['min_dcf_p01']:.3f}  minDCF(0.05) {m['min_dcf_p05']:.3f}  ({m['n_trials']} trials)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_infer(args, extra) -> int:
    import pandas as pd

    from bench.energy.meters import create_meters
    from bench.energy.plan import measurement_plan
    from bench.evaluate import load_model
    from bench.infer import eer_by_list, measure_inference
    from bench.train import select_device

    cfg = _config(args, extra)
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
    table = pd.DataFrame([{"back end": p, "utt_per_s": r["utt_per_s"], "energy_j_per_utt": r.get("energy_j_per_utt"),
                           "energy_j_per_1k_trials": r.get("energy_j_per_1k_trials"),
                           "co2_g_per_1k_trials": r.get("co2_g_per_1k_trials"),
                           "latency_p50_ms": r.get("latency_p50_ms"), "model_size_mb": r["model_size_mb"],
                           **{f"eer_pct/{n}": m["eer_pct"] for n, m in r["metrics"].items()},
                           **{f"eer_diff_pct/{n}": d for n, d in r.get("eer_diff_pct", {}).items()},
                           **{f"min_dcf_p01/{n}": m["min_dcf_p01"] for n, m in r["metrics"].items()},
                           "energy.source": r["energy.source"], "energy.estimated": r["energy.estimated"]}
                          for p, r in rows.items()])
    print(table.to_string(index=False))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    from bench import tracking

    for p, r in rows.items():
        if r["backend"].get("quantized_ops"):
            print(f"{p}: {r['backend']['mode']} quantization, int8 ops {r['backend']['quantized_ops']}")
    outer = tracking.take_outer_run()
    if outer:  # launched by `mlflow run`: the figures go into its run
        by_list = eer_by_list(rows)
        backend_params = {f"{p}.{k}": v for p, r in rows.items() for k, v in r["backend"].items()
                          if k in ("engine", "mode", "threads", "calibration_utts")}
        tracking.log_to_outer_run(outer, {"checkpoint": Path(args.checkpoint).resolve(), "precision": args.precision,
                                          "data.root": cfg.data.root, "eval.batch_frames": cfg.eval.batch_frames,
                                          **backend_params},
                                  tracking.inference_metrics(by_list, fp32_eer=True),
                                  tracking.combined_energy_tags(list(rows.values())))
    return 0


def cmd_export(args, extra) -> int:
    """The checkpoint's extraction model to ONNX (dynamic batch and time), checked against PyTorch on 1 s and
    20 s of features, optionally int8; logged to the variant's MLflow run with the mlflow.onnx flavor."""
    import torch

    from bench.deploy import (OnnxEmbedder, calibration_features, export_onnx, load_session, model_size_mb,
                              quantize_int8)
    from bench.evaluate import load_model, make_fbank

    cfg = _config(args, extra)
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


EXPORT_TOLERANCE = 1e-4


def _run_of_checkpoint(checkpoint) -> str | None:
    """The variant run that trained ``checkpoint`` (its svbench.out_dir is the checkpoint's folder), if any."""
    from mlflow.tracking import MlflowClient

    from bench import tracking

    tracking.setup_tracking()
    out = str(Path(checkpoint).resolve().parent)
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`{tracking.TAG_OUT}` = '{out}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exps else []
    return runs[0].info.run_id if runs else None


def _log_onnx(run_id: str, files: list[Path]) -> None:
    import mlflow
    import onnx

    from bench import tracking

    tracking.setup_tracking()
    with mlflow.start_run(run_id=run_id):
        for path in files:
            name = "onnx_model_int8" if path.name.endswith(".int8.onnx") else "onnx_model"
            mlflow.onnx.log_model(onnx.load(str(path)), name=name)


def register(sub, parser_class, add_config_args) -> None:
    i = sub.add_parser("infer", help="inference energy per precision: J/utt, J/1k trials, utt/s, EER")
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
    t = sub.add_parser("train", help="train and evaluate one variant; writes OUT/result.json")
    add_config_args(t)
    t.add_argument("--model", default=None, help="model preset name (same as --model.name)")
    t.add_argument("--out", required=True, help="output folder (checkpoints, scores, result.json)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt (and its MLflow run)")
    t.add_argument("--force", action="store_true", help="replace the checkpoints an earlier run left in OUT")
    t.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    t.add_argument("--experiment", type=empty_as_none(str), default=None,
                   help="MLflow experiment (tracking.experiment); under `mlflow run`, its run's")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained model.pt on trial lists")
    add_config_args(e)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--trials", nargs="*", default=None, help="trial list names under data root/trials, or files")
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    e.add_argument("--out", default=None, help="folder for score files (default: beside the checkpoint)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
