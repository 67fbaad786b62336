"""Pruning: about the asked fraction goes, RobustBlocks stay whole, the model runs,
traces and saves; PLS importance matches a hand-checked VIP."""
import numpy as np
import pytest
import torch
import torch.fx
import torchvision

import surgery
from tests.conftest import requires_pyiqa
from surgery.pruning import prune, vip_scores


@pytest.mark.parametrize("method", ["l2", "pls"])
def test_prune_hardened_resnet(method, tmp_path):
    model = surgery.harden(torchvision.models.resnet18(), input_size=(3, 64, 64)).eval()
    block = surgery.robust_blocks(model)["layer4"]
    ortho_weight = block.ortho.weight.clone()
    calib, mos = torch.rand(24, 3, 64, 64), torch.rand(24)  # an ImageNet classifier has no score of its own: MOS given
    report = prune(model, method, 0.10, calib=calib, calib_targets=mos, input_size=(3, 64, 64))
    assert 0.05 < report.removed < 0.15
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert torch.equal(block.ortho.weight, ortho_weight) and block.config.channels == 256
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, 1000)
    torch.testing.assert_close(surgery.symbolic_trace(model)(x), out)  # still traces, with the public tracer
    surgery.save(model, tmp_path / "pruned.pt")
    loaded = surgery.load(tmp_path / "pruned.pt", model=torchvision.models.resnet18()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)


def test_harden_with_pruning_records_it_and_round_trips(tmp_path):
    model = surgery.create_model("linearity", arch="resnet18")
    hardened = surgery.harden(model, prune="l2", input_size=(3, 64, 64)).eval()
    assert "l2 pruning" in surgery.describe(hardened, measure=False)
    x = torch.rand(2, 3, 64, 64)
    p6, p7, final = hardened.forward_branches(x)  # auxiliary heads stay consistent
    surgery.save(hardened, tmp_path / "m.pt")
    loaded = surgery.load(tmp_path / "m.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), hardened(x))


def test_pruned_unhardened_model_still_traces():
    model = torchvision.models.resnet18()
    prune(model, "l2", 0.1, input_size=(3, 32, 32))
    torch.fx.symbolic_trace(model)


def test_vip_scores_rank_the_informative_feature_first():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((200, 4))
    target = 3 * features[:, 2] + 0.1 * rng.standard_normal(200)
    vip = vip_scores(features, target)
    assert vip.argmax() == 2
    assert (vip**2).mean() == pytest.approx(1.0)  # VIP^2 averages to one by construction


@pytest.mark.parametrize(
    "kwargs,match",
    [({"method": "l1"}, "'l2' or 'pls'"), ({"amount": 1.5}, "0 < amount < 1"), ({"method": "pls"}, "calib=")],
)
def test_prune_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(torchvision.models.resnet18(), **{"method": "l2", **kwargs})
    with pytest.raises(ValueError, match="pruning method must be"):
        surgery.harden(torchvision.models.resnet18(), prune="random", input_size=(3, 32, 32))


@requires_pyiqa
def test_dbcnn_bilinear_features_are_refused_before_memory_runs_out():
    with pytest.raises(ValueError, match="65,536 flattened features.*prune=None"):
        surgery.harden(surgery.create_model("dbcnn"), prune="l2", input_size=(3, 64, 64))


@requires_pyiqa
def test_a_model_pruning_would_break_is_given_back_unchanged():
    from tests.models import assert_unchanged, snapshot

    metric = surgery.create_model("tres", test_sample=1)
    before = snapshot(metric)
    with pytest.raises(RuntimeError, match="breaks it.*the model is unchanged"):
        prune(metric, "l2", 0.1, input_size=(3, 64, 64))
    assert_unchanged(metric, before)  # same shapes and values: torch.equal fails on a narrowed tensor
