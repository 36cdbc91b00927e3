"""What the CPU we run on can do: model name, CPUID signature and the ISA flags that decide INT8 speed and accuracy."""

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
    # Vendor, family and model number: cloud CPUs often report a bare "AMD EPYC", which Zen 3, 4 and 5 all share.
    signature: str | None = None

    @property
    def has_vnni(self) -> bool:
        # VNNI accumulates u8 x s8 products in 32 bits; without it they go through saturating 16-bit adds.
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa or "amx_int8" in self.isa

    def to_dict(self) -> dict:
        return {**asdict(self), "isa": list(self.isa), "has_vnni": self.has_vnni}


def parse_cpuinfo(lines, default_model: str, cores: int) -> CpuInfo:
    """The first processor's entry of Linux's /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        fields.setdefault(key, value.strip())
        if key == "flags":
            break
    flags = set(fields.get("flags", "").split())
    signature = None
    if "cpu family" in fields and "model" in fields:
        signature = f"{fields.get('vendor_id', 'unknown vendor')} family {fields['cpu family']} model {fields['model']}"
    return CpuInfo(model=fields.get("model name") or default_model, isa=tuple(f for f in _ISA_FLAGS if f in flags),
                   cores=cores, signature=signature)


def cpu_label(cpu: dict) -> str:
    """A result's CPU for people: its model name, with the CPUID signature where one was recorded."""
    return f"{cpu['model']} ({cpu['signature']})" if cpu.get("signature") else cpu["model"]


def cpu_summary(cpu: dict) -> str:
    """A result's CPU in one phrase for reports: label, ISA flags, VNNI and cores, each where recorded."""
    isa = cpu.get("isa")
    parts = [cpu_label(cpu) if "model" in cpu else "unknown CPU",
             "ISA " + ((", ".join(isa) if isinstance(isa, list) else isa) or "unknown")]
    if "has_vnni" in cpu:
        parts[-1] += f" (VNNI: {cpu['has_vnni']})"
    if "cores" in cpu:
        parts.append(f"{cpu['cores']} cores")
    return ", ".join(parts)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    import os

    default_model, cores = platform.processor() or platform.machine(), os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return parse_cpuinfo(cpuinfo, default_model, cores)
    except OSError:
        return CpuInfo(model=default_model, isa=(), cores=cores)


def resolve_reduce_range(value) -> bool:
    """`reduce_range` as given, or for "auto": 7-bit weights exactly on CPUs without VNNI."""
    return (not cpu_info().has_vnni) if value == "auto" else bool(value)
