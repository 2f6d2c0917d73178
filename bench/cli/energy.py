"""energy sub-commands: the machine's idle profile, for runs on a shared node."""

from __future__ import annotations

from bench.cli.common import add_config_args, config_from_args, subcommands


def cmd_idle(args, extra) -> int:
    from bench.energy.idle import measure_profile, write_profile
    from bench.energy.meters import create_meters
    from bench.energy.plan import (CPU_TIME_SHARE, EXCLUSIVE, MeasurePlan, node_shared_with_other_jobs,
                                   visible_gpu_count)

    cfg = config_from_args(args, extra)
    cfg.energy.idle_baseline_s, cfg.energy.idle_profile = 0.0, None
    shared = node_shared_with_other_jobs()
    plan = MeasurePlan(tuple(range(visible_gpu_count())), CPU_TIME_SHARE if shared else EXCLUSIVE)
    meters = create_meters(cfg.energy, plan)
    try:
        profile = measure_profile(meters, args.seconds)
    finally:
        meters.close()
    write_profile(profile, args.out)
    watts = ", ".join(f"{c} {w:.1f} W" for c, w in sorted(profile.idle_power_w.items()))
    print(f"energy idle: {watts} over {profile.seconds:.0f} s on {profile.host}; written to {args.out}")
    print(f"use it on a shared node with --energy.idle_profile {args.out}")
    return 0


def register(sub) -> None:
    esub = subcommands(sub.add_parser("energy", help="the machine's idle profile (for runs on a shared node)"),
                       "energy_cmd")
    idle = esub.add_parser("idle", help="measure the idle power of every meter while holding the node, and store it")
    add_config_args(idle)
    idle.add_argument("--seconds", type=float, default=30.0, help="how long to measure (default %(default)s s)")
    idle.add_argument("--out", required=True, help="the profile file to write (JSON)")
    idle.set_defaults(func=cmd_idle)
