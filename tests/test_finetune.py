"""Fine-tuning: learns, keeps the best weights, resumes, is repeatable, runs under DDP."""
import contextlib
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import surgery
from surgery import metrics, training
from surgery.defenses import AdversarialTraining, ConsistencyTraining, NormRegularization
from surgery.training import as_dataset, finetune
from tests.models import BatchNormIQA, Scaled, TinyIQA, assert_unchanged, snapshot


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


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_schedule_sets_each_epochs_learning_rate(schedule):
    train, val = toy_split()  # 36 training images: 5 steps of 8 an epoch
    result = finetune(TinyIQA(), train, val, epochs=2, lr=1e-2, schedule=schedule, progress=False)
    after_first = 0.5 * (1 + math.cos(math.pi * 5 / 10)) if schedule == "cosine" else 1.0
    assert [h["lr"] for h in result.history] == pytest.approx([1e-2 * after_first, 0.0 if schedule == "cosine" else 1e-2])


def test_an_unknown_schedule_is_refused_before_training():
    with pytest.raises(ValueError, match="schedule must be one of 'cosine', 'constant', got 'linear'"):
        finetune(TinyIQA(), *toy_split(), schedule="linear")


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

    fresh = TinyIQA()  # as a new process would build it: the same starting weights (a resume checks them)
    fresh.load_state_dict(start)
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


@pytest.mark.parametrize("checkpoints", [False, True])
def test_select_returns_the_best_or_the_last_epoch(checkpoints, tmp_path, monkeypatch):
    """The validation SROCC here falls every epoch, so the best epoch is the first: "best" returns
    its weights, "last" the last epoch's (those of the same run without validation), and a
    resumed run with nothing left to train returns the same (best.pt in memory or on disk). With
    a folder, "last" resumes the folder "best" trained (select changes no run fingerprint)."""
    train, val = toy_split()
    real_validate, falling = training._validate, iter([0.9, 0.8, 0.7] * 4)
    monkeypatch.setattr(training, "_validate", lambda *a, **k: {**real_validate(*a, **k), "val_srocc": next(falling)})
    torch.manual_seed(0)
    start = TinyIQA().state_dict()
    weights, results = {}, {}
    for select in ("best", "last", None):
        model = TinyIQA()
        model.load_state_dict(start)
        folder = (tmp_path / ("run" if select else "no-val")) if checkpoints else None
        options = {"epochs": 3, "lr": 3e-2, "progress": False, "checkpoint_dir": folder}
        if select is None:  # no validation: the last epoch, whatever select says
            results[select] = finetune(model, train, **options)
        else:
            results[select] = finetune(model, train, val, select=select, **options)
            if checkpoints:  # nothing left to train: the same weights come back
                again = TinyIQA()
                again.load_state_dict(start)
                assert finetune(again, train, val, select=select, **options).epoch == results[select].epoch
                for key, value in model.state_dict().items():
                    assert torch.equal(again.state_dict()[key], value), key
        weights[select] = model.state_dict()
    assert (results["best"].epoch, results["best"].best_epoch, results["last"].epoch, results["last"].best_epoch) == (1, 1, 3, 1)
    assert results[None].epoch == 3
    for key, value in weights[None].items():
        torch.testing.assert_close(weights["last"][key], value)
    assert not all(torch.equal(weights["best"][k], v) for k, v in weights["last"].items())
    with pytest.raises(ValueError, match="select must be 'best' or 'last'"):
        finetune(TinyIQA(), train, val, select="first", progress=False)


def test_select_last_warns_when_the_last_epoch_is_flagged_overfit(monkeypatch):
    train, val = toy_split()
    gains = iter([0.1, 0.25])
    monkeypatch.setattr(training._AttackCheck, "gain", lambda self, network, device, autocast, score_range: next(gains))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="select='last' returns epoch 2, flagged overfit"), \
            pytest.warns(UserWarning, match="catastrophic overfitting at epoch 2"):
        result = finetune(TinyIQA(), train, val, epochs=2, lr=1e-2, loss="mse", progress=False, select="last",
                          defense=ConsistencyTraining(steps=1))
    assert result.epoch == 2 and result.history[-1]["overfit"]


