"""kdlib.metrics against hand-computed values, a plain-Python reference and properties."""
import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats as _stats

from kdlib.metrics import (compare_paired, expected_calibration_error, format_mean_std, gap_closed, mean_ci,
                           mean_confidence, mean_std, per_class_accuracy, reliability_diagram_data)


def _probs(conf, pred, K=2):
    """Rows whose largest probability is `conf` at class `pred` (the rest spread evenly)."""
    P = torch.full((len(conf), K), 0.0, dtype=torch.float64)
    for i, (c, p) in enumerate(zip(conf, pred)):
        P[i] = (1 - c) / (K - 1)
        P[i, p] = c
    return P


def _ece_reference(probs, labels, n_bins):
    """ECE written as the formula reads, one example at a time."""
    bins = [[] for _ in range(n_bins)]
    for row, y in zip(probs.tolist(), labels.tolist()):
        conf = max(row)
        m = min(max(math.ceil(conf * n_bins) - 1, 0), n_bins - 1)  # bin ((m)/M, (m+1)/M]
        bins[m].append((conf, row.index(conf) == y))
    n = len(labels)
    return sum(len(b) / n * abs(sum(c for _, c in b) / len(b) - sum(p for p, _ in b) / len(b)) for b in bins if b)


def test_ece_hand_computed():
    # two predictions at confidence 0.95, one right: |0.5 - 0.95| = 0.45
    # two predictions at confidence 0.65, both right: |1.0 - 0.65| = 0.35
    # ECE = 2/4 * 0.45 + 2/4 * 0.35 = 0.40
    probs = _probs([0.95, 0.95, 0.65, 0.65], [0, 1, 1, 0])
    labels = torch.tensor([0, 0, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.40, abs=1e-12)


def test_ece_zero_when_confidence_equals_accuracy():
    # ten predictions at confidence 0.8, eight right: perfectly calibrated
    probs = _probs([0.8] * 10, [0] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.0, abs=1e-12)


def test_bin_edges_are_left_open_right_closed():
    # with 4 bins, confidence exactly 0.75 belongs to bin (0.5, 0.75], 0.7500001 to (0.75, 1]
    probs = _probs([0.75, 0.75 + 1e-7, 1.0], [0, 0, 0])
    d = reliability_diagram_data(probs, torch.tensor([0, 0, 0]), n_bins=4)
    assert d["count"].tolist() == [0, 0, 1, 2]
    assert torch.isnan(d["accuracy"][0]) and torch.isnan(d["confidence"][1])
    torch.testing.assert_close(d["edges"], torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_ece_matches_reference_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g), 1)
    labels = torch.randint(0, 10, (500,), generator=g)
    for n_bins in (1, 5, 15):
        assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
            _ece_reference(probs.double(), labels, n_bins), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(2, 6), st.integers(1, 20), st.integers(0, 10_000))
def test_ece_properties(n, K, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(4 * torch.randn(n, K, generator=g), 1)
    labels = torch.randint(0, K, (n,), generator=g)
    ece = expected_calibration_error(probs, labels, n_bins)
    assert 0.0 <= ece <= 1.0
    d = reliability_diagram_data(probs, labels, n_bins)
    assert int(d["count"].sum()) == n
    # with one bin, ECE is |accuracy - mean confidence|
    acc = (probs.argmax(1) == labels).double().mean()
    assert expected_calibration_error(probs, labels, 1) == pytest.approx(
        abs(float(acc) - mean_confidence(probs)), abs=1e-9)


def test_ece_rejects_logits_and_bad_shapes():
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        expected_calibration_error(torch.full((4, 2), 0.5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0..1"):
        expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([0, 1]), n_bins=0)
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_ece_accepts_numpy():
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    assert expected_calibration_error(probs, np.array([0, 0]), n_bins=10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.7)


def test_gap_closed_hinton_mnist_figures():
    # Hinton et al. (2015), MNIST: 146 errors alone, 74 distilled, 67 teacher (out of 10,000)
    acc = lambda errors: 1 - errors / 10_000
    assert gap_closed(acc(74), acc(146), acc(67)) == pytest.approx(72 / 79)
    assert gap_closed(0.9, 0.9, 0.95) == 0.0
    assert gap_closed(0.95, 0.9, 0.95) == pytest.approx(1.0)
    assert gap_closed(0.85, 0.9, 0.95) == pytest.approx(-1.0)


def test_gap_closed_errors():
    with pytest.raises(ValueError, match="must score higher"):
        gap_closed(0.9, 0.95, 0.95)
    with pytest.raises(TypeError, match="kd must be a number"):
        gap_closed(None, 0.9, 0.95)
    with pytest.raises(ValueError, match="finite number"):
        gap_closed(float("nan"), 0.9, 0.95)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=20))
