"""One variant inside an MLflow run: ``run_variant`` with every write through the run's spool."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from bench.config import Config
from bench.models import spec_from_config
from bench.orchestration.variant import run_variant
from bench.tracking.artifacts import environment_tags, log_artifacts, log_datasets
from bench.tracking.callbacks import EpochLogger
from bench.tracking.naming import PARENT, TAG_KIND, TAG_OUT, TAG_VARIANT, result_metrics, result_tags, variant_params
from bench.tracking.runlog import RunLog, unlogged_params
from bench.tracking.spool import PENDING


def run_tracked(cfg: Config, out_dir: str | Path, run_id: str | None = None, parent_run_id: str | None = None,
                experiment_id: str | None = None, run_name: str | None = None, extra_tags: dict | None = None,
                resume: bool = False, progress: bool = True, meters=None, callbacks: list | None = None,
                force: bool = False):
    """``run_variant`` inside an MLflow run (a new one, or ``run_id`` continued); returns (run_id, result).
    ``callbacks`` are trainer callbacks beside the epoch logger; ``force`` replaces an earlier run's checkpoints.
    Every write goes through the spool of ``out_dir`` (``bench.tracking.spool``)."""
    spec = spec_from_config(cfg.model, n_mels=cfg.features.n_mels)
    log = RunLog(out_dir)
    tags = {TAG_KIND: "variant", TAG_VARIANT: run_name or cfg.name, TAG_OUT: str(Path(out_dir).resolve()),
            **environment_tags(), **(extra_tags or {})}
    if run_id is None:
        rid = log.create_run(experiment_id, run_name or cfg.name,
                             {**tags, **({PARENT: parent_run_id} if parent_run_id else {})})
        existing, has_inputs = {}, False
    else:
        rid = run_id
        log.reopen(rid)
        log.log_batch(rid, tags=tags)
        existing, has_inputs = logged_so_far(log, rid)
    log.log_batch(rid, params=unlogged_params(existing, variant_params(cfg, spec), rid))
    if not has_inputs:  # a resumed run has its datasets already
        log_datasets(log, rid, cfg)
    monitor = _system_metrics(rid) if cfg.tracking.system_metrics else None
    try:
        result = run_variant(cfg, out_dir, resume=resume, callbacks=[EpochLogger(log, rid), *(callbacks or [])],
                             progress=progress, meters=meters, force=force)
        if result is not None:
            log.log_batch(rid, metrics=result_metrics(result), tags=result_tags(result))
            log_artifacts(log, rid, result, cfg, Path(out_dir) / "model.pt", cfg.tracking.log_model)
    except KeyboardInterrupt:
        log.set_terminated(rid, "KILLED")
        raise
    except BaseException:
        log.set_terminated(rid, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    log.set_terminated(rid, "FINISHED")
    log.settle()
    return rid, result


def logged_so_far(log: RunLog, run_id: str) -> tuple[dict, bool]:
    """(params, has dataset inputs) of a run being continued: the server's, when it answers, and what the
    spool of its folder holds."""
    params = log.spool.logged_params(run_id)
    has_inputs = any(r.op == "log_inputs" and r.run == run_id for r in log.spool.records())
    if not run_id.startswith(PENDING):
        try:
            run = MlflowClient().get_run(run_id)
            params.update(run.data.params)
            has_inputs = has_inputs or bool(run.inputs.dataset_inputs)
        except Exception:  # noqa: BLE001 - unreachable: the params are logged again, with the same values
            pass
    return params, has_inputs


def _system_metrics(run_id: str):
    """MLflow's own system-metrics sampler for a run the server holds (it is not spooled: it stops at an
    outage and loses those samples)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    if run_id.startswith(PENDING):
        return None
    monitor = SystemMetricsMonitor(run_id, resume_logging=True)
    monitor.start()
    return monitor
