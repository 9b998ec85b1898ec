"""What machine a figure was measured on: every speed the tools report names its CPU."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's word for it elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# /proc/cpuinfo flag -> the name figures use: Intel's AMX tiles (Sapphire Rapids and later), and the
# AVX-512 bfloat16 dot products of Cooper Lake and AMD Zen 4 onwards, both of which oneDNN uses
# for mixed-bfloat16 convolutions.
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512_BF16"}


def cpu_bf16_units(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The bfloat16 units the CPU has ("AMX", "AVX512_BF16"), from ``cpuinfo`` or /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return ()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return tuple(name for flag, name in BF16_FLAGS.items() if flag in flags)
