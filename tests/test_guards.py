"""kdlib.guards and the run-time checks of kd_loss, distill, train and evaluate:
each common mistake is reproduced on a tiny problem and must be caught with a
message that names it, and correct code must pass without a warning."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torch.utils.data import TensorDataset

from kdlib.data import make_loader
from kdlib.guards import (KDWarning, ProbabilitiesWarning, TeacherGradWarning, TeacherModeWarning,
                          WeakTeacherWarning, better_than_chance, chance_accuracy, looks_like_probabilities,
                          preflight, probe_batch, run_model)
from kdlib.inference import evaluate, predict_logits
from kdlib.losses import kd_loss, soft_targets
from kdlib.models import StudentCNN, StudentMLP
from kdlib.train import distill, train

K = 4


class Oracle(nn.Module):
    """A perfect 'teacher' for `toy_data`: the label is the argmax of the first K pixels."""

    def forward(self, X):
        return 10 * X.flatten(1)[:, :K]


def oracle():
    return Oracle().eval()


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(X, X.flatten(1)[:, :K].argmax(1))


def student():
    torch.manual_seed(0)
    return StudentMLP((1, 4, 4), K, hidden=(8,))


def no_kd_warnings():
    """Context: any KDWarning becomes an error."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error", KDWarning)
    return ctx


# --- detectors -------------------------------------------------------------------------------

def test_warning_classes_are_specific_and_filterable():
    for cls in (TeacherModeWarning, TeacherGradWarning, ProbabilitiesWarning, WeakTeacherWarning):
        assert issubclass(cls, KDWarning) and issubclass(KDWarning, UserWarning)


def test_looks_like_probabilities_hand_cases():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert looks_like_probabilities(torch.softmax(z, 1))
    assert not looks_like_probabilities(z)
    assert not looks_like_probabilities(torch.log_softmax(z, 1))  # log-probabilities are fine logits
    assert not looks_like_probabilities(torch.tensor([[0.2, 0.3, 0.4]]))  # in [0, 1] but sums to 0.9
    assert not looks_like_probabilities(torch.zeros(0, 3))
    assert not looks_like_probabilities(torch.ones(4, 1))  # one class: nothing to tell
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        looks_like_probabilities([[0.5, 0.5]])
    with pytest.raises(TypeError, match="floating-point tensor"):
        looks_like_probabilities(torch.ones(2, 2, dtype=torch.int64))


@settings(max_examples=100, deadline=None)
@given(arrays("float32", st.tuples(st.integers(1, 8), st.integers(2, 100)), elements=st.floats(-50, 50, width=32)))
def test_softmax_output_always_looks_like_probabilities(z):
    assert looks_like_probabilities(torch.softmax(torch.from_numpy(z), dim=1))


def test_chance_accuracy_is_the_best_constant_guess():
    assert chance_accuracy(torch.tensor([0, 1, 2, 3]), 4) == 0.25
    assert chance_accuracy(torch.tensor([2, 2, 2, 1]), 4) == 0.75  # always answer "2"
    assert chance_accuracy(torch.tensor([0, 1]), 10) == 0.5


def test_better_than_chance():
    y = torch.arange(40) % 4
    perfect = F.one_hot(y, 4).float()
    constant = torch.zeros(40, 4)
    constant[:, 0] = 1.0
    assert better_than_chance(perfect, y) is True
    assert better_than_chance(constant, y) is False  # 25%: exactly chance
    assert better_than_chance(perfect[:8], y[:8]) is None  # too few examples to tell
    unlabelled = torch.full((40,), -1)
    assert better_than_chance(perfect, unlabelled) is None


def test_probe_batch_is_spread_and_touches_no_rng():
    ds = toy_data(100)
    state = torch.get_rng_state()
    X, y = probe_batch(ds, n=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert X.shape == (10, 1, 4, 4) and torch.equal(X[0], ds[0][0]) and torch.equal(X[-1], ds[99][0])
    assert probe_batch(ds, n=500)[0].shape[0] == 100  # never more than the data set holds


def test_run_model_names_the_flatten_mistake():
    too_small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 22 * 22, 10))  # sized for 24x24
    with pytest.raises(ValueError, match=r"cannot run on a batch of shape \(2, 1, 32, 32\).*Flatten"):
        run_model(too_small, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"built for inputs \(1, 28, 28\)"):
        run_model(StudentCNN((1, 28, 28)), torch.zeros(2, 1, 32, 32))
    assert run_model(StudentCNN((1, 32, 32)), torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"shape \(batch, num_classes\), got \(2, 1, 32, 32\)"):
        run_model(nn.Identity(), torch.zeros(2, 1, 32, 32))


