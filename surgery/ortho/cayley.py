"""Fourier-domain Cayley convolution (Trockman & Kolter, ICLR 2021).

The default orthogonal layer of the RobustBlock (Meleshin et al., "Robustness as
Architecture", §3). A circular convolution is block-diagonal in the Fourier
domain: one ``out x in`` complex matrix per frequency of the real FFT. Each
matrix is replaced by its Cayley transform, which is (semi-)orthogonal:

    A = U - U^H + V^H V,   Q = [(I - A)(I + A)^{-1}; -2 V (I + A)^{-1}]

with ``U`` the first ``in`` rows of the kernel's frequency matrix and ``V`` the
rest (the reference code's form for ``out > in``; ``out < in`` uses the
transpose). ``Q^H Q = I``, so ``||y|| = ||x||`` when ``out >= in``.

Two things make it cheap:

* A kxk kernel's frequency matrices are a short Fourier series in the tap
  offsets, and so is ``V^H V`` (offsets up to ``k - 1``). The Gram matrix is
  formed once in the spatial domain with one real GEMM over the taps and then
  evaluated at every frequency with a small phase matrix, instead of one complex
  ``in x (out-in) x in`` product per frequency.
* Training solves ``(I + A) z = x`` for the batch only (``y = [2z - x; -2Vz]``);
  inference caches the explicit ``Q`` once, since the weights are fixed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import OrthoConv2d
from .linalg import series_solve

__all__ = ["CayleyConv2d"]


class CayleyConv2d(OrthoConv2d):
    """Orthogonal circular convolution via the Cayley transform in the Fourier domain.

    Same spatial size in and out (circular padding, stride 1); any input size.
    In eval mode, when no gradient can reach the layer's own parameters, the
    per-frequency matrices ``Q`` are computed once per input size and cached;
    ``train()``, ``load_state_dict`` or any change of the weights' values (in place,
    through ``.data``, by an EMA) invalidates the cache. The cache holds ``H * (W // 2 + 1) * out * in``
    complex64 numbers (2.3 GB for 512 -> 1024 channels at 32x32).
    """

    norm_preserving = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        normalize: str = "kernel",
        scale: float | None = None,
    ):
        super().__init__(in_channels, out_channels, kernel_size, bias)
        if normalize not in ("kernel", "spectrum"):
            raise ValueError(f"normalize must be 'kernel' or 'spectrum', got {normalize!r}")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0 or None (learnable), got {scale!r}")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        # The kernel enters as alpha * W / ||W|| (learnable alpha, as in the reference), or with
        # normalize="spectrum" as alpha * W / ||rfft2(W)|| over the map's half spectrum, the
        # paper code's form; a given scale fixes alpha (the paper code's block: 1, frozen).
        self.normalize = normalize
        self.fixed_scale = scale
        if scale is None:
            self.alpha = nn.Parameter(torch.empty((), **factory))
        else:  # a buffer: no optimiser or requires_grad_() can make it learn
            self.register_buffer("alpha", torch.empty((), **factory))
        self._phase_cache: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm() if self.fixed_scale is None else torch.tensor(self.fixed_scale))

    # ------------------------------------------------------------------ caching
    def _cache_sources(self) -> tuple[torch.Tensor, ...]:
        return (self.weight, self.alpha)

    def cache_bytes(self) -> int:
        return super().cache_bytes() + sum(t.nbytes for t in self._phase_cache.values())

    def _apply(self, fn, *args, **kwargs):
        self._phase_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------ frequency math
    def _phases(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """exp(2*pi*i*(u*d0/H + v*d1/W)): rows = rfft2 frequencies, cols = offsets."""
        key = (height, width, str(device))
        if key not in self._phase_cache:
            k = self.kernel_size
            d = torch.arange(-(k - 1), k, dtype=torch.float64)
            d0, d1 = torch.meshgrid(d, d, indexing="ij")
            u = torch.arange(height, dtype=torch.float64)
            v = torch.arange(width // 2 + 1, dtype=torch.float64)
            fu, fv = torch.meshgrid(u, v, indexing="ij")
            angle = 2 * math.pi * (
                fu.reshape(-1, 1) * d0.reshape(1, -1) / height + fv.reshape(-1, 1) * d1.reshape(1, -1) / width
            )
            self._phase_cache[key] = torch.polar(torch.ones_like(angle), angle).to(device, torch.complex64)
        return self._phase_cache[key]

    def _offset_index(self, offsets: torch.Tensor) -> torch.Tensor:
        """Column of the phase matrix for each (d0, d1) offset, |d| <= k - 1."""
        k = self.kernel_size
        return (offsets[..., 0] + k - 1) * (2 * k - 1) + offsets[..., 1] + k - 1

    def _scaled_kernel(self, height: int, width: int) -> torch.Tensor:
        """alpha * W / ||W|| (or / ||rfft2(W)|| on the height x width grid), transposed to
        (in, out, k, k) when out < in so that rows >= cols."""
        weight = self.weight.float()
        if self.normalize == "kernel":
            norm = weight.norm()
        else:  # the kernel's own half spectrum on this grid: sum over frequencies of ||W_f||^2
            norm = torch.fft.rfft2(weight, s=(height, width)).norm()
        kernel = weight * (self.alpha.float() / norm)
        return kernel.transpose(0, 1) if self._transposed else kernel

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.normalize != "kernel":
            extra += f", normalize={self.normalize!r}"
        if self.fixed_scale is not None:
            extra += f", scale={self.fixed_scale}"
        return extra

    @property
    def _transposed(self) -> bool:
        return self.out_channels < self.in_channels

    def _tap_offsets(self, device: torch.device) -> torch.Tensor:
        """(k*k, 2) offsets of the kernel taps from the kernel centre."""
        k = self.kernel_size
        grid = torch.arange(k, device=device) - (k - 1) // 2
        return torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(k * k, 2)

    def _system(self, kernel: torch.Tensor) -> torch.Tensor:
        """Series coefficients (one real c x c matrix per offset) of the matrix each
        frequency solves with: I + A, or its transpose when out < in."""
        rows, cols, k, _ = kernel.shape
        taps = k * k
        device = kernel.device
        tap_offsets = self._tap_offsets(device)
        tap_cols = self._offset_index(tap_offsets)

        u_taps = kernel[:cols].permute(2, 3, 0, 1).reshape(taps, cols, cols)
        # V^H V at offset d = sum over tap pairs (t, t') with e_t' - e_t = d of V_t^T V_t'.
        v_flat = kernel[cols:].permute(0, 2, 3, 1).reshape(rows - cols, taps * cols)
        gram = (v_flat.T @ v_flat).reshape(taps, cols, taps, cols).permute(0, 2, 1, 3)
        pair_cols = self._offset_index(tap_offsets[None, :, :] - tap_offsets[:, None, :]).reshape(-1)
        zero_col = self._offset_index(torch.zeros(1, 2, dtype=torch.long, device=device))

        coef = kernel.new_zeros((2 * k - 1) ** 2, cols, cols)
        coef = coef.index_add(0, tap_cols, u_taps)
        coef = coef.index_add(0, self._offset_index(-tap_offsets), -u_taps.transpose(1, 2))
        coef = coef.index_add(0, pair_cols, gram.reshape(taps * taps, cols, cols))
        coef = coef.index_add(0, zero_col, torch.eye(cols, device=device)[None])  # the I of I + A
        return coef.transpose(1, 2) if self._transposed else coef

    def _v_matrices(self, kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """V at every frequency: (F, rows - cols, cols) complex."""
        rows, cols, k, _ = kernel.shape
        tap_cols = self._offset_index(self._tap_offsets(kernel.device))
        phase = self._phases(height, width, kernel.device)[:, tap_cols]
        v_taps = kernel[cols:].permute(2, 3, 0, 1).reshape(k * k, (rows - cols) * cols).to(phase.dtype)
        return (phase @ v_taps).reshape(phase.shape[0], rows - cols, cols)

    def orthogonal_matrices(self, height: int, width: int | None = None) -> torch.Tensor:
        """The (semi-)orthogonal matrix of every rfft2 frequency: (H * (W//2+1), out, in) complex."""
        width = height if width is None else width
        kernel = self._scaled_kernel(height, width)
        phase = self._phases(height, width, kernel.device)
        cols = kernel.shape[1]
        eye = torch.eye(cols, dtype=phase.dtype, device=phase.device)
        inverse = series_solve(phase, self._system(kernel), eye.expand(phase.shape[0], cols, cols))
        v_freq = self._v_matrices(kernel, height, width)
        if self._transposed:  # Q = [2 B^-T - I, -2 B^-T V^T]
            return torch.cat([2 * inverse - eye, -2 * (inverse @ v_freq.mT)], dim=2)
        return torch.cat([2 * inverse - eye, -2 * (v_freq @ inverse)], dim=1)

    def _forward_cached(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q = self._kept((height, width, str(x.device)), lambda: self.orthogonal_matrices(height, width))
        return _from_frequency(q @ _to_frequency(x), height, width)

    def _forward_solve(self, x: torch.Tensor) -> torch.Tensor:
        """Q x without forming Q: the V products are spatial convolutions, the solve is per frequency."""
        height, width = x.shape[-2:]
        kernel = self._scaled_kernel(height, width)
        rows, cols = kernel.shape[:2]
        phase, system = self._phases(height, width, x.device), self._system(kernel)
        v = kernel[cols:]
        if not self._transposed:  # y = [2z - x; -2 V z], z = B^-1 x
            z = _from_frequency(series_solve(phase, system, _to_frequency(x)), height, width)
            if rows == cols:
                return 2 * z - x
            return torch.cat([2 * z - x, -2 * _circular_conv(z, v)], dim=1)
        # y = 2 B^-T (x_top - V^T x_bottom) - x_top
        top, bottom = x[:, :cols], x[:, cols:]
        rhs = top - _circular_conv(bottom, v.transpose(0, 1))
        return 2 * _from_frequency(series_solve(phase, system, _to_frequency(rhs)), height, width) - top

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CayleyConv2d expects a (batch, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            y = self._forward_cached(xf) if self._use_cache() else self._forward_solve(xf)
            if self.bias is not None:
                y = y + self.bias.float().view(1, -1, 1, 1)
        return y.to(x.dtype)


def _to_frequency(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) real -> (H * (W//2+1), C, N) half spectrum, one matrix column per image."""
    batch, channels, height, width = x.shape
    return torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(height * (width // 2 + 1), channels, batch)


def _from_frequency(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`_to_frequency`."""
    n_freq, channels, batch = y.shape
    y = y.reshape(height, width // 2 + 1, channels, batch).permute(3, 2, 0, 1)
    return torch.fft.irfft2(y, s=(height, width))


def _circular_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Centred circular cross-correlation: the spatial operator whose frequency matrices are
    sum_e kernel[:, :, e + c] exp(i theta . e), as used throughout this file."""
    k = kernel.shape[-1]
    height, width = x.shape[-2:]
    # wrap by indexing rather than F.pad, which refuses maps smaller than the padding
    rows = (torch.arange(k - 1 + height, device=x.device) - (k - 1) // 2) % height
    cols = (torch.arange(k - 1 + width, device=x.device) - (k - 1) // 2) % width
    return F.conv2d(x[:, :, rows][:, :, :, cols], kernel)
