"""Native CPU kernels (native.c) for the image-grid fast path: the 2 x 2 max pooling, the batch
statistics, the training batch norm + ReLU of its layers, and the readout.

The torch composition of :func:`gmcnn.functional.max_pool2x2` and
:func:`gmcnn.functional.batch_norm_max_pool2x2` reads the four strided quarter images a dozen
times to find each window's argmax; native.c does it in one pass and keeps the argmax as one
byte per window, its offset ``code = 2 * lower + right`` (0 top left, 1 top right, 2 bottom left,
3 bottom right, F.max_pool2d's tie rule). The backward passes read the byte instead of an int64
index. The batch norm + ReLU (:func:`gmcnn.functional.batch_norm_relu`) is one pass forward
and two backward, where BatchNorm1d and ReLU take five.

The first call in a process compiles native.c with the system C compiler (``$CC``, else ``cc``
or ``gcc``; under a second) into a private temporary directory, never a shared cache that
another user could write, and loads it with ctypes. OpenMP is the one torch loaded (the same
``libgomp.so.1``), and the kernels run on ``torch.get_num_threads()`` threads. Without a compiler,
or with ``GMCNN_NATIVE=0``, :func:`takes` is False and the callers compute the same functions
with torch operations.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
# tried in order: per-CPU clones (GCC's target_clones), then without; OpenMP in both (a serial
# build would be slower than torch's own threads on a many-core machine)
FLAG_SETS = (["-fopenmp", "-DGMCNN_CLONES"], ["-fopenmp"])
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()
_library: list[ctypes.CDLL | None] = []          # empty until the first call has tried


def _compile() -> ctypes.CDLL | None:
    """native.c built and loaded, or None (no compiler, or every flag set failed: logged once)."""
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if compiler[0] is None:
        log.info("no C compiler found: the image-grid layers use torch operations")
        return None
    directory = tempfile.mkdtemp(prefix="gmcnn-native-")
    try:
        target = os.path.join(directory, "native.so")
        for flags in FLAG_SETS:
            command = [*compiler, "-O3", "-shared", "-fPIC", *flags, str(SOURCE), "-o", target]
            try:
                subprocess.run(command, check=True, capture_output=True, timeout=300)
                library = ctypes.CDLL(target)
            except (OSError, subprocess.SubprocessError):
                continue
            for name in ("max_pool2x2", "max_unpool2x2", "batch_norm_unpool2x2", "channel_mean_var",
                         "batch_norm_relu", "batch_norm_relu_sums", "batch_norm_relu_backward",
                         "point_max_mean", "point_max_mean_backward"):
                for suffix in SUFFIX.values():
                    getattr(library, f"{name}_{suffix}").restype = None
            return library
        log.warning("could not compile %s with %s: the image-grid layers use torch operations",
                    SOURCE.name, " ".join(compiler))
        return None
    finally:
        shutil.rmtree(directory, ignore_errors=True)     # the loaded library stays mapped


def library() -> ctypes.CDLL | None:
    """The compiled kernels (compiled on the first call), or None where they are unavailable or
    turned off with ``GMCNN_NATIVE=0``."""
    if os.environ.get("GMCNN_NATIVE", "1") == "0":
        return None
    with _lock:
        if not _library:
            _library.append(_compile())
        return _library[0]


def takes(x: Tensor) -> bool:
    """Whether the kernels can read x: a plain contiguous float32 / float64 CPU tensor, not empty,
    outside torch.compile, and the library compiled."""
    return (type(x) is Tensor and x.device.type == "cpu" and x.dtype in SUFFIX and x.numel() > 0
            and x.is_contiguous() and not torch.compiler.is_compiling() and library() is not None)


def applies(x: Tensor) -> bool:
    """Whether the pooling kernels take x: :func:`takes` and (B, C, H, W) with even H and W."""
    return x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 and takes(x)


def _pointer(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _sizes(x: Tensor) -> tuple[ctypes.c_int64, ...]:
    planes = x.shape[0] * x.shape[1]
    return ctypes.c_int64(planes), ctypes.c_int64(x.shape[2]), ctypes.c_int64(x.shape[3])


def _threads() -> ctypes.c_int:
    return ctypes.c_int(torch.get_num_threads())


def _channels(*values: Tensor, dtype: torch.dtype) -> list[Tensor]:
    return [v.to(dtype).contiguous() for v in values]


def max_pool2x2(x: Tensor) -> tuple[Tensor, Tensor]:
    """(values, code) of the 2 x 2 windows of x (:func:`applies`): F.max_pool2d(x, 2)'s values,
    and per window the offset of its argmax in one byte (uint8)."""
    batch, channels, height, width = x.shape
    values = x.new_empty(batch, channels, height // 2, width // 2)
    code = torch.empty(values.shape, dtype=torch.uint8)
    getattr(library(), f"max_pool2x2_{SUFFIX[x.dtype]}")(_pointer(x), _pointer(values), _pointer(code),
                                                         *_sizes(x), _threads())
    return values, code


def max_unpool2x2(grad: Tensor, code: Tensor) -> Tensor:
    """F.max_pool2d's backward: ``grad`` (B, C, H/2, W/2) at each window's argmax ``code``, 0
    elsewhere, (B, C, H, W)."""
    grad = grad.contiguous()
    batch, channels, rows, cols = grad.shape
    grad_x = grad.new_empty(batch, channels, 2 * rows, 2 * cols)
    getattr(library(), f"max_unpool2x2_{SUFFIX[grad.dtype]}")(_pointer(grad), _pointer(code),
                                                              _pointer(grad_x), *_sizes(grad_x), _threads())
    return grad_x


def batch_norm_unpool2x2_(h: Tensor, grad: Tensor, code: Tensor, shift: Tensor, slope: Tensor,
                          gain: Tensor, channels: int, values: Tensor | None = None,
                          value_scale: Tensor | None = None, value_shift: Tensor | None = None) -> Tensor:
    """h (B, channels P, H, W), in place: ``shift[c] + slope[c] h`` plus ``gain[c] grad`` (grad
    (B, channels P, H/2, W/2)) at each window's argmax ``code``, for the channel c of the
    (B, channels, P, H, W) view; with ``values`` (the window maxima) only where
    ``value_scale[c] values + value_shift[c] > 0`` (a ReLU after the pooling); returns h."""
    relu = values is not None
    grad = grad.contiguous()
    shift, slope, gain = _channels(shift, slope, gain, dtype=h.dtype)
    if relu:
        values = values.contiguous()
        value_scale, value_shift = _channels(value_scale, value_shift, dtype=h.dtype)
    planes, height, width = _sizes(h)
    getattr(library(), f"batch_norm_unpool2x2_{SUFFIX[h.dtype]}")(
        _pointer(h), _pointer(grad), _pointer(code), _pointer(shift), _pointer(slope), _pointer(gain),
        ctypes.c_int(relu), *(_pointer(t) if relu else None for t in (values, value_scale, value_shift)),
        planes, ctypes.c_int64(channels), ctypes.c_int64(h.shape[1] // channels), height, width,
        _threads())
    torch.autograd.graph.increment_version(h)       # an in-place write, as autograd must see it
    return h


def channel_mean_var(rows: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and the biased variance of every channel of rows (B, C, L) (:func:`takes`) over
    B and L, in two passes, the sums in double (as :func:`gmcnn.functional.channel_mean_var`)."""
    batch, channels, inner = rows.shape
    mean = torch.empty(channels, dtype=torch.float64)
    var = torch.empty(channels, dtype=torch.float64)
    getattr(library(), f"channel_mean_var_{SUFFIX[rows.dtype]}")(
        _pointer(rows), _pointer(mean), _pointer(var), ctypes.c_int64(batch), ctypes.c_int64(channels),
        ctypes.c_int64(inner), _threads())
    return mean.to(rows.dtype), var.to(rows.dtype)


