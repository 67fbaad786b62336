"""``finetune``: the short fine-tune that recovers correlation with MOS after the surgery
(Meleshin et al. §3, step 3: five epochs in the paper).

AdamW with a cosine (or constant) learning rate, gradient clipping, bf16 autocast and channels-last
on CUDA, best-on-validation weights (by SROCC), an atomic checkpoint after every
epoch that a later call resumes from, a progress bar with the loss and the
validation SROCC, and a seed that makes runs repeatable. A baseline defence
(NT, AT) plugs in with ``defense=``. Under ``torchrun`` (``torch.distributed``
initialised, or launched by torchrun: the process group is then joined for the run and
left afterwards) it wraps the network in DistributedDataParallel, shards the data
with a DistributedSampler, and only rank 0 writes files and shows progress.

A defence that attacks the batch (consistency training, AT) is watched for catastrophic
overfitting (Wong et al., "Fast is better than free", ICLR 2020: a few-step inner attack stops
finding what a multi-step one finds, and the model's robustness collapses within an epoch):
after every epoch a random-start PGD-10 at the defence's radius scores the first validation
images, and an epoch whose gain rises above twice the lowest gain so far is flagged, warned
about and never chosen as the best one.
"""
from __future__ import annotations

import functools
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset, default_collate
from tqdm.auto import tqdm

from . import distributed, metrics
from .attacks.pgd import PGD
from .checks import check_budget, check_count, check_non_negative
from .fingerprint import data_fingerprint, differences, model_fingerprint, settings_record
from .scoring import check_images, model_device, per_image_scores, scoring_network
from .defenses.base import Defense, TrainingScore
from .files import atomic_save
from . import modelfile
from .losses import get_loss
from .modes import frozen, measuring, memory_layout, preserved_modes, state_copy

__all__ = ["finetune", "FinetuneResult"]

DataSpec = Dataset | tuple[torch.Tensor, torch.Tensor]

# the learning rate's factor at each optimiser step, given the run's total steps
SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {
    "cosine": lambda total: lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
    "constant": lambda total: lambda step: 1.0,
}


