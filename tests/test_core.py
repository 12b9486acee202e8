"""kdlib.utils, models, bench, train: checkpoints, shapes, counts against closed forms."""
import os

import pytest
import torch
from torch import nn

from kdlib import data, inference, measure, models, train, utils


# -- utils ----------------------------------------------------------------------------------

def test_seed_everything_repeats():
    utils.seed_everything(5)
    a = torch.randn(3)
    utils.seed_everything(5)
    assert torch.equal(a, torch.randn(3))
    with pytest.raises(TypeError):
        utils.seed_everything("5")


def test_atomic_write_and_missing_folder(tmp_path):
    p = tmp_path / "f.bin"
    utils.atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left
    with pytest.raises(FileNotFoundError, match="does not exist"):
        utils.atomic_write_bytes(tmp_path / "no" / "f.bin", b"x")


def test_checkpoint_round_trip_and_hash(tmp_path):
    m = models.StudentCNN()
    p = tmp_path / "m.pt"
    digest = utils.save_checkpoint(m, p)
    assert digest == utils.sha256_file(p) == utils.read_expected_sha256(p)
    m2 = utils.load_checkpoint(models.StudentCNN(), p)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        utils.save_checkpoint(m, p)


def test_corrupted_checkpoint_is_refused_and_left_alone(tmp_path):
    p = tmp_path / "m.pt"
    utils.save_checkpoint(models.StudentCNN(), p)
    raw = bytearray(p.read_bytes())
    raw[100] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        utils.load_checkpoint(models.StudentCNN(), p)
    # load_or_train must not silently retrain over the user's file either
    with pytest.raises(ValueError, match="corrupted"):
        utils.load_or_train(p, models.StudentCNN, lambda m: None)
    assert p.read_bytes() == bytes(raw)


def test_checkpoint_that_does_not_fit(tmp_path):
    p = tmp_path / "m.pt"
    utils.save_checkpoint(models.StudentCNN(width=8), p)
    with pytest.raises(ValueError, match="does not fit StudentCNN"):
        utils.load_checkpoint(models.StudentCNN(width=4), p)


def test_load_or_train_trains_once(tmp_path):
    calls = []
    p = tmp_path / "sub" / "m.pt"
    m1 = utils.load_or_train(p, models.StudentCNN, calls.append, verbose=False)
    m2 = utils.load_or_train(p, models.StudentCNN, calls.append, verbose=False)
    assert len(calls) == 1 and not m2.training
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


# -- models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
@pytest.mark.parametrize("cls", [models.TeacherCNN, models.StudentCNN, models.StudentMLP])
def test_models_fit_every_input_shape(cls, shape):
    m = cls(input_shape=shape, num_classes=7).eval()
    assert m(torch.zeros(2, *shape)).shape == (2, 7)


def test_student_param_count_closed_form():
    # conv 1->8 (72) + BN 16 + conv 8->16 (1152) + BN 32 + linear 16*7*7*10 + 10
    assert measure.count_params(models.StudentCNN()) == 72 + 16 + 1152 + 32 + 784 * 10 + 10


def test_mlp_param_count_closed_form():
    assert measure.count_params(models.StudentMLP(hidden=(64,))) == 784 * 64 + 64 + 64 * 10 + 10


def test_torchvision_adapters():
    for name in ("resnet18", "mobilenet_v3_small"):
        m = models.build_model(name, (3, 32, 32), 10).eval()
        assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("vgg99")
    with pytest.raises(ValueError, match="too small"):
        models.StudentCNN((1, 8, 8), depth=4)
    with pytest.raises(ValueError, match="width"):
        models.TeacherCNN(width=0)
    with pytest.raises(ValueError, match="input_shape"):
        models.StudentCNN((28, 28))


# -- bench ----------------------------------------------------------------------------------

def test_macs_closed_form():
    lin = nn.Linear(20, 5)
    assert measure.count_macs(lin, torch.zeros(1, 20)) == 100
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert measure.count_macs(conv, torch.zeros(1, 2, 6, 6)) == 2 * 4 * 9 * 36


def test_serialized_size_grows_with_params():
    small, big = measure.serialized_size(nn.Linear(10, 10)), measure.serialized_size(nn.Linear(100, 100))
    assert big - small == pytest.approx((10100 - 110) * 4, rel=0.01)


def test_latency_reports_median_and_p90():
    r = measure.latency(nn.Linear(4, 2), torch.zeros(1, 4), repeats=20, warmup=2)
    assert 0 < r["median_us"] <= r["p90_us"]
    r = measure.compare_latency({"a": lambda: None, "b": lambda: sum(range(1000))}, rounds=2, repeats=5, warmup=1)
    assert set(r) == {"a", "b"} and r["a"]["median_us"] < r["b"]["median_us"]
    with pytest.raises(ValueError):
        measure.compare_latency({})


def test_profile_keys():
    p = measure.profile(models.StudentCNN(), torch.zeros(1, 1, 28, 28), repeats=5)
    assert set(p) == {"params", "macs", "bytes", "latency_us", "latency_p90_us"}
    assert p["params"] == 9122


