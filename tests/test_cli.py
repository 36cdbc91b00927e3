"""`optimum-quantize` and `optimum-cli quantize`: same options, clear errors, a saved model and a report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optimum.quantization.commands.cli import main
from optimum.quantization.recipe import QuantizationRecipe


def test_quantize_static_from_a_text_file_and_report(tiny_dir, tmp_path, capsys):
    calibration = tmp_path / "calib.txt"
    calibration.write_text("a good script\nboring , long and pointless\nthe movie is a disaster\n")
    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main([
        "--model", str(tiny_dir("text-classification")), "--task", "text-classification", "--method", "static",
        "--calibration-data", str(calibration), "--calibration-method", "percentile", "--output", str(out),
        "--report", str(report),
    ])
    assert code == 0
    recipe = QuantizationRecipe.load(out)
    assert recipe.quantization.calibration.method == "percentile" and recipe.details["calibration_samples"] == 3
    printed = capsys.readouterr().out
    assert "latency p50" in printed and "model file (MB)" in printed and "top-1 agreement" in printed
    data = json.loads(report.read_text())
    assert data["agreement"]["examples"] == 64 and data["cpu"]["model"]
    # The measured comparison is saved in the recipe, where a published model card reads it.
    speedup = data["fp32"]["latency_ms"]["p50"] / data["int8"]["latency_ms"]["p50"]
    assert recipe.metrics["speedup_vs_fp32_p50"] == pytest.approx(speedup, rel=1e-2)
    assert recipe.metrics["top1_agreement_vs_fp32"] == pytest.approx(data["agreement"]["top1_agreement"], abs=1e-4)


def test_explicit_quantize_subcommand_and_torch_backend(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["quantize", "--model", str(tiny_dir("text-classification")), "--task", "sentiment-analysis",
                 "--backend", "torch", "--output", str(out), "--no-compare"]) == 0
    assert QuantizationRecipe.load(out).backend == "torch"


def test_output_into_a_folder_with_other_files_keeps_them(tiny_dir, tmp_path):
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.csv").write_text("text,label\n")
    (out / "train.py").write_text("print('hi')\n")
    assert main(["--model", str(tiny_dir("text-classification")), "--task", "text-classification",
                 "--output", str(out), "--no-compare"]) == 0
    assert (out / "data" / "train.csv").read_text() == "text,label\n" and (out / "train.py").read_text() == "print('hi')\n"
    assert (out / "quantization_config.json").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "int3"], "Unknown method 'int3'. Valid methods: 'dynamic', 'none', 'static'"),
        (["--task", "translation"], "Unknown task 'translation'"),
        (["--backend", "tvm"], "Unknown backend 'tvm'"),
        (["--method", "static"], "needs calibration data"),
        (["--outlier-channel-ratio", "auto"], "outlier_channel_ratio"),  # dynamic's is a number or none
        (["--smoothing-alpha", "1.5"], "smoothing_alpha"),
        (["--method", "w8", "--smoothing-alpha", "0.5"], "apply to dynamic and static INT8"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tiny_dir, tmp_path, capsys, args, message):
    code = main(["--model", str(tiny_dir("text-classification")), "--output", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_optimum_cli_registers_quantize():
    optimum_cli = shutil.which("optimum-cli", path=str(Path(sys.executable).parent))
    assert optimum_cli, "optimum-cli is not installed beside this Python"
    result = subprocess.run([optimum_cli, "quantize", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--calibration-data" in result.stdout and "--backend" in result.stdout


def test_weight_only_method_for_decoders(tiny_dir, tmp_path):
    out = tmp_path / "w8"
    assert main(["--model", str(tiny_dir("text-generation")), "--task", "text-generation", "--method", "w8",
                 "--exclude", "transformer.h.0.*", "--output", str(out), "--no-compare"]) == 0
    recipe = QuantizationRecipe.load(out)
    assert type(recipe.quantization).__name__ == "WeightOnlyQuantConfig" and recipe.quantization.bits == 8
    assert recipe.quantization.exclude == ["transformer.h.0.*"] and recipe.details["int8_ops"]["MatMulNBits"] > 0
    assert main(["--model", str(tiny_dir("text-generation")), "--method", "w8", "--no-per-channel",
                 "--output", str(tmp_path / "x")]) == 2


def test_smoothing_and_outlier_split_options_reach_the_config(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("text-classification"))
    out = tmp_path / "dynamic"
    assert main(["--model", model, "--task", "text-classification", "--smoothing-alpha", "none",
                 "--outlier-channel-ratio", "3", "--output", str(out), "--no-compare"]) == 0
    config = QuantizationRecipe.load(out).quantization
    assert config.smoothing_alpha is None and config.outlier_channel_ratio == 3.0
    calibration = tmp_path / "calib.txt"
    calibration.write_text("a good script\nboring , long and pointless\n")
    out = tmp_path / "static"
    assert main(["--model", model, "--task", "text-classification", "--method", "static", "--calibration-data",
                 str(calibration), "--smoothing-alpha", "0.6", "--outlier-channel-ratio", "none", "--output", str(out),
                 "--no-compare"]) == 0
    recipe = QuantizationRecipe.load(out)
    assert recipe.quantization.smoothing_alpha == 0.6 and recipe.quantization.outlier_channel_ratio is None
    assert recipe.details["outlier_channels"] == {"applied": False, "reason": "outlier_channel_ratio=None"}
    with pytest.raises(SystemExit):
        main(["--model", model, "--outlier-channel-ratio", "large", "--output", str(tmp_path / "x")])
    assert "expected a number, 'auto' or 'none'" in capsys.readouterr().err
