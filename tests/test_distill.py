"""kdlib.train.distill: cached teacher logits, transfer sets with unlabelled examples, and the
stratified labelled subset they start from."""
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils.data import Subset, TensorDataset

from kdlib.data import labelled_subset, make_loader, partially_labelled
from kdlib.losses import kd_loss
from kdlib.models import StudentCNN, StudentMLP
from kdlib.train import distill, train
from kdlib.validation import UNLABELLED


def _toy_data(n=96, seed=0, K=4):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    X = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(X, y)


def _toy_teacher(ds, K=4):
    torch.manual_seed(1)
    teacher = StudentMLP((1, 8, 8), K, hidden=(16,))
    train(teacher, make_loader(ds, 32, shuffle=True), num_epochs=10, lr=1e-2, progress=False, seed=0)
    return teacher


# --- labelled_subset: the data-scarce setting --------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=10, max_size=200), st.data())
def test_labelled_subset_is_stratified(labels, data):
    y = torch.tensor(labels)
    ds = TensorDataset(torch.zeros(len(y), 1), y)
    n = data.draw(st.integers(1, len(y)))
    sub = labelled_subset(ds, n, seed=data.draw(st.integers(0, 99)))
    idx = list(sub.indices)
    assert len(idx) == n and len(set(idx)) == n
    total, chosen = Counter(labels), Counter(labels[i] for i in idx)
    for c, count in total.items():
        share = count / len(labels) * n
        assert abs(chosen[c] - share) < 1 + 1e-9, (c, chosen[c], share)  # within one of the exact share


def test_labelled_subset_of_mnist5k_has_100_per_class_when_balanced():
    y = torch.arange(3500) % 10
    sub = labelled_subset(TensorDataset(torch.zeros(3500, 1), y), 1000, seed=0)
    assert Counter(y[list(sub.indices)].tolist()) == {c: 100 for c in range(10)}


# --- partially_labelled and kd_loss ----------------------------------------------------

def test_partially_labelled_keeps_only_chosen_labels():
    ds = _toy_data(40)
    sub = Subset(ds, [0, 5, 7])
    tr = partially_labelled(ds, sub)
    X, y = tr.tensors
    assert torch.equal(X, ds.tensors[0])
    assert y[[0, 5, 7]].tolist() == ds.tensors[1][[0, 5, 7]].tolist()
    assert (y == UNLABELLED).sum() == 37


def test_partially_labelled_rejects_a_subset_of_another_dataset():
    with pytest.raises(ValueError, match="Subset of the same dataset"):
        partially_labelled(_toy_data(10), Subset(_toy_data(10), [0]))
    with pytest.raises(TypeError, match="Subset"):
        partially_labelled(_toy_data(10), [0, 1])


def test_kd_loss_reduces_to_kd_loss():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(kd_loss(s, t, y, T=3.0, alpha=0.7), kd_loss(s, t, y, T=3.0, alpha=0.7))
    none = torch.full_like(y, UNLABELLED)
    torch.testing.assert_close(kd_loss(s, t, none, T=3.0, alpha=0.7),
                               0.7 * kd_loss(s, t, None, T=3.0, alpha=1.0))


def test_kd_loss_hand_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([2, -1, 0, -1, -1, 3])
    T, alpha = 2.0, 0.6
    p, log_q = torch.softmax(t / T, 1), torch.log_softmax(s / T, 1)
    soft = (p * (p.log() - log_q)).sum(1).mean() * T * T  # over all 6 examples
    hard = F.cross_entropy(s, y, ignore_index=-1)  # mean over the 3 labelled ones
    torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=alpha), alpha * soft + (1 - alpha) * hard)


# --- cached teacher logits = an online teacher forward -------------------------------------------

def test_cached_logits_give_the_same_loss_trajectory_as_an_online_teacher():
    ds = _toy_data()
    teacher = _toy_teacher(ds)
    histories = []
    for cache in (True, False):
        torch.manual_seed(0)
        student = StudentCNN((1, 8, 8), 4, width=4, depth=1)
        h = distill(student, teacher, make_loader(ds, 16, shuffle=True, seed=3), T=4.0, alpha=0.5,
                    num_epochs=3, lr=1e-2, cache_teacher=cache, progress=False, seed=3)
        histories.append((h.train_loss, [p.detach().clone() for p in student.parameters()]))
    (loss_a, w_a), (loss_b, w_b) = histories
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(w_a, w_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_distill_on_a_transfer_set_uses_soft_targets_where_labels_are_missing():
    ds = _toy_data()
    teacher = _toy_teacher(ds)
    tr = partially_labelled(ds, labelled_subset(ds, 8, seed=0))
    torch.manual_seed(0)
    student = StudentMLP((1, 8, 8), 4, hidden=(8,))
    h = distill(student, teacher, make_loader(tr, 16, shuffle=True), T=2.0, alpha=0.9, num_epochs=3,
                lr=1e-2, progress=False, seed=0)
    assert h.num_epochs == 3 and all(np.isfinite(h.train_loss))
    assert h.train_loss[-1] < h.train_loss[0]


def test_cache_with_augment_is_refused():
    ds = _toy_data(16)
    teacher = _toy_teacher(ds)
    with pytest.raises(ValueError, match="cache_teacher=True with augment"):
        distill(StudentMLP((1, 8, 8), 4), teacher, make_loader(ds, 8), augment=lambda X: X,
                cache_teacher=True, progress=False)


def test_a_cached_loader_is_reused_without_running_the_teacher_again():
    from kdlib.inference import cache_teacher_outputs

    ds = _toy_data(256)
    teacher = _toy_teacher(ds)
    seen = []  # examples the teacher ran on
    teacher.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    cached = cache_teacher_outputs(teacher, make_loader(ds, 16, shuffle=True, seed=3))
    assert sum(seen) == len(ds)
    runs = []
    for loader in (cached, make_loader(ds, 16, shuffle=True, seed=3)):
        seen.clear()
        torch.manual_seed(0)
        student = StudentMLP((1, 8, 8), 4, hidden=(8,))
        runs.append(distill(student, teacher, loader, num_epochs=2, lr=1e-2, progress=False, seed=3).train_loss)
        if loader is cached:
            assert sum(seen) < len(ds)  # no new pass over the data (at most a sanity probe)
        else:
            assert sum(seen) >= len(ds)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_cache_teacher_outputs_accepts_precomputed_logits():
    from kdlib.inference import cache_teacher_outputs, predict_logits

    ds = _toy_data(64)
    teacher = _toy_teacher(ds)
    logits, _ = predict_logits(teacher, make_loader(ds, 64))
    fresh = cache_teacher_outputs(teacher, make_loader(ds, 16))
    given = cache_teacher_outputs(teacher, make_loader(ds, 16), logits=logits)
    for (X1, y1, t1), (X2, y2, t2) in zip(fresh, given):
        assert torch.equal(X1, X2) and torch.equal(y1, y2)
        torch.testing.assert_close(t1, t2)
    with pytest.raises(ValueError, match="one row per example"):
        cache_teacher_outputs(teacher, make_loader(ds, 16), logits=logits[:10])
