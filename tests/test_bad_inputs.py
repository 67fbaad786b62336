"""The public API walked with bad inputs: each gets an error that names the problem (never a
crash of the interpreter, a silent change of the model, or code run from a file)."""
import os

import pytest
import torch

import surgery
from surgery.attacks import APGD, PGD, UAP, PaperPGD, StAdv
from surgery.data import ImageFolder, load_image
from tests.models import TinyIQA, TwoBranch

NAN_IMAGES = torch.full((2, 3, 8, 8), float("nan"))


def _corrupt_file(folder) -> str:
    path = os.path.join(folder, "broken.png")
    with open(path, "wb") as f:
        f.write(b"\x89PNG not really")
    return path


CASES = {
    # harden
    "harden: unknown position": (lambda t: surgery.harden(TwoBranch(), position="nope", input_size=(3, 16, 16)), ValueError, "nope"),
    "harden: block number out of range": (lambda t: surgery.harden(TwoBranch(), position=99, input_size=(3, 16, 16)), ValueError, "99"),
    "harden: unknown ortho": (lambda t: surgery.harden(TwoBranch(), ortho="householder"), ValueError, "householder"),
    "harden: unknown pruning": (lambda t: surgery.harden(TwoBranch(), prune="random"), ValueError, "pruning method must be"),
    "harden: hidden fraction": (lambda t: surgery.harden(TwoBranch(), hidden_channels=1.5, input_size=(3, 16, 16)), ValueError, "fraction"),
    "harden: no convolution": (lambda t: surgery.harden(torch.nn.Linear(4, 1)), (ValueError, RuntimeError), "conv|run"),
    # attacks
    "pgd: NaN pixels": (lambda t: PGD()(TinyIQA(), NAN_IMAGES), ValueError, "NaN or inf"),
    "apgd: NaN pixels": (lambda t: APGD(steps=2)(TinyIQA(), NAN_IMAGES), ValueError, "NaN or inf"),
    "paper-pgd: NaN pixels": (lambda t: PaperPGD()(TinyIQA(), NAN_IMAGES), ValueError, "NaN or inf"),
    "stadv: NaN pixels": (lambda t: StAdv()(TinyIQA(), NAN_IMAGES), ValueError, "NaN or inf"),
    "stadv: NaN budget": (lambda t: StAdv(max_flow=float("nan")), ValueError, "max_flow"),
    "uap: NaN pixels": (lambda t: UAP(iterations=1)(TinyIQA(), NAN_IMAGES), ValueError, "NaN or inf"),
    "pgd: empty batch": (lambda t: PGD()(TinyIQA(), torch.rand(0, 3, 8, 8)), ValueError, "empty batch"),
    "pgd: 0..255 images": (lambda t: PGD()(TinyIQA(), torch.rand(1, 3, 8, 8) * 255), ValueError, r"in \[0, 1\]"),
    "pgd: bad direction": (lambda t: PGD()(TinyIQA(), torch.rand(1, 3, 8, 8), direction="sideways"), ValueError, "direction"),
    "pgd: negative budget": (lambda t: PGD(eps=-0.1), ValueError, "eps"),
    "apgd: zero steps": (lambda t: APGD(steps=0), ValueError, "steps"),
    # evaluate
    "evaluate: MOS length": (lambda t: surgery.evaluate(TinyIQA(), torch.rand(3, 3, 8, 8), [1, 2], attacks=[], progress=False), ValueError, "3 images but 2"),
    "evaluate: unknown attack": (lambda t: surgery.evaluate(TinyIQA(), torch.rand(2, 3, 8, 8), attacks=["cw"], progress=False), ValueError, "unknown attack"),
    "evaluate: NaN pixels": (lambda t: surgery.evaluate(TinyIQA(), NAN_IMAGES, attacks=[], progress=False), ValueError, "NaN or inf"),
    "evaluate: not images": (lambda t: surgery.evaluate(TinyIQA(), torch.rand(3, 8, 8), attacks=[], progress=False), ValueError, "batch, 3, H, W"),
    # save / load
    "load: missing file": (lambda t: surgery.load(os.path.join(t, "none.pt")), FileNotFoundError, "no saved model"),
    "load: corrupt file": (lambda t: surgery.load(_corrupt_file(t)), ValueError, "weights-only"),
    # finetune
    "finetune: 0..255 images": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8) * 255, torch.rand(4)), progress=False), ValueError, r"in \[0, 1\]"),
    "finetune: NaN labels": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.full((4,), float("nan"))), progress=False), ValueError, "NaN or inf scores"),
    "finetune: constant validation": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), (torch.rand(3, 3, 8, 8), torch.zeros(3)), progress=False), ValueError, "every val score"),
    "finetune: no epochs": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), epochs=0, progress=False), ValueError, "finetune needs an integer epochs >= 1"),
    "finetune: lr 0": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), lr=0.0, progress=False), ValueError, "finetune needs a finite lr > 0"),
    "finetune: negative weight decay": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), weight_decay=-1e-4, progress=False), ValueError, "finetune needs a finite weight_decay >= 0"),
    "finetune: batch size 0": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), batch_size=0, progress=False), ValueError, "finetune needs an integer batch_size >= 1"),
    "finetune: negative grad clip": (lambda t: surgery.finetune(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), grad_clip=-1.0, progress=False), ValueError, "finetune needs a finite grad_clip > 0"),
    "finetune: val is train": (lambda t: (lambda d: surgery.finetune(TinyIQA(), d, d, progress=False))((torch.rand(4, 3, 8, 8), torch.rand(4))), ValueError, "val is train"),
    "robustify: no epochs": (lambda t: surgery.robustify(TinyIQA(), (torch.rand(4, 3, 8, 8), torch.rand(4)), target=None, epochs=0, progress=False), ValueError, "needs an integer epochs >= 1"),
    # data and zoo
    "load_image: corrupt": (lambda t: load_image(_corrupt_file(t)), ValueError, "corrupt or not an image"),
    "ImageFolder: missing folder": (lambda t: ImageFolder(os.path.join(t, "absent")), FileNotFoundError, "does not exist"),
    "create_model: unknown": (lambda t: surgery.create_model("nosuch"), ValueError, "unknown model"),
    "create_model: no weights": (lambda t: surgery.create_model("linearity", pretrained=True), ValueError, "no pretrained weights"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_a_clear_error(case, tmp_path):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call(str(tmp_path))


def test_blend_refuses_a_keep_that_is_not_a_number():
    with pytest.raises(ValueError, match="keep must be in"):
        surgery.blend(TinyIQA(), TinyIQA(), keep=True)


def test_numpy_numbers_are_good_settings():
    """A step count or budget read from a numpy array or a config file is a number like any
    other (numbers.Integral / numbers.Real), not refused for its type."""
    import numpy as np

    attack = PGD(eps=np.float32(4 / 255), steps=np.int64(2), seed=np.int32(0))
    assert attack.steps == 2 and attack(TinyIQA(), torch.rand(2, 3, 8, 8)).shape == (2, 3, 8, 8)
    model = TinyIQA()
    before = [p.detach().clone() for p in model.parameters()]
    surgery.finetune(model, (torch.rand(4, 3, 8, 8), torch.rand(4)), epochs=np.int64(1), batch_size=np.int64(4),
                     lr=np.float64(1e-3), loss="mse", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_float64_images_are_attacked_and_scored_in_the_model_dtype():
    from surgery.attacks import scores

    model = TinyIQA()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    attacked = PGD(eps=4 / 255, steps=2)(model, images)
    assert attacked.dtype == torch.float64 and (attacked - images).abs().max() <= 4 / 255 + 1e-6
    torch.testing.assert_close(scores(model, images), scores(model, images.float()))


def test_one_attack_may_be_named_as_a_string():
    from surgery.evaluation import resolve_attacks

    assert {name for name, _, _ in resolve_attacks("apgd")} == {"apgd"}
