"""kdlib support for chapters 5 and 6: per-epoch callbacks in the training loop, fidelity
(agreement and KL with the teacher), the hard pseudo-label control and the step count of the
data-scarce recipe."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from kdlib import zoo
from kdlib.data import make_loader, random_shift_rotate
from kdlib.inference import fidelity, predict_logits, track_fidelity
from kdlib.models import StudentCNN, StudentMLP
from kdlib.train import distill, train


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


# --- fidelity: agreement and KL against hand computations -----------------------------------------

def test_fidelity_matches_a_hand_computation():
    ds = _toy_data(40)
    teacher, student = _toy_teacher(ds), StudentMLP((1, 8, 8), 4, hidden=(8,))
    loader = make_loader(ds, 16)
    t, _ = predict_logits(teacher, loader)
    s, y = predict_logits(student, loader)
    p = torch.softmax(t.double(), 1)
    kl = sum(float((p[i] * (p[i].log() - torch.log_softmax(s[i].double(), 0))).sum()) for i in range(len(y))) / len(y)
    got = fidelity(student, loader, t)
    assert math.isclose(got["kl"], kl, rel_tol=1e-9)
    assert got["agreement"] == sum(int(s[i].argmax() == t[i].argmax()) for i in range(len(y))) / len(y)
    assert got["accuracy"] == float((s.argmax(1) == y).double().mean())


def test_fidelity_of_the_teacher_itself_is_perfect_and_skips_unlabelled_accuracy():
    ds = _toy_data(40)
    teacher = _toy_teacher(ds)
    X, y = ds.tensors
    unlabelled = make_loader(TensorDataset(X, torch.full_like(y, -1)), 16)
    t, _ = predict_logits(teacher, unlabelled)
    got = fidelity(teacher, unlabelled, t)
    assert got["agreement"] == 1.0 and abs(got["kl"]) < 1e-12 and "accuracy" not in got


def test_fidelity_refuses_a_shuffled_loader_and_wrong_shapes():
    ds = _toy_data(40)
    teacher = _toy_teacher(ds)
    t, _ = predict_logits(teacher, make_loader(ds, 16))
    with pytest.raises(ValueError, match="shuffles"):
        fidelity(teacher, make_loader(ds, 16, shuffle=True), t)
    with pytest.raises(ValueError, match="teacher_logits must be"):
        fidelity(teacher, make_loader(ds, 16), t[:10])


# --- the per-epoch callback ---------------------------------------------------------------------

def test_callback_records_one_value_per_epoch_and_does_not_change_training():
    ds = _toy_data()
    teacher = _toy_teacher(ds)
    runs = []
    for with_callback in (False, True):
        torch.manual_seed(0)
        student = StudentCNN((1, 8, 8), 4, width=4, depth=1)
        cb = track_fidelity(teacher, {"all": make_loader(ds, 32)}) if with_callback else None
        h = distill(student, teacher, make_loader(ds, 16, shuffle=True, seed=3), T=2.0, alpha=0.5, num_epochs=3,
                    lr=1e-2, augment=random_shift_rotate, mixup=1.0, progress=False, seed=3, callback=cb)
        runs.append((h, [p.detach().clone() for p in student.parameters()], student))
    (h0, w0, _), (h1, w1, student) = runs
    assert h0.metrics == {} and h1.metrics["epoch"] == [1.0, 2.0, 3.0]
    assert all(len(v) == 3 for v in h1.metrics.values())
    np.testing.assert_allclose(h0.train_loss, h1.train_loss, rtol=1e-5)  # the callback draws no random numbers
    for a, b in zip(w0, w1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    t, _ = predict_logits(teacher, make_loader(ds, 32))
    assert math.isclose(h1.metrics["all_agreement"][-1], fidelity(student, make_loader(ds, 32), t)["agreement"])


def test_callback_every_and_its_errors():
    ds = _toy_data(32)
    seen = []
    h = train(StudentMLP((1, 8, 8), 4), make_loader(ds, 16), num_epochs=4, progress=False,
              callback=lambda epoch, model: seen.append(model.training) or ({"e": epoch} if epoch % 2 else None))
    assert h.metrics == {"e": [1.0, 3.0]} and len(seen) == 4
    cb = track_fidelity(_toy_teacher(ds), {"a": make_loader(ds, 16)}, every=2)
    assert cb(0, StudentMLP((1, 8, 8), 4)) is None and cb(1, StudentMLP((1, 8, 8), 4))["epoch"] == 2
    with pytest.raises(TypeError, match="callback"):
        train(StudentMLP((1, 8, 8), 4), make_loader(ds, 16), num_epochs=1, progress=False, callback=3)
    with pytest.raises(TypeError, match="dict of numbers"):
        train(StudentMLP((1, 8, 8), 4), make_loader(ds, 16), num_epochs=1, progress=False, callback=lambda e, m: 1.0)
    with pytest.raises(TypeError, match="loaders must be"):
        track_fidelity(_toy_teacher(ds), [make_loader(ds, 16)])


# --- the data-scarce helpers -------------------------------------------------------------------

def test_pseudo_label_loss_is_cross_entropy_on_labels_or_the_teachers_top_class():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([2, -1, 0, -1, -1, 4])
    target = torch.tensor([2, int(t[1].argmax()), 0, int(t[3].argmax()), int(t[4].argmax()), 4])
    torch.testing.assert_close(zoo.pseudo_label_loss(s, t, y), F.cross_entropy(s, target))


def test_the_recipes_students_get_the_same_number_of_steps():
    steps = zoo.scarce_steps(zoo.DISTILL_RECIPE, 3500)
    assert steps["distilled"] == 15 * math.ceil(35_000 / 128) == 4110
    assert steps["alone"] == zoo.DISTILL_RECIPE.alone_epochs * math.ceil(1000 / 128)
    assert abs(steps["alone"] - steps["distilled"]) <= 8  # equal up to one pass over the labelled images
    plain = dataclasses.replace(zoo.DISTILL_RECIPE, augment=False, num_epochs=2)
    assert zoo.scarce_steps(plain, 3500)["distilled"] == 2 * math.ceil(3500 / 128)


def test_train_alone_refuses_an_unknown_augmentation():
    recipe = dataclasses.replace(zoo.DISTILL_RECIPE, alone_augment="heavy", num_labels=8, alone_epochs=1)
    ds = _toy_data(16)
    with pytest.raises(ValueError, match="alone_augment"):
        zoo.train_alone(StudentMLP((1, 8, 8), 4), ds, recipe)


# --- views made in advance: augmented and mixed copies, one copy per epoch ---------------------

def test_augmented_copies_are_the_originals_then_seeded_augmentations():
    from kdlib.data import augmented_copies

    ds = _toy_data(12)
    X, y = ds.tensors
    got = augmented_copies(ds, 3, seed=5)
    g = torch.Generator().manual_seed(5)
    expected = torch.cat([X, random_shift_rotate(X, generator=g), random_shift_rotate(X, generator=g)])
    assert torch.equal(got.tensors[0], expected) and torch.equal(got.tensors[1], y.repeat(3))


def test_mixup_copies_mix_two_views_of_the_same_data_set_with_weights_in_0_1():
    from kdlib.data import mixup_copies

    ds = _toy_data(12)
    X, _ = ds.tensors
    got = mixup_copies(ds, 2, concentration=1.0, augment=None, seed=3)
    assert got.tensors[0].shape == (24, 1, 8, 8) and bool((got.tensors[1] == -1).all())
    assert torch.equal(got.tensors[0], mixup_copies(ds, 2, augment=None, seed=3).tensors[0])  # repeatable
    # without augmentation each mixed image is lam x_i + (1 - lam) x_j: solve for lam with the right partner
    rng = np.random.default_rng(3)
    g = torch.Generator().manual_seed(3)
    for c in range(2):
        partner = torch.randperm(12, generator=g)
        lam = torch.as_tensor(rng.beta(1.0, 1.0, size=12), dtype=X.dtype).view(12, 1, 1, 1)
        torch.testing.assert_close(got.tensors[0][12 * c:12 * (c + 1)], lam * X + (1 - lam) * X[partner])
        assert bool(((lam > 0) & (lam < 1)).all())


def test_copy_sampler_visits_copy_k_in_epoch_k_shuffled():
    from kdlib.data import CopySampler

    s = CopySampler(5, 3, seed=0)
    epochs = [list(s) for _ in range(4)]
    for k, idx in enumerate(epochs):
        c = k % 3
        assert sorted(idx) == list(range(5 * c, 5 * c + 5))
    assert epochs[0] != sorted(epochs[0]) or epochs[1] != sorted(epochs[1])  # shuffled
    assert len(s) == 5


def test_teach_scarce_uses_one_copy_per_epoch_and_the_cached_teacher():
    from kdlib.inference import cache_teacher_outputs

    ds = _toy_data(64)
    teacher = _toy_teacher(ds)
    recipe = dataclasses.replace(zoo.TEACH_RECIPE, mode="consistent", num_epochs=3, batch_size=16)
    views = zoo.teaching_views(ds, recipe)
    assert len(views) == 3 * 64
    cached = cache_teacher_outputs(teacher, make_loader(views, 16, shuffle=True))
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    torch.manual_seed(0)
    student = StudentMLP((1, 8, 8), 4, hidden=(8,))
    h = zoo.teach_scarce(student, teacher, cached, 64, recipe, seed=0)
    assert h.num_epochs == 3 and sum(calls) < 64  # the teacher did not run again (at most a probe)
    with pytest.raises(ValueError, match="cached views"):
        zoo.teach_scarce(student, teacher, cached, 32, recipe)
    with pytest.raises(ValueError, match="recipe.mode"):
        zoo.teaching_views(ds, dataclasses.replace(recipe, mode="online"))
