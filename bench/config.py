"""Typed configuration: YAML presets in ``bench/presets`` plus dotted CLI overrides.

A config is built as ``load_config(preset, overrides)`` where ``preset`` is a
preset name (``demo``, ``tiny``, ``voxceleb``) or a YAML file, and
``overrides`` is a list such as ``["--train.epochs", "3", "--data.root=/x"]``.
Unknown keys and wrong types raise :class:`bench.errors.BenchError` with one
line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.errors import BenchError
from bench.overrides import apply_overrides, config_keys, parse_overrides, unknown_key_message

PRESET_DIR = Path(__file__).parent / "presets"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


INFER_BACKENDS = ("fp32", "bf16", "fp16", "onnx-fp32", "onnx-int8")  # PyTorch precisions, then ONNX Runtime


class AugmentConfig(_Section):
    musan_dir: Optional[str] = None
    rir_dir: Optional[str] = None
    prob: float = Field(0.6, ge=0.0, le=1.0, description="probability of adding noise or reverb to a crop")
    snr_music_db: tuple[float, float] = (5.0, 15.0)
    snr_speech_db: tuple[float, float] = (13.0, 20.0)
    snr_noise_db: tuple[float, float] = (0.0, 15.0)
    speed_perturb: bool = False


class DataConfig(_Section):
    root: str = "data/demo"
    trials: list[str] = Field(default_factory=list, description="trial list names under root/trials; empty = all")
    crop_frames: int = Field(200, ge=10)
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    val_speakers: float = Field(0.0, ge=0.0, lt=0.5, description="share of the training speakers held out as a "
                                                                  "validation list (0 = none); never a test list")
    val_speakers_max: int = Field(100, ge=2, description="cap on the held-out validation speakers")


class FeatureConfig(_Section):
    n_mels: int = Field(80, ge=8, le=256)
    sample_rate: int = 16000
    frame_length_ms: float = Field(25.0, gt=0)
    frame_shift_ms: float = Field(10.0, gt=0)


class ModelConfig(_Section):
    """A named preset plus optional field overrides (any ``ResNetSpec`` field)."""

    name: str = "tiny-ResNet-50-D"
    block: Optional[str] = None
    stages: Optional[str] = None
    channels: Optional[str] = None
    width_mult: Optional[float] = Field(None, gt=0)
    se_stages: Optional[str] = None
    activation: Optional[str] = None
    pooling: Optional[str] = None
    embed_dim: Optional[int] = Field(None, ge=1)
    stem_channels: Optional[int] = Field(None, ge=1)
    stem_stride_freq: Optional[int] = Field(None, ge=1, le=4)

    @field_validator("stages", "channels", "se_stages", mode="before")
    @classmethod
    def _dash_list(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return "-".join(str(int(x)) for x in v)
        if isinstance(v, int):
            return str(v)
        return v


class HeadConfig(_Section):
    type: Literal["aam", "am"] = "aam"
    scale: float = Field(30.0, gt=0)
    margin: float = Field(0.2, ge=0.0, lt=1.0)
    margin_warmup_epochs: float = Field(0.0, ge=0.0, description="epochs before the margin ramp starts")
    margin_ramp_epochs: float = Field(0.0, ge=0.0, description="epochs to ramp the margin 0 -> margin")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_reference_batch: Optional[int] = Field(None, ge=1, description="the global batch train.lr is tuned for: set, "
                                              "the learning rate is lr x batch_size x ranks / this (linear rule)")
    final_lr: float = Field(5e-5, gt=0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(2e-4, ge=0.0)
    grad_clip: float = Field(0.0, ge=0.0, description="max grad norm; 0 disables")
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    seed: int = 42
    device: str = "auto"
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")
    checkpoint_every_steps: int = Field(0, ge=0, description="0 = only at epoch ends")
    average_last: int = Field(1, ge=1, description="average the last K epoch checkpoints")
    max_steps: int = Field(0, ge=0, description="stop after this many steps; 0 = no limit")
    gpu_power_limit_w: Optional[float] = Field(None, gt=0, description="cap this process's GPUs at this many watts "
                                               "while it trains and probes (restored after; needs permission)")
    val_every_epochs: int = Field(1, ge=1, description="validation EER every K epochs (with data.val_speakers)")
    eer_targets: list[Annotated[float, Field(gt=0, lt=100)]] = Field(
        default_factory=list, description="validation EERs (%) whose training energy and time to reach are logged")
    stop_gain_pct_per_kj: Optional[float] = Field(None, gt=0, description="stop once the validation EER gain per "
                                                                          "kJ over the last stop_window_epochs falls "
                                                                          "below this; unset = off")
    stop_window_epochs: int = Field(2, ge=1, description="epochs the stop rule's gain is measured over")

    def scaled_lr(self, world: int = 1) -> float:
        """The peak learning rate: ``lr``, scaled linearly to the global batch (``batch_size`` per rank x ``world``
        ranks) when ``lr_reference_batch`` is set (Goyal et al., 2017: k times the minibatch summed over all
        workers, k times the learning rate)."""
        if not self.lr_reference_batch:
            return self.lr
        return self.lr * self.batch_size * world / self.lr_reference_batch


class EvalConfig(_Section):
    batch_frames: int = Field(60000, ge=100, description="frames per evaluation batch (length bucketing)")
    subtract_mean: bool = True
    stats_max_utts: int = Field(2000, ge=10, description="training utterances for the mean embedding")
    cohort_utts_per_speaker: int = Field(3, ge=1, description="AS-norm cohort: utterances per training speaker mean")
    cohort_speakers: int = Field(6000, ge=1, description="AS-norm cohort: most training speakers (seeded choice)")
    as_norm: bool = False
    as_norm_top_n: int = Field(100, ge=1)
    length_tolerance: float = Field(0.02, ge=0.0, le=0.5, description="most of an utterance's frames cut to batch it")
    batch_utts: int = Field(4, ge=1, description="rows of an evaluation batch at most (fixed per length)")
    channels_last: bool = Field(True, description="channels-last model for embedding extraction (see docs/"
                                                  "PERFORMANCE.md)")
    compile: bool = Field(False, description="torch.compile the extraction model (dynamic shapes): a one-off compile "
                                             "of tens of seconds per shape range, worth it for long trial lists")
    bootstrap_resamples: int = Field(1000, ge=0, description="speaker-bootstrap resamples for EER/minDCF intervals; 0 "
                                                             "= off")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    latency: bool = Field(True, description="measure per-utterance latency, throughput and real-time factor")
    latency_samples: int = Field(200, ge=10, description="timed batch-1 calls behind the latency percentiles; fewer "
                                                         "than 200 marks the p95 as low-count")
    throughput_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 8, 32, 64], min_length=1,
        description="batch sizes whose throughput is timed (crops of 3 s); the best is logged")
    average_lists: list[str] = Field(default_factory=list, description="trial lists whose macro average is logged "
                                                                      "as eer_pct/avg (the study's headline); "
                                                                      "empty = every evaluated list, when 2 or more")
    infer_repeats: int = Field(2, ge=1, description="passes over two or more back ends in alternating order (A B, "
                                                    "B A): figures are the mean over passes")
    infer_precisions: list[Literal[INFER_BACKENDS]] = Field(
        default_factory=lambda: ["fp32"], description="back ends whose inference energy is measured")
    threads: int = Field(0, ge=0, description="intra-op threads of inference, PyTorch and ONNX Runtime alike; 0 = "
                                              "torch's default (all cores)")
    int8_calibration_utts: int = Field(64, ge=1, description="training utterances that calibrate static int8")


class EnergyConfig(_Section):
    meters: list[str] = Field(default_factory=lambda: ["auto"], description="zeus, node, estimate or auto")
    node_command: list[str] = Field(default_factory=list, description="argv printing node watts")
    node_regex: str = r"([0-9]+(?:\.[0-9]+)?)\s*W"
    node_period_s: float = Field(1.0, gt=0)
    node_max_gap_s: float = Field(60.0, ge=0, description="failed node reads bridged before 'incomplete', s")
    node_gpu_command: list[str] = Field(default_factory=list, description="argv printing each node GPU's watts")
    node_gpu_regex: str = r"([0-9]+(?:\.[0-9]+)?)\s*W"
    cgroup: str = Field("auto", description="job CPU time: auto (a Slurm job's cgroup v2), none, or a folder")
    cpu_w_per_core: float = Field(10.0, gt=0)
    dram_w_per_gb: float = Field(0.375, ge=0)
    idle_baseline_s: float = Field(0.0, ge=0)
    idle_profile: Optional[str] = Field(None, description="idle powers from `svbench energy idle` (shared nodes)")
    share_period_s: float = Field(1.0, gt=0, description="sampling interval of a shared machine's CPU-time share, s")
    pue: float = Field(1.0, ge=1.0)
    region: Optional[str] = Field(None, description="ISO alpha-3 grid, e.g. FRA (unset: FRA, said once)")
    intensity_csv: Optional[str] = None
    intensity_factor: Literal["lifecycle", "direct"] = Field("lifecycle", description="the factor type of the CSV")
    electricitymaps_location: Optional[tuple[float, float]] = Field(
        None, description="(lat, lon): charge ElectricityMaps' history there, and plan on its forecast "
                          "(ELECTRICITYMAPS_TOKEN; network, off by default)")
    electricitymaps_zone: Optional[str] = Field(
        None, description="zone key (FR, DE, US-CAL-CISO): charge its history, and --carbon-aware plans on its "
                          "forecast (ELECTRICITYMAPS_TOKEN; network, off by default)")
    forecast: bool = Field(False, description="probe J/step before training and record the forecast error")
    probe_steps: int = Field(5, ge=1)
    probe_warmup_steps: int = Field(2, ge=0)


class SearchConfig(_Section):
    """Optuna search over the ResNet family (bounds per family live in the preset)."""

    study_name: str = "svbench-search"
    storage: Optional[str] = Field(None, description="RDB URL (postgresql+psycopg2://..., sqlite:///...) or journal "
                                                     "file; default runs/search/<study>.journal")
    n_trials: int = Field(8, ge=1)
    objective: Literal["energy", "carbon"] = "energy"
    trial_list: Optional[str] = Field(None, description="the test list whose EER is reported; default: the first")
    select_on: Literal["validation", "test"] = Field("validation", description="EER the search minimises: "
                                                                              "the hold-out's or the test list's")
    sampler: Literal["nsga2", "tpe", "gp"] = "nsga2"
    seed: int = 0
    stage_blocks_min: list[int] = Field(default_factory=lambda: [1, 1, 1, 1])
    stage_blocks_max: list[int] = Field(default_factory=lambda: [3, 4, 6, 3])
    width_mults: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0])
    blocks: list[Literal["basic", "bottleneck", "preact2", "preact3"]] = Field(default_factory=lambda: ["preact3"])
    embed_dims: list[int] = Field(default_factory=list, description="empty: keep the preset's embedding size")
    batch_sizes: list[int] = Field(default_factory=list, description="searched beside depth and width, train.lr "
                                                                     "scaled linearly; empty: the preset's")
    power_limits_w: list[float] = Field(default_factory=list, description="GPU power limits searched "
                                                                          "(train.gpu_power_limit_w); empty: none")
    energy_budget_j: Optional[float] = Field(None, gt=0)
    carbon_budget_g: Optional[float] = Field(None, gt=0)
    max_params_m: Optional[float] = Field(None, gt=0)
    forecast_pruning: bool = True
    curve_pruning: bool = Field(False, description="prune a trial whose validation curve, extrapolated to its last "
                                                   "epoch, is dominated by the front even at its optimistic end "
                                                   "(needs data.val_speakers)")
    curve_min_epochs: int = Field(2, ge=2, description="validated epochs before a trial's curve is judged")
    curve_confidence: float = Field(0.9, gt=0.5, lt=1.0, description="one-sided confidence of the curve's "
                                                                     "optimistic end")
    prune_margin: float = Field(0.1, ge=0.0, description="prune when the forecast exceeds the budget by this fraction")
    enqueue_study_variants: bool = False
    heartbeat_s: int = Field(30, ge=1, description="RDB storages: trial heartbeat interval")


class SlurmConfig(_Section):
    """``--launcher slurm``: each sweep variant a job, each search worker a task of a job array (submitit)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node; a variant runs one DDP task per GPU")
    tasks_per_node: Optional[int] = Field(None, ge=1, description="DDP tasks (ranks) per node; default one per "
                                          "GPU, or 1 (set it for CPU ranks with gloo)")
    exclusive: bool = Field(False, description="submit with --exclusive: the job holds whole nodes and is given "
                            "all of their energy; otherwise it shares them and is given its CPU-time share")
    cpus_per_task: Optional[int] = Field(None, ge=1)
    time_min: int = Field(60, ge=1, description="wall-clock limit per job, minutes (requeued and resumed past it)")
    mem_gb: Optional[float] = Field(None, gt=0)
    setup: list[str] = Field(default_factory=list, description="shell lines before the job starts (module load ...)")
    max_parallel: Optional[int] = Field(None, ge=1, description="array throttle: jobs running at once")
    folder: str = Field("runs/slurm", description="submitit's job folders (scripts, logs, results)")
    poll_s: float = Field(5.0, gt=0, description="how often the submitting process checks its jobs")


