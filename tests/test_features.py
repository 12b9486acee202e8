"""kdlib.features against direct computations, closed forms and the papers' defining properties."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from kdlib.chains import born_again, teacher_assistant_chain
from kdlib.data import make_loader
from kdlib.hooks import capture, feature_shapes
from kdlib.inference import cache_teacher_outputs, TeacherOutputs
from kdlib.losses import (FitNetsHint, angle_potentials, attention_loss, attention_map, distance_potentials,
                          dkd_loss, dkd_terms, hint_loss, hint_regressor, kd_loss, rkd_angle_loss, rkd_distance_loss,
                          rkd_loss)
from kdlib.models import StudentCNN
from kdlib.train import distill
from kdlib.utils import seed_everything

# The training tests use tiny random teachers: they test the plumbing (seeding, caching,
# hooks, which parameters train), not whether knowledge transfers, so the guard that warns
# about a teacher no better than chance is expected to fire and is silenced here only.
pytestmark = pytest.mark.filterwarnings("ignore::kdlib.guards.WeakTeacherWarning")

# ----------------------------------------------------------------------------- helpers


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def upto(model: nn.Sequential, n: int) -> nn.Sequential:
    """The first n layers of a Sequential model (slicing a subclass would rebuild it)."""
    return nn.Sequential(*list(model)[:n])


def tiny_data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(X, y)


def tiny_model(width=2, seed=0):
    seed_everything(seed)
    return StudentCNN((1, 8, 8), num_classes=3, width=width)


def random_rotation(d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix


def direct_distances(e):
    i, j = torch.triu_indices(len(e), len(e), 1)
    d = (e[i] - e[j]).norm(dim=1)
    return d / d.mean()


def direct_angles(e):
    B = len(e)
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # unit[j, i] = (e_i - e_j) / ||.||
    cos = torch.einsum("jid,jkd->jik", unit, unit)
    eye = torch.eye(B, dtype=torch.bool)
    return cos[~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))]


# ----------------------------------------------------------------------------- capture


def test_capture_records_the_layer_outputs():
    model = StudentCNN(width=4).eval()
    X = torch.randn(5, 1, 28, 28)
    with capture(model, ["3", "7"]) as feats:
        logits = model(X)
    torch.testing.assert_close(feats["3"], upto(model, 4)(X))
    torch.testing.assert_close(feats["7"], upto(model, 8)(X))
    torch.testing.assert_close(logits, model(X))
    assert feats["3"].shape == (5, 4, 14, 14) and feats["7"].shape == (5, 8, 7, 7)


def test_capture_leaves_the_model_unchanged():
    model = StudentCNN(width=4).eval()
    X = torch.randn(3, 1, 28, 28)
    before = model(X)
    with capture(model, ["0", "3", "9"]) as feats:
        model(X)
        assert sum(len(m._forward_hooks) for m in model.modules()) == 3
    assert no_hooks_left(model)
    assert torch.equal(model(X), before)
    assert set(feats) == {"0", "3", "9"}


def test_capture_removes_hooks_on_error():
    model = StudentCNN(width=4)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, ["3"]):
            raise RuntimeError("boom")
    assert no_hooks_left(model)


def test_capture_keeps_or_drops_the_graph():
    model = StudentCNN(width=4)
    X = torch.randn(2, 1, 28, 28)
    with capture(model, "3") as kept:
        model(X)
    with capture(model, "3", detach=True) as dropped:
        model(X)
    assert kept["3"].requires_grad and not dropped["3"].requires_grad


@pytest.mark.parametrize("names, err, match", [
    (["nope"], ValueError, "no layer named 'nope'"),
    ([], ValueError, "names is empty"),
    (["3", "3"], ValueError, "distinct"),
    ([3], TypeError, "must be a list of str"),
    ([""], ValueError, "no layer named ''"),
])
def test_capture_bad_names(names, err, match):
    model = StudentCNN(width=4)
    with pytest.raises(err, match=match):
        with capture(model, names):
            pass
    assert no_hooks_left(model)


def test_capture_error_lists_the_layers():
    with pytest.raises(ValueError, match="its layers are: 0, 1, 2"):
        with capture(StudentCNN(width=4), ["conv1"]):
            pass


def test_capture_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        with capture("model", ["0"]):
            pass


def test_feature_shapes_leaves_mode_and_statistics():
    model = StudentCNN(width=4).train()
    stats = model[1].running_mean.clone()
    assert feature_shapes(model, ["3", "7", "8"], (1, 28, 28)) == {"3": (4, 14, 14), "7": (8, 7, 7), "8": (392,)}
    assert model.training and torch.equal(model[1].running_mean, stats) and no_hooks_left(model)
    with pytest.raises(ValueError, match="input_shape"):
        feature_shapes(model, ["3"], (1, 28))  # fails inside the model: a clear error first
    with pytest.raises(TypeError, match="input_shape"):
        feature_shapes(model, ["3"], "28x28")


# ----------------------------------------------------------------------------- FitNets


def test_hint_loss_matches_reference():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 5, 5), torch.randn(4, 6, 5, 5)
    reg = hint_regressor(3, 6)
    W, b = reg.weight[:, :, 0, 0], reg.bias  # (6, 3), (6,)
    mapped = torch.einsum("oc,bchw->bohw", W, s) + b.view(1, -1, 1, 1)
    expected = ((mapped - t) ** 2).sum() / t.numel()
    torch.testing.assert_close(hint_loss(s, t, reg), expected)


def test_hint_loss_is_zero_when_the_regressor_maps_exactly():
    torch.manual_seed(1)
    s = torch.randn(2, 3, 4, 4)
    reg = hint_regressor(3, 5)
    t = reg(s).detach()
    assert hint_loss(s, t, reg).item() == pytest.approx(0.0, abs=1e-12)
    # and an identity-like regressor copies the student's channels into the teacher's
    eye = hint_regressor(3, 3)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        eye.bias.zero_()
    assert hint_loss(s, s.clone(), eye).item() == 0.0


def test_hint_loss_gradients_reach_student_and_regressor_not_teacher():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 5, 4, 4, requires_grad=True)
    reg = hint_regressor(3, 5)
    hint_loss(s, t, reg).backward()
    assert s.grad is not None and reg.weight.grad is not None and t.grad is None


def test_fitnets_hint_sums_pairs():
    torch.manual_seed(2)
    hint = FitNetsHint([2, 4], [3, 6])
    s = [torch.randn(2, 2, 4, 4), torch.randn(2, 4, 2, 2)]
    t = [torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    expected = hint_loss(s[0], t[0], hint.regressors[0]) + hint_loss(s[1], t[1], hint.regressors[1])
    torch.testing.assert_close(hint(s, t), expected)
    assert sum(p.numel() for p in hint.parameters()) == (2 * 3 + 3) + (4 * 6 + 6)
    with pytest.raises(ValueError, match="one per pair"):
        hint(s[:1], t[:1])


def test_hint_loss_bad_inputs():
    reg = hint_regressor(3, 5)
    with pytest.raises(ValueError, match="same height and width"):
        hint_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8), reg)
    with pytest.raises(ValueError, match="batch sizes"):
        hint_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 5, 4, 4), reg)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        hint_loss(torch.randn(2, 3), torch.randn(2, 5, 4, 4), reg)
    with pytest.raises(ValueError, match="hint_regressor\\(4, 5\\)"):
        hint_loss(torch.randn(2, 4, 4, 4), torch.randn(2, 5, 4, 4), reg)
    with pytest.raises(ValueError, match="a positive int"):
        hint_regressor(0, 5)
    with pytest.raises(ValueError, match="one teacher channel count"):
        FitNetsHint([2, 3], [4])


# ----------------------------------------------------------------------------- attention transfer


def test_attention_map_hand_computed():
    # one example, two channels, 1x2 positions: A = [[1, 2]], [[3, 0]]
    A = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    q = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])  # mean over channels of A^2
    torch.testing.assert_close(attention_map(A), (q / q.norm()).view(1, 2))


def test_attention_loss_matches_the_authors_code():
    torch.manual_seed(3)
    s, t = torch.randn(4, 3, 6, 6), torch.randn(4, 7, 6, 6)

    def at(x):  # from the authors' repository (szagoruyko/attention-transfer, utils.py)
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    torch.testing.assert_close(attention_loss(s, t), (at(s) - at(t)).pow(2).mean())


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-3, 1e3), st.booleans(), st.integers(0, 10_000))
def test_attention_map_ignores_the_scale_of_the_features(c, negative, seed):
    A = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scale = -c if negative else c
    torch.testing.assert_close(attention_map(scale * A), attention_map(A))
    torch.testing.assert_close(attention_loss(scale * A, A), torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)
    norms = attention_map(A).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_attention_loss_resizes_to_the_larger_map():
    torch.manual_seed(4)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8)
    q = s.pow(2).mean(1, keepdim=True)
    up = F.normalize(F.interpolate(q, size=(8, 8), mode="bilinear", align_corners=False).flatten(1))
    expected = (up - attention_map(t)).pow(2).mean()
    torch.testing.assert_close(attention_loss(s, t), expected)
    torch.testing.assert_close(attention_loss(t, s), expected)  # symmetric in which one is smaller


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attention_map(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="p must be"):
        attention_map(torch.randn(2, 3, 4, 4), p=0)
    with pytest.raises(ValueError, match="batch sizes"):
        attention_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        attention_loss(torch.ones(2, 3, 4, 4, dtype=torch.long), torch.randn(2, 3, 4, 4))


# ----------------------------------------------------------------------------- relational KD


def test_rkd_potentials_match_direct_computation():
    torch.manual_seed(5)
    e = torch.randn(9, 6, dtype=torch.float64).relu() + 2.0  # off-centre, like ReLU features
    torch.testing.assert_close(distance_potentials(e), direct_distances(e))
    torch.testing.assert_close(angle_potentials(e), direct_angles(e))
    assert distance_potentials(e).shape == (9 * 8 // 2,)
    assert angle_potentials(e).shape == (9 * 8 * 7,)
    assert distance_potentials(e).mean().item() == pytest.approx(1.0)


def test_rkd_angles_hand_computed():
    # a right isosceles triangle: 90 degrees at the origin, 45 at the other two corners
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    cos = angle_potentials(e)  # order (j, i, k) over distinct triplets: j = 0 first
    expected = torch.tensor([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5), math.sqrt(0.5), math.sqrt(0.5)],
                            dtype=torch.float64)
    torch.testing.assert_close(cos, expected)
    # sides 1, 1, sqrt 2; mean sqrt(2)/3 + 2/3
    mu = (2 + math.sqrt(2)) / 3
    torch.testing.assert_close(distance_potentials(e),
                               torch.tensor([1 / mu, 1 / mu, math.sqrt(2) / mu], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 10), st.integers(2, 6), st.floats(1e-2, 1e2), st.integers(0, 10_000))
def test_rkd_invariant_to_rotating_scaling_and_shifting(B, D, c, seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, D, generator=g, dtype=torch.float64)
    moved = c * e @ random_rotation(D, seed) + torch.randn(1, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(distance_potentials(moved), distance_potentials(e), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(angle_potentials(moved), angle_potentials(e), atol=1e-7, rtol=1e-7)
    zero = torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(rkd_loss(moved, e), zero, atol=1e-9, rtol=0)


def test_rkd_loss_is_zero_for_an_isometric_embedding_of_other_width():
    torch.manual_seed(6)
    s = torch.randn(8, 3, dtype=torch.float64)
    Q = random_rotation(5)[:3]  # (3, 5) with orthonormal rows: a length-preserving map R^3 -> R^5
    t = 7.0 * s @ Q
    assert rkd_loss(s, t).item() == pytest.approx(0.0, abs=1e-10)
    assert rkd_loss(s, torch.randn(8, 5, dtype=torch.float64)).item() > 0.01


def test_rkd_losses_match_reference():
    torch.manual_seed(7)
    s, t = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 9, dtype=torch.float64)
    torch.testing.assert_close(rkd_distance_loss(s, t), F.smooth_l1_loss(direct_distances(s), direct_distances(t)))
    torch.testing.assert_close(rkd_angle_loss(s, t), F.smooth_l1_loss(direct_angles(s), direct_angles(t)))
    torch.testing.assert_close(rkd_loss(s, t, 2.0, 3.0),
                               2 * rkd_distance_loss(s, t) + 3 * rkd_angle_loss(s, t))


def test_rkd_gradient_finite_with_duplicate_embeddings():
    e = torch.randn(5, 3)
    e[1] = e[0]
    e.requires_grad_(True)
    rkd_loss(e, torch.randn(5, 4)).backward()
    assert torch.isfinite(e.grad).all()


def test_rkd_teacher_gets_no_gradient():
    s = torch.randn(6, 3, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    rkd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_rkd_bad_inputs():
    with pytest.raises(ValueError, match="batch sizes"):
        rkd_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle_loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="feature dimension"):
        rkd_distance_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="w_angle"):
        rkd_loss(torch.randn(4, 3), torch.randn(4, 3), w_angle=-1.0)


# ----------------------------------------------------------------------------- decoupled KD


def test_dkd_terms_match_reference():
    torch.manual_seed(8)
    s, t = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    y = torch.tensor([0, 5, 2, 2, 3])
    T = 3.0
    tckd, nckd, pt = dkd_terms(s, t, y, T)
    ps, pt_all = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    for n in range(5):
        a, b = pt_all[n, y[n]], ps[n, y[n]]
        ref_t = T * T * (a * torch.log(a / b) + (1 - a) * torch.log((1 - a) / (1 - b)))
        keep = [k for k in range(6) if k != y[n]]
        qt, qs = torch.softmax(t[n, keep] / T, 0), torch.softmax(s[n, keep] / T, 0)
        ref_n = T * T * (qt * torch.log(qt / qs)).sum()
        torch.testing.assert_close(tckd[n], ref_t)
        torch.testing.assert_close(nckd[n], ref_n)
        torch.testing.assert_close(pt[n], a)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 10), st.integers(1, 6), st.floats(0.5, 10.0), st.floats(0.5, 15.0), st.integers(0, 10_000))
def test_kd_is_tckd_plus_weighted_nckd(K, B, T, spread, seed):
    """The paper's decomposition: KD = TCKD + (1 - p_t^T) NCKD, example by example."""
    g = torch.Generator().manual_seed(seed)
    s = spread * torch.randn(B, K, generator=g, dtype=torch.float64)
    t = spread * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    tckd, nckd, pt = dkd_terms(s, t, y, T)
    torch.testing.assert_close((tckd + (1 - pt) * nckd).mean(), kd_loss(s, t, None, T=T, alpha=1.0))
    assert (tckd >= -1e-9).all() and (nckd >= -1e-9).all()


