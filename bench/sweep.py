"""Sweeps: a named grid of variants, one nested MLflow run each under a parent run.

A grid is a YAML file (``bench/presets/grids/<name>.yaml`` or a path) with a base ``preset``,
optional grid-wide ``overrides``, ``variants`` (each a ``name``, a ``model`` preset and/or
``overrides``, and the ``series`` it belongs to: depth, width, stages) or ``include`` of other grids.

Re-running a sweep skips the variants already FINISHED under a parent with the same sweep key (grid
name + resolved configs) and resumes unfinished ones from their checkpoints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.config import Config, apply_overrides, build_config, config_to_yaml, load_preset_dict, parse_overrides
from bench.errors import BenchError

GRID_DIR = Path(__file__).parent / "presets" / "grids"


@dataclass
class Variant:
    name: str
    config: Config
    series: list[str] = field(default_factory=list)


@dataclass
class Grid:
    name: str
    variants: list[Variant]

    @property
    def key(self) -> str:
        h = hashlib.sha256()
        for v in self.variants:
            h.update(v.name.encode())
            h.update(config_to_yaml(v.config).encode())
        return f"{self.name}:{h.hexdigest()[:12]}"


def list_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def _grid_dict(grid: str) -> dict:
    path = Path(grid)
    if not path.is_file():
        path = GRID_DIR / f"{grid}.yaml"
    if not path.is_file():
        raise BenchError(f"unknown grid '{grid}'; choose one of {', '.join(list_grids())} or give a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise BenchError(f"grid file {path} is not valid YAML") from None
    if not isinstance(data, dict) or not (data.get("variants") or data.get("include")):
        raise BenchError(f"grid file {path} needs a 'variants' list (or 'include')")
    return data


def load_grid(grid: str, cli_overrides: list[str] | dict | None = None) -> Grid:
    """Resolve every variant's config now, so a bad one fails before anything runs."""
    data = _grid_dict(grid)
    cli = parse_overrides(cli_overrides) if isinstance(cli_overrides, list) else dict(cli_overrides or {})
    variants: list[Variant] = []
    for inc in data.get("include", []) or []:
        for v in load_grid(inc, cli).variants:
            same = [w for w in variants if w.name == v.name]
            if same:  # a variant in several included series: keep one, union the series
                same[0].series += [s for s in v.series if s not in same[0].series]
            else:
                variants.append(v)
    base_preset = data.get("preset", "demo")
    grid_over = dict(data.get("overrides") or {})
    for i, v in enumerate(data.get("variants", []) or []):
        if not isinstance(v, dict) or "name" not in v:
            raise BenchError(f"grid '{data.get('name', grid)}' variant {i + 1} needs a name")
        over = dict(grid_over)
        if v.get("model"):
            over["model.name"] = v["model"]
        over.update(v.get("overrides") or {})
        over.update(cli)
        over["name"] = v["name"]
        base = load_preset_dict(v.get("preset", base_preset))
        try:
            cfg = build_config(apply_overrides(base, over))
        except BenchError as err:
            raise BenchError(f"grid variant '{v['name']}': {err}") from None
        from bench.models import spec_from_config

        spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
        series = v.get("series") or []
        variants.append(Variant(v["name"], cfg, [series] if isinstance(series, str) else list(series)))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise BenchError(f"grid '{data.get('name', grid)}' has duplicate variant names")
    return Grid(data.get("name", Path(grid).stem), variants)


def run_sweep(grid: Grid, out_root: str | Path, progress: bool = True, new: bool = False) -> dict:
    """Run (or continue) every variant of ``grid`` as nested MLflow runs; returns a summary."""
    from mlflow.tracking import MlflowClient

    from bench import tracking

    tracking.setup_tracking()
    client = MlflowClient()
    outer_run = tracking.take_outer_run()  # launched by `mlflow run`: that run is the parent
    first = grid.variants[0].config
    if outer_run:
        exp_id = tracking.experiment_of(outer_run)
    else:
        exp_id = tracking.set_experiment(first.tracking.experiment)
    earlier = client.search_runs([exp_id], filter_string=f"tags.`{tracking.TAG_SWEEP}` = '{grid.key}' and tags.`{tracking.TAG_KIND}` = 'variant'",
                                 max_results=5000)
    finished = {r.data.tags.get(tracking.TAG_VARIANT) for r in earlier if r.info.status == "FINISHED"}
    if outer_run:
        parent_id = outer_run
    else:
        parents = client.search_runs([exp_id], filter_string=f"tags.`{tracking.TAG_SWEEP}` = '{grid.key}' and tags.`{tracking.TAG_KIND}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if parents and not new:
            parent_id = parents[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
        else:
            parent_id = client.create_run(exp_id, run_name=f"sweep-{grid.name}").info.run_id
    client.set_tag(parent_id, tracking.TAG_KIND, "sweep")
    client.set_tag(parent_id, tracking.TAG_SWEEP, grid.key)
    client.set_tag(parent_id, "svbench.grid", grid.name)
    # an unfinished variant resumes in its own run, now under this parent (`mlflow run` makes a new one each time)
    unfinished = {} if new else {r.data.tags.get(tracking.TAG_VARIANT): r.info.run_id for r in reversed(earlier)
                                 if r.info.status != "FINISHED" and r.data.tags.get(tracking.TAG_VARIANT) not in finished}
    for rid in unfinished.values():
        client.set_tag(rid, tracking.PARENT, parent_id)
    ran, skipped = [], []
    try:
        for v in grid.variants:
            if v.name in finished:
                skipped.append(v.name)
                print(f"[sweep {grid.name}] {v.name}: already finished, skipped")
                continue
            print(f"[sweep {grid.name}] {v.name}: training {v.config.model.name}")
            rid, metrics = tracking.run_tracked_seeds(
                v.config, Path(out_root) / v.name, run_id=unfinished.get(v.name), parent_run_id=parent_id,
                experiment_id=exp_id, run_name=v.name,
                extra_tags={tracking.TAG_SWEEP: grid.key, tracking.TAG_SERIES: ",".join(v.series), "svbench.grid": grid.name},
                resume=v.name in unfinished, progress=progress, force=new)
            ran.append(v.name)
            eer = next((val for k, val in metrics.items() if k.startswith("eer_pct/")), float("nan"))
            seeds = f" (mean of {v.config.seeds} seeds)" if v.config.seeds > 1 else ""
            print(f"[sweep {grid.name}] {v.name}: EER {eer:.2f}%  train {metrics.get('train/energy_j', float('nan')):.1f} J{seeds}")
    except BaseException:
        if not outer_run:
            client.set_terminated(parent_id, "FAILED")
        raise
    client.log_metric(parent_id, "sweep/variants", len(grid.variants))
    if not outer_run:
        client.set_terminated(parent_id, "FINISHED")
    return {"parent_run_id": parent_id, "experiment_id": exp_id, "ran": ran, "skipped": skipped, "key": grid.key}