# -- train ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_train_learns_and_is_reproducible(digits):
    loader = data.make_loader(digits.train, 64, shuffle=True, seed=0)
    val = data.make_loader(digits.val, 256)
    runs = []
    for _ in range(2):
        utils.seed_everything(0)
        m = models.StudentCNN((1, 8, 8), width=4, depth=1)
        h = train.train(m, loader, num_epochs=5, lr=1e-2, val_loader=val, progress=False, seed=0)
        runs.append((m, h))
    assert runs[0][1].train_loss == runs[1][1].train_loss
    assert runs[0][1].train_loss[-1] < runs[0][1].train_loss[0]
    assert runs[0][1].val_accuracy[-1] > 0.8
    assert not runs[0][0].training
    assert "History(epochs=5" in repr(runs[0][1])


def test_cnns_train_channels_last_on_cpu_with_the_same_numbers(digits, monkeypatch):
    loader = data.make_loader(digits.train, 64, shuffle=True, seed=0)

    def run():
        utils.seed_everything(0)
        m = models.StudentCNN((1, 8, 8), width=4, depth=2)
        return m, train.train(m, loader, num_epochs=3, lr=1e-2, progress=False, seed=0)

    assert inference.channels_last(models.StudentCNN((1, 8, 8), width=4, depth=1), "cpu")
    assert not inference.channels_last(models.StudentMLP((1, 8, 8)), "cpu")  # no convolution: nothing to gain
    fast, h_fast = run()
    conv = [m for m in fast.modules() if isinstance(m, nn.Conv2d)][-1].weight  # (8, 4, 3, 3)
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)  # handed back as usual
    monkeypatch.setattr(inference, "channels_last", lambda model, device: False)
    plain, h_plain = run()
    assert h_fast.train_loss == pytest.approx(h_plain.train_loss, rel=1e-4)  # the same training, laid out differently
    for a, b in zip(fast.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    monkeypatch.undo()
    # inference too: same logits, and a model that was channels-last stays so
    X = data.as_tensors(digits.test)[0]
    logits, _ = inference.predict_logits(fast, data.make_loader(digits.test, 64))
    torch.testing.assert_close(logits, fast(X), rtol=1e-4, atol=1e-5)
    assert len(X) > inference.INFERENCE_CHUNK  # one batch of the whole test set: run in chunks, same logits
    whole, y = inference.predict_logits(fast, data.make_loader(digits.test, len(X)))
    torch.testing.assert_close(whole, logits, rtol=1e-4, atol=1e-5)
    assert len(whole) == len(y) == len(X)
    assert conv.is_contiguous()
    fast.to(memory_format=torch.channels_last)
    inference.predict_logits(fast, data.make_loader(digits.test, 64))
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_evaluate_agreement_with_itself_is_one(digits):
    m = models.StudentMLP((1, 8, 8), hidden=(16,))
    r = inference.evaluate(m, data.make_loader(digits.val, 64), teacher=m)
    assert r["agreement"] == 1.0 and 0 <= r["accuracy"] <= 1


def test_distill_moves_student_towards_teacher(digits):
    loader = data.make_loader(digits.train, 64, shuffle=True, seed=0)
    val = data.make_loader(digits.val, 256)
    utils.seed_everything(0)
    teacher = models.StudentCNN((1, 8, 8), width=8, depth=1)
    train.train(teacher, loader, num_epochs=8, lr=1e-2, progress=False, seed=0)
    utils.seed_everything(1)
    student = models.StudentMLP((1, 8, 8), hidden=(32,))
    before = inference.evaluate(student, val, teacher=teacher)["agreement"]
    train.distill(student, teacher, loader, T=4.0, alpha=1.0, num_epochs=8, lr=1e-2, progress=False, seed=0)
    assert inference.evaluate(student, val, teacher=teacher)["agreement"] > max(before, 0.8)


def test_train_bad_arguments(digits):
    loader = data.make_loader(digits.train, 64)
    m = models.StudentMLP((1, 8, 8))
    with pytest.raises(ValueError, match="num_epochs"):
        train.train(m, loader, num_epochs=0)
    with pytest.raises(ValueError, match="lr"):
        train.train(m, loader, lr=-1.0)
    with pytest.raises(TypeError, match="DataLoader"):
        train.train(m, digits.train)
    with pytest.raises(ValueError, match="schedule"):
        train.train(m, loader, schedule="step", progress=False)
    with pytest.raises(ValueError, match="same object"):
        train.distill(m, m, loader)
    with pytest.raises(ValueError, match="cache_teacher=False"):
        train.distill(m, models.StudentMLP((1, 8, 8)), loader, cache_teacher=True,
                      augment=data.random_shift_rotate)


def test_machine_info_reads_cpuinfo_flags(monkeypatch, tmp_path):
    import builtins

    from kdlib import measure

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(fake if f == "/proc/cpuinfo" else f, *a, **k))
    info = measure.machine_info()
    assert info["processor"] == "Test CPU 9000"
    assert info["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni"]  # the first processor's, in a fixed order
    assert info["torch"] == torch.__version__ and info["cores"] >= 1


def test_eval_mode_restores_each_submodule_own_mode():
    from kdlib.utils import eval_mode
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    with eval_mode(model) as m:
        assert m is model and not any(x.training for x in model.modules())
    assert [x.training for x in model.modules()] == [True, True, False, True]
    try:
        with eval_mode(model):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert [x.training for x in model.modules()] == [True, True, False, True]
