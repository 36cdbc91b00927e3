"""benchmarks/isa/as_avx2.sh really hides AVX-512 and VNNI: from CPUID (PyTorch's kernel choice reads it) and from
/proc/cpuinfo (our cpu_info() reads it). Results measured under it are labelled AVX2 code paths, so a shim that
silently hid nothing would mislabel them."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "isa" / "as_avx2.sh"
PROBE = ("import torch; from optimum.quantization.hardware import cpu_info; "
         "print(torch.backends.cpu.get_cpu_capability()); print(' '.join(cpu_info().isa))")


@functools.lru_cache(maxsize=1)
def _why_not_here() -> str | None:
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    if "avx512f" not in flags.split():
        return "this CPU has no AVX-512 to hide"
    if "cpuid_fault" not in flags.split():
        return "this CPU or kernel has no CPUID faulting"
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("gcc"):
        return "needs root (a mount namespace), unshare and gcc"
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return "this container does not allow a private mount namespace (unshare -m)"
    return None


@pytest.mark.skipif(_why_not_here() is not None, reason=_why_not_here() or "")
def test_as_avx2_hides_avx512_from_cpuid_and_cpuinfo():
    outside = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    inside = subprocess.run(["sh", str(SCRIPT), sys.executable, "-c", PROBE], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    assert outside[0].startswith("AVX512") and "avx512f" in outside[1].split()
    assert inside[0] == "AVX2"
    assert inside[1].split() == ["avx2", "fma"]


@pytest.mark.skipif(_why_not_here() is not None, reason=_why_not_here() or "")
def test_results_measured_under_as_avx2_say_so():
    probe = ("from optimum.quantization.side_by_side import machine_record; "
             "from optimum.quantization.evaluation.report import machine_line; "
             "print(machine_line({'machine': machine_record(2)}))")
    line = subprocess.run(["sh", str(SCRIPT), sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout
    assert "ISA avx2, fma (VNNI: False)" in line and "ISA masked: hidden by benchmarks/isa/as_avx2.sh" in line
    assert "avx512f" in line.split("ISA masked:")[1]


@pytest.mark.skipif(_why_not_here() is not None, reason=_why_not_here() or "")
def test_as_avx2_passes_the_exit_status_through():
    assert subprocess.run(["sh", str(SCRIPT), sys.executable, "-c", "raise SystemExit(3)"]).returncode == 3


@pytest.mark.skipif(_why_not_here() is not None, reason=_why_not_here() or "")
def test_plain_8bit_weights_saturate_on_avx2_kernels_and_pair_safe_ones_do_not():
    """test_ort_pair_safe's saturation contrast skips on VNNI CPUs; under as_avx2.sh it runs on ONNX Runtime's real
    AVX2 kernels here too, beside the pair-safe check."""
    tests = Path(__file__).resolve().parent
    # faulthandler would replace the shim's SIGSEGV handler (as_avx2.sh's header).
    pytest_args = ["-q", "-rs", "-p", "no:cacheprovider", "-p", "no:faulthandler"]
    run = subprocess.run(["sh", str(SCRIPT), sys.executable, "-m", "pytest", *pytest_args,
                          str(tests / "test_ort_pair_safe.py"), "-k", "saturate"],
                         capture_output=True, text=True, cwd=tests.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]