@dataclass
class FinetuneResult:
    """Per-epoch history, where the best weights are (by validation SROCC), the epoch whose
    weights the model was returned with (``epoch``: the best one or the last, as ``select``
    asked); ``calibration`` is what ``robustify(..., target=...)`` chose on validation (a
    :class:`surgery.calibration.Calibration`)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_srocc: float | None = None
    best_path: str | None = None
    calibration: object | None = None
    epoch: int | None = None


def as_dataset(data: DataSpec, name: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        images, targets = data
        if images.shape[0] != targets.reshape(-1).shape[0]:
            raise ValueError(f"{name}: {images.shape[0]} images but {targets.numel()} scores")
        return TensorDataset(images, targets.reshape(-1).float())
    raise TypeError(f"{name} must be a Dataset of (image, score) or a tuple (images, scores), got {type(data).__name__}")


def known_targets(dataset: Dataset) -> torch.Tensor | None:
    """A dataset's scores when they can be read without loading its images."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].reshape(-1).float()
    if isinstance(dataset, Subset):
        whole = known_targets(dataset.dataset)
        return None if whole is None else whole[torch.as_tensor(dataset.indices, dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    return torch.as_tensor(targets, dtype=torch.float32).reshape(-1) if targets is not None else None


def _check_validation_set(dataset: Dataset) -> None:
    """Fail before the first epoch on a validation set no SROCC can be computed on."""
    if len(dataset) < 2:
        raise ValueError(f"val has {len(dataset)} item(s): SROCC needs at least 2 images with different scores")
    targets = known_targets(dataset)
    if targets is None:
        return
    if not torch.isfinite(targets).all():
        raise ValueError("val has NaN or inf scores: fix or drop those labels")
    if targets.min() == targets.max():
        raise ValueError(f"every val score is {targets[0].item():g}: SROCC needs images with different scores")


def _check_batch(images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, epoch: int) -> None:
    check_images(images, indices.tolist(), "training image")
    finite = torch.isfinite(targets)
    if not finite.all():
        bad = indices[~finite.cpu()].tolist()
        raise ValueError(f"training image(s) {bad[:10]} have NaN or inf scores (epoch {epoch}): fix or drop those labels")


class _Indexed(Dataset):
    """A dataset's items with their index, so a bad item is named by its place in the dataset."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, index


def _check_images_up_front(dataset: Dataset, name: str) -> None:
    """Fail before the first epoch on images that are not floats in [0, 1]: every image of tensor
    data, the first of a Dataset that loads them (the rest are checked batch by batch)."""
    if isinstance(dataset, TensorDataset):
        check_images(dataset.tensors[0], what=f"{name} image")
        return
    check_images(default_collate([dataset[0]])[0], [0], f"{name} image")  # as the loader will batch it


def parameter_names(model: nn.Module, params: Sequence[nn.Parameter], owner: str = "the model being trained") -> list[str]:
    """The names in ``model`` of ``params``; tensors the model does not hold are refused, since
    training them would leave the model unchanged (e.g. the original's, passed for a deep copy)."""
    names = {id(p): name for name, p in model.named_parameters()}
    foreign = sum(id(p) not in names for p in params)
    if foreign:
        raise ValueError(
            f"{foreign} of the {len(params)} tensors in parameters= are not parameters of {owner}, so "
            "training them would leave it unchanged (were they taken from the model before a copy?): pass "
            "parameters of this model, e.g. [p for n, p in model.named_parameters() if n.startswith('head.')]"
        )
    return [names[id(p)] for p in params]


def _loss_name(loss: str | Callable) -> str:
    """A loss as the same name in every process (a repr may hold a memory address)."""
    if isinstance(loss, str):
        return loss
    named = loss if hasattr(loss, "__qualname__") else type(loss)
    return f"{named.__module__}.{named.__qualname__}"


def _scores(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return per_image_scores(network(images), images.shape[0]).float()


def _train_mode(network: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Training mode, except for normalisation layers none of whose parameters are trained:
    frozen layers keep their running statistics (as timm's ``freeze_batch_norm_2d``)."""
    network.train()
    trained = {id(p) for p in params}
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(id(p) in trained for p in module.parameters()):
            module.eval()


@torch.no_grad()
def _validate(network: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Validation scores in full precision even when training runs in bf16 autocast: bf16
    rounds scores of 32-64 to steps of 0.25, whose ties would move the SROCC the best epoch is
    chosen by (and the blend calibrated on afterwards scores in full precision)."""
    network.eval()
    predictions, targets = [], []
    for images, target, indices in loader:
        check_images(images, indices.tolist(), "val image")
        predictions.append(_scores(network, images.to(device)).float().cpu())
        targets.append(target.reshape(-1).float())
    p, t = torch.cat(predictions), torch.cat(targets)
    return {"val_srocc": metrics.srocc(p, t), "val_plcc": metrics.plcc(p, t),
            "val_score_min": float(p.min()), "val_score_max": float(p.max())}


class _AttackCheck:
    """The mean absolute score change random-start PGD-10 (either direction) finds within
    ``eps`` on fixed validation images, the model as at inference, on its own random stream
    (the training's is left as it was), as a fraction of the epoch's own validation score
    range: a fine-tune that squashes its scores toward their mean shrinks every raw change,
    and in raw units that squash could hide a jump. The model is attacked frozen (no
    gradient to its weights), so the check moves no state: an orthogonal layer reads its kept
    map instead of re-running its parametrization (AOC's power iteration)."""

    steps = 10
    overfit_factor = 2.0  # a gain this many times the lowest so far flags the epoch

    def __init__(self, val_set: Dataset, count: int, eps: float, seed: int):
        self.images = torch.stack([torch.as_tensor(val_set[i][0]) for i in range(min(count, len(val_set)))])
        self.attack = PGD(eps=eps, steps=self.steps, random_start=True)
        self.seed = seed

    def gain(self, network: nn.Module, device: torch.device, autocast, score_range: tuple[float, float]) -> float:
        """The mean change over ``score_range``'s width; NaN when the range is empty (every
        validation score equal: nothing to measure a change against)."""
        spread = score_range[1] - score_range[0]
        images = self.images.to(device)
        score = functools.partial(_scores, network)
        with measuring(network), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            torch.manual_seed(self.seed)
            attacked = self.attack.run(score, images, direction="away")
            with torch.no_grad():
                change = float((score(attacked) - score(images)).abs().mean())
        return change / spread if spread > 0 else float("nan")

    def overfit(self, gain: float, history: list[dict]) -> bool:
        """Whether ``gain`` is more than ``overfit_factor`` times the lowest of the earlier epochs'
        measured the same way (in their own range: a history resumed from a checkpoint written
        before the check was, holds raw changes, which are not compared)."""
        earlier = [h["val_attack_gain"] for h in history if "val_score_max" in h and math.isfinite(h.get("val_attack_gain", math.nan))]
        return bool(earlier) and math.isfinite(gain) and gain > self.overfit_factor * min(earlier)


class _Loaders:
    """The training loader (shuffled by a seeded generator, sharded under DDP) and the
    validation loader, from datasets or ``(images, scores)`` tensors, checked up front."""

    def __init__(self, train: DataSpec, val: DataSpec | None, batch_size: int, seed: int, num_workers: int, sharded: bool):
        train_set = as_dataset(train, "train")
        _check_images_up_front(train_set, "training")
        self.train_set = train_set
        train_set = _Indexed(train_set)
        self.sampler = DistributedSampler(train_set, seed=seed) if sharded else None
        self.generator = torch.Generator().manual_seed(seed)
        self.train = DataLoader(
            train_set, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler, generator=self.generator,
            # a rank's share, not the whole set: under DDP a share smaller than a batch would drop every batch
            num_workers=num_workers, drop_last=(len(self.sampler) if sharded else len(train_set)) > batch_size,
        )
        val_set = None if val is None else as_dataset(val, "val")
        if val_set is not None:
            _check_validation_set(val_set)
            _check_images_up_front(val_set, "val")
        self.val_set = val_set
        self.val = None if val_set is None else DataLoader(_Indexed(val_set), batch_size=batch_size, num_workers=num_workers)


class _Step:
    """One optimisation step per batch: the task loss (or the defence's loss), a finite
    check, backward, clipping, the optimiser and the schedule."""

    def __init__(self, score: TrainingScore, task_loss, defense, params, optimizer, scheduler, grad_clip, use_amp: bool, device):
        self.score, self.task_loss, self.defense, self.params = score, task_loss, defense, params
        self.optimizer, self.scheduler, self.grad_clip, self.use_amp, self.device = optimizer, scheduler, grad_clip, use_amp, device

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp)

    def epoch(self, batches: tqdm, channels_last: bool, epoch: int) -> float:
        """Train on every batch; the mean loss per image."""
        running, count = 0.0, 0
        for images, targets, indices in batches:
            images = images.to(self.device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(self.device).reshape(-1).float()
            _check_batch(images, targets, indices, epoch + 1)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                if self.defense is not None:
                    value = self.defense.loss(self.score, images, targets, self.task_loss)
                else:
                    value = self.task_loss(self.score(images), targets)
            if not torch.isfinite(value):
                raise FloatingPointError(f"loss became {value.item()} at epoch {epoch + 1}: lower the learning rate")
            value.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            running += value.item() * images.shape[0]
            count += images.shape[0]
            batches.set_postfix(loss=f"{running / count:.4f}")
        return running / max(count, 1)


class _Checkpoints:
    """``last.pt`` (everything a later call resumes from) and ``best.pt`` (the best weights,
    loadable with ``surgery.load``) in a folder, written atomically; nothing without a
    folder, and only ``write`` (rank 0) writes."""

    def __init__(self, folder: str | os.PathLike | None, write: bool):
        self.last = None if folder is None else os.path.join(os.fspath(folder), "last.pt")
        self.best = None if folder is None else os.path.join(os.fspath(folder), "best.pt")
        self.write = write

    def resume(self, model, optimizer, scheduler, generator, device, result: FinetuneResult, run: dict) -> tuple[FinetuneResult, int]:
        """The history and the first epoch to run, from ``last.pt`` when there is one and
        ``run`` (the fingerprints of this model, these settings and this data) matches its own."""
        if self.last is None or not os.path.isfile(self.last):
            return result, 0
        try:
            state = torch.load(self.last, map_location=device, weights_only=True)
        except Exception as err:
            raise self._unusable(err) from err
        recorded = state.get("run") if isinstance(state, dict) else None
        if recorded is None:
            raise ValueError(
                f"checkpoint {self.last!r} records no run fingerprint (an older surgery wrote it), so it cannot be told "
                "to belong to this run: delete it, choose another checkpoint_dir, or pass resume=False to start afresh"
            )
        changed = differences(recorded, run)
        if changed:
            raise ValueError(
                f"checkpoint {self.last!r} belongs to another run (it differs in {', '.join(changed)}): resuming would "
                "return that run's weights; choose another checkpoint_dir, delete it, or pass resume=False to start afresh"
            )
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"].cpu())
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            generator.set_state(state["loader_rng"].cpu())
            # this folder's best.pt, not the path recorded: the folder may have moved since
            best_path = self.best if state["best_path"] is not None else None
            resumed = FinetuneResult(state["history"], state["best_epoch"], state["best_srocc"], best_path)
            return resumed, state["epoch"] + 1
        except Exception as err:
            raise self._unusable(err) from err

    def _unusable(self, err: Exception) -> ValueError:
        return ValueError(
            f"cannot resume from checkpoint {self.last!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
            "it is corrupt or from another model or run; delete it or pass resume=False to start afresh"
        )

    def save_best(self, model: nn.Module) -> str | None:
        if self.best is not None and self.write:
            modelfile.write(model, self.best)
        return self.best

    def save_last(self, model, optimizer, scheduler, generator, device: torch.device, epoch: int, result: FinetuneResult,
                  run: dict) -> None:
        if self.last is None or not self.write:
            return
        state = {
            "run": run,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "loader_rng": generator.get_state(), "epoch": epoch, "history": result.history,
            "best_epoch": result.best_epoch, "best_srocc": result.best_srocc, "best_path": result.best_path,
        }
        if device.type == "cuda":  # a GPU draws the attacks' random starts from its own generator
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        atomic_save(state, self.last)


def _gives_model_back_on_error(run: Callable[..., FinetuneResult]) -> Callable[..., FinetuneResult]:
    """Every module's own mode restored on exit; on an error or an interrupt, the weights and
    buffers the model came with are restored too before it propagates (a checkpointed run
    resumes from ``last.pt``)."""

    @functools.wraps(run)
    def wrapper(model: nn.Module, *args, **kwargs) -> FinetuneResult:
        initial = state_copy(model)
        with preserved_modes(model):
            try:
                return run(model, *args, **kwargs)
            except BaseException:
                model.load_state_dict(initial)
                raise

    return wrapper


@distributed.joins_torchrun(
    lambda model, *args, device=None, **kwargs: torch.device(device) if device is not None else model_device(model)
)
@_gives_model_back_on_error
def finetune(
    model: nn.Module,
    train: DataSpec,
    val: DataSpec | None = None,
    *,
    epochs: int = 5,
    loss: str | Callable = "norm-in-norm",
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    grad_clip: float | None = 1.0,
    schedule: Literal["cosine", "constant"] = "cosine",
    defense: Defense | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    parameters: Sequence[nn.Parameter] | None = None,
    attack_check_images: int = 16,
    select: Literal["best", "last"] = "best",
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``train`` (images in [0, 1], MOS); returns the history.

    Args:
        train, val: Datasets yielding ``(image, score)`` or ``(images, scores)`` tensors.
        loss: ``"norm-in-norm"`` (default, Linearity's), ``"mse"``, ``"plcc"`` or a callable.
        schedule: the learning rate over the run: ``"cosine"`` (from ``lr`` to 0, step by
            step) or ``"constant"``.
        defense: a training defence (``NormRegularization``, ``AdversarialTraining``,
            ``ConsistencyTraining``).
        checkpoint_dir: where ``last.pt`` (resumable state) and ``best.pt`` (best
            weights by validation SROCC, loadable with ``surgery.load``) go; an
            existing ``last.pt`` is resumed when ``resume``.
        amp / channels_last: default on for CUDA, off on CPU. ``channels_last`` trains the 4-D
            weights in the channels-last layout; each ends with its trained values in the
            storage and layout it came with.
        parameters: train only these (default: every parameter that requires grad).
            BatchNorm layers with no trained parameter keep their running statistics.
        attack_check_images: with ``val`` and a defence that attacks (``attack_budget()``),
            how many validation images random-start PGD-10 attacks after every epoch
            (``val_attack_gain``, the mean score change as a fraction of the epoch's own
            validation score range ``val_score_min`` .. ``val_score_max``, and its
            ``attack_check_seconds``, apart from the epoch's ``seconds``, in the history;
            0: no check). An epoch whose gain is more than
            twice the lowest so far is flagged ``overfit`` (catastrophic overfitting), warned
            about and not chosen as the best. The check changes no weight and no random draw
            of the training.
        select: which weights the model ends with: ``"best"`` (with ``val``: the epoch of the
            highest validation SROCC, not flagged ``overfit``; without: the last) or ``"last"``
            (the last epoch's, even one flagged ``overfit``, which is then warned about; ``best.pt``
            is still written). A robust fine-tune whose blend is then calibrated on validation
            SROCC wants ``"last"``: the best epoch by SROCC is its least robust.
            ``result.epoch`` says which epoch the model holds.

    Every module ends in the train/eval mode it came in. If the run stops with an error (or Ctrl-C),
    the model gets back the weights it came with.
    """
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
    # settings that would train nothing, or climb the loss, without an error
    check_count("finetune", epochs=epochs, batch_size=batch_size)
    epochs, batch_size = int(epochs), int(batch_size)  # a numpy count is a count; DataLoader takes only int
    lr = check_budget("finetune", lr=lr)  # as Python numbers: the run's fingerprint reads their repr
    if grad_clip is not None:
        grad_clip = check_budget("finetune", grad_clip=grad_clip)
    weight_decay = check_non_negative("finetune", weight_decay=weight_decay)
    if val is not None and val is train:
        raise ValueError("val is train: validation (the best epoch, the overfitting check) needs images held out from train")
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cuda" and distributed.launched_by_torchrun():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per rank
    use_amp = device.type == "cuda" if amp is None else amp
    use_channels_last = device.type == "cuda" if channels_last is None else channels_last
    model.to(device)
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    trained_names = parameter_names(model, params)
    # the other weights get no gradient, so backward stops at the first trained layer
    with frozen(model, trained=params), memory_layout(model, use_channels_last, keep_values=True):
        network = scoring_network(model)
        plain_network = network  # the check attacks it on every rank: no collective call
        sharded = distributed.initialised()
        is_main = distributed.rank() == 0
        if sharded:
            network = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

        loaders = _Loaders(train, val, batch_size, seed, num_workers, sharded)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES[schedule](max(1, epochs * len(loaders.train))))
        budget = defense.attack_budget() if defense is not None else None
        if attack_check_images < 0:
            raise ValueError(f"attack_check_images must be >= 0, got {attack_check_images!r}")
        check = None
        if budget is not None and loaders.val_set is not None and attack_check_images:
            check = _AttackCheck(loaders.val_set, attack_check_images, budget, seed)
        step = _Step(TrainingScore(network, _scores), get_loss(loss), defense, params, optimizer, scheduler, grad_clip, use_amp, device)

        checkpoints = _Checkpoints(checkpoint_dir, write=is_main)
        run = None
        if checkpoint_dir is not None:
            settings = {
                "epochs": epochs, "loss": _loss_name(loss), "lr": lr, "weight_decay": weight_decay,
                "batch_size": batch_size, "grad_clip": grad_clip, "defense": defense, "seed": seed, "amp": use_amp,
                "world_size": distributed.world_size(), "parameters": trained_names,
            }
            if schedule != "cosine":  # every run was cosine before the setting: their checkpoints stay valid
                settings["schedule"] = schedule
            run = {
                "model": model_fingerprint(model), "settings": settings_record(settings),
                "data": data_fingerprint(loaders.train_set, loaders.val_set, targets=known_targets),
            }
        result, start_epoch = FinetuneResult(), 0
        if resume:
            result, start_epoch = checkpoints.resume(model, optimizer, scheduler, loaders.generator, device, result, run)
        best_state = None  # best weights in memory when there is no checkpoint folder
        for epoch in range(start_epoch, epochs):
            _train_mode(network, params)
            if loaders.sampler is not None:
                loaders.sampler.set_epoch(epoch)
            started = time.perf_counter()
            bar = tqdm(loaders.train, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and is_main), leave=False)
            record = {"epoch": epoch + 1, "train_loss": step.epoch(bar, use_channels_last, epoch), "lr": scheduler.get_last_lr()[0]}
            if loaders.val is not None:
                record.update(_validate(network, loaders.val, device))
            record["seconds"] = time.perf_counter() - started
            if check is not None:
                started = time.perf_counter()
                own_range = (record["val_score_min"], record["val_score_max"])
                record["val_attack_gain"] = check.gain(plain_network, device, step.autocast, own_range)
                record["attack_check_seconds"] = time.perf_counter() - started
                if check.overfit(record["val_attack_gain"], result.history):
                    record["overfit"] = True
                    warnings.warn(
                        f"finetune: catastrophic overfitting at epoch {epoch + 1}? PGD-{check.steps} moves the validation "
                        f"scores by {record['val_attack_gain']:.4g} of their range, over {check.overfit_factor:g}x the lowest "
                        "earlier epoch's: the defence's few-step attack no longer finds what a stronger one does; this epoch is not chosen "
                        "as the best (use more attack steps, a smaller lr, or stop earlier)",
                        stacklevel=3,
                    )
            result.history.append(record)

            eligible = loaders.val is not None and not record.get("overfit", False)
            if eligible and (result.best_srocc is None or record["val_srocc"] > result.best_srocc):
                result.best_epoch, result.best_srocc = epoch + 1, record["val_srocc"]
                result.best_path = checkpoints.save_best(model)
                if result.best_path is None and select == "best":
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            checkpoints.save_last(model, optimizer, scheduler, loaders.generator, device, epoch, result, run)
            if progress and is_main:
                tqdm.write(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            if sharded:
                dist.barrier()

        result.epoch = len(result.history) or None
        if select == "last" and result.history and result.history[-1].get("overfit", False):
            warnings.warn(
                f"finetune: select='last' returns epoch {result.epoch}, flagged overfit (catastrophic overfitting): its "
                "weights may be much easier to fool than an earlier epoch's; use more attack steps, a smaller lr or "
                "fewer epochs, or select='best'",
                stacklevel=2,
            )
        if select == "best" and result.best_epoch is not None:
            if result.best_path is not None and os.path.isfile(result.best_path):
                best_state = modelfile.read(result.best_path, device)["state_dict"]
            if best_state is not None:
                model.load_state_dict(best_state)
                result.epoch = result.best_epoch
        return result
