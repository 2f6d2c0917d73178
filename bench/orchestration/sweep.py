"""Sweeps: a named grid of variants, one nested MLflow run each under a parent run.

A grid is a YAML file (``bench/presets/grids/<name>.yaml`` or a path) with a base ``preset``,
optional grid-wide ``overrides``, ``variants`` (each a ``name``, a ``model`` preset and/or
``overrides``, and the ``series`` it belongs to: depth, width, stages) or ``include`` of other grids.

Re-running a sweep skips the variants already FINISHED under a parent with the same sweep key (grid
name + resolved configs) and resumes unfinished ones from their checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.config import PRESET_DIR, Config, apply_overrides, build_config, load_preset_dict, parse_overrides
from bench.errors import BenchError
from bench.models import spec_from_config
from bench.orchestration import carbon_aware, seeds, slurm
from bench.orchestration.carbon_aware import CarbonAware
from bench.tracking import naming, store
from bench.tracking.runlog import RunLog
from bench.tracking.spool import PENDING
from bench.training.checkpoint import check_fresh_out

logger = logging.getLogger(__name__)

GRID_DIR = PRESET_DIR / "grids"


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
        """Grid name + every variant's resolved config, without where it runs and logs (slurm, tracking)."""
        h = hashlib.sha256()
        for v in self.variants:
            h.update(v.name.encode())
            what = v.config.model_dump(mode="json", exclude={"slurm", "tracking"})
            h.update(yaml.safe_dump(what, sort_keys=True).encode())
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
    _known_keys(data, GRID_KEYS, f"grid file {path}")
    for i, v in enumerate(data.get("variants") or []):
        if isinstance(v, dict):
            _known_keys(v, VARIANT_KEYS, f"grid file {path} variant {i + 1}")
    return data


GRID_KEYS = ("name", "description", "preset", "overrides", "variants", "include")
VARIANT_KEYS = ("name", "model", "preset", "overrides", "series")


def _known_keys(d: dict, known: tuple[str, ...], where: str) -> None:
    """A misspelt key of a grid (``overides:``) is a one-line error with the nearest key, never ignored."""
    import difflib

    for key in d:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise BenchError(f"{where} has the key '{key}'; {hint}a grid takes {', '.join(known)}")


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

        spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
        series = v.get("series") or []
        variants.append(Variant(v["name"], cfg, [series] if isinstance(series, str) else list(series)))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise BenchError(f"grid '{data.get('name', grid)}' has duplicate variant names")
    return Grid(data.get("name", Path(grid).stem), variants)


