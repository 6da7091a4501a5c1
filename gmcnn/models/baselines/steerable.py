"""C4-steerable convolutions on the pixel grid, built natively (docs/design.md §3.3).

Fields. Under the quarter turn r of the grid (``torch.rot90(x, 1, (-2, -1))``, the element
``image_transform_element(p4(n), rot90=1)`` of gmcnn.equivariance) a field's channels transform by

    vector  (v_x, v_y) -> (v_y, -v_x)          (gmcnn.spaces.VectorField, the plume layout)
    regular f(h) -> f(h + 1 mod 4)             (4 channels, one per rotation h)

Steerable kernels. A cross-correlation kernel K (c_out, c_in, k, k), k odd, commutes with r,
conv(r . x, K) = r . conv(x, K), iff K = S(K) := rho_out(r) rot90(K) rho_in(r)^-1; the Reynolds
operator P = (1/4) sum_j S^j projects onto those kernels. The basis is the image under P of a
band-limited kernel space built like e2cnn's (the library the upstream baselines use): rings at
radii j = 0..k//2 (j = 0: the centre pixel; j > 0: the profile exp(-(|p| - j)^2 / 2 sigma^2) over
the other pixels, sigma 0.6, 0.4 on the outermost ring), angular harmonics cos(m theta),
sin(m theta) with m <= 2j (m = 0 at the centre), for every (out, in) channel pair. S maps that
space to itself, so its image under P is exactly its steerable part; an orthonormal basis of it
(SVD) is the steerable basis. For k = 3 it has 24 kernels regular -> regular and 12 vector ->
regular or regular -> vector, as e2cnn's C4 basis (compute_basis_params, maximum frequency 5),
so the models built on it have the upstream parameter counts; the kernels themselves are ours.
On a k x k grid every C4 rotation is exact on the pixels, so the constraint holds exactly.

Layers expand their filter once per call (one einsum) and run one ``conv2d``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FIELD_SIZES = {"vector": 2, "regular": 4}
ORDER = 4  # |C4|


def field_rotation(field: str) -> Tensor:
    """rho(r): the matrix of the quarter turn on one field's channels."""
    if field == "vector":
        return torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    if field == "regular":
        return torch.roll(torch.eye(ORDER, dtype=torch.float64), 1, dims=1)  # (rho f)(h) = f(h + 1)
    raise ValueError(f"field must be one of {tuple(FIELD_SIZES)}, got {field!r}")


def quarter_turn(kernels: Tensor, field_in: str, field_out: str) -> Tensor:
    """S(K) = rho_out(r) rot90(K) rho_in(r)^-1 on kernels (..., c_out, c_in, k, k)."""
    rho_out, rho_in = field_rotation(field_out), field_rotation(field_in)
    turned = torch.rot90(kernels, 1, (-2, -1))
    return torch.einsum("ab,...bcxy,cd->...adxy", rho_out.to(kernels), turned, rho_in.T.to(kernels))


