"""Device and precision are chosen here, and only here (STYLE: choose the device in one place).

extract/ (the column), heads/ (the MLP and the scratch CNN), the Ray engine and the command
line's ``--device``/``--precision`` options all read this leaf module; it imports nothing of
colhead's, so every layer may use it without breaking the one-way flow.
"""

from __future__ import annotations

import contextlib

DEVICES_HELP = "auto | cpu | cuda | cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_device(device: str) -> str:
    """Validate a device name without importing torch (cheap checks come first)."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES_HELP}, got {device!r}.")
    return device


def resolve_device(device: str = "auto"):
    """ "auto" -> cuda when available, else cpu. Asking for cuda without one is an error."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {device} was asked for, but no CUDA device is available; "
            "use --device auto or cpu."
        )
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


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles: bf16 then pays off even for very small networks.

    Measured on the scratch CNN (64 px, batch 64, channels_last):
      AMD EPYC, AVX512-BF16, no AMX, 2 threads: fp32 25.6 ms, bf16 29.0 ms
      Xeon with AMX, 2 threads: fp32 42.7 ms, bf16 35.4 ms; 16 threads: 11.4 ms, 8.8 ms
    """
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device, *, small_model: bool = False) -> str:
    """ "auto" -> bf16 on CUDA with bf16 (else fp16) and on CPUs with native bf16, else fp32.

    ``small_model``: the network is too small for bf16 to pay off on a CPU without AMX (the
    scratch CNN), so "auto" picks bf16 on the CPU only where AMX is present.
    """
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
        fast = cpu_has_amx() if small_model else cpu_has_bf16()
        return "bf16" if fast else "fp32"
    return precision


def autocast_dtype(precision: str):
    """The torch dtype autocast runs in for a resolved precision; None for fp32."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
