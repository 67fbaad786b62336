"""Orthogonal convolutions: exactness against a dense spatial operator, measured norm
preservation (including the real-size CPU LU hazard), caching, and errors."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgery.ortho import AOCConv2d, AOLConv2d, CayleyConv2d, get_ortho, ortho_name, register_ortho
from surgery.ortho import linalg


def circular_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.shape[-1]
    before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
    return F.conv2d(F.pad(x, (before, after, before, after), mode="circular"), kernel)


def dense_operator(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (out*H*W, in*H*W) matrix of a circular convolution, built from basis images."""
    c_in = kernel.shape[1]
    basis = torch.eye(c_in * height * width, dtype=torch.float64).reshape(-1, c_in, height, width)
    return circular_conv(basis, kernel).reshape(c_in * height * width, -1).T


def flip(channels: int, height: int, width: int) -> torch.Tensor:
    """Permutation p -> -p (mod size) of every channel's pixels."""
    idx = torch.arange(channels * height * width).reshape(channels, height, width)
    flipped = idx[:, (-torch.arange(height)) % height][:, :, (-torch.arange(width)) % width]
    return torch.eye(idx.numel(), dtype=torch.float64)[flipped.reshape(-1)]


def dense_cayley(layer: CayleyConv2d, height: int, width: int) -> torch.Tensor:
    """Cayley transform of the whole convolution operator, computed densely in float64:
    A = U - U^T + V^T V, Q = [(I - A)(I + A)^-1; -2 V (I + A)^-1] (Trockman & Kolter)."""
    kernel = (layer.weight * (layer.alpha / layer.weight.norm())).detach().double()
    transposed = layer.out_channels < layer.in_channels
    if transposed:
        kernel = kernel.transpose(0, 1)
    rows, cols = kernel.shape[:2]
    u = dense_operator(kernel[:cols], height, width)
    v = dense_operator(kernel[cols:], height, width) if rows > cols else torch.zeros(0, u.shape[0], dtype=u.dtype)
    a = u - u.T + v.T @ v
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    inverse = torch.linalg.inv(eye + a)
    q = torch.cat([(eye - a) @ inverse, -2 * v @ inverse])
    if transposed:  # per-frequency plain transpose = spatially flipped adjoint
        return flip(cols, height, width) @ q.T @ flip(rows, height, width)
    return q


