"""Which differences between variants are real: paired comparisons, checked pairing, Holm-corrected verdicts.

* **Pairing checked.** Two variants are compared on a trial list only when both were scored on the same list
  content (``TrialList.digest``: labels, enrolment and test ids, read back from their score files) and on the
  same data root (the logged ``data.root``); otherwise the pair is refused and the reason is shown. A list
  reduced by ``data add-eval --skip-missing`` carries its dropped-trial count (``data.skipped_trials.<list>``)
  into the digest, so lists reduced differently never pair.
* **Paired bootstrap.** Both variants' metrics on the same speaker resamples (``bench.eval.statistics``); a
  variant with several seeds by the two-level bootstrap (seeds, then speakers).
* **Holm.** A report judges all its pairs at once: the pairs of its table are one family, their two-sided
  bootstrap p-values are Holm-adjusted, and "A better than B" needs the adjusted p below 1 - level. So with
  ten truly equal variants the chance that any of the 45 verdicts says "better" stays at most 5 %.
* **Scope.** When either variant has one seed, the verdict is about these trained models, not the variants:
  it says "(these trained models, 1 seed)".
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd

from bench.data.trials import AVERAGE, read_scores
from bench.errors import BenchError
from bench.eval.statistics import ListBootstrap, bootstrap_list, holm, paired_difference, seed_bootstrap
from bench.tracking import artifacts, naming, store

UNDECIDED = "not distinguishable at this trial count"


@dataclass
class Scored:
    """A variant on one trial list, ready to be compared: its bootstrap, the list's content digest and its
    data root."""
    name: str
    bootstrap: ListBootstrap
    digest: str
    data_root: str


def scored_variant(name: str, run_id: str, seeds: float, trials: str, data_root: str,
                   n_resamples: int) -> Scored | str:
    """A variant's scores on ``trials`` (over its seed runs when it has several), or why it cannot be compared."""
    if trials == AVERAGE:
        return f"{name}: '{AVERAGE}' averages several lists; its pairs are compared per list (--trials NAME)"
    runs = [run_id]
    if seeds == seeds and seeds > 1:
        runs = [r.info.run_id for r in store.find_child_runs(run_id, store.experiment_of(run_id))
                if r.data.tags.get(naming.TAG_KIND) == "seed"]
    per_seed, digests = [], set()
    for rid in runs:
        path = artifacts.run_scores(rid, only=trials).get(trials)
        if path is None:
            return f"{name} logged no score file for '{trials}'"
        t, scores = read_scores(path, trials)
        t.skipped_trials = int(mlflow.get_run(rid).data.params.get(f"{artifacts.SKIPPED_PARAM}.{trials}", 0))
        digests.add(t.digest())
        per_seed.append(bootstrap_list(t, scores, n_resamples))
    if not per_seed:
        return f"{name} has no seed runs"
    if len(digests) > 1:
        return f"{name}'s seeds were scored on different contents of '{trials}'"
    return Scored(name, seed_bootstrap(per_seed, name), digests.pop(), data_root)


def pairing_refusal(a: Scored, b: Scored, trials: str) -> str | None:
    """Why A and B cannot be compared on ``trials``, or None."""
    if a.digest != b.digest:
        return (f"trial list '{trials}' differs in content between {a.name} ({a.digest[:10]}) and {b.name} "
                f"({b.digest[:10]})")
    if a.data_root != b.data_root:
        return f"{a.name} and {b.name} read different data roots ({a.data_root} and {b.data_root})"
    return None


def verdict(value: float, adjusted_p: float, alpha: float, seeds: int) -> str:
    if not adjusted_p < alpha:
        return UNDECIDED
    scope = " (these trained models, 1 seed)" if seeds <= 1 else f" (over {seeds} seeds each, at least)"
    return ("A better than B" if value < 0 else "B better than A") + scope


@dataclass
class Comparisons:
    """The report's pairs (A the lower EER), the pairs refused with their reason, and the family judged."""
    table: pd.DataFrame
    refused: list[str]
    level: float
    trials: str
    scored: list[Scored]