def test_a_moved_checkpoint_folder_still_gives_its_best_epoch(tmp_path, monkeypatch):
    """last.pt recorded where best.pt was written: a resume from a moved folder kept the last
    epoch's weights although select='best' (the recorded path no longer existed)."""
    train, val = toy_split()
    falling = iter([0.9, 0.8, 0.7])
    real_validate = training._validate
    monkeypatch.setattr(training, "_validate", lambda *a, **k: {**real_validate(*a, **k), "val_srocc": next(falling)})
    torch.manual_seed(0)
    start = TinyIQA().state_dict()
    model = TinyIQA()
    model.load_state_dict(start)
    finetune(model, train, val, epochs=3, lr=3e-2, checkpoint_dir=tmp_path / "here", progress=False)
    os.rename(tmp_path / "here", tmp_path / "there")
    again = TinyIQA()
    again.load_state_dict(start)
    result = finetune(again, train, val, epochs=3, lr=3e-2, checkpoint_dir=tmp_path / "there", progress=False)
    assert result.epoch == 1 and result.best_path == os.path.join(tmp_path / "there", "best.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channels_last_training_keeps_the_trained_weights_in_the_layout_they_came_in(layout):
    train, val = toy_split()
    runs = {}
    for fast in (False, True):
        torch.manual_seed(5)
        model = TinyIQA()
        model.conv.weight.data = model.conv.weight.data.contiguous(memory_format=layout)
        initial, storage = model.conv.weight.detach().clone(), model.conv.weight.data_ptr()
        finetune(model, train, val, epochs=2, lr=1e-2, loss="mse", channels_last=fast, progress=False)
        weight = model.conv.weight
        assert weight.data_ptr() == storage and weight.is_contiguous(memory_format=layout)  # the storage it came with
        assert not torch.allclose(weight, initial)  # holding the trained values
        runs[fast] = {k: v.clone() for k, v in model.state_dict().items()}
    for name, value in runs[False].items():
        torch.testing.assert_close(runs[True][name], value, atol=1e-5, rtol=1e-4)


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


def test_a_reused_checkpoint_folder_is_not_resumed_by_another_run(tmp_path):
    """robustify(B, data_B, checkpoint_dir=D) after A's run used to return A's weights in 0.01 s."""
    train, val = toy_split()
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "progress": False}
    torch.manual_seed(0)
    finetune(TinyIQA(), train, val, **options)
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="belongs to another run.*the model.*resume=False"):
        finetune(TinyIQA(), train, val, **options)
    other_train, other_val = toy_split(seed=1)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="belongs to another run.*the data"):
        finetune(TinyIQA(), other_train, other_val, **options)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"lr \(0.0001 then, 0.001 now\)"):
        finetune(TinyIQA(), train, val, lr=1e-3, **options)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"schedule \(None then, .constant. now\)"):
        finetune(TinyIQA(), train, val, schedule="constant", **options)
    torch.manual_seed(0)
    resumed = finetune(TinyIQA(), train, val, **options)  # the same run: resumes, nothing left to train
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_a_checkpoint_without_a_run_fingerprint_is_refused(tmp_path):
    train, val = toy_split()
    finetune(TinyIQA(), train, val, epochs=1, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["run"]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="no run fingerprint"):
        finetune(TinyIQA(), train, val, epochs=1, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("spoil,says", [
    (lambda images: images * 255, r"val images must be in \[0, 1\].*val image\(s\) \[0, 1, 2"),
    (lambda images: (images * 255).to(torch.uint8), "float val images.*divide uint8"),
    (lambda images: images.index_fill(0, torch.tensor([5]), float("nan")), r"val image\(s\) \[5\] contain NaN"),
])
def test_validation_images_are_checked_like_training_images(spoil, says):
    train, (images, targets) = toy_split()
    model = TinyIQA()
    before = snapshot(model)
    with pytest.raises(ValueError, match=says):
        finetune(model, train, (spoil(images), targets), epochs=1, progress=False)
    assert_unchanged(model, before)


def test_bad_training_images_and_scores_are_named_by_their_dataset_index():
    (images, targets), val = toy_split()
    images, targets = images.clone(), targets.clone()
    images[7, 0, 0, 0] = float("nan")  # the shuffle puts it elsewhere in its batch
    with pytest.raises(ValueError, match=r"training image\(s\) \[7\] contain NaN"):
        finetune(TinyIQA(), (images, targets), val, epochs=1, progress=False)
    images[7, 0, 0, 0] = 0.5
    targets[0] = float("nan")
    with pytest.raises(ValueError, match=r"training image\(s\) \[0\] have NaN or inf scores"):
        finetune(TinyIQA(), (images, targets), val, epochs=1, progress=False)


def test_parameters_of_another_model_are_refused():
    train, _ = toy_split()
    model = TinyIQA()
    with pytest.raises(ValueError, match="not parameters of the model being trained"):
        finetune(model, train, parameters=list(TinyIQA().parameters()), epochs=1, progress=False)


def test_torchrun_without_a_process_group_trains_one_synchronised_model(tmp_path):
    """A script calling finetune under torchrun used to run two unsynchronised fine-tunes."""
    import json
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "torchrun_finetune.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["initialised_after"]) for r in ranks] == [(0, 2, False), (1, 2, False)]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    torch.manual_seed(0)
    single = TinyIQA()
    finetune(single, *toy_split(), epochs=2, progress=False)
    assert not all(torch.equal(single.state_dict()[k], rank0[k]) for k in rank0)  # each rank saw half the data


def test_the_run_record_names_a_callable_loss_and_the_world_size_the_same_in_every_process(tmp_path):
    import functools

    train, val = toy_split()
    loss = functools.partial(surgery.losses.get_loss("mse"))
    finetune(TinyIQA(), train, val, epochs=1, loss=loss, checkpoint_dir=tmp_path, progress=False)
    settings = torch.load(tmp_path / "last.pt", weights_only=True)["run"]["settings"]
    assert "0x" not in settings["loss"] and settings["world_size"] == 1 and "channels_last" not in settings


def test_a_dataset_of_numpy_images_trains():
    (images, targets), _ = toy_split()

    class Arrays(torch.utils.data.Dataset):
        def __len__(self):
            return len(targets)

        def __getitem__(self, i):
            return images[i].numpy(), float(targets[i])

    result = finetune(TinyIQA(), Arrays(), epochs=1, loss="mse", progress=False)
    assert len(result.history) == 1


def test_training_some_parameters_back_propagates_no_further_than_they_are():
    """The frozen layers get no weight gradient (backward used to run through them all) and
    keep their requires_grad flags."""
    train, _ = toy_split()
    model = TinyIQA()
    model.fc.bias.requires_grad_(False)
    seen = []
    model.conv.weight.register_hook(lambda grad: seen.append(grad))
    finetune(model, train, epochs=1, parameters=[model.fc.weight], progress=False)
    assert not seen and model.conv.weight.grad is None
    assert model.conv.weight.requires_grad and not model.fc.bias.requires_grad


@pytest.mark.parametrize("defense", [ConsistencyTraining(eps=4 / 255, steps=1, beta=1.0),
                                     AdversarialTraining(eps=4 / 255)], ids=["consistency", "at"])
def test_an_attacking_defence_is_checked_every_epoch_without_changing_the_training(defense):
    """Catastrophic overfitting is watched for with a multi-step attack after each epoch; the
    check draws its own random numbers and touches no weight, so the trained model is the one
    trained without it."""
    train, val = toy_split()
    runs = []
    for count in (16, 0):
        torch.manual_seed(0)
        model = TinyIQA()
        result = finetune(model, train, val, epochs=2, lr=1e-2, loss="mse", defense=defense, progress=False,
                          attack_check_images=count)
        runs.append((model, result.history))
    (checked, checked_history), (unchecked, unchecked_history) = runs
    assert all(h["val_attack_gain"] > 0 and h["val_score_min"] < h["val_score_max"] for h in checked_history)
    assert all("val_attack_gain" not in h for h in unchecked_history)
    assert_unchanged(checked, snapshot(unchecked))


def test_an_epoch_whose_attack_gain_jumps_is_flagged_and_not_chosen(monkeypatch):
    """Epoch 2 has the better SROCC but twice epoch 1's gain under PGD-10: it is flagged and warned
    about, and the model ends with epoch 1's weights."""
    train, val = toy_split()
    gains = iter([0.1, 0.25])
    monkeypatch.setattr(training._AttackCheck, "gain", lambda self, network, device, autocast, score_range: next(gains))
    scores = iter([0.5, 0.9])
    validate = training._validate
    monkeypatch.setattr(training, "_validate", lambda *a: {**validate(*a), "val_srocc": next(scores)})
    torch.manual_seed(0)
    model = TinyIQA()
    with pytest.warns(UserWarning, match="catastrophic overfitting at epoch 2"):
        result = finetune(model, train, val, epochs=2, lr=1e-2, loss="mse", progress=False,
                          defense=ConsistencyTraining(steps=1))
    assert [h.get("overfit", False) for h in result.history] == [False, True]
    assert result.best_epoch == 1 and result.best_srocc == 0.5


def test_the_attack_check_measures_in_the_epochs_own_score_range():
    """A model that only squashes its scores (half the spread) is no harder to fool: the
    check's gain is the same fraction of each one's own validation range (raw, it halves)."""
    _, val = toy_split()
    torch.manual_seed(0)
    model = TinyIQA().eval()
    squashed = Scaled(model, 0.5)
    check = training._AttackCheck(as_dataset(val, "val"), 8, eps=4 / 255, seed=0)
    no_autocast = contextlib.nullcontext
    gains = []
    for network in (model, squashed):
        with torch.no_grad():
            clean = network(val[0])
        own_range = (float(clean.min()), float(clean.max()))
        gains.append(check.gain(network, torch.device("cpu"), no_autocast, own_range))
    assert gains[0] > 0
    assert gains[1] == pytest.approx(gains[0], rel=1e-5)


def test_the_attack_check_compares_only_gains_measured_alike():
    """A history resumed from a checkpoint written before the check used the own range holds raw
    changes: they are not compared; an empty range gives NaN, which flags nothing."""
    _, val = toy_split()
    check = training._AttackCheck(as_dataset(val, "val"), 4, eps=4 / 255, seed=0)
    old = [{"val_attack_gain": 0.01}]  # raw units, no val_score_max
    assert not check.overfit(0.5, old)
    measured = [{"val_attack_gain": 0.1, "val_score_min": 0.0, "val_score_max": 1.0}]
    assert check.overfit(0.25, old + measured) and not check.overfit(0.15, old + measured)
    assert math.isnan(check.gain(TinyIQA(), torch.device("cpu"), contextlib.nullcontext, (0.5, 0.5)))
    assert not check.overfit(float("nan"), measured)


def test_the_attack_check_moves_no_state_of_an_aoc_layer():
    """AOC's parametrization runs a power iteration whose vectors are parameters: attacked with
    gradients to its weights it would move them at every step; the check attacks it frozen, so
    it reads the map the epoch's validation kept and moves nothing."""
    from surgery.ortho import AOCConv2d

    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), AOCConv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(1), nn.Flatten(0))
    network(torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        network.eval()(torch.rand(1, 3, 8, 8))  # the epoch's validation: the map is kept
    before = {k: v.clone() for k, v in network.state_dict().items()}
    flags = [p.requires_grad for p in network.parameters()]
    _, val = toy_split()
    check = training._AttackCheck(as_dataset(val, "val"), 4, eps=4 / 255, seed=0)
    assert check.gain(network, torch.device("cpu"), contextlib.nullcontext, (0.0, 1.0)) > 0
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert [p.requires_grad for p in network.parameters()] == flags


def test_the_attack_check_needs_a_defence_that_attacks_and_a_sane_count():
    train, val = toy_split()
    history = finetune(TinyIQA(), train, val, epochs=1, progress=False,
                       defense=NormRegularization()).history
    assert "val_attack_gain" not in history[0]
    with pytest.raises(ValueError, match="attack_check_images"):
        finetune(TinyIQA(), train, val, epochs=1, progress=False, attack_check_images=-1)


def test_a_folder_read_at_another_size_or_another_subset_is_other_data(tmp_path):
    """`surgery robustify --input-size` changed, or another --val-fraction draw, used to resume
    the earlier run: a folder was known by its type, length and scores only."""
    import shutil

    from torch.utils.data import Subset

    from surgery.data import ImageFolder
    from surgery.fingerprint import data_fingerprint
    from surgery.training import known_targets
    from tests.test_cli import _photos

    folder, table = _photos(tmp_path, 4)

    def fingerprint(dataset):
        return data_fingerprint(dataset, targets=known_targets)

    at_16 = fingerprint(ImageFolder(folder, table, size=(16, 16)))
    assert fingerprint(ImageFolder(folder, table, size=(32, 32))) != at_16
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert fingerprint(ImageFolder(moved, table, size=(16, 16))) == at_16  # a moved folder still resumes
    images = ImageFolder(folder, table, size=(16, 16))
    assert fingerprint(Subset(images, [0, 1])) != fingerprint(Subset(images, [0, 2]))
    assert fingerprint(Subset(images, [0, 1])) == fingerprint(Subset(images, [0, 1]))


def test_a_gpu_run_resumes_the_gpu_generator_it_stopped_with(tmp_path, monkeypatch):
    """On a GPU the consistency attack's random starts come from the GPU's generator: a resumed
    run that reseeded it would repeat epoch 1's starts (the CUDA calls are stood in for on CPU)."""
    from surgery.training import FinetuneResult, _Checkpoints

    gpu = torch.device("cuda", 0)
    stopped_with, restored = torch.arange(16, dtype=torch.uint8), {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: stopped_with.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update(state=state, device=device))
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, map_location=None, weights_only=True: load(path, map_location="cpu", weights_only=True))
    model = TinyIQA()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = _Checkpoints(tmp_path, write=True)
    run = {"model": "m", "data": "d", "settings": {}}
    checkpoints.save_last(model, optimizer, scheduler, torch.Generator(), gpu, 0, FinetuneResult(), run)
    _, start = checkpoints.resume(model, optimizer, scheduler, torch.Generator(), gpu, FinetuneResult(), run)
    assert start == 1 and torch.equal(restored["state"], stopped_with) and restored["device"] == gpu


