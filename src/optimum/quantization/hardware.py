"""What the CPU we run on can do: model name and the ISA flags that decide INT8 speed and accuracy."""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass

# Flags that matter for INT8 GEMMs, in the order we report them.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    isa: tuple[str, ...]
    cores: int

    @property
    def has_vnni(self) -> bool:
        # VNNI accumulates u8 x s8 products in 32 bits; without it they go through saturating 16-bit adds.
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa or "amx_int8" in self.isa

    def to_dict(self) -> dict:
        return {**asdict(self), "isa": list(self.isa), "has_vnni": self.has_vnni}


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    import os

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return CpuInfo(model=model, isa=tuple(f for f in _ISA_FLAGS if f in flags), cores=os.cpu_count() or 1)


def resolve_reduce_range(value) -> bool:
    """`reduce_range` as given, or for "auto": 7-bit weights exactly on CPUs without VNNI."""
    return (not cpu_info().has_vnni) if value == "auto" else bool(value)
