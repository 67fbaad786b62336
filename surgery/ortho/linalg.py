"""Batched solves with matrices given as Fourier series, safe on every CPU thread count.

The Fourier-domain Cayley convolution (Trockman & Kolter, ICLR 2021) solves one
dense system per frequency, ``M_f z_f = r_f`` with ``M_f = sum_d phase[f, d] coef[d]``
(a short series in the kernel's tap offsets). At the RobustBlock's real size the
matrices take over a gigabyte, so :func:`series_solve` keeps memory traffic low:
the series is written straight into the buffer LAPACK factorises in place, and the
backward pass accumulates the coefficient gradient frequency chunk by frequency
chunk instead of materialising a gradient for every matrix.

Some CPU builds of torch return wrong LU factors for batched matrices of a few
hundred rows when more than one thread is set: they raise in ``lu_solve`` (after MKL
prints thousands of "CLASWP" errors to standard output), silently produce a
non-orthogonal result, or never return (seen from size 192 on 2 threads, on one
Intel machine, after ``torch.set_num_threads(2)``). A trial factorisation cannot
guard against a hang, so on the CPU every factorisation runs on one thread, where it
is known to be correct, and is checked with a random probe (an extra right-hand-side
column whose product ``M_f p`` comes cheaply from the series).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.autograd.function import once_differentiable

__all__ = ["series_solve", "series_matrices"]

# A correct factorisation of I + A (whose Hermitian part is >= I, so every
# singular value is >= 1) reproduces the probe to ~1e-6 in float32.
_PROBE_TOL = 1e-3
# Frequencies per chunk in the backward pass: about 4M complex numbers of scratch.
_CHUNK_ELEMENTS = 1 << 22


def series_matrices(phase: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``M_f = sum_d phase[f, d] coef[d]`` for every f: (F, c, c), stored column-major."""
    n_terms, size, _ = coef.shape
    flat = coef.transpose(1, 2).reshape(n_terms, size * size).to(phase.dtype)
    return (phase @ flat).reshape(-1, size, size).mT


def _factor_in_place(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pivots = torch.empty(matrices.shape[:-1], dtype=torch.int32, device=matrices.device)
    info = torch.empty(matrices.shape[:-2], dtype=torch.int32, device=matrices.device)
    torch.linalg.lu_factor_ex(matrices, out=(matrices, pivots, info))
    return matrices, pivots


def _probe_error(solved: torch.Tensor, probe: torch.Tensor) -> float:
    err = torch.linalg.vector_norm(solved - probe, dim=(-2, -1)).amax() / torch.linalg.vector_norm(probe)
    return float(err) if torch.isfinite(err) else float("inf")


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous == count:  # setting the count again is what wakes the faulty path
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _factor_and_solve(phase: torch.Tensor, coef: torch.Tensor, rhs: torch.Tensor, verify: bool):
    """LU factors of every ``M_f`` and the solution for ``rhs``.

    With ``verify`` (CPU) the factorisation runs on one thread and a probe column
    ``M_f p`` (cheap from the series) rides along with the right-hand side; it must
    come back as ``p``.
    """
    if not verify:
        lu, pivots = _factor_in_place(series_matrices(phase, coef))
        return lu, pivots, torch.linalg.lu_solve(lu, pivots, rhs)
    size = coef.shape[-1]
    probe = torch.randn(size, 1, dtype=phase.dtype)
    product = (phase @ (coef.to(phase.dtype) @ probe).reshape(coef.shape[0], size)).unsqueeze(-1)
    columns = torch.cat([rhs, product], dim=-1)

    def attempt():
        lu, pivots = _factor_in_place(series_matrices(phase, coef))
        try:
            solved = torch.linalg.lu_solve(lu, pivots, columns)
        except RuntimeError:  # broken pivots
            return lu, pivots, None
        return lu, pivots, solved

    with _threads(1):
        lu, pivots, solved = attempt()
    if solved is None or _probe_error(solved[..., -1:], probe) > _PROBE_TOL:
        raise RuntimeError(
            "LU factorisation of the Cayley system failed on one thread: the "
            "orthogonal layer's weights are probably not finite (check the learning rate)."
        )
    return lu, pivots, solved[..., :-1]


class _SeriesSolveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phase: torch.Tensor, coef: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        lu, pivots, z = _factor_and_solve(phase, coef.detach(), rhs, verify=phase.device.type == "cpu")
        ctx.save_for_backward(phase, lu, pivots, z)
        ctx.coef_dtype = coef.dtype
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: torch.Tensor):
        phase, lu, pivots, z = ctx.saved_tensors
        grad_rhs = torch.linalg.lu_solve(lu, pivots, grad_z, adjoint=True)
        grad_coef = None
        if ctx.needs_input_grad[1]:
            # dL/dM_f = -grad_rhs_f z_f^H; dL/dcoef[d] = Re sum_f conj(phase[f, d]) dL/dM_f
            n_freq, size, _ = grad_rhs.shape
            chunk = max(1, _CHUNK_ELEMENTS // (size * size))
            scratch = grad_rhs.new_empty(min(chunk, n_freq), size, size)
            total = grad_rhs.new_zeros(phase.shape[1], size * size)
            for start in range(0, n_freq, chunk):
                stop = min(start + chunk, n_freq)
                block = scratch[: stop - start]
                torch.bmm(grad_rhs[start:stop], z[start:stop].mH, out=block)
                total.addmm_(phase[start:stop].mH, block.reshape(stop - start, size * size), alpha=-1)
            grad_coef = total.real.reshape(-1, size, size).to(ctx.coef_dtype)
        return None, grad_coef, grad_rhs


def series_solve(phase: torch.Tensor, coef: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``(sum_d phase[f, d] coef[d]) z_f = rhs_f`` for every frequency f.

    ``phase``: (F, D) complex constants; ``coef``: (D, c, c) real, differentiable;
    ``rhs``: (F, c, N) complex, differentiable. Returns z: (F, c, N).
    """
    if phase.requires_grad:
        raise ValueError("series_solve treats phase as a constant")
    return _SeriesSolveFn.apply(phase, coef, rhs)
