import time

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from bench.errors import BenchError
from bench.eval.metrics import det_points, error_rates, verification_metrics


def sklearn_eer(scores, labels):
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return (fpr[i] + fnr[i]) / 2


def test_perfect_separation():
    m = verification_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert m["eer_pct"] == 0.0 and m["min_dcf_p01"] == 0.0
    assert 0.2 <= m["eer_threshold"] <= 0.8


def test_hand_computed_eer():
    # scores sorted: n(0.1) t(0.2) n(0.3) t(0.4): thresholds below each
    # t<0.1: fnr 0, fpr 1 | t=0.1: fnr 0, fpr .5 | t=0.2: fnr .5, fpr .5 | t=0.3: fnr .5 fpr 0 | t=0.4: fnr 1 fpr 0
    m = verification_metrics(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert m["eer_pct"] == pytest.approx(50.0)
    # minDCF p=0.01: costs 0.99, 0.495, 0.5*.01+.5*.99, 0.005, 0.01 -> 0.005 / 0.01 = 0.5
    assert m["min_dcf_p01"] == pytest.approx(0.5)


def test_interpolated_eer():
    # 4 targets, 4 non-targets: one non-target above two targets
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.35, 0.5, 0.6, 0.7])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fnr, fpr, _ = error_rates(scores, labels)
    m = verification_metrics(scores, labels)
    assert m["eer_pct"] == pytest.approx(25.0)


def test_ties_are_one_threshold():
    # all scores equal: only "accept all" and "reject all" exist -> EER 50%
    m = verification_metrics(np.zeros(6), np.array([0, 1, 0, 1, 0, 1]))
    assert m["eer_pct"] == pytest.approx(50.0)
    fnr, fpr, thr = error_rates(np.zeros(6), np.array([0, 1, 0, 1, 0, 1]))
    assert len(fnr) == 2
    # order of tied trials does not change anything
    a = verification_metrics(np.array([0.5, 0.5, 0.1, 0.9]), np.array([1, 0, 0, 1]))
    b = verification_metrics(np.array([0.5, 0.5, 0.1, 0.9]), np.array([0, 1, 0, 1]))
    assert a == b


@pytest.mark.parametrize("labels, word", [(np.ones(5), "target"), (np.zeros(5), "non-target")])
def test_single_class_is_clear_error(labels, word):
    with pytest.raises(BenchError, match=f"all 5 trials are {word}"):
        verification_metrics(np.arange(5.0), labels)


def test_empty_and_nan():
    with pytest.raises(BenchError, match="empty"):
        verification_metrics(np.array([]), np.array([]))
    with pytest.raises(BenchError, match="NaN"):
        verification_metrics(np.array([0.1, np.nan]), np.array([0, 1]))


def test_agrees_with_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 20000
        labels = rng.random(n) < 0.3
        scores = rng.normal(size=n) + labels * rng.uniform(0.5, 3)
        ours = verification_metrics(scores, labels)["eer_pct"] / 100
        # sklearn's nearest-point EER and the NIST interpolation differ by at most one step
        assert abs(ours - sklearn_eer(scores, labels)) < 2.0 / labels.sum()
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        fnr_o, fpr_o, _ = error_rates(scores, labels)
        assert np.allclose(np.sort(fpr_o), np.sort(fpr)) and np.allclose(np.sort(fnr_o), np.sort(1 - tpr))


def test_vectorised_speed_smoke():
    rng = np.random.default_rng(1)
    n = 2_000_000
    labels = rng.random(n) < 0.1
    scores = rng.normal(size=n) + labels
    t = time.perf_counter()
    verification_metrics(scores, labels)
    assert time.perf_counter() - t < 30  # generous: the benchmark measures speed, this guards complexity


def test_det_points_thinned():
    rng = np.random.default_rng(2)
    labels = rng.random(10000) < 0.5
    fpr, fnr = det_points(rng.normal(size=10000) + labels, labels, max_points=500)
    assert len(fpr) <= 500 and fpr[0] == 1.0 and fnr[-1] == 1.0