def test_validation_scores_in_full_precision_under_bf16_autocast():
    """Training in bf16 autocast (amp=True, a GPU's default) used to validate in it too: scores
    rounded to bf16 steps, whose ties moved the SROCC the best epoch is chosen by."""
    train, val = toy_split()
    model = TinyIQA()
    result = finetune(model, train, val, epochs=1, amp=True, progress=False)
    with torch.no_grad():
        scores = model.eval()(val[0])
    assert result.history[0]["val_score_min"] == float(scores.min()) and result.history[0]["val_score_max"] == float(scores.max())
    assert result.history[0]["val_srocc"] == pytest.approx(surgery.metrics.srocc(scores, val[1]), abs=1e-12)


def test_a_rank_whose_share_is_smaller_than_a_batch_still_trains(monkeypatch):
    """Under DDP, drop_last compared the whole set with the batch: 12 images on 2 ranks at
    batch 8 gave each rank 6 images, one short batch, dropped: nothing trained."""
    from torch.utils.data import DistributedSampler

    from surgery import training

    monkeypatch.setattr(training, "DistributedSampler", lambda data, seed: DistributedSampler(data, num_replicas=2, rank=0, seed=seed))
    train, _ = toy_split(16)
    loaders = training._Loaders(train, None, batch_size=8, seed=0, num_workers=0, sharded=True)
    assert len(train[0]) == 12 and [len(batch[0]) for batch in loaders.train] == [6]
