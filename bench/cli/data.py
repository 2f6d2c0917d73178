"""``svbench data synth | prepare``: the synthetic corpus and VoxCeleb."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.cli.common import no_extra, subcommands
from bench.data.trials import EVAL_FORMATS, EXPORT_FORMATS


def cmd_data_synth(args, extra) -> int:
    from bench.data.export_eval import FORMS_DIR, export_eval_set
    from bench.data.synth import generate_corpus
    from bench.data.trials import read_trials
    from bench.eval.baseline import mean_logmel_baseline

    no_extra(extra)
    summary = asdict(generate_corpus(args.out, seed=args.seed, size=args.size, workers=args.workers,
                                     force=args.force))
    trials = read_trials(Path(args.out) / "trials" / "synth.txt")
    base = mean_logmel_baseline(args.out, trials)
    summary["baseline_eer_pct"] = round(base["eer_pct"], 2)
    _print_summary("synthetic corpus", summary)
    print(f"no-training baseline (cosine of mean log-mel): EER {base['eer_pct']:.2f}% on {len(trials)} trials")
    for form in dict.fromkeys(args.eval_forms):
        written = export_eval_set(args.out, "synth", form, Path(args.out) / FORMS_DIR / form)
        print(f"test half in {form} form: {written['out']} (add it with `svbench data add-eval --format {form}`)")
    from bench.tracking import store

    outer = store.take_outer_run()
    if outer:  # launched by `mlflow run`: the corpus's figures go into its run
        store.log_to_outer_run(outer, args.out, {"out": Path(args.out).resolve(), "size": args.size,
                                                  "seed": args.seed},
                                  {f"data/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    return 0


def cmd_data_prepare(args, extra) -> int:
    from bench.data.voxceleb import prepare_voxceleb

    no_extra(extra)
    summary = prepare_voxceleb(args.voxceleb1, args.out, args.voxceleb2, args.trials, args.workers)
    _print_summary("VoxCeleb", summary)
    return 0


def cmd_data_add_eval(args, extra) -> int:
    from bench.data.eval_sets import add_eval_set

    no_extra(extra)
    summary = add_eval_set(args.name, args.root, args.format, args.out, args.trials, args.workers, args.protocol,
                           args.enroll_dir, args.allow_pipes, args.skip_missing, args.no_copy)
    _print_summary(f"evaluation set {args.name}", summary)
    if summary["skipped_trials"]:
        print(f"{summary['skipped_trials']} trial(s) needed absent files and were dropped (--skip-missing); the "
              "count is recorded with the list and logged with every run scored on it")
    print(f"score it with --data.trials {summary['lists'].replace(',', ' ')} (or every list under {summary['root']}"
          "/trials by default)")
    return 0


def cmd_data_export_eval(args, extra) -> int:
    from bench.data.export_eval import export_eval_set

    no_extra(extra)
    summary = export_eval_set(args.root, args.trials, args.format, args.out)
    _print_summary(f"{args.format} form of {args.trials}", summary)
    return 0


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}:")
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"  {k:18s} {v}")


def register(sub) -> None:
    dsub = subcommands(sub.add_parser("data", help="generate or prepare data"), "data_cmd")
    s = dsub.add_parser("synth", help="generate the synthetic speaker corpus")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="demo", help="tiny, demo or TRAINxUTTS:TESTxUTTS")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--force", action="store_true", help="replace an existing output folder")
    s.add_argument("--eval-forms", nargs="*", default=[], choices=EXPORT_FORMATS, metavar="FORM",
                   help="also write the test half in these forms (voxceleb, cnceleb, kaldi) under OUT/forms/, "
                        "as CN-Celeb or a Kaldi data dir would come, for `data add-eval`")
    s.set_defaults(func=cmd_data_synth)
    pr = dsub.add_parser("prepare", help="scan VoxCeleb, convert m4a, write manifests and trial lists")
    pr.add_argument("--voxceleb1", required=True)
    pr.add_argument("--voxceleb2", default=None)
    pr.add_argument("--trials", nargs="*", default=None,
                    help="trial list files (default: cleaned O/E/H found beside voxceleb1)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--workers", type=int, default=None)
    pr.set_defaults(func=cmd_data_prepare)
    a = dsub.add_parser("add-eval", help="add a test set (CN-Celeb, Kaldi/WeSpeaker data dir, VoxCeleb-style list, "
                                         "Common Voice / CommonBench) to a prepared data root")
    a.add_argument("--name", required=True, help="the trial list's name (eer_pct/<name>)")
    a.add_argument("--root", required=True, help="the set's folder")
    a.add_argument("--format", required=True, choices=EVAL_FORMATS)
    a.add_argument("--out", default="data/demo", help="the data root to add it to (default: data/demo)")
    a.add_argument("--trials", default=None, help="a trial list, or a folder whose every file is a list named by its "
                                                  "stem (default: the form's own: ROOT/trials.txt, "
                                                  "eval/lists/trials.lst, ROOT/trials)")
    a.add_argument("--protocol", default="concat", choices=("concat", "avg"),
                   help="cnceleb: enrol with the release's concatenated file (concat) or the mean of the "
                        "enroll.map segments (avg)")
    a.add_argument("--allow-pipes", action="store_true", help="kaldi: executes the commands in wav.scp (piped "
                                                                "entries such as 'sox in.sph -t wav - |')")
    a.add_argument("--enroll-dir", default=None, help="kaldi: the enrolment data dir whose spk2utt the trials' "
                                                      "model ids name")
    a.add_argument("--skip-missing", action="store_true",
                   help="drop the trials that need absent files (counted, recorded with the list, logged) instead of "
                        "refusing the set")
    copy = a.add_mutually_exclusive_group()
    copy.add_argument("--no-copy", dest="no_copy", action="store_true", default=None,
                      help="keep MP3/m4a/... files where they are and decode them when embeddings are extracted "
                           "(no WAV written; the default of commonvoice)")
    copy.add_argument("--copy", dest="no_copy", action="store_false",
                      help="decode files that are not 16 kHz mono WAV/FLAC to WAV under the data root (the default "
                           "of the other forms)")
    a.add_argument("--workers", type=int, default=None)
    a.set_defaults(func=cmd_data_add_eval)
    x = dsub.add_parser("export-eval", help="write a prepared trial list and its audio in another form "
                                            "(cnceleb: FLAC; kaldi; voxceleb)")
    x.add_argument("--root", required=True, help="a prepared data root (e.g. from `data synth`)")
    x.add_argument("--trials", default="synth", help="its trial list to export")
    x.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    x.add_argument("--out", required=True, help="a new folder")
    x.set_defaults(func=cmd_data_export_eval)
