"""Atomic folder writes, folder sizes, and CPU detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimum.quantization.files import atomic_output_dir
from optimum.quantization.hardware import CpuInfo, cpu_info, cpu_label, cpu_summary, parse_cpuinfo


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.fixture
def existing(tmp_path) -> Path:
    target = tmp_path / "model"
    (target / "sub").mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"\x00old-model\xff")
    (target / "config.json").write_text('{"old": true}', encoding="utf-8")
    (target / "sub" / "nested.bin").write_bytes(b"nested" * 10)
    return target


def test_success_creates_new_folder(tmp_path):
    target = tmp_path / "deeper" / "out"
    with atomic_output_dir(target) as staging:
        assert staging.is_dir()
        assert staging.parent == target.parent.resolve()
        assert staging.name.startswith(".out.tmp-")
        assert not target.exists()  # nothing visible until the block succeeds
        (staging / "a.txt").write_text("A", encoding="utf-8")
    assert _snapshot(target) == {"a.txt": b"A"}
    assert _siblings(target) == []


def test_success_replaces_existing_content(existing):
    with atomic_output_dir(existing) as staging:
        assert _snapshot(existing)["model.onnx"] == b"\x00old-model\xff"  # old content still in place meanwhile
        (staging / "model.onnx").write_bytes(b"new-model")
    # Old files not written again are gone: the folder is replaced, not merged.
    assert _snapshot(existing) == {"model.onnx": b"new-model"}
    # Neither the staging folder nor the backup of the old one is left behind.
    assert _siblings(existing) == []


def test_exception_leaves_existing_folder_untouched(existing):
    before = _snapshot(existing)
    staging_seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(existing) as staging:
            staging_seen.append(staging)
            (staging / "model.onnx").write_bytes(b"half-written")
            (staging / "extra.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert _snapshot(existing) == before
    assert not staging_seen[0].exists()
    assert not [name for name in _siblings(existing) if name.startswith(f".{existing.name}.tmp-")]
    assert _siblings(existing) == []


def test_exception_without_existing_target_creates_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(target) as staging:
            (staging / "a").write_text("a", encoding="utf-8")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_target_that_is_a_file_raises(tmp_path):
    target = tmp_path / "model"
    target.write_text("I am a file", encoding="utf-8")
    with pytest.raises(NotADirectoryError):
        with atomic_output_dir(target):
            pytest.fail("the block must not run")
    assert target.read_text(encoding="utf-8") == "I am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --------------------------------------------------------------------------------------------- hardware

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def test_cpu_info_shape():
    info = cpu_info()
    assert isinstance(info, CpuInfo)
    assert isinstance(info.model, str) and info.model.strip()
    assert isinstance(info.isa, tuple) and all(isinstance(f, str) for f in info.isa)
    assert info.cores >= 1
    assert info.has_vnni == bool(VNNI_FLAGS & set(info.isa))
    assert cpu_info() is info  # cached


def test_cpu_info_to_dict_is_json():
    data = cpu_info().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["has_vnni"] == cpu_info().has_vnni
    assert data["isa"] == list(cpu_info().isa)


@pytest.mark.parametrize(
    "isa, expected",
    [
        ((), False),
        (("avx2", "fma"), False),
        (("avx2", "avx512f", "avx512bw"), False),
        (("avx2", "avx_vnni"), True),
        (("avx512f", "avx512_vnni"), True),
        (("amx_int8",), True),
    ],
)
def test_has_vnni(isa, expected):
    assert CpuInfo(model="test", isa=isa, cores=1).has_vnni is expected


ZEN5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx2 fma
"""


def test_cpuinfo_keeps_the_signature_a_bare_model_name_hides():
    """Zen 3, 4 and 5 all report "AMD EPYC" in the cloud: results must still say which one ran them."""
    info = parse_cpuinfo(ZEN5_CPUINFO.splitlines(), default_model="x86_64", cores=2)
    assert info == CpuInfo(model="AMD EPYC", isa=("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                                  "avx512_bf16"), cores=2, signature="AuthenticAMD family 26 model 2")
    assert cpu_label(info.to_dict()) == "AMD EPYC (AuthenticAMD family 26 model 2)"
    # Results written before the signature was recorded, and systems without one, keep the bare name.
    assert cpu_label({"model": "AMD EPYC"}) == "AMD EPYC"
    bare = parse_cpuinfo(["flags : avx2"], default_model="x86_64", cores=1)
    assert bare.model == "x86_64" and bare.signature is None and bare.isa == ("avx2",)


def test_machine_line_names_the_signature():
    from optimum.quantization.evaluation.report import machine_line

    cpu = parse_cpuinfo(ZEN5_CPUINFO.splitlines(), default_model="x86_64", cores=2).to_dict()
    line = machine_line({"machine": {"cpu": cpu, "threads": 2}, "versions": {}})
    assert line.startswith("Machine: AMD EPYC (AuthenticAMD family 26 model 2), ISA avx2")


def test_cpu_summary_is_the_one_cpu_phrase_of_every_report():
    """Reports, the CLI and the benchmark scripts all name the CPU through cpu_summary; older results lack fields."""
    info = parse_cpuinfo(ZEN5_CPUINFO.splitlines(), default_model="x86_64", cores=2)
    assert cpu_summary(info.to_dict()) == (
        "AMD EPYC (AuthenticAMD family 26 model 2), ISA avx2, fma, avx512f, avx512bw, avx512_vnni, avx_vnni, "
        "avx512_bf16 (VNNI: True), 2 cores"
    )
    assert cpu_summary({"model": "Xeon", "isa": []}) == "Xeon, ISA unknown"
    assert cpu_summary({"isa": "avx2"}) == "unknown CPU, ISA avx2"
