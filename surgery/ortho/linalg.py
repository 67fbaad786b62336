"""Batched linear solves for the Cayley transform, safe on every CPU thread count.

The Fourier-domain Cayley convolution (Trockman & Kolter, ICLR 2021) solves one
small dense system per frequency. Some CPU builds of torch return wrong LU factors
for batched matrices of size >= ~256 when more than one thread is used, either
raising in ``lu_solve`` or silently producing a non-orthogonal result. Every CPU
factorisation here is therefore checked with a random probe (one matrix-vector
product and one solve per matrix, negligible next to the factorisation) and
redone on a single thread, where it is known to be correct, if the probe fails.
"""
from __future__ import annotations

import torch

__all__ = ["lu_factor", "lu_solve"]

# A correct factorisation of I + A (whose Hermitian part is >= I, so every
# singular value is >= 1) reproduces the probe to ~1e-6 in float32.
_PROBE_TOL = 1e-3


def _probe_ok(matrix: torch.Tensor, lu: torch.Tensor, pivots: torch.Tensor) -> bool:
    probe = torch.randn(matrix.shape[:-1] + (1,), dtype=matrix.dtype, device=matrix.device)
    try:
        back = torch.linalg.lu_solve(lu, pivots, matrix @ probe)
    except RuntimeError:
        return False
    err = torch.linalg.vector_norm(back - probe) / torch.linalg.vector_norm(probe)
    return bool(torch.isfinite(err)) and float(err) < _PROBE_TOL


def lu_factor(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LU factors of a batch of square matrices, verified on CPU.

    Raises ``RuntimeError`` when even the single-threaded factorisation fails the
    probe, which means the matrices are singular or not finite.
    """
    lu, pivots, _ = torch.linalg.lu_factor_ex(matrix)
    if matrix.device.type != "cpu" or _probe_ok(matrix, lu, pivots):
        return lu, pivots
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lu, pivots, _ = torch.linalg.lu_factor_ex(matrix)
        ok = _probe_ok(matrix, lu, pivots)
    finally:
        torch.set_num_threads(threads)
    if not ok:
        raise RuntimeError(
            "LU factorisation of the Cayley system failed even on one thread: the "
            "orthogonal layer's weights are probably not finite (check the learning rate)."
        )
    return lu, pivots


class _SolveFn(torch.autograd.Function):
    """z = M^{-1} r with the factors shared between forward and backward."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        lu, pivots = lu_factor(matrix)
        z = torch.linalg.lu_solve(lu, pivots, rhs)
        ctx.save_for_backward(lu, pivots, z)
        return z

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):
        lu, pivots, z = ctx.saved_tensors
        grad_rhs = torch.linalg.lu_solve(lu, pivots, grad_z, adjoint=True)
        grad_matrix = -grad_rhs @ z.mH if ctx.needs_input_grad[0] else None
        return grad_matrix, grad_rhs


def lu_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Differentiable batched solve ``matrix @ z = rhs`` through a verified LU."""
    return _SolveFn.apply(matrix, rhs)