def test_preflight_leaves_models_untouched():
    s = StudentCNN((1, 8, 8), K, width=2, depth=1).train()
    t = StudentCNN((1, 8, 8), K, width=2, depth=1).eval()
    before = {k: v.clone() for k, v in s.state_dict().items()}
    X = torch.randn(32, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakTeacherWarning)  # an untrained teacher, on purpose
        preflight(s, t, [X, torch.arange(32) % K])
    assert s.training and not t.training
    for k, v in s.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running statistics did not move


# --- kd_loss ---------------------------------------------------------------------------------

def test_kd_loss_warns_when_given_probabilities():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    with pytest.warns(ProbabilitiesWarning, match="teacher_logits look like probabilities.*remove the softmax"):
        kd_loss(s, torch.softmax(t, 1), T=2.0, alpha=1.0)
    with pytest.warns(ProbabilitiesWarning, match="student_logits look like probabilities"):
        kd_loss(torch.softmax(s, 1), t, T=2.0, alpha=1.0)


def test_kd_loss_warns_when_the_teacher_tracked_gradients():
    teacher = nn.Linear(3, 5)
    x = torch.randn(8, 3)
    with pytest.warns(TeacherGradWarning, match="torch.no_grad"):
        kd_loss(torch.randn(8, 5), teacher(x), T=2.0, alpha=1.0)
    ctx = no_kd_warnings()
    try:
        with torch.no_grad():
            t = teacher(x)
        kd_loss(torch.randn(8, 5), t, T=2.0, alpha=1.0)  # the fix: silent
    finally:
        ctx.__exit__(None, None, None)


def test_kd_loss_correct_use_is_silent():
    ctx = no_kd_warnings()
    try:
        kd_loss(torch.randn(8, 5, requires_grad=True), torch.randn(8, 5), torch.arange(8) % 5)
    finally:
        ctx.__exit__(None, None, None)


def test_overflowing_logits_raise_instead_of_nan():
    big = torch.tensor([[3e38, -3e38, 0.0]])
    with pytest.raises(ValueError, match="too large for T=0.5"):
        soft_targets(big, 0.5)
    with pytest.raises(ValueError, match="student_logits are too large"):
        kd_loss(big, torch.zeros(1, 3), torch.tensor([0]), T=0.5)
    with pytest.raises(ValueError, match="float16"):
        soft_targets(torch.tensor([[60000.0, 0.0]], dtype=torch.float16), 1.0)


@settings(max_examples=150, deadline=None)
@given(arrays("float32", st.tuples(st.integers(1, 4), st.integers(2, 6)),
              elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
       st.floats(0.05, 50.0))
def test_finite_logits_never_give_nan(z, T):
    """Any finite logits and T > 0: a finite result or a clear ValueError, never NaN."""
    z = torch.from_numpy(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbabilitiesWarning)
        for fn in (lambda: soft_targets(z, T), lambda: kd_loss(z, z.flip(1), torch.zeros(len(z), dtype=torch.long), T=T)):
            try:
                out = fn()
            except ValueError as err:
                assert "too large" in str(err)
                continue
            assert not torch.isnan(out).any()


# --- distill, train, evaluate ----------------------------------------------------------------

def test_distill_warns_about_an_untrained_teacher():
    torch.manual_seed(0)
    untrained = nn.Sequential(nn.Flatten(), nn.Linear(16, K)).eval()
    with pytest.warns(WeakTeacherWarning, match="no better than chance.*nothing to transfer"):
        distill(student(), untrained, make_loader(toy_data(), 32), num_epochs=1, progress=False)


def test_distill_with_a_good_teacher_is_silent():
    ctx = no_kd_warnings()
    try:
        distill(student(), oracle(), make_loader(toy_data(), 32), num_epochs=1, progress=False)
    finally:
        ctx.__exit__(None, None, None)


def test_teacher_mode_warning_is_specific():
    teacher = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, K))
    with torch.no_grad():
        teacher[2].weight.copy_(10 * torch.eye(K, 16))  # an oracle, with dropout
        teacher[2].bias.zero_()
    teacher.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=WeakTeacherWarning)  # filtering one kind keeps the others
        distill(student(), teacher, make_loader(toy_data(), 32), num_epochs=1, progress=False)
    kinds = [w.category for w in caught]
    assert TeacherModeWarning in kinds and WeakTeacherWarning not in kinds
    assert not teacher.training
    assert caught[kinds.index(TeacherModeWarning)].filename == __file__  # points at the caller's line


