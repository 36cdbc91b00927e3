#!/bin/sh
# Run a command as on an AVX2-only CPU, on a CPU that has AVX-512: CPUID answers without AVX-512, VNNI, AVX-VNNI,
# BF16 and AMX (hide_avx512.c, through LD_PRELOAD and Linux's CPUID faulting), and /proc/cpuinfo loses their flags
# (a private mount namespace). PyTorch, ONNX Runtime's MLAS, oneDNN/OpenVINO and our cpu_info() then pick their AVX2
# code paths. The cores stay what they are: a proxy for an AVX2 machine's code paths, not for its speed.
#
#     sh benchmarks/isa/as_avx2.sh .venv/bin/python benchmarks/bert_base_speed.py --quick ...
#
# Needs root (mount namespace), gcc, and a CPU and kernel with CPUID faulting ("cpuid_fault" in /proc/cpuinfo).
# The shim answers CPUID from a SIGSEGV handler: a program that installs its own (Python's faulthandler, so
# pytest unless run with -p no:faulthandler) crashes at its next CPUID instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
grep -qw cpuid_fault /proc/cpuinfo || { echo "as_avx2.sh: this CPU or kernel has no CPUID faulting" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -o "$work/hide_avx512.so" "$here/hide_avx512.c"
# The flags hide_avx512.c takes out of CPUID, as /proc/cpuinfo names them.
hidden_flags='avx512[a-z0-9_]*|avx_vnni|amx[a-z0-9_]*'
sed -E "s/ ($hidden_flags)\b//g" /proc/cpuinfo > "$work/cpuinfo"
hidden=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -Ex "$hidden_flags" | tr '\n' ' ')
# Every result measured under it records this (optimum.quantization.side_by_side.machine_record).
export OPTIMUM_QUANTIZATION_ISA_MASK="hidden by benchmarks/isa/as_avx2.sh: ${hidden% } (AVX2 code paths on this CPU's cores)"
status=0
unshare -m sh -c 'mount --bind "$1/cpuinfo" /proc/cpuinfo && shift && LD_PRELOAD="$0" exec "$@"' \
    "$work/hide_avx512.so" "$work" "$@" || status=$?
exit "$status"
