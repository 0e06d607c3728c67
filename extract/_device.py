"""Device and precision are chosen here, once (STYLE: choose the device in one place)."""

from __future__ import annotations

import contextlib

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto"):
    """ "auto" -> cuda when available, else cpu. Asking for cuda without one is an error."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for, but no CUDA device is available.")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 natively (AVX-512 BF16 or AMX): then autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(
            getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        )
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device) -> str:
    """ "auto" -> bf16 on CUDA with bf16 (else fp16) and on CPUs with native bf16, else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise ValueError("fp16 needs a CUDA device; on the CPU use bf16 (or fp32).")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def autocast(device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