def ring_profiles(kernel_size: int) -> Tensor:
    """(n, k, k): the band-limited angular-radial profiles of the module docstring."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    half = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - half
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    radius, angle = torch.hypot(rows, cols), torch.atan2(rows, cols)
    profiles = [(radius == 0).double()]
    for ring in range(1, half + 1):
        sigma = 0.4 if ring == half else 0.6
        weight = torch.exp(-(radius - ring) ** 2 / (2 * sigma ** 2)) * (radius > 0)
        profiles.append(weight)
        for m in range(1, 2 * ring + 1):
            profiles += [weight * torch.cos(m * angle), weight * torch.sin(m * angle)]
    return torch.stack(profiles)


@functools.cache
def _basis(field_in: str, field_out: str, kernel_size: int) -> Tensor:
    profiles = ring_profiles(kernel_size)
    c_out, c_in = FIELD_SIZES[field_out], FIELD_SIZES[field_in]
    units = torch.eye(c_out * c_in, dtype=torch.float64).reshape(-1, c_out, c_in)
    candidates = torch.einsum("eoi,nxy->enoixy", units, profiles).flatten(0, 1)
    projected, turned = candidates.clone(), candidates
    for _ in range(ORDER - 1):
        turned = quarter_turn(turned, field_in, field_out)
        projected += turned
    _, singular, vh = torch.linalg.svd(projected.flatten(1) / ORDER, full_matrices=False)
    rank = int((singular > 1e-9 * singular[0]).sum())
    return vh[:rank].reshape(rank, c_out, c_in, kernel_size, kernel_size)


def steerable_basis(field_in: str, field_out: str, kernel_size: int = 3) -> Tensor:
    """(B, c_out, c_in, k, k) float32 orthonormal basis of the C4-steerable kernels from
    ``field_in`` to ``field_out`` fields (module docstring)."""
    unknown = sorted({field_in, field_out} - set(FIELD_SIZES))
    if unknown:
        raise ValueError(f"field must be one of {tuple(FIELD_SIZES)}, got {unknown[0]!r}")
    return _basis(field_in, field_out, kernel_size).float()


def steerable_init(weight: Tensor, basis: Tensor, in_fields: int) -> None:
    """He-normal filters: basis coefficients of variance 2 c_out / (B in_fields), so that each
    filter entry has variance 2 / fan_in for an orthonormal basis of B kernels (c_out, c_in, k, k)."""
    size, c_out = basis.shape[0], basis.shape[1]
    nn.init.normal_(weight, std=math.sqrt(2 * c_out / (size * in_fields)))


class SteerableConv2d(nn.Module):
    """Exactly C4-equivariant convolution from ``in_fields`` fields of type ``field_in`` to
    ``out_fields`` of type ``field_out``: filter[o, :, i, :] = sum_b w[o, b, i] basis[b], zero
    padding k // 2; one bias per regular output field (shared by its channels), none for vectors."""

    def __init__(self, in_fields: int, out_fields: int, field_in: str = "regular",
                 field_out: str = "regular", kernel_size: int = 3, bias: bool = True):
        super().__init__()
        basis = steerable_basis(field_in, field_out, kernel_size)
        self.register_buffer("basis", basis)  # saved with the weights: checkpoints carry it
        self.weight = nn.Parameter(torch.empty(out_fields, basis.shape[0], in_fields))
        steerable_init(self.weight, basis, in_fields)
        self.out_size = FIELD_SIZES[field_out]
        self.bias = (nn.Parameter(torch.zeros(out_fields)) if bias and field_out == "regular"
                     else None)

    def filter(self) -> Tensor:
        """(out_fields * c_out, in_fields * c_in, k, k): the expanded filter."""
        w = torch.einsum("obi,bpqxy->opiqxy", self.weight, self.basis.to(self.weight.dtype))
        return w.flatten(0, 1).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(self.out_size)
        return F.conv2d(x, self.filter(), bias, padding=self.basis.shape[-1] // 2)


class FieldBatchNorm(nn.BatchNorm3d):
    """Batch norm per regular field (e2cnn's InnerBatchNorm): statistics over the batch, the
    field's channels and the positions; one affine weight and bias per field."""

    def __init__(self, fields: int):
        super().__init__(fields)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.unflatten(1, (self.num_features, -1))).flatten(1, 2)


def lift_to_regular(x: Tensor) -> Tensor:
    """(B, 2 F, H, W) vector fields -> (B, 4 F, H, W) regular fields, f(h) = v . (cos h pi/2,
    sin h pi/2); rotating the field shifts h by one (vector rotation as in the module docstring)."""
    return torch.einsum("bfcxy,hc->bfhxy", x.unflatten(1, (-1, 2)),
                        _directions().to(x)).flatten(1, 2)


def project_to_vector(x: Tensor) -> Tensor:
    """(B, 4 F, H, W) regular fields -> (B, 2 F, H, W) vectors sum_h f(h) (cos h pi/2, sin h pi/2)."""
    return torch.einsum("bfhxy,hc->bfcxy", x.unflatten(1, (-1, ORDER)),
                        _directions().to(x)).flatten(1, 2)


def _directions() -> Tensor:
    angles = torch.arange(ORDER, dtype=torch.float64) * (2 * math.pi / ORDER)
    return torch.stack([torch.cos(angles), torch.sin(angles)], 1).round(decimals=12)