class TrackingConfig(_Section):
    experiment: str = "sv-energy-bench"
    log_model: bool = True
    system_metrics: bool = True
    # at a command's end, how long to wait for a tracking server that is down before leaving the rest spooled
    outage_wait_s: float = Field(180.0, ge=0)


class Config(_Section):
    name: str = "run"
    seeds: int = Field(1, ge=1, le=100, description="repeat each variant over this many seeds (train.seed, +1, ...)")
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BenchError(f"config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax") from None
    except OSError as exc:
        raise BenchError(f"cannot read config file {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_preset_dict(preset: str) -> dict:
    """Raw dict of a preset name or a YAML file path."""
    path = Path(preset)
    if preset.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise BenchError(f"config file {preset} does not exist; give a preset name "
                             f"({', '.join(list_presets())}) or a YAML path")
        return _read_yaml(path)
    candidate = PRESET_DIR / f"{preset}.yaml"
    if not candidate.is_file():
        raise BenchError(f"unknown preset '{preset}'; choose one of: {', '.join(list_presets())} (or a YAML file)")
    return _read_yaml(candidate)


def empty_as_none(type_):
    """An argparse ``type`` that reads an empty value as unset (None): ``mlflow run -P budget=`` leaves it out."""
    def convert(text: str):
        return None if text.strip() == "" else type_(text)

    convert.__name__ = type_.__name__  # argparse names the type in its error message
    return convert


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return unknown_key_message(loc, config_keys(Config))
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"config error: {loc}: {first['msg']} (got {shown})"


def build_config(data: dict) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise BenchError(_format_validation_error(err)) from None
    needs_val = [k for k, on in (("train.eer_targets", cfg.train.eer_targets),
                                 ("train.stop_gain_pct_per_kj", cfg.train.stop_gain_pct_per_kj),
                                 ("search.curve_pruning", cfg.search.curve_pruning)) if on]
    if needs_val and not cfg.data.val_speakers:
        raise BenchError(f"{needs_val[0]} needs a validation list: set data.val_speakers (e.g. 0.05), or turn "
                         f"{needs_val[0]} off")
    return cfg


def load_config(preset: str = "demo", overrides: list[str] | dict | None = None) -> Config:
    """Load a preset (or YAML file) and apply dotted overrides; validated."""
    base = load_preset_dict(preset)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return build_config(apply_overrides(base, overrides or {}))


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat_params(cfg: Config) -> dict[str, Any]:
    """Flat ``section.key -> value`` view of a config (lists joined with '-' or ',')."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, (list, tuple)):
            out[prefix] = ",".join(str(x) for x in node)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
