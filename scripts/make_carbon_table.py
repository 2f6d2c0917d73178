"""Generate bench/energy/data/carbon_intensity.csv from CodeCarbon's energy-mix data.

The numbers are yearly average grid carbon intensities (gCO2e/kWh) per country (ISO alpha-3), as
compiled by Our World in Data and shipped inside the PyPI package ``codecarbon``
(``codecarbon/data/private_infra/global_energy_mix.json``). Nothing is typed by hand: run

    pip download --no-deps codecarbon==3.3.2 -d /tmp/cc && unzip -o /tmp/cc/codecarbon-*.whl -d /tmp/cc
    python scripts/make_carbon_table.py /tmp/cc/codecarbon/data/private_infra/global_energy_mix.json

The ``WLD`` row is derived here: the generation-weighted mean (sum of intensity x total TWh over
sum of total TWh) of every country in the file, labelled as such in its source column.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "bench" / "energy" / "data" / "carbon_intensity.csv"
SOURCE = "Our World in Data via codecarbon {version} global_energy_mix.json"


def main(path: str, version: str = "3.3.2") -> None:
    data = json.loads(Path(path).read_text())
    rows = []
    for iso, d in sorted(data.items()):
        if d.get("carbon_intensity") is None or len(iso) != 3:
            continue
        rows.append({"iso3": iso, "country": d.get("country_name", iso),
                     "intensity_g_per_kwh": round(float(d["carbon_intensity"]), 3), "year": int(d.get("year", 0)),
                     "source": SOURCE.format(version=version)})
    weighted = [(float(d["carbon_intensity"]), float(d["total_TWh"])) for d in data.values()
                if d.get("carbon_intensity") is not None and d.get("total_TWh")]
    world = sum(i * t for i, t in weighted) / sum(t for _, t in weighted)
    years = [r["year"] for r in rows]
    rows.append({"iso3": "WLD", "country": "World", "intensity_g_per_kwh": round(world, 3),
                 "year": max(set(years), key=years.count),
                 "source": f"generation-weighted mean of the {len(weighted)} countries above "
                           f"({SOURCE.format(version=version)})"})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