def test_distill_warns_about_a_teacher_ending_in_softmax():
    with pytest.warns(ProbabilitiesWarning, match="teacher_logits look like probabilities"):
        distill(student(), nn.Sequential(oracle(), nn.Softmax(1)).eval(), make_loader(toy_data(), 32),
                num_epochs=1, progress=False)


def test_train_warns_about_a_model_ending_in_softmax():
    with pytest.warns(ProbabilitiesWarning, match="model's outputs look like probabilities"):
        train(nn.Sequential(student(), nn.Softmax(1)), make_loader(toy_data(), 32), num_epochs=1, progress=False)


def test_distill_class_count_mismatch():
    with pytest.raises(ValueError, match="teacher predicts 4 classes and the student 3"):
        distill(StudentMLP((1, 4, 4), 3), oracle(), make_loader(toy_data(), 32), num_epochs=1, progress=False)


def test_distill_resolution_mismatch_names_the_flatten_size():
    ds = TensorDataset(torch.randn(20, 1, 32, 32), torch.arange(20) % K)
    teacher = StudentCNN((1, 32, 32), K, width=2).eval()
    with pytest.raises(ValueError, match=r"student cannot run.*built for inputs \(1, 24, 24\)"):
        distill(StudentCNN((1, 24, 24), K, width=2), teacher, make_loader(ds, 10), num_epochs=1, progress=False)


@pytest.mark.parametrize("X, y, err, match", [
    (torch.full((8, 1, 4, 4), float("nan")), torch.zeros(8, dtype=torch.long), ValueError, "NaN or inf"),
    (torch.zeros(8, 1, 4, 4), torch.zeros(8), TypeError, "integer class indices"),
    (torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), TypeError, "floating-point"),
    (torch.zeros(8, 1, 4, 4), torch.full((8,), 7), ValueError, r"labels must lie in 0..3"),
])
def test_distill_and_train_bad_data(X, y, err, match):
    loader = make_loader(TensorDataset(X, y), 4)
    with pytest.raises(err, match=match):
        distill(student(), oracle(), loader, num_epochs=1, progress=False)
    with pytest.raises(err, match=match):
        train(student(), loader, num_epochs=1, progress=False)


def test_train_rejects_unlabelled_examples_that_distill_accepts():
    ds = toy_data(32)
    y = ds.tensors[1].clone()
    y[::2] = -1
    loader = make_loader(TensorDataset(ds.tensors[0], y), 16)
    with pytest.raises(ValueError, match=r"labels must lie in 0..3, got -1"):
        train(student(), loader, num_epochs=1, progress=False)
    distill(student(), oracle(), loader, num_epochs=1, progress=False)


def test_evaluate_and_predict_logits_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="class indices in 0..2"):
        evaluate(StudentMLP((1, 4, 4), 3), make_loader(toy_data(), 32))
    with pytest.raises(ValueError, match="cannot run on a batch"):
        predict_logits(StudentCNN((1, 28, 28)), make_loader(toy_data(), 32))


def test_guards_do_not_change_what_distill_learns():
    """Same seed, same loader: the probe touches no RNG and no weights, so two runs agree exactly."""
    runs = []
    for _ in range(2):
        s = student()
        h = distill(s, oracle(), make_loader(toy_data(), 16, shuffle=True), num_epochs=2, progress=False, seed=3)
        runs.append((h.train_loss, [p.detach().clone() for p in s.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert math.isfinite(runs[0][0][-1])