def run_sweep(grid: Grid, out_root: str | Path, progress: bool = True, new: bool = False,
              launcher: str = "local", carbon: CarbonAware | None = None) -> SweepOutcome:
    """Run (or continue) every variant of ``grid`` as nested MLflow runs; returns a summary. ``launcher``
    slurm: each variant is a Slurm job (``bench.orchestration.slurm``), and this process waits for them.
    ``carbon``: start when the forecast gCO2e is lowest within its deadline (``bench.orchestration.carbon_aware``)."""
    from mlflow.tracking import MlflowClient

    if launcher == "slurm":
        slurm.check_launcher()  # before any run is created
    store.setup_tracking()
    client = MlflowClient()
    outer_run = store.take_outer_run()  # launched by `mlflow run`: that run is the parent
    first = grid.variants[0].config
    if outer_run:
        exp_id = store.experiment_of(outer_run)
    else:
        exp_id = store.set_experiment(first.tracking.experiment)
    store.send_leftovers(out_root)  # what an earlier outage left: sent first, so the runs below are complete
    log = RunLog(out_root)
    earlier = client.search_runs([exp_id], filter_string=f"tags.`{naming.TAG_SWEEP}` = '{grid.key}' and "
                                                         f"tags.`{naming.TAG_KIND}` = 'variant'",
                                 max_results=5000)
    finished = {r.data.tags.get(naming.TAG_VARIANT) for r in earlier if r.info.status == "FINISHED"}
    if outer_run:
        parent_id = outer_run
    else:
        parents = client.search_runs([exp_id], filter_string=f"tags.`{naming.TAG_SWEEP}` = '{grid.key}' and "
                                                             f"tags.`{naming.TAG_KIND}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if parents and not new:
            parent_id = parents[0].info.run_id
            log.reopen(parent_id)
        else:
            parent_id = client.create_run(exp_id, run_name=f"sweep-{grid.name}").info.run_id
    log.log_batch(parent_id, tags={naming.TAG_KIND: "sweep", naming.TAG_SWEEP: grid.key, "svbench.grid": grid.name})
    # an unfinished variant resumes in its own run, now under this parent (`mlflow run` makes a new one each time)
    unfinished = {} if new else {
        r.data.tags.get(naming.TAG_VARIANT): r.info.run_id for r in reversed(earlier)
        if r.info.status != "FINISHED" and r.data.tags.get(naming.TAG_VARIANT) not in finished}
    for name, rid in unfinished.items():
        RunLog(Path(out_root) / name).set_tag(rid, naming.PARENT, parent_id)
    skipped = [v.name for v in grid.variants if v.name in finished]
    for name in skipped:
        logger.info(f"[sweep {grid.name}] {name}: already finished, skipped")
    todo = [v for v in grid.variants if v.name not in finished]
    run = _run_on_slurm if launcher == "slurm" else _run_here
    collected: dict[str, dict] = {}
    try:
        plan = None
        if carbon is not None and todo:
            plan = carbon_aware.plan_variants([(v.name, v.config) for v in todo], carbon, launcher != "slurm")
            carbon_aware.announce(plan, log, parent_id)
            if launcher != "slurm":
                carbon_aware.wait_until(plan.start_s, carbon.clock)
        ran, failed = run(grid, todo, Path(out_root), parent_id, exp_id, unfinished, progress, new, collected,
                          plan.start_s if plan is not None else None)
    except BaseException as exc:
        if not outer_run:
            log.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if plan is not None:
        carbon_aware.log_realised(plan, [m.get("train/co2_g") for m in collected.values()], log, parent_id)
    log.log_batch(parent_id, metrics={"sweep/variants": len(grid.variants), "sweep/failed": len(failed)})
    if not outer_run:
        log.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    log.settle()
    return SweepOutcome(parent_id, exp_id, grid.key, ran, skipped, failed)


@dataclass
class SweepOutcome:
    """What ``run_sweep`` did: the parent run, the grid's key and the variants it ran, skipped (finished before)
    and that failed (re-run the sweep to resume them)."""
    parent_run_id: str
    experiment_id: str
    key: str
    ran: list[str]
    skipped: list[str]
    failed: list[str]


def _variant_tags(grid: Grid, v: Variant) -> dict:
    return {naming.TAG_SWEEP: grid.key, naming.TAG_SERIES: ",".join(v.series), "svbench.grid": grid.name}


def _report_variant(grid: Grid, v: Variant, metrics: dict, run_id: str) -> None:
    """One line per finished variant, with its run's short id (what `svbench compare` and `report` take)."""
    eer = next((val for k, val in metrics.items() if k.startswith("eer_pct/") and k.count("/") == 1), float("nan"))
    seeds = f" (mean of {v.config.seeds} seeds)" if v.config.seeds > 1 else ""
    energy = metrics.get("train/energy_j", float("nan"))
    shown = run_id if run_id.startswith(PENDING) else run_id[:8]
    logger.info(f"[sweep {grid.name}] {v.name}: EER {eer:.2f}%  train {energy:.1f} J{seeds}  (run {shown})")


def _run_here(grid: Grid, todo: list[Variant], out_root: Path, parent_id: str, exp_id: str, unfinished: dict,
              progress: bool, new: bool, collected: dict, begin_s: float | None = None) -> tuple[list[str], list[str]]:
    """One variant after the other in this process (``begin_s``: the carbon-aware start, already waited for);
    each variant's metrics into ``collected``."""
    ran = []
    for v in todo:
        logger.info(f"[sweep {grid.name}] {v.name}: training {v.config.model.name}")
        rid, metrics = seeds.run_tracked_seeds(
            v.config, out_root / v.name, run_id=unfinished.get(v.name), parent_run_id=parent_id,
            experiment_id=exp_id, run_name=v.name, extra_tags=_variant_tags(grid, v),
            resume=v.name in unfinished, progress=progress, force=new)
        ran.append(v.name)
        collected[v.name] = metrics
        _report_variant(grid, v, metrics, rid)
    return ran, []


def _run_on_slurm(grid: Grid, todo: list[Variant], out_root: Path, parent_id: str, exp_id: str, unfinished: dict,
                  progress: bool, new: bool, collected: dict,
                  begin_s: float | None = None) -> tuple[list[str], list[str]]:
    """Each variant a Slurm job (``bench.orchestration.slurm.VariantJob``) logging into its run, created here first so a
    job that dies still has one: it ends FAILED with the job's stderr tail, and the others go on."""
    for v in todo:
        if v.config.seeds > 1 and slurm.tasks_per_node(v.config) > 1:
            raise BenchError(f"variant {v.name}: seeds > 1 with several GPUs per job is not supported under "
                             "--launcher slurm; use --seeds 1 or slurm.gpus_per_node 1")
    folder = Path(todo[0].config.slurm.folder).resolve() / f"sweep-{grid.name}" if todo else None
    jobs: dict[str, tuple[Variant, str, object]] = {}
    for v in todo:
        tags = _variant_tags(grid, v)
        log = RunLog(out_root / v.name)
        rid = unfinished.get(v.name) or log.create_run(
            exp_id, v.name, {naming.TAG_KIND: "variant", naming.TAG_VARIANT: v.name, naming.PARENT: parent_id,
                             **tags})
        if new:
            check_fresh_out(out_root / v.name, force=True)
        ex = slurm.executor(v.config, folder, f"svbench-{v.name}", slurm.tasks_per_node(v.config), begin_s)
        job = ex.submit(
            slurm.VariantJob(v.config.model_dump(mode="json"), str((out_root / v.name).resolve()), rid, parent_id,
                             exp_id, v.name, tags, resume=v.name in unfinished))
        log.log_batch(rid, tags={slurm.TAG_JOB: job.job_id, slurm.TAG_FOLDER: folder,
                                 slurm.TAG_TASKS: slurm.tasks_per_node(v.config) * v.config.slurm.nodes})
        jobs[str(job.job_id)] = (v, rid, job)
        logger.info(f"[sweep {grid.name}] {v.name}: Slurm job {job.job_id} ({v.config.model.name})")
    ran, failed = [], []

    def on_end(job, st) -> None:
        v, rid, _ = jobs[str(job.job_id)]
        if st.state == "COMPLETED":
            ran.append(v.name)
            collected[v.name] = job.results()[0] or {}
            _report_variant(grid, v, collected[v.name], rid)
            return
        failed.append(v.name)
        log = RunLog(out_root / v.name)
        log.log_text(rid, slurm.stderr_tail(job), "slurm_stderr_tail.txt")
        log.set_tag(rid, "slurm.state", st.state)
        log.set_terminated(rid, "FAILED")
        logger.info(f"[sweep {grid.name}] {v.name}: Slurm job {job.job_id} {st.state} ({st.error}); its run holds "
                    "slurm_stderr_tail.txt")

    slurm.wait([j for _, _, j in jobs.values()], on_end, todo[0].config.slurm.poll_s if todo else 1.0)
    return ran, failed
