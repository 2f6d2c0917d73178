"""The study: its storage, sampler and MLflow parent run, the search space, the objectives and their keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import sqlalchemy

from bench.config import Config, apply_overrides, build_config, flat_params
from bench.data.manifest import data_root
from bench.data.trials import AVERAGE, default_trial_list, find_trial_lists
from bench.errors import BenchError
from bench.eval.scoring import average_lists
from bench.tracking import naming, store

STUDY_VARIANT_LAYOUTS = [(2, 2, 2, 2), (3, 4, 6, 3), (2, 6, 6, 2), (2, 10, 2, 2), (10, 2, 2, 2), (2, 2, 2, 10)]
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_COST = "search_cost_runs"  # one entry per run of the study: what the machine drew during it
ATTR_RUN = "search_run"  # on a trial: the run of ``svbench search`` that ran it
ATTR_SPENT_SO_FAR = "spent_so_far"  # on a trial: its cost entry up to its last finished epoch
ATTR_TRAIN_CO2 = "train_co2_g"  # on a completed trial: its training's gCO2e, at the hours it ran
ATTR_WORKER = "worker_entry"  # on a trial run by a Slurm worker: the token of that worker attempt's cost entry
TAG_STUDY_PARENT = "svbench.study_parent"  # on the run of a continued study's later `mlflow run`


# ------------------------------------------------------------------ storage and study
def storage_url(cfg: Config, out_root: str | Path = "runs/search") -> str:
    return cfg.search.storage or str(Path(out_root) / f"{cfg.search.study_name}.journal")


def make_storage(url: str, heartbeat_s: int = 30):
    if "://" in url:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                                                  failed_trial_callback=None)
        except Exception as exc:
            raise BenchError(f"cannot open Optuna storage {url} ({str(exc).splitlines()[0][:120]})") from None
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_sampler(name: str, seed: int):
    # constraints_func is what optuna-dashboard 0.21 and study.best_trials read (deprecated in Optuna 5, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*constraints_func", category=FutureWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=_constraints)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constraints_func=_constraints)
        return optuna.samplers.GPSampler(seed=seed, constraints_func=_constraints)


def load_study(cfg: Config, storage, worker_index: int = 0) -> optuna.Study:
    """The study, with the sampler of worker ``worker_index`` (seed ``search.seed`` + index: reproducible)."""
    return optuna.load_study(study_name=cfg.search.study_name, storage=storage,
                             sampler=make_sampler(cfg.search.sampler, cfg.search.seed + worker_index))


def create_study(cfg: Config, storage, outer_run: str | None = None) -> optuna.Study:
    """Create (or continue) the study and its MLflow parent run; returns the study.

    The parent is ``outer_run`` (the run ``mlflow run`` created) when the study is new, else a run created in
    ``tracking.experiment``. A continued study keeps its first parent; an ``outer_run`` then links to it by the
    tag ``svbench.study_parent``."""
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Using an existing study" line
    study = optuna.create_study(study_name=cfg.search.study_name, storage=storage, load_if_exists=True,
                                directions=["minimize", "minimize"],
                                sampler=make_sampler(cfg.search.sampler, cfg.search.seed))
    if ATTR_PARENT in study.user_attrs:
        _check_same_search(cfg, study)  # before anything of the study is changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objective_keys(cfg)))
    client = MlflowClient()
    tags = {naming.TAG_KIND: "study", "optuna.study": cfg.search.study_name, **selection_tags(cfg)}
    if ATTR_PARENT in study.user_attrs:
        if outer_run:
            client.set_tag(outer_run, naming.TAG_KIND, "search")
            client.set_tag(outer_run, "optuna.study", cfg.search.study_name)
            client.set_tag(outer_run, TAG_STUDY_PARENT, study.user_attrs[ATTR_PARENT])
        return study
    if outer_run:
        exp_id, parent = store.experiment_of(outer_run), outer_run
        for k, v in tags.items():
            client.set_tag(parent, k, v)
    else:
        exp_id = store.set_experiment(cfg.tracking.experiment)
        parent = client.create_run(exp_id, run_name=f"study-{cfg.search.study_name}", tags=tags).info.run_id
    store.log_new_params(parent, search_params(cfg))
    study.set_user_attr(ATTR_PARENT, parent)
    study.set_user_attr(ATTR_EXPERIMENT, exp_id)
    study.set_user_attr("budgets", _budgets(cfg))
    study.set_user_attr("objective", cfg.search.objective)
    study.set_user_attr("select_on", cfg.search.select_on)
    if cfg.search.enqueue_study_variants:
        for layout in STUDY_VARIANT_LAYOUTS:
            params = _layout_params(cfg, layout)
            if params is not None:
                study.enqueue_trial(params, skip_if_exists=True)
    return study


def _budgets(cfg: Config) -> dict:
    return {"energy_j": cfg.search.energy_budget_j, "carbon_g": cfg.search.carbon_budget_g,
            "max_params_m": cfg.search.max_params_m}


def _check_same_search(cfg: Config, study: optuna.Study) -> None:
    """A continued study keeps its objective and budgets: mixing joules and grams in one front, or trials
    judged against other budgets, is an error before anything runs."""
    before = {"objective": study.user_attrs.get("objective", cfg.search.objective),
              "budgets": study.user_attrs.get("budgets", _budgets(cfg)),
              "select_on": study.user_attrs.get("select_on", "test")}  # studies from before the choice: test
    now = {"objective": cfg.search.objective, "budgets": _budgets(cfg), "select_on": cfg.search.select_on}
    if before != now:
        raise BenchError(f"study '{cfg.search.study_name}' was run with {before}, not {now}; continue it with the "
                         "same --objective and budgets, or start another study with --study NAME")


SELECTED_ON_TEST = "selected on the test list: EERs are optimistic"
VAL_EER_KEY = "val/eer_pct"
ATTR_TEST_EER = "test_eer_pct"  # a completed trial's EER on the reported test list (the seed mean)
VAL_FINAL_EER_KEY = "val/final_eer_pct"  # a completed trial's last validation EER, the mean over its seeds


def check_selection(cfg: Config) -> None:
    """Selecting on validation (the default) needs a validation hold-out: a one-line error before anything runs."""
    if cfg.search.select_on == "validation" and not cfg.data.val_speakers:
        raise BenchError("svbench search selects models on a validation list held out of the training speakers: "
                         "set data.val_speakers (e.g. 0.1, or --val-speakers 0.1), or --select-on test to select on "
                         "the test list (its EERs are then optimistic)")


def selection_tags(cfg: Config) -> dict[str, str]:
    """The study parent's label of what its front was chosen on."""
    tags = {"search.select_on": cfg.search.select_on}
    if cfg.search.select_on == "test":
        tags["search.selection_note"] = SELECTED_ON_TEST
    return tags