def _rows(x: Tensor) -> tuple[ctypes.c_int64, ...]:
    return tuple(ctypes.c_int64(size) for size in x.shape)


def batch_norm_relu(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """relu(scale[c] x + shift[c]) of x (B, C, L) (:func:`takes`), a new tensor."""
    scale, shift = _channels(scale, shift, dtype=x.dtype)
    y = torch.empty_like(x)
    getattr(library(), f"batch_norm_relu_{SUFFIX[x.dtype]}")(
        _pointer(x), _pointer(scale), _pointer(shift), _pointer(y), *_rows(x), _threads())
    return y


def batch_norm_relu_sums(grad: Tensor, x: Tensor, scale: Tensor, shift: Tensor,
                         mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel, over the entries where scale x + shift > 0: (sum grad, sum grad (x - mean)),
    summed in double, in x's dtype."""
    grad = grad.contiguous()
    scale, shift, mean = _channels(scale, shift, mean, dtype=x.dtype)
    sum_g = torch.empty(x.shape[1], dtype=torch.float64)
    sum_gx = torch.empty(x.shape[1], dtype=torch.float64)
    getattr(library(), f"batch_norm_relu_sums_{SUFFIX[x.dtype]}")(
        _pointer(grad), _pointer(x), _pointer(scale), _pointer(shift), _pointer(mean), _pointer(sum_g),
        _pointer(sum_gx), *_rows(x), _threads())
    return sum_g.to(x.dtype), sum_gx.to(x.dtype)


def batch_norm_relu_backward_(x: Tensor, grad: Tensor, scale: Tensor, shift: Tensor, k_x: Tensor,
                              k_0: Tensor) -> Tensor:
    """x (B, C, L), in place: scale[c] grad (where scale x + shift > 0, else 0) + k_x[c] x +
    k_0[c]; returns x."""
    grad = grad.contiguous()
    scale, shift, k_x, k_0 = _channels(scale, shift, k_x, k_0, dtype=x.dtype)
    getattr(library(), f"batch_norm_relu_backward_{SUFFIX[x.dtype]}")(
        _pointer(x), _pointer(grad), _pointer(scale), _pointer(shift), _pointer(k_x), _pointer(k_0),
        *_rows(x), _threads())
    torch.autograd.graph.increment_version(x)
    return x


def point_max_mean(x: Tensor, points: int) -> Tensor:
    """x (B, C, points P) (:func:`takes`) -> (B, C): the mean over P of the maximum over the
    points (``x.unflatten(-1, (points, -1)).amax(-2).mean(-1)``, the mean summed in double)."""
    out = x.new_empty(x.shape[:2])
    getattr(library(), f"point_max_mean_{SUFFIX[x.dtype]}")(
        _pointer(x), _pointer(out), ctypes.c_int64(x.shape[0] * x.shape[1]), ctypes.c_int64(points),
        ctypes.c_int64(x.shape[2] // points), _threads())
    return out


def point_max_mean_backward(x: Tensor, grad: Tensor, points: int) -> Tensor:
    """The gradient of :func:`point_max_mean` at x for the output gradient ``grad`` (B, C): amax's
    (a column's share to its maxima in equal parts) after the mean's."""
    grad = grad.contiguous()
    grad_x = torch.empty_like(x)
    getattr(library(), f"point_max_mean_backward_{SUFFIX[x.dtype]}")(
        _pointer(x), _pointer(grad), _pointer(grad_x), ctypes.c_int64(x.shape[0] * x.shape[1]),
        ctypes.c_int64(points), ctypes.c_int64(x.shape[2] // points), _threads())
    return grad_x