@pytest.mark.parametrize(
    "c_in,c_out,k,height,width",
    [
        (3, 6, 3, 5, 5), (4, 4, 3, 6, 6), (6, 3, 3, 4, 4), (2, 5, 1, 4, 4), (3, 4, 5, 6, 6), (3, 4, 2, 5, 5),
        (2, 4, 3, 4, 6), (2, 4, 3, 2, 2), (3, 2, 5, 3, 2),  # rectangles, maps smaller than the kernel
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cayley_equals_dense_cayley_of_circular_conv(c_in, c_out, k, height, width, mode):
    torch.manual_seed(0)
    layer = CayleyConv2d(c_in, c_out, k, bias=False).train(mode == "train")
    x = torch.randn(3, c_in, height, width)
    with torch.no_grad():
        y = layer(x)
    expected = (dense_cayley(layer, height, width) @ x.double().reshape(3, -1).T).T.reshape(y.shape)
    torch.testing.assert_close(y.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("c_in,c_out", [(4, 8), (8, 8), (8, 4)])
def test_cayley_matrices_are_semi_orthogonal(c_in, c_out):
    torch.manual_seed(1)
    q = CayleyConv2d(c_in, c_out, 3).orthogonal_matrices(6, 8).detach()
    gram = q.mH @ q if c_out >= c_in else q @ q.mH
    eye = torch.eye(min(c_in, c_out), dtype=gram.dtype).expand_as(gram)
    torch.testing.assert_close(gram, eye, atol=1e-5, rtol=0)


def norm_ratio(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = layer(x) - layer(torch.zeros_like(x[:1]))
    return y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)


@pytest.mark.slow
def test_cayley_norm_preserved_at_real_size_on_two_threads():
    """SPEC §8: batched CPU LU of size >= 256 on 2 threads can silently break orthogonality."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(2)
        layer = CayleyConv2d(512, 1024, 3)
        x = torch.randn(2, 512, 32, 32)
        train_ratio = norm_ratio(layer.train(), x)
        eval_ratio = norm_ratio(layer.eval(), x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(train_ratio, torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(eval_ratio, torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls,c_in,c_out", [(AOCConv2d, 8, 16), (AOCConv2d, 8, 8), (AOLConv2d, 8, 16)])
def test_orthogonium_layers_keep_their_guarantee(cls, c_in, c_out):
    torch.manual_seed(3)
    layer = cls(c_in, c_out, 3)
    with torch.no_grad():  # move away from the orthogonal initialisation
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ratio = norm_ratio(layer, torch.randn(4, c_in, 12, 12))
    if cls.norm_preserving:
        torch.testing.assert_close(ratio, torch.ones(4), atol=1e-4, rtol=0)
    else:
        assert (ratio <= 1 + 1e-4).all()


def test_cayley_eval_cache_reused_and_invalidated():
    torch.manual_seed(4)
    layer = CayleyConv2d(4, 8, 3)
    x = torch.randn(2, 4, 8, 8)
    train_out = layer(x).detach()
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        cached = layer._inference_cache[-1]
        assert layer.cache_bytes() >= cached.nbytes == 8 * 8 * (8 // 2 + 1) * 4 * 8  # H (W/2+1) out in complex64
        second = layer(x)
        assert layer._inference_cache[-1] is cached
        torch.testing.assert_close(first, train_out, atol=1e-5, rtol=1e-5)
        assert torch.equal(first, second)

        layer.weight.add_(0.5)  # in-place change invalidates
        changed = layer(x)
        assert layer._inference_cache[-1] is not cached
        assert not torch.allclose(changed, first)

        for update in (lambda: layer.weight.data.add_(0.3), lambda: layer.alpha.data.mul_(2)):
            before = layer(x)
            update()  # through .data, as an EMA does: the version counter does not see it
            after = layer(x)
            layer.clear_cache()
            assert torch.equal(after, layer(x)) and not torch.allclose(after, before)

        other = CayleyConv2d(4, 8, 3)
        layer.load_state_dict(other.state_dict())  # so does loading weights
        torch.testing.assert_close(layer(x), other.eval()(x))
    layer.train()
    assert layer._inference_cache is None and layer.cache_bytes() == sum(t.nbytes for t in layer._phase_cache.values())


def test_cayley_eval_with_weight_gradients_does_not_cache():
    layer = CayleyConv2d(4, 8, 3).eval()
    layer(torch.randn(1, 4, 6, 6)).sum().backward()
    assert layer._inference_cache is None
    assert layer.weight.grad is not None and layer.alpha.grad is not None


def test_cayley_gradients_reach_input_through_cache():
    layer = CayleyConv2d(4, 8, 3).eval().requires_grad_(False)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer._inference_cache is not None
    x2 = x.detach().clone().requires_grad_()
    layer.train()(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_cayley_state_dict_loads_before_any_forward():
    source, target = CayleyConv2d(4, 8, 3), CayleyConv2d(4, 8, 3)
    target.load_state_dict(source.state_dict())
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(target(x), source(x))
    assert set(source.state_dict()) == {"weight", "bias", "alpha"}


def test_cayley_keeps_low_precision_dtype():
    layer = CayleyConv2d(4, 8, 3)
    y = layer(torch.randn(1, 4, 6, 6, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def random_series(n_freq=6, n_terms=3, size=5, dtype=torch.complex128):
    phase = torch.polar(torch.ones(n_freq, n_terms, dtype=torch.float64), torch.rand(n_freq, n_terms, dtype=torch.float64) * 6.3)
    coef = 0.3 * torch.randn(n_terms, size, size, dtype=torch.float64)
    coef[0] += torch.eye(size, dtype=torch.float64) * 2
    return phase.to(dtype), coef


def test_series_solve_matches_dense_solve_and_its_gradient():
    phase, coef = random_series()
    coef.requires_grad_()
    rhs = torch.randn(6, 5, 2, dtype=torch.complex128, requires_grad=True)
    dense = linalg.series_matrices(phase, coef)
    torch.testing.assert_close(dense, torch.einsum("fd,dab->fab", phase, coef.to(phase.dtype)))
    torch.testing.assert_close(linalg.series_solve(phase, coef, rhs), torch.linalg.solve(dense, rhs))
    torch.autograd.gradcheck(lambda c, r: linalg.series_solve(phase, c, r), (coef, rhs))


def test_unverified_path_used_off_cpu_gives_the_same_solution():
    phase, coef = random_series()
    rhs = torch.randn(6, 5, 2, dtype=torch.complex128)
    _, _, unverified = linalg._factor_and_solve(phase, coef, rhs, verify=False)
    _, _, verified = linalg._factor_and_solve(phase, coef, rhs, verify=True)
    torch.testing.assert_close(unverified, verified)


def test_series_solve_backward_chunks_agree(monkeypatch):
    phase, coef = random_series(n_freq=7)
    rhs = torch.randn(7, 5, 3, dtype=torch.complex128)
    grads = []
    for chunk in (1 << 22, 2 * 25):  # all frequencies at once, then two per chunk
        monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", chunk)
        c = coef.clone().requires_grad_()
        linalg.series_solve(phase, c, rhs).abs().sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_cpu_lu_runs_on_one_thread_and_a_broken_result_is_refused(monkeypatch):
    real = linalg._factor_in_place
    threads = []

    def recording(matrices):
        threads.append(torch.get_num_threads())
        return real(matrices)

    monkeypatch.setattr(linalg, "_factor_in_place", recording)
    phase, coef = random_series(dtype=torch.complex64)
    coef = coef.float()
    rhs = torch.randn(6, 5, 3, dtype=torch.complex64)
    z = linalg.series_solve(phase, coef, rhs)
    torch.testing.assert_close(linalg.series_matrices(phase, coef) @ z, rhs, atol=1e-5, rtol=1e-5)
    assert threads == [1]

    def broken(matrices):
        lu, pivots = real(matrices)
        return lu.add_(1.0), pivots  # what a faulty threaded LU hands back

    monkeypatch.setattr(linalg, "_factor_in_place", broken)
    with pytest.raises(RuntimeError, match="failed on one thread"):
        linalg.series_solve(phase, coef, rhs)


def test_lu_failure_everywhere_raises_clear_error(monkeypatch):
    real = linalg._factor_in_place
    monkeypatch.setattr(linalg, "_factor_in_place", lambda m: (lambda lu, p: (lu.fill_(float("nan")), p))(*real(m)))
    phase, coef = random_series()
    with pytest.raises(RuntimeError, match="not finite"):
        linalg.series_solve(phase, coef, torch.randn(6, 5, 1, dtype=torch.complex128))


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (4, 8, 8)])
def test_cayley_rejects_bad_inputs(shape):
    with pytest.raises(ValueError, match=r"\(batch, 4, H, W\)"):
        CayleyConv2d(4, 8, 3)(torch.randn(shape))


def test_registry_names_classes_and_errors():
    assert get_ortho("cayley") is CayleyConv2d and get_ortho("AOL") is AOLConv2d and get_ortho("aoc") is AOCConv2d
    assert get_ortho(CayleyConv2d) is CayleyConv2d
    with pytest.raises(ValueError, match="choose one of"):
        get_ortho("householder")

    @register_ortho("test-identity")
    class Identity(nn.Conv2d):
        def __init__(self, in_channels, out_channels, kernel_size, bias=True):
            super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    assert get_ortho("test-identity") is Identity and ortho_name(Identity) == "test-identity"
    assert get_ortho(ortho_name(nn.Conv2d), layers=[nn.Conv2d]) is nn.Conv2d  # unregistered: only classes passed in
    with pytest.raises(ValueError, match="never imports"):
        get_ortho(ortho_name(nn.Conv2d))


@pytest.mark.parametrize("c_in,c_out,side", [(96, 192, 8), pytest.param(256, 512, 16, marks=pytest.mark.slow)])
def test_threaded_lu_faults_are_avoided_without_hanging_or_printing(c_in, c_out, side):
    """After torch.set_num_threads(2), some builds' batched LU prints thousands of MKL CLASWP
    errors and fails (size >= 256), or never returns (seen from size 192): the checked path
    must finish, print none of them and stay norm-preserving."""
    script = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from surgery.ortho import CayleyConv2d\n"
        "torch.manual_seed(0)\n"
        f"layer = CayleyConv2d({c_in}, {c_out}, 3)\n"
        f"x = torch.randn(1, {c_in}, {side}, {side})\n"
        "y = layer(x) - layer.bias.view(1, -1, 1, 1)\n"
        "print('RATIO', (y.norm() / x.norm()).item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MKL" not in done.stdout and "MKL" not in done.stderr
    assert abs(float(done.stdout.split("RATIO")[-1]) - 1) < 1e-5



@pytest.mark.parametrize("cls", [AOCConv2d, AOLConv2d])
def test_orthogonium_eval_kernel_is_kept_and_invalidated(cls):
    """The parametrized kernel is computed once in eval mode (same output as recomputing it),
    and a changed parameter, train() or a gradient to the weights bypasses or rebuilds it."""
    torch.manual_seed(5)
    layer = cls(4, 8, 3)
    x = torch.randn(2, 4, 8, 8)
    recomputed = layer(x).detach()
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        kept = layer._inference_cache[-1]
        assert torch.equal(layer(x), first) and layer._inference_cache[-1] is kept
        assert layer.cache_bytes() >= kept.nbytes == 8 * 4 * 3 * 3 * 4
        torch.testing.assert_close(first, recomputed, atol=1e-5, rtol=1e-5)  # AOC: its power iteration moved
        source = next(p for n, p in layer.conv.named_parameters() if n != "bias")
        source.data.add_(0.1 * torch.randn_like(source))  # as an EMA does: through .data
        changed = layer(x)
        assert layer._inference_cache[-1] is not kept and not torch.allclose(changed, first)
        torch.testing.assert_close(changed, layer.conv(x), atol=1e-5, rtol=1e-5)
    layer(x).sum().backward()  # eval, but the weights need gradients: the kernel is recomputed
    assert source.grad is not None
    layer.train()
    assert layer._inference_cache is None and layer.cache_bytes() == 0


def test_aoc_norm_preserved_at_real_size_in_eval():
    """512 -> 1024 channels at 32x32, the default model's block size, with the kept kernel."""
    torch.manual_seed(0)
    layer = AOCConv2d(512, 1024, 3).eval()
    with torch.no_grad():
        ratio = norm_ratio(layer, torch.randn(2, 512, 32, 32))
    torch.testing.assert_close(ratio, torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [CayleyConv2d, AOCConv2d, AOLConv2d])
def test_a_training_bias_reads_the_kept_map_and_gets_its_gradient(cls):
    """Every layer keeps its map the same way: only the tensors the map is built from decide
    (the bias is added at every call), so training the bias alone keeps using the kept map."""
    torch.manual_seed(6)
    layer = cls(4, 8, 3).eval()
    for name, p in layer.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    bias = next(p for name, p in layer.named_parameters() if name.endswith("bias"))
    x = torch.randn(2, 4, 8, 8)
    layer(x).square().sum().backward()
    assert layer._inference_cache is not None
    kept_grad, bias.grad = bias.grad.clone(), None
    layer.clear_cache()
    layer.train()(x).square().sum().backward()  # training mode rebuilds the map at the call
    torch.testing.assert_close(kept_grad, bias.grad, atol=1e-4, rtol=1e-4)


def test_a_map_first_kept_under_autocast_is_kept_at_full_precision():
    """The kept map outlives the call that built it: built under bfloat16 autocast it would break
    (or degrade) every later full-precision call."""
    torch.manual_seed(7)
    layer = AOCConv2d(4, 8, 3).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        assert layer._inference_cache[-1].dtype == torch.float32
        torch.testing.assert_close(layer(x), layer.conv(x), atol=1e-5, rtol=1e-5)
