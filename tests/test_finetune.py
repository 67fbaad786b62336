"""Fine-tuning: learns, keeps the best weights, resumes, is repeatable, runs under DDP."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import surgery
from surgery import metrics, training
from surgery.training import finetune
from tests.models import BatchNormIQA, TinyIQA, assert_unchanged, snapshot


def toy_split(n=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 8, 8, generator=generator)
    images[: n // 2] *= 0.5  # two brightness levels, quality = brightness
    targets = images.mean((1, 2, 3)) * 5
    return (images[: n * 3 // 4], targets[: n * 3 // 4]), (images[n * 3 // 4 :], targets[n * 3 // 4 :])


def test_finetune_learns_and_reports(capsys):
    train, val = toy_split()
    model = TinyIQA()
    result = finetune(model, train, val, epochs=4, lr=3e-2, loss="plcc")
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_srocc == max(h["val_srocc"] for h in result.history) > 0.8
    with torch.no_grad():
        assert metrics.srocc(model(val[0]), val[1]) == pytest.approx(result.best_srocc)
    shown = capsys.readouterr()
    assert "val_srocc" in shown.out and "epoch 1/4" in shown.err  # per-epoch line, progress bar


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frozen_batchnorm_keeps_its_statistics_and_mode_is_restored(mode):
    train, val = toy_split()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1),
        torch.nn.Linear(4, 1),
    ).train(mode == "train")
    frozen_stats = model[1].running_mean.clone()
    trained = list(model[3].parameters()) + list(model[4].parameters()) + list(model[7].parameters())
    finetune(model, train, val, epochs=1, lr=1e-2, loss="mse", parameters=trained, progress=False)
    assert torch.equal(model[1].running_mean, frozen_stats)  # its layer was not trained
    assert not torch.equal(model[4].running_mean, torch.zeros(4))  # the trained one adapted
    assert model.training == (mode == "train")


def test_same_seed_same_result():
    train, val = toy_split()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = TinyIQA()
        runs.append(finetune(model, train, val, epochs=2, seed=7, progress=False).history)
    assert [h["train_loss"] for h in runs[0]] == [h["train_loss"] for h in runs[1]]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    train, val = toy_split()
    torch.manual_seed(0)
    start = TinyIQA().state_dict()
    reference = TinyIQA()
    reference.load_state_dict(start)
    finetune(reference, train, val, epochs=3, checkpoint_dir=tmp_path / "full", progress=False)

    real_validate, calls = training._validate, []

    def crash_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    interrupted = TinyIQA()
    interrupted.load_state_dict(start)
    monkeypatch.setattr(training, "_validate", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(interrupted, train, val, epochs=3, checkpoint_dir=tmp_path / "cut", progress=False)
    monkeypatch.setattr(training, "_validate", real_validate)
    assert all(torch.equal(interrupted.state_dict()[k], v) for k, v in start.items())  # given back as it came

    fresh = TinyIQA()  # as a new process would build it
    resumed = finetune(fresh, train, val, epochs=3, checkpoint_dir=tmp_path / "cut", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_best_checkpoint_loads_with_surgery_load(tmp_path):
    train, val = toy_split()
    model = surgery.harden(surgery.create_model("timm-iqa", backbone="resnet18"), input_size=(3, 32, 32))
    up = lambda data: (torch.nn.functional.interpolate(data[0], size=32), data[1])  # noqa: E731
    result = finetune(model, up(train), up(val), epochs=1, batch_size=12, checkpoint_dir=tmp_path, progress=False)
    assert result.best_path == os.path.join(tmp_path, "best.pt")
    loaded = surgery.load(result.best_path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []


def test_each_module_keeps_its_own_mode():
    train, val = toy_split()
    model = BatchNormIQA().train()
    model.head.eval()  # dropout off on purpose
    finetune(model, train, val, epochs=1, progress=False)
    assert model.training and model.features.training and not model.head.training and not model.head[0].training


def test_a_failed_run_gives_the_model_back():
    train, _ = toy_split()
    model = BatchNormIQA().train()
    model.head.eval()
    before = snapshot(model)
    with pytest.raises(FloatingPointError):
        finetune(model, train, epochs=1, lr=1e30, loss=lambda p, t: (p - t).square().mean() * float("inf"), progress=False)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "train,val,match",
    [
        ((torch.rand(8, 3, 8, 8) * 255, torch.rand(8)), None, r"in \[0, 1\]"),
        ((torch.rand(8, 3, 8, 8), torch.tensor([1.0, float("nan")] * 4)), None, "NaN or inf scores"),
        ((torch.rand(8, 3, 8, 8), torch.rand(8)), (torch.rand(4, 3, 8, 8), torch.ones(4)), "every val score is 1"),
        ((torch.rand(8, 3, 8, 8), torch.rand(8)), (torch.rand(1, 3, 8, 8), torch.rand(1)), "at least 2"),
    ],
)
def test_bad_data_is_named_before_training(train, val, match):
    model = TinyIQA()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        finetune(model, train, val, epochs=1, batch_size=4, progress=False)
    assert_unchanged(model, before)


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="last.pt.*resume=False"):
        finetune(TinyIQA(), toy_split()[0], checkpoint_dir=tmp_path, progress=False)


def test_bad_inputs():
    with pytest.raises(TypeError, match="Dataset"):
        finetune(TinyIQA(), [1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="4 images but 3"):
        finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(3)), progress=False)
    frozen = TinyIQA().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        finetune(frozen, (torch.rand(4, 3, 8, 8), torch.rand(4)), progress=False)


def _ddp_worker(rank, world, folder, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyIQA()
    train, val = toy_split()
    finetune(model, train, val, epochs=2, checkpoint_dir=folder, progress=False)
    torch.save(model.state_dict(), os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_on_cpu_with_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