def compare_variants(variants: list[Scored | str], trials: str, level: float = 0.95) -> Comparisons:
    """Every pair of ``variants`` (sorted by EER beforehand): A - B of EER and minDCF(0.01) with the paired
    interval, the EER's bootstrap p, its Holm-adjusted p over the pairs compared, and the verdict."""
    refused = [v for v in variants if isinstance(v, str)]
    scored = [v for v in variants if not isinstance(v, str)]
    rows, diffs = [], []
    for i, a in enumerate(scored):
        for b in scored[i + 1:]:
            why = pairing_refusal(a, b, trials)
            if why:
                refused.append(f"{a.name} vs {b.name}: {why}")
                continue
            d = paired_difference(a.bootstrap.observed, b.bootstrap.observed, a.bootstrap.resampled,
                                  b.bootstrap.resampled, level)
            diffs.append((d["eer_pct"], min(a.bootstrap.seeds, b.bootstrap.seeds)))
            e, c = d["eer_pct"], d["min_dcf_p01"]
            rows.append({"A": a.name, "B": b.name,
                         "eer_diff_pct": f"{e.value:+.2f} [{e.interval.low:+.2f}, {e.interval.high:+.2f}]",
                         "min_dcf_p01_diff": f"{c.value:+.3f} [{c.interval.low:+.3f}, {c.interval.high:+.3f}]",
                         "p": e.p_value})
    adjusted = holm([r["p"] for r in rows])
    for r, p, (e, seeds) in zip(rows, adjusted, diffs):
        r["verdict"] = verdict(e.value, p, 1 - level, seeds)
        floor = 2.0 / e.interval.n_resamples  # p is resolved in steps of 2 / resamples
        r["p"], r["p_holm"] = (f"{x:.3g}" if x > 0 else f"<{bound:.2g}"
                               for x, bound in ((r["p"], floor), (p, floor * len(rows))))
    return Comparisons(pd.DataFrame(rows, columns=["A", "B", "eer_diff_pct", "min_dcf_p01_diff", "p", "p_holm",
                                                   "verdict"]), refused, level, trials, scored)


def report_variants(t: pd.DataFrame, trials: str, n_resamples: int) -> list[Scored | str]:
    """The report table's variants on ``trials``, lowest EER first."""
    return [scored_variant(r["variant"], r["run_id"], r["seeds"], trials, r["data_root"], n_resamples)
            for _, r in t.sort_values("eer_pct").iterrows()]


def comparisons_markdown(c: Comparisons) -> str:
    """The report's section: what is tested, the family Holm corrects over, the table, the refused pairs."""
    lines = []
    if c.table.empty:
        lines.append("Fewer than two variants can be compared on this trial list, so no pair can be judged.")
    else:
        lines += [f"A - B with its {c.level:.0%} interval (uncorrected) from a paired bootstrap over speakers, and "
                  "over seeds where a variant has several: both variants are scored on the same resampled "
                  "speakers, so what their errors share cancels. `p` is the two-sided bootstrap p-value of the "
                  f"EER difference; **family: the {len(c.table)} pair(s) of this table** (EER on `{c.trials}`), "
                  "corrected by Holm's step-down method (`p_holm`). The verdict is \"A better than B\" when "
                  f"`p_holm` < {1 - c.level:.2g}, else \"{UNDECIDED}\"; with one seed it speaks of these trained "
                  "models, not of the variants.", "", c.table.to_markdown(index=False, floatfmt=".3g")]
    if c.refused:
        lines += ["", "Not compared (pairing refused):", ""] + [f"- {why}" for why in c.refused]
    return "\n".join(lines)


def compare_runs(run_a: str, run_b: str, trials: str | None, n_resamples: int, level: float) -> Comparisons:
    """Two MLflow runs by id (any experiments): their paired comparison, or a one-line error saying why the
    pair is refused."""
    store.setup_tracking()
    scored = []
    for ref in (run_a, run_b):
        run = store.find_run(ref)
        rid = run.info.run_id
        lists = artifacts.score_lists(rid)
        name = trials or (lists[0] if lists else None)
        if name is None:
            raise BenchError(f"run {rid} logged no score files; compare runs of `svbench train`, sweeps or searches")
        seeds = float(run.data.metrics.get("seeds", 1))
        got = scored_variant(f"{run.data.tags.get(naming.TAG_VARIANT, 'run')} ({rid[:8]})", rid, seeds, name,
                             run.data.params.get("data.root", ""), n_resamples)
        if isinstance(got, str):
            raise BenchError(f"cannot compare: {got}")
        scored.append(got)
        trials = name
    why = pairing_refusal(scored[0], scored[1], trials)
    if why:
        raise BenchError(f"refusing to compare: {why}; compare runs scored on the same list and data root")
    return compare_variants(scored, trials, level)