def test_dkd_loss_weights_the_two_parts():
    torch.manual_seed(9)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([1, 0, 4, 2])
    tckd, nckd, pt = dkd_terms(s, t, y, 2.0)
    torch.testing.assert_close(dkd_loss(s, t, y, alpha=1.5, beta=8.0, T=2.0), (1.5 * tckd + 8.0 * nckd).mean())
    # alpha = 1 with NCKD weighted by (1 - p_t) example by example is KD; a fixed beta is not
    torch.testing.assert_close(dkd_loss(s, t, y, alpha=1.0, beta=0.0, T=2.0), tckd.mean())
    assert dkd_loss(s, s, y, T=2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_stable_and_teacher_gets_no_gradient():
    s = torch.tensor([[1e4, 0.0, -1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 0.0, 1e4]], requires_grad=True)
    value = dkd_loss(s, t, torch.tensor([0]), T=1.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all() and t.grad is None


def test_dkd_bad_inputs():
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="labels must lie"):
        dkd_loss(s, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must have shape"):
        dkd_loss(s, t, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer tensor"):
        dkd_loss(s, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        dkd_loss(s, torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="beta"):
        dkd_loss(s, t, torch.tensor([0, 1]), beta=-1.0)
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        dkd_loss(s, t, torch.tensor([0, 1]), T=0.0)


# ----------------------------------------------------------------------------- distill with a feature term


def test_a_feature_term_of_weight_zero_leaves_the_student_as_without_it():
    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    kw = dict(T=3.0, alpha=0.7, num_epochs=2, lr=1e-2, progress=False, seed=0)
    distill(a, teacher, loader, **kw)
    distill(b, teacher, loader, feature_loss=FitNetsHint([2], [4]), student_layers=["3"], teacher_layers=["3"],
            beta=0.0, **kw)
    assert same_weights(a, b)  # one loop: the hooks and the regressor's parameters change nothing else
    # a cache shared between runs gives the same student again
    shared = cache_teacher_outputs(teacher, loader, ["3"])
    distill(c, teacher, shared, **kw)
    assert same_weights(a, c)
    # and running the teacher on every batch agrees up to rounding
    d = tiny_model()
    distill(d, teacher, loader, cache_teacher=False, **kw)
    for p, q in zip(a.parameters(), d.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_distill_feature_term_trains_the_regressor_and_cleans_up():
    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_model()
    hint = FitNetsHint([2], [4])
    w0 = hint.regressors[0].weight.detach().clone()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    X, _ = data.tensors

    def hint_now():
        with torch.no_grad(), capture(student, ["3"]) as s, capture(teacher, ["3"]) as t:
            student(X), teacher(X)
            return hint([s["3"]], [t["3"]]).item()

    student.eval()
    before = hint_now()
    h = distill(student, teacher, loader, feature_loss=hint, student_layers=["3"], teacher_layers=["3"], beta=10.0,
                         alpha=0.0, num_epochs=5, lr=2e-2, progress=False, seed=0)
    assert h.num_epochs == 5
    assert not torch.equal(hint.regressors[0].weight, w0)
    assert hint_now() < before
    assert no_hooks_left(student) and no_hooks_left(teacher)
    assert not student.training
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())


def test_distill_feature_term_cached_and_live_teacher_features_agree():
    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    kw = dict(student_layers=["3", "7"], teacher_layers=["3", "7"], beta=100.0, alpha=0.5, num_epochs=2,
              lr=1e-2, progress=False, seed=0)

    def at(s, t):
        return sum(attention_loss(a, b) for a, b in zip(s, t))

    a, b = tiny_model(), tiny_model()
    distill(a, teacher, loader, feature_loss=at, **kw)
    distill(b, teacher, loader, feature_loss=at, cache_teacher=False, **kw)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_distill_feature_term_removes_hooks_when_the_loss_fails():
    data = tiny_data()
    teacher, student = tiny_model(width=4, seed=1).eval(), tiny_model()

    def broken(s, t):
        raise RuntimeError("broken loss")

    with pytest.raises(RuntimeError, match="broken loss"):
        distill(student, teacher, make_loader(data, 16), feature_loss=broken, student_layers=["3"],
                         teacher_layers=["3"], num_epochs=1, progress=False)
    assert no_hooks_left(student) and no_hooks_left(teacher)


def test_distill_feature_term_custom_logit_loss():
    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    calls = []

    def logit_loss(z_s, z_t, y):
        calls.append((z_s.shape, z_t.shape, y.shape))
        return F.cross_entropy(z_s, y) + dkd_loss(z_s, z_t, y)

    distill(tiny_model(), teacher, make_loader(data, 16), logit_loss=logit_loss, num_epochs=1,
                     progress=False)
    assert calls[0] == ((16, 3), (16, 3), (16,)) and len(calls) == 3


def test_cache_teacher_outputs_content_and_order():
    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    cached = cache_teacher_outputs(teacher, loader, ["3", "7"])
    ds = cached.dataset
    assert isinstance(ds, TeacherOutputs) and ds.layers == ("3", "7") and ds.teacher is teacher
    X = data.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(ds.tensors[2], teacher(X))
        torch.testing.assert_close(ds.tensors[3], upto(teacher, 4)(X))
        torch.testing.assert_close(ds.tensors[4], upto(teacher, 8)(X))
    assert no_hooks_left(teacher) and cached.batch_size == 16
    assert "layers=['3', '7']" in repr(ds)


def test_distill_feature_term_bad_input():
    data = tiny_data()
    teacher, student = tiny_model(width=4, seed=1).eval(), tiny_model()
    loader = make_loader(data, 16)
    kw = dict(num_epochs=1, progress=False)

    def at(s, t):
        return attention_loss(s[0], t[0])

    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        distill(student, teacher, loader, feature_loss=at, student_layers=["conv9"], teacher_layers=["3"], **kw)
    with pytest.raises(ValueError, match="pair up"):
        distill(student, teacher, loader, feature_loss=at, student_layers=["3"], teacher_layers=["3", "7"], **kw)
    with pytest.raises(ValueError, match="go together"):
        distill(student, teacher, loader, feature_loss=at, **kw)
    with pytest.raises(ValueError, match="go together"):
        distill(student, teacher, loader, student_layers=["3"], teacher_layers=["3"], **kw)
    with pytest.raises(TypeError, match="feature_loss must be a function"):
        distill(student, teacher, loader, feature_loss="at", student_layers=["3"], teacher_layers=["3"], **kw)
    with pytest.raises(ValueError, match="beta"):
        distill(student, teacher, loader, feature_loss=at, student_layers=["3"], teacher_layers=["3"], beta=-1, **kw)
    with pytest.raises(ValueError, match="same object"):
        distill(student, student, loader, **kw)
    other = tiny_model(width=4, seed=2).eval()
    with pytest.raises(ValueError, match="different teacher"):
        distill(student, other, cache_teacher_outputs(teacher, loader), **kw)
    with pytest.raises(ValueError, match="caches the teacher layers"):
        distill(student, teacher, cache_teacher_outputs(teacher, loader, ["3"]), feature_loss=at,
                         student_layers=["7"], teacher_layers=["7"], **kw)
    with pytest.raises(ValueError, match="already holds cached"):
        cache_teacher_outputs(teacher, cache_teacher_outputs(teacher, loader))
    with pytest.raises(ValueError, match="batch sizes"):
        # student features of one batch against teacher features of another size
        distill(student, teacher, loader, feature_loss=lambda s, t: attention_loss(s[0], t[0][:3]),
                         student_layers=["3"], teacher_layers=["3"], **kw)
    assert no_hooks_left(student) and no_hooks_left(teacher)


def test_distill_feature_term_reports_a_layer_that_never_runs():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_model()
            self.spare = nn.Linear(3, 3)  # never called in forward

        def forward(self, X):
            return self.body(X)

    teacher = tiny_model(width=4, seed=1).eval()
    with pytest.raises(ValueError, match="did not run"):
        distill(WithSpare(), teacher, make_loader(tiny_data(), 16), feature_loss=lambda s, t: s[0].sum(),
                         student_layers=["spare"], teacher_layers=["3"], num_epochs=1, progress=False)


# ----------------------------------------------------------------------------- teacher chains


def test_teacher_assistant_chain_is_two_distillations():
    data = tiny_data()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    teacher = tiny_model(width=8, seed=1).eval()
    kw = dict(num_epochs=2, lr=1e-2, progress=False, seed=0)
    ta, student = tiny_model(width=4, seed=2), tiny_model(seed=3)
    histories = teacher_assistant_chain(teacher, [ta], student, loader, **kw)
    assert len(histories) == 2
    ta2, student2 = tiny_model(width=4, seed=2), tiny_model(seed=3)
    distill(ta2, teacher, loader, **kw)
    distill(student2, ta2, loader, **kw)
    assert same_weights(ta, ta2) and same_weights(student, student2)
    with pytest.raises(ValueError, match="assistants is empty"):
        teacher_assistant_chain(teacher, [], student, loader, **kw)
    with pytest.raises(ValueError, match="different model objects"):
        teacher_assistant_chain(teacher, [student], student, loader, **kw)
    # a cache of the teacher's outputs serves the first step only; the student learns from the assistant
    for cached in (cache_teacher_outputs(teacher, loader, ["3"]), cache_teacher_outputs(teacher, loader)):
        ta3, student3 = tiny_model(width=4, seed=2), tiny_model(seed=3)
        teacher_assistant_chain(teacher, [ta3], student3, cached, **kw)
        assert same_weights(ta3, ta2) and same_weights(student3, student2)


def test_born_again_generations():
    data = tiny_data()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    kw = dict(num_epochs=1, lr=1e-2, progress=False, seed=0)
    models, histories = born_again(lambda: tiny_model(), loader, generations=2, train_kwargs=kw, **kw)
    assert len(models) == 3 and len(histories) == 3
    assert all(isinstance(m, StudentCNN) for m in models)
    assert not same_weights(models[1], models[2])
    # with a trained generation 0 given, it is reused as it is
    first = models[0]
    state = {k: v.clone() for k, v in first.state_dict().items()}
    models2, histories2 = born_again(lambda: tiny_model(), loader, first=first, **kw)
    assert models2[0] is first and len(models2) == 2 and len(histories2) == 1
    assert all(torch.equal(v, state[k]) for k, v in first.state_dict().items())
    assert same_weights(models2[1], models[1])  # the same recipe, the same first distilled generation
    # another model's cached logits in the loader are not used as the generations' targets
    other_cache = cache_teacher_outputs(tiny_model(width=4, seed=5).eval(), loader)
    models3, _ = born_again(lambda: tiny_model(), other_cache, first=first, **kw)
    assert same_weights(models3[1], models[1])


def test_born_again_bad_input():
    loader = make_loader(tiny_data(), 16)
    with pytest.raises(ValueError, match="generations"):
        born_again(lambda: tiny_model(), loader, generations=0)
    with pytest.raises(TypeError, match="make_model"):
        born_again(tiny_model(), loader)
    same = tiny_model()
    with pytest.raises(ValueError, match="same object"):
        born_again(lambda: same, loader, first=tiny_model().eval(), generations=2, num_epochs=1, progress=False)


# ----------------------------------------------------------------------------- the chapter's exercise checks


def test_checks_accept_right_answers_and_explain_wrong_ones():
    from kdlib.exercises import run_check

    def layer_output(model, name, X):
        with capture(model, [name]) as feats:
            model(X)
        return feats[name]

    def leaky_layer_output(model, name, X):  # forgets to remove its hook
        stored = {}
        dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: stored.update(out=o))
        model(X)
        return stored["out"]

    assert run_check("07.1", layer_output) is None
    assert "still attached" in run_check("07.1", leaky_layer_output)

    assert run_check("07.2", attention_map) is None
    assert "L2 norm 1" in run_check("07.2", lambda f: f.pow(2).mean(1).flatten(1))
    assert "(B, H*W)" in run_check("07.2", lambda f: attention_map(f).view(f.shape[0], *f.shape[2:]))

    assert run_check("07.3", distance_potentials) is None

    def raw(e):
        i, j = torch.triu_indices(len(e), len(e), 1)
        return (e[i] - e[j]).norm(dim=1)

    assert "raw distances" in run_check("07.3", raw)
    assert "(B, B) matrix" in run_check("07.3", lambda e: torch.cdist(e, e))

    assert run_check("07.4", lambda s, t, y, T: dkd_terms(s, t, y, T)[:2]) is None
    assert "T^2" in run_check("07.4", lambda s, t, y, T: tuple(v / T**2 for v in dkd_terms(s, t, y, T)[:2]))
    assert "swapped" in run_check("07.4", lambda s, t, y, T: dkd_terms(s, t, y, T)[1::-1])
    batch_means = run_check("07.4", lambda s, t, y, T: tuple(v.mean() for v in dkd_terms(s, t, y, T)[:2]))
    assert "one value per example" in batch_means


def test_shared_cache_never_runs_the_teacher_but_still_guards_it():
    from kdlib.guards import WeakTeacherWarning

    data = tiny_data()
    teacher = tiny_model(width=4, seed=1).eval()
    loader = make_loader(data, 16, shuffle=True, seed=0)
    shared = cache_teacher_outputs(teacher, loader, ["3"])
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        with pytest.warns(WeakTeacherWarning):  # a random teacher: the guard sees the cached logits
            distill(tiny_model(), teacher, shared, feature_loss=lambda s, t: attention_loss(s[0], t[0]),
                             student_layers=["3"], teacher_layers=["3"], num_epochs=1, progress=False)
    finally:
        handle.remove()
    assert calls == []


# --- bad input: clear errors raised by kdlib (cases the fuzz of tests/test_fuzz.py found) -----------

def _tiny_loader():
    X, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    return torch.utils.data.DataLoader(TensorDataset(X, y), batch_size=4)


def _tiny_model():
    return StudentCNN((1, 8, 8), 3, width=2, depth=1)


@pytest.mark.parametrize("call, error, words", [
    (lambda: distance_potentials(torch.randn(5, 3) * 1e29), ValueError, "overflow"),
    (lambda: rkd_loss(torch.randn(5, 3), torch.randn(5, 4) * 1e30), ValueError, "normalise the embeddings"),
    (lambda: distance_potentials(torch.randn(5, 3), eps=-1.0), ValueError, "eps must be a finite number in (0, 1]"),
    (lambda: angle_potentials(torch.randn(5, 3), eps=None), TypeError, "eps must be a number"),
    (lambda: attention_map(torch.randn(2, 3, 4, 4), p=5e16), ValueError, "use a smaller p"),
    (lambda: attention_map(torch.randn(2, 0, 4, 4)), ValueError, "empty dimension"),
    (lambda: attention_map(torch.randn(2, 3, 4, 4), size=3), TypeError, "(height, width)"),
    (lambda: attention_loss(torch.randn(2, 3, 4, 4) * 1e30, torch.randn(2, 3, 4, 4)), ValueError, "overflows"),
    (lambda: dkd_loss(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), alpha=math.nan),
     ValueError, "alpha must be a finite number"),
    (lambda: dkd_terms(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), T=4e195),
     ValueError, "T^2 overflows"),
    (lambda: dkd_terms(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), T=2e-309),
     ValueError, "too large for T"),
    (lambda: FitNetsHint(2.5, (4,)), TypeError, "student_channels must be a list"),
    (lambda: TeacherOutputs(torch.randn(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), torch.randn(4, 3), [], [],
                            _tiny_model()), ValueError, "same number of rows"),
    (lambda: TeacherOutputs([1.0], torch.zeros(1, dtype=torch.long), torch.randn(1, 3), [], [], _tiny_model()),
     TypeError, "X must be a torch.Tensor"),
    (lambda: cache_teacher_outputs(StudentCNN((1, 5, 5), 3, width=2, depth=1), _tiny_loader()),
     ValueError, "teacher cannot run on a batch"),
    (lambda: cache_teacher_outputs(_tiny_model(), _tiny_loader(), layers=None), TypeError, "layers must be a list"),
    (lambda: teacher_assistant_chain(_tiny_model(), _tiny_model(), _tiny_model(), _tiny_loader()),
     TypeError, "put a single assistant in a list"),
    (lambda: born_again(_tiny_model, _tiny_loader(), train_kwargs=dict(epochs=1)), TypeError, "['epochs']"),
    (lambda: born_again(_tiny_model, _tiny_loader(), train_kwargs=3), TypeError, "train_kwargs must be a dict"),
])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as err:
        call()
    assert words in str(err.value)
