"""What evaluation and inference return: one trial list's verification metrics (``ListResult``) and one back
end's inference figures (``BackendResult``). ``bench.tracking.naming`` makes every MLflow key from these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.eval.latency import Latency


@dataclass
class ListResult:
    """One trial list scored by one model: NIST metrics (``bench.eval.metrics``), the speaker-bootstrap
    interval of each, and the score file when one was written."""
    eer_pct: float
    eer_threshold: float
    min_dcf_p01: float
    min_dcf_p01_threshold: float
    min_dcf_p05: float
    min_dcf_p05_threshold: float
    n_trials: int
    n_target: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (low, high)
    ci_level: float | None = None
    ci_resamples: int | None = None
    score_file: str | None = None

    def summary(self, name: str) -> str:
        return (f"{name}: EER {self.eer_pct:.2f}%  minDCF(0.01) {self.min_dcf_p01:.3f}  minDCF(0.05) "
                f"{self.min_dcf_p05:.3f}  ({self.n_trials} trials)")


@dataclass
class BackendResult:
    """One inference back end over the trial lists: the energy window of its embeddings and scoring, its
    throughput, per-list metrics and, for every back end but PyTorch fp32, the EER difference to fp32 with its
    paired bootstrap interval."""
    details: dict  # engine, device, precision / quantization mode, threads (bench.eval.deploy)
    model_size_mb: float
    time_s: float
    utt_per_s: float | None
    n_utts: int
    n_trials: int
    energy_labels: dict[str, str]  # energy.source, .estimated, .incomplete, .attribution of the window
    lists: dict[str, ListResult]
    energy_j: float | None = None
    energy_j_per_utt: float | None = None
    energy_j_per_1k_trials: float | None = None
    co2_g_per_1k_trials: float | None = None
    latency: Latency | None = None
    warmup_s: float | None = None  # the untimed warm-up pass before its windows (compiles land here)
    statistics_s: float | None = None  # its own training mean and AS-norm cohort (setup, outside the window)
    eer_diff_pct: dict[str, float] = field(default_factory=dict)
    eer_diff_ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def eer_pct(self) -> dict[str, float]:
        """Trial list -> EER."""
        return {name: r.eer_pct for name, r in self.lists.items()}

    def as_row(self) -> dict:
        """The flat JSON row of ``svbench infer --json`` and ``result.json``: the figures, the energy labels and
        latency figures at the top level, ``metrics`` per trial list, ``backend`` details."""
        row = asdict(self)
        labels, latency = row.pop("energy_labels"), row.pop("latency") or {}
        row["metrics"], row["backend"] = row.pop("lists"), row.pop("details")
        return {**row, **labels, **latency}
