"""models sub-commands: list and show presets with their profiles."""

from __future__ import annotations

import json

from bench.cli.common import no_extra, subcommands


def cmd_models_list(args, extra) -> int:
    import pandas as pd

    from bench.models.profile import profile_model
    from bench.models.registry import get_spec, list_presets

    no_extra(extra)
    rows = []
    for name in list_presets():
        spec = get_spec(name)
        prof = profile_model(spec, num_classes=args.num_classes)
        rows.append({"name": name, "family": spec.family, "block": spec.block, "depth": spec.depth,
                     "stages": spec.stages_str, "width_mult": spec.width_mult, "params": prof.params,
                     "params_with_head": prof.params_with_head,
                     "gmacs_per_s_audio": round(prof.gmacs_per_s_audio, 4)})
    df = pd.DataFrame(rows)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    else:
        print(df.to_string(index=False))
    return 0


def cmd_models_show(args, extra) -> int:
    from bench.models.profile import profile_model
    from bench.models.registry import get_spec

    no_extra(extra)
    spec = get_spec(args.name)
    prof = profile_model(spec, num_classes=args.num_classes, batch_size=args.batch_size, frames=args.frames)
    print(json.dumps({"name": args.name, "spec": spec.to_dict(), "profile": prof.to_dict()}, indent=2))
    return 0


def register(sub) -> None:
    msub = subcommands(sub.add_parser("models", help="list and inspect model presets"), "models_cmd")
    ml = msub.add_parser("list", help="every preset with depth, parameters and GMACs per second of audio")
    ml.add_argument("--format", choices=["table", "csv"], default="table")
    ml.add_argument("--num-classes", type=int, default=5994, help="classes of the margin head (default: VoxCeleb2 dev)")
    ml.set_defaults(func=cmd_models_list)
    ms = msub.add_parser("show", help="one preset's spec and profile")
    ms.add_argument("name")
    ms.add_argument("--num-classes", type=int, default=5994)
    ms.add_argument("--batch-size", type=int, default=128, help="batch for the peak training memory figure")
    ms.add_argument("--frames", type=int, default=200)
    ms.set_defaults(func=cmd_models_show)
