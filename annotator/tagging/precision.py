"""The fast engine's arithmetic precision: float32, or its matrix work in bfloat16.

bfloat16 keeps float32's range with 8 bits of mantissa. Matrix products in it are several
times faster where the hardware has bfloat16 units: CPUs with AMX or AVX512-BF16, and GPUs.
float32 gives exactly Flair's spans; bfloat16 may move a score, and rarely a span (the
figures are in docs/explanation/fast-engine.md).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from annotator.errors import UsageError

if TYPE_CHECKING:  # torch loads with the model, not with this module
    import torch

log = logging.getLogger("annotator")

PRECISIONS = ("fp32", "bf16", "auto")
#: what `--precision` is when not given
DEFAULT_PRECISION = "auto"
#: CPU flags (Linux /proc/cpuinfo) of bfloat16 matrix units
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_unsupported(device: torch.device) -> str | None:
    """Why bfloat16 is not fast on `device`, or None where it is."""
    import torch

    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16 support"
    if device.type == "cpu":
        if set(BF16_CPU_FLAGS) & cpu_flags():
            return None
        return "this CPU has neither AMX nor AVX512-BF16 (no amx_bf16 or avx512_bf16 flag)"
    return f"bfloat16 is used on CPUs and CUDA GPUs only, not on {device.type}"


_said: set[str] = set()


def resolve_precision(
    precision: str, device: torch.device, worthwhile: bool = True
) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: float32). `bf16` where bfloat16
    is not fast is a usage error; `auto` then falls back to float32 and says so once. `auto`
    also keeps float32 for a model whose matrix work is too small to gain (`worthwhile`
    False: measured no faster on the default model, whose time goes to its many small steps,
    while a character language model's large LSTM runs 2-5x faster)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "auto" and not worthwhile:
        log.debug("precision auto: float32 (bfloat16 is no faster for this model)")
        return None
    reason = bf16_unsupported(device)
    if reason is None:
        import torch

        return torch.bfloat16
    if precision == "bf16":
        raise UsageError(f"--precision bf16: {reason}; use --precision fp32 or auto")
    if reason not in _said:
        _said.add(reason)
        log.warning("precision auto: float32, as %s", reason)
    return None


def check_precision(precision: str, device: str) -> None:
    """Refuse `--precision bf16` where bfloat16 is not fast, before any model loads."""
    if precision == "bf16":
        from annotator.models import choose_device

        resolve_precision(precision, choose_device(device))
