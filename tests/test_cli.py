"""The command line: help for every command, exit statuses, JSON output, no PHI on screen."""

import json
import os
import subprocess
import sys

import pytest

from lib_lora_train.cli import build_parser, main
from lib_lora_train.dicom.phantom import PhantomPatient, planted_values, write_phantom_series
from tests.leakcheck import find_needles

COMMANDS = ["prepare", "dicom2png", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    assert len(capsys.readouterr().out) > 100


def test_every_ingest_option_is_documented():
    text = build_parser()._subparsers._group_actions[0].choices["prepare"].format_help()
    for option in ("--window", "--frames", "--date-policy", "--ocr", "--blank-region", "--caption-template",
                   "--trigger-word", "--resolution", "--resize-mode", "--max-zip-ratio"):
        assert option in text


def _planted(patients):
    return [v for i in range(patients) for v in planted_values(PhantomPatient(i))]


def test_prepare_json_and_exit_status(tmp_path, capsys):
    write_phantom_series(tmp_path / "in", n_patients=2, slices_per_patient=2, size=64)
    status = main(["--home", str(tmp_path / "home"), "prepare", "--input", str(tmp_path / "in"),
                   "--output", str(tmp_path / "ds"), "--json", "--no-progress", "--ocr", "off",
                   "--resolution", "64", "--window", "lung"])
    captured = capsys.readouterr()
    assert status == 0
    report = json.loads(captured.out)
    assert report["counts"]["images"] == 4 and report["counts"]["patients"] == 2
    assert find_needles((captured.out + captured.err).encode(), _planted(2)) == []
    assert (tmp_path / "home" / "secrets" / "site.key").exists()


def test_prepare_defaults_to_the_home(tmp_path, capsys):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=1, size=64)
    status = main(["--home", str(tmp_path / "home"), "prepare", "-i", str(tmp_path / "in"), "--no-progress",
                   "--ocr", "off", "--resolution", "64"])
    assert status == 0
    datasets = list((tmp_path / "home" / "datasets").iterdir())
    assert len(datasets) == 1 and (datasets[0] / "metadata.csv").exists()
    assert datasets[0].name in capsys.readouterr().out


def test_nothing_prepared_exits_1_and_lists_reasons(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("not dicom")
    status = main(["--home", str(tmp_path / "home"), "prepare", "-i", str(tmp_path / "a.txt"),
                   "-o", str(tmp_path / "ds"), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert "input 1" in out and "[not_dicom]" in out and "a.txt" not in out


@pytest.mark.parametrize("arguments, message", [
    (["--window", "lungs"], "window='lungs' is not allowed"),
    (["--blank-region", "1,2,3"], "four whole numbers"),
    (["--resolution", "100"], "multiple of 8"),
])
def test_bad_options_exit_2_with_a_clear_message(tmp_path, capsys, arguments, message):
    status = main(["--home", str(tmp_path / "home"), "prepare", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                   *arguments])
    assert status == 2
    assert message in capsys.readouterr().err


def test_dicom2png_needs_an_output(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["dicom2png", "-i", "x"])
    assert caught.value.code == 2


def test_demo_runs_the_whole_pipeline_and_proves_no_leak(tmp_path, capsys):
    status = main(["--home", str(tmp_path / "home"), "demo", "--patients", "2", "--slices", "2", "--max-steps", "6"])
    out = capsys.readouterr().out
    assert status == 0
    assert "privacy self-check: 0 of" in out
    assert "CT scan of chest, axial slice, lung window, medical_art style" in out
    assert "trained medical_demo_lora on the embedded tiny model: 6 steps (completed)" in out
    demo = tmp_path / "home" / "demo"
    assert (demo / "adapter" / "medical_demo_lora" / "medical_demo_lora.safetensors").is_file()
    adapter_dir = demo / "adapter" / "medical_demo_lora"
    assert (adapter_dir / "medical_demo_lora.preview.png").is_file()
    assert (demo / "previews" / "without_adapter.png").is_file()
    assert find_needles(out.encode(), _planted(2)) == []
    assert all(path.is_relative_to(tmp_path / "home") for path in (tmp_path / "home").rglob("*"))


def test_module_entry_point_in_a_subprocess(tmp_path):
    write_phantom_series(tmp_path / "in", n_patients=1, slices_per_patient=2, size=64)
    env = dict(os.environ, MEDICAL_LORA_HOME=str(tmp_path / "home"))
    completed = subprocess.run(
        [sys.executable, "-m", "lib_lora_train", "-v", "dicom2png", "-i", str(tmp_path / "in"),
         "-o", str(tmp_path / "png"), "--ocr", "off", "--resolution", "64"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert len(list((tmp_path / "png" / "images").iterdir())) == 2
    assert (tmp_path / "home" / "secrets" / "site.key").exists()
    assert find_needles((completed.stdout + completed.stderr).encode(), _planted(1)) == []
