"""Run in a fresh process: point Zeus at a fake powercap tree and measure one window."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from energy_helpers import FakeRapl  # noqa: E402


def main() -> None:
    root = sys.argv[1]
    package_w, dram_w, start_uj, seconds = (float(a) for a in sys.argv[2:6])
    import zeus.device.cpu.rapl as rapl

    rapl.RAPL_DIR = root
    with FakeRapl(Path(root), package_w, dram_w, max_uj=1e9, package_start_uj=start_uj) as rapl_tree:
        from bench.config import EnergyConfig
        from bench.energy.meters import create_meters
        from bench.energy.plan import measurement_plan

        meters = create_meters(EnergyConfig(meters=["zeus"]), measurement_plan("cpu"))
        # the window's two reads see the counters of their instant, as hardware's would: a ticker thread
        # scheduled late under load (CI's busy cores) left the end read 80 ms (4 J of 200) short
        rapl_tree.tick()
        with meters.window("work") as w:
            time.sleep(seconds)
            rapl_tree.tick()
        meters.close()
    r = w.reading
    print(json.dumps({"joules": r.joules, "sources": r.sources, "time_s": r.time_s, "total_j": r.total_j,
                      "source": r.source_tag, "estimated": r.estimated, "meters": meters.describe()}))

if __name__ == "__main__":  # Zeus starts its wraparound tracker with spawn: never re-run this on import
    main()
