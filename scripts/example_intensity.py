"""Write an illustrative hourly carbon-intensity forecast for trying `--carbon-aware` offline.

    python scripts/example_intensity.py data/intensity_example.csv [--hours 48]

The file starts at the current hour (UTC) and repeats one day's shape, so it always covers "now" to a 24-hour
deadline. The shape is illustrative, not a measured grid: a night trough (01:00-05:00 UTC, 60 g/kWh), a morning
and an evening peak (180 and 220 g/kWh), and a midday dip; the 2-4x swing within a day is what most grids show.
For real planning, give an hourly forecast of your own grid (`timestamp,g_per_kwh`), or set
`energy.electricitymaps_zone` with a token.
"""

from __future__ import annotations

import argparse
import csv
import time
from datetime import datetime, timezone
from pathlib import Path

# g/kWh for each UTC hour of the day (illustrative; see the module docstring)
DAY_G_PER_KWH = [90, 60, 60, 60, 60, 80, 130, 180, 170, 140, 110, 100, 100, 110, 130, 150, 180, 220, 220, 200,
                 170, 140, 120, 100]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--hours", type=int, default=48)
    args = ap.parse_args()
    now = time.time()
    hour0 = int(now - now % 3600)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "g_per_kwh"])
        for k in range(args.hours):
            t = datetime.fromtimestamp(hour0 + 3600 * k, timezone.utc)
            w.writerow([t.isoformat(), DAY_G_PER_KWH[t.hour]])
    print(f"{out}: {args.hours} hours from {datetime.fromtimestamp(hour0, timezone.utc).isoformat()} (illustrative)")


if __name__ == "__main__":
    main()