def reported_eer_key(cfg: Config) -> str:
    """The reported test list's EER key (``search.trial_list``, or the first evaluated list)."""
    root = data_root(cfg.data.root)
    name = cfg.search.trial_list or default_trial_list(root, cfg.data.trials)
    if name == AVERAGE and not average_lists(cfg, [p.stem for p in find_trial_lists(root, cfg.data.trials)]):
        raise BenchError("search.trial_list avg needs two or more evaluated trial lists (data.trials, or the lists "
                         f"under {root}/trials); add one with `svbench data add-eval` or name one list")
    return f"eer_pct/{name}"


def objective_keys(cfg: Config) -> tuple[str, str]:
    """The two objectives Optuna minimises, under their MLflow metric keys (also the study's metric names, which
    optuna-dashboard shows): the final validation EER (or, with ``search.select_on test``, the test list's), and
    the training energy or carbon."""
    second = "train/energy_j" if cfg.search.objective == "energy" else "train/co2_g"
    first = VAL_EER_KEY if cfg.search.select_on == "validation" else reported_eer_key(cfg)
    return first, second


def search_params(cfg: Config) -> dict:
    """What defines the search, as MLflow params of the run that holds the study."""
    return {k: ("" if v is None else v) for k, v in flat_params(cfg).items()
            if k.startswith(("search.", "data.", "train.epochs", "seeds", "model.name"))}


def _layout_params(cfg: Config, layout) -> dict | None:
    s = cfg.search
    if any(b < lo or b > hi for b, lo, hi in zip(layout, s.stage_blocks_min, s.stage_blocks_max)):
        return None
    params = {f"blocks_stage{i + 1}": b for i, b in enumerate(layout)}
    params["width_mult"] = 1.0 if 1.0 in s.width_mults else s.width_mults[-1]
    if len(s.blocks) > 1:
        params["block"] = s.blocks[-1]
    return params


