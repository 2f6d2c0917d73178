"""sync sub-command: send what a tracking outage left in the spools of a folder tree."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.tracking.spool import DEFAULT_WAIT_S, spools_under, unsent_under


def cmd_sync(args, extra) -> int:
    from bench.tracking import store

    root = Path(args.out)
    if not root.is_dir():
        raise BenchError(f"{root} is not a folder; give the --out folder of a train, sweep or search")
    todo = unsent_under(root)
    if not todo:
        print(f"sync: nothing to send under {root}")
        return 0
    store.check_reachable()
    for spool in spools_under(root):
        if (writer := spool.live_writer()) is not None:
            print(f"sync: {spool.dir} is being written by {writer}; sending what it holds so far, one record at a "
                  "time with that process (nothing is sent twice)")
    runs = {r.run for r in todo}
    print(f"sync: sending {len(todo)} records of {len(runs)} runs under {root} to {store.setup_tracking()}")
    if not store.finish(root, args.wait_s):
        return 1
    print(f"sync: sent; {root} has nothing left to send")
    return 0


def register(sub) -> None:
    s = sub.add_parser("sync", help="send the MLflow records a tracking outage left in a train, sweep or search folder")
    s.add_argument("out", help="the --out folder (all its run folders are sent)")
    s.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S,
                   help="how long to wait for a server that stops answering (default %(default)s s)")
    s.set_defaults(func=cmd_sync)