def test_mean_std_matches_statistics(values):
    m, s = mean_std(values)
    assert m == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert s == pytest.approx(statistics.stdev(values), rel=1e-6, abs=1e-6)


def test_mean_std_hand_computed_and_edges():
    assert mean_std([0.97, 0.98, 0.99]) == pytest.approx((0.98, 0.01))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_std([])
    assert format_mean_std([0.97, 0.98, 0.99]) == "98.0% ± 1.0%"
    assert format_mean_std([1.0, 3.0], ".2f") == "2.00 ± 1.41"


def test_per_class_accuracy():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    labels = torch.tensor([0, 1, 1, 0])
    acc = per_class_accuracy(logits, labels)
    assert acc[:2].tolist() == [0.5, 0.5] and math.isnan(acc[2])
    with pytest.raises(ValueError, match="logits"):
        per_class_accuracy(torch.zeros(3), labels)


# --- paired comparisons over seeds ---------------------------------------------------------


def test_mean_ci_matches_the_t_interval_by_hand():
    values = [0.971, 0.966, 0.974, 0.969, 0.974]
    m, low, high = mean_ci(values)
    s = _stats.tstd(values)
    half = 2.7764451051977987 * s / 5 ** 0.5  # t_{4, 0.975}
    assert m == pytest.approx(sum(values) / 5)
    assert (low, high) == pytest.approx((m - half, m + half), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_compare_paired_decides_as_a_paired_t_test(seed):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(6, generator=g) * 0.01 + 0.95).tolist()
    b = (torch.tensor(a) + torch.randn(6, generator=g) * 0.004 + 0.003 * (seed % 3 - 1)).tolist()
    c = compare_paired(a, b)
    p = _stats.ttest_rel(a, b).pvalue
    assert (c.verdict != "no clear difference") == (p < 0.05)
    if c.verdict == "better":
        assert c.mean > 0 and c.low > 0
    if c.verdict == "worse":
        assert c.mean < 0 and c.high < 0


def test_compare_paired_verdicts_and_text():
    better = compare_paired([0.98, 0.985, 0.983], [0.97, 0.972, 0.975])
    assert better.verdict == "better" and better.wins == 3 and better.n == 3
    assert better.format("+.1%").endswith("3 seeds): better")
    assert compare_paired([0.97, 0.972, 0.975], [0.98, 0.985, 0.983]).verdict == "worse"
    unclear = compare_paired([0.95, 0.96, 0.94], [0.951, 0.949, 0.95])
    assert unclear.verdict == "no clear difference" and unclear.low < 0 < unclear.high


def test_compare_paired_pairs_by_seed():
    # the seed moves both recipes alike: paired, the small steady gain is clear
    base = [0.90, 0.95, 0.92, 0.97, 0.93]
    assert compare_paired([x + 0.004 for x in base], base).verdict == "better"


@pytest.mark.parametrize("a, b, match", [
    ([0.9], [0.8], "at least 2 seeds"),
    ([0.9, 0.8], [0.8], "same seeds"),
    ([0.9, float("nan")], [0.8, 0.7], "finite"),
])
def test_compare_paired_refuses_what_it_cannot_decide(a, b, match):
    with pytest.raises(ValueError, match=match):
        compare_paired(a, b)


def test_compare_paired_bad_arguments():
    with pytest.raises(TypeError, match="list of numbers"):
        compare_paired("abc", [1, 2, 3])
    with pytest.raises(ValueError, match="confidence"):
        compare_paired([1, 2], [0, 0], confidence=95)
    with pytest.raises(ValueError, match="fmt"):
        compare_paired([1, 2], [0, 0]).format("nope")