# ------------------------------------------------------------------ one trial
def suggest_overrides(trial: optuna.Trial, cfg: Config) -> dict:
    s = cfg.search
    if len(s.stage_blocks_min) != len(s.stage_blocks_max):
        raise BenchError("search.stage_blocks_min and stage_blocks_max need one bound per stage")
    stages = [trial.suggest_int(f"blocks_stage{i + 1}", lo, hi)
              for i, (lo, hi) in enumerate(zip(s.stage_blocks_min, s.stage_blocks_max))]
    over = {"model.stages": "-".join(map(str, stages)),
            "model.width_mult": trial.suggest_categorical("width_mult", s.width_mults)}
    if len(s.blocks) > 1:
        over["model.block"] = trial.suggest_categorical("block", s.blocks)
    elif s.blocks:
        over["model.block"] = s.blocks[0]
    if s.embed_dims:
        over["model.embed_dim"] = trial.suggest_categorical("embed_dim", s.embed_dims)
    return over | hardware_overrides(trial, cfg)


def longest_trial_config(cfg: Config) -> Config:
    """The trial a carbon-aware plan forecasts every trial as: the deepest stages, widest width and largest
    embedding, at the smallest batch and lowest power limit searched (the longest to train)."""
    s = cfg.search
    fixed = {f"blocks_stage{i + 1}": hi for i, hi in enumerate(s.stage_blocks_max)} | {"width_mult": max(s.width_mults)}
    if len(s.blocks) > 1:
        fixed["block"] = s.blocks[-1]
    fixed |= {"embed_dim": max(s.embed_dims)} if s.embed_dims else {}
    fixed |= {"batch_size": min(s.batch_sizes)} if s.batch_sizes else {}
    fixed |= {"gpu_power_limit_w": min(s.power_limits_w)} if s.power_limits_w else {}
    over = suggest_overrides(optuna.trial.FixedTrial(fixed), cfg)
    return build_config(apply_overrides(cfg.model_dump(mode="json"), {**over, "name": "longest-trial"}))


def hardware_overrides(trial: optuna.Trial, cfg: Config) -> dict:
    """The knobs that change the energy of the same model: the batch size, with the learning rate scaled by the
    linear rule (``train.lr_reference_batch``: the preset's batch), and the GPU power limit."""
    s, over = cfg.search, {}
    if s.batch_sizes:
        batch = trial.suggest_categorical("batch_size", s.batch_sizes)
        over |= {"train.batch_size": batch,  # train.lr stays the preset's, tuned at its batch size
                 "train.lr_reference_batch": cfg.train.lr_reference_batch or cfg.train.batch_size}
    if s.power_limits_w:
        over["train.gpu_power_limit_w"] = trial.suggest_categorical("gpu_power_limit_w", s.power_limits_w)
    return over


STARTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL,
           optuna.trial.TrialState.RUNNING)  # trials that count toward search.n_trials (not enqueued ones)


def _storage_exists(url: str) -> bool:
    """Whether ``url`` holds an Optuna storage already (a journal file; a database with Optuna's tables)."""
    if "://" not in url:
        return Path(url).is_file()
    db = sqlalchemy.engine.make_url(url)
    if db.get_backend_name() == "sqlite" and not (db.database and Path(db.database).is_file()):
        return False
    engine = sqlalchemy.create_engine(db)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise BenchError(f"cannot open Optuna storage {url} ({str(exc).splitlines()[0][:120]})") from None
    finally:
        engine.dispose()


def started_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=STARTED))


def started_in_storage(cfg: Config, url: str) -> int:
    """Trials the search's study has started in ``url`` already (0 where there is no such study yet), read without
    making a journal file, a database or Optuna's tables in one: what a plan of the work left needs. A study run
    with another objective, budgets or selection is the one-line error the run itself would give."""
    if not _storage_exists(url):
        return 0
    storage = make_storage(url, cfg.search.heartbeat_s)
    if cfg.search.study_name not in optuna.get_all_study_names(storage):
        return 0
    study = load_study(cfg, storage)
    if ATTR_PARENT in study.user_attrs:
        _check_same_search(cfg, study)
    return started_trials(study)


def study_folder(cfg: Config, out_root: str | Path) -> Path:
    """Where a study's trials write (``trial-<n>``), and the spool of its parent run."""
    return Path(out_root) / cfg.search.study_name


