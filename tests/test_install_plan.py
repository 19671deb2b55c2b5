"""Tests of the dependency plan (lib_lora_train.install_plan) and of install.py run as the WebUI runs it."""

import json
import pathlib
import subprocess
import sys

import pytest

from lib_lora_train import install_plan
from lib_lora_train.install_plan import PROTECTED, PipStep, normalize_name, plan_install, version_satisfies

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

WEBUI_1_10_1 = {
    "torch": "2.1.2",
    "torchvision": "0.16.2",
    "transformers": "4.30.2",
    "accelerate": "0.21.0",
    "numpy": "1.26.2",
    "Pillow": "9.5.0",
    "gradio": "3.41.2",
    "safetensors": "0.4.2",
    "huggingface_hub": "0.20.3",
    "fastapi": "0.94.0",
    "pydantic": "1.10.15",
    "protobuf": "3.20.0",
    "tqdm": "4.66.1",
    "PyYAML": "6.0.1",
    "psutil": "5.9.5",
    "packaging": "23.2",
}

FORGE = {
    **WEBUI_1_10_1,
    "torch": "2.3.1",
    "torchvision": "0.18.1",
    "transformers": "4.46.1",
    "accelerate": "0.31.0",
    "numpy": "1.26.4",
    "Pillow": "10.4.0",
    "gradio": "4.40.0",
    "huggingface-hub": "0.26.2",
    "diffusers": "0.31.0",
    "peft": "0.13.2",
}

PYDICOM_3 = "pydicom>=3.0.1,<4"
WEBUI_PEFT = "peft==0.13.2"
WEBUI_NUMPY_2 = {**WEBUI_1_10_1, "numpy": "2.1.3"}
WEBUI_PY39 = {**WEBUI_1_10_1, "pydicom": "2.4.4", "peft": "0.13.2"}
CODECS_NUMPY_1 = [
    "python-gdcm>=3.0.24,<4",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3,<2.4",
    "pylibjpeg-rle>=2.0,<2.1",
]
CODECS_NUMPY_2 = [
    "python-gdcm>=3.0.24,<4",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3,<3",
    "pylibjpeg-rle>=2.0,<3",
]
CODECS_INSTALLED = {
    "python-gdcm": "3.2.6",
    "pylibjpeg": "2.1.0",
    "pylibjpeg-openjpeg": "2.3.0",
    "pylibjpeg-rle": "2.0.0",
}
STANDALONE_TRAINING = [
    "torch==2.13.0",
    "safetensors>=0.4.2,<1",
    "accelerate>=0.31,<2",
    "transformers>=4.41,<6",
    "diffusers>=0.30,<1",
    "peft>=0.13.2,<1",
    "clip-anytorch==2.6.0",
]


def requirements(plan):
    return [step.requirement for step in plan.steps]


def names(plan):
    return [step.name for step in plan.steps]


@pytest.mark.parametrize(
    "installed, python_version, expected",
    [
        pytest.param(WEBUI_1_10_1, (3, 10, 6), [PYDICOM_3, WEBUI_PEFT, *CODECS_NUMPY_1], id="webui-1.10.1"),
        pytest.param(FORGE, (3, 10, 14), [PYDICOM_3, *CODECS_NUMPY_1], id="forge-has-peft"),
        pytest.param(WEBUI_NUMPY_2, (3, 11), [PYDICOM_3, WEBUI_PEFT, *CODECS_NUMPY_2], id="numpy-2"),
        pytest.param({**WEBUI_1_10_1, "pydicom": "2.3.1"}, (3, 10), [WEBUI_PEFT, *CODECS_NUMPY_1], id="old-pydicom"),
        pytest.param({**FORGE, "pydicom": "3.0.2", **CODECS_INSTALLED}, (3, 10), [], id="all-there"),
        pytest.param(WEBUI_PY39, (3, 9, 18), [CODECS_NUMPY_1[0]], id="py39"),
    ],
)
def test_webui_plan_installs_only_what_is_missing(installed, python_version, expected):
    plan = plan_install(installed, python_version, "webui")
    assert requirements(plan) == expected
    assert all(step.no_deps for step in plan.steps)


def test_webui_1_10_1_plan_marks_codecs_optional_and_reports_nothing():
    plan = plan_install(WEBUI_1_10_1, (3, 10, 6), "webui")
    assert [step.name for step in plan.required_steps] == ["pydicom", "peft"]
    assert [step.name for step in plan.optional_steps] == [normalize_name(r.split(">")[0]) for r in CODECS_NUMPY_1]
    assert plan.problems == ()


def test_webui_leaves_incompatible_pydicom_and_reports_it():
    plan = plan_install({**WEBUI_1_10_1, "pydicom": "2.3.1"}, (3, 10), "webui")
    assert "pydicom" not in names(plan)
    assert any("pydicom 2.3.1" in problem and ">=3.0.1,<4" in problem for problem in plan.problems)


@pytest.mark.parametrize(
    "transformers, peft, reported",
    [
        ("4.30.2", "0.13.2", False),
        ("4.30.2", "0.15.0", True),
        ("4.46.1", "0.15.0", False),
        ("4.46.1", "0.12.0", True),
    ],
)
def test_webui_judges_installed_peft_against_transformers(transformers, peft, reported):
    plan = plan_install({**WEBUI_1_10_1, "transformers": transformers, "peft": peft}, (3, 10), "webui")
    assert "peft" not in names(plan)
    assert any(problem.startswith("peft ") for problem in plan.problems) == reported


def test_webui_reports_what_a_no_deps_peft_lacks():
    installed = {name: version for name, version in WEBUI_1_10_1.items() if name != "psutil"}
    plan = plan_install(installed, (3, 10), "webui")
    assert any("peft" in problem and "psutil" in problem for problem in plan.problems)


WEBUI_SETS = [
    {},
    WEBUI_1_10_1,
    FORGE,
    {**WEBUI_1_10_1, "numpy": "2.0.0"},
    {name: version for name, version in WEBUI_1_10_1.items() if name not in ("torch", "numpy", "Pillow")},
    {**FORGE, "pydicom": "2.0.0", "peft": "0.4.0", "pylibjpeg-rle": "1.3.0"},
]


@pytest.mark.parametrize("installed", WEBUI_SETS)
@pytest.mark.parametrize("python_version", [(3, 9), (3, 10, 6), (3, 11, 7), (3, 12)])
def test_webui_plan_never_touches_protected_packages(installed, python_version):
    plan = plan_install(installed, python_version, "webui")
    assert not PROTECTED & set(names(plan))
    assert all(step.no_deps for step in plan.steps)
    assert not {step.name for step in plan.steps} & {normalize_name(name) for name in installed}


WEB_GRADIO_3 = ["gradio==3.41.2", "fastapi==0.94.0", "python-multipart>=0.0.5", "httpx==0.24.1"]


def test_standalone_fresh_machine_gets_pinned_torch_and_training_stack():
    plan = plan_install({}, (3, 11, 7), "standalone")
    assert requirements(plan) == [
        "pydicom>=3.0.1,<4",
        "numpy>=1.24,<2",
        "Pillow>=10.0",
        "tqdm>=4.40",
        "PyYAML>=5.4",
        *WEB_GRADIO_3,
        *CODECS_NUMPY_1,
        *STANDALONE_TRAINING,
        "rapidocr-onnxruntime>=1.3,<2",
    ]
    # only clip-anytorch goes without dependencies: just its vocabulary file is used
    assert [step.name for step in plan.steps if step.no_deps] == ["clip-anytorch"]
    assert [step.name for step in plan.optional_steps] == [
        "python-gdcm",
        "pylibjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-rle",
        "rapidocr-onnxruntime",
    ]


@pytest.mark.parametrize("torch_version", ["1.13.1", "2.1.2+cu121", "2.13.0+cpu", "2.14.1"])
def test_standalone_keeps_any_installed_torch(torch_version):
    plan = plan_install({"torch": torch_version}, (3, 11), "standalone")
    assert "torch" not in names(plan)


def test_standalone_replaces_out_of_range_package():
    plan = plan_install({"pydicom": "2.4.4", "peft": "0.13.2"}, (3, 11), "standalone")
    pydicom_step = next(step for step in plan.steps if step.name == "pydicom")
    assert "2.4.4" in pydicom_step.reason
    assert "peft" not in names(plan)


def test_standalone_tests_add_corpora_and_require_ocr():
    plan = plan_install({}, (3, 11), "standalone", tests=True)
    assert requirements(plan)[-5:] == [
        "rapidocr-onnxruntime>=1.3,<2",
        "pytest>=7",
        "pydicom-data>=1.0",
        "deid-data>=0.0.20",
        "playwright>=1.40,<2",
    ]
    assert not any(step.optional for step in plan.steps if step.name in ("rapidocr-onnxruntime", "deid-data"))
    assert plan.system_packages == ("chromium",)
    assert plan_install({}, (3, 11), "standalone").system_packages == ()


def test_standalone_gradio_3_comes_with_the_webui_web_pins_as_constraints():
    """gradio 3.41.2 dies at launch next to current fastapi/starlette; every step honours the pins."""
    plan = plan_install({"numpy": "2.1.0"}, (3, 11), "standalone")
    assert plan.constraints == ("gradio==3.41.2", "fastapi==0.94.0", "pydantic<2", "httpx==0.24.1", "numpy<2",
                                "Pillow<11")
    # numpy 2 is taken back to 1.x, and the codecs chosen for the numpy that will be there
    assert "numpy>=1.24,<2" in requirements(plan)
    assert "pylibjpeg-openjpeg>=2.3,<2.4" in requirements(plan)


def test_standalone_keeps_an_installed_gradio_4_without_constraints():
    plan = plan_install({"gradio": "4.44.1", "fastapi": "0.115.0", "httpx": "0.27.2", "numpy": "2.1.0"}, (3, 11),
                        "standalone")
    assert plan.constraints == ()
    assert not {"gradio", "fastapi", "httpx", "numpy"} & set(names(plan))
    assert "pylibjpeg-openjpeg>=2.3,<3" in requirements(plan)


def test_webui_never_gets_gradio_or_constraints():
    plan = plan_install({}, (3, 10), "webui")
    assert not {"gradio", "fastapi", "httpx", "playwright"} & set(names(plan))
    assert plan.constraints == () and plan.system_packages == ()


def test_standalone_python_313_skips_ocr_and_says_so():
    plan = plan_install({}, (3, 13, 0), "standalone", tests=True)
    assert "rapidocr-onnxruntime" not in names(plan)
    assert any("rapidocr-onnxruntime" in problem for problem in plan.problems)


def test_standalone_everything_installed_is_empty():
    installed = {
        "pydicom": "3.0.2",
        "numpy": "1.26.4",
        "Pillow": "10.4.0",
        "tqdm": "4.66.1",
        "PyYAML": "6.0.2",
        "gradio": "3.41.2",
        "fastapi": "0.94.0",
        "python-multipart": "0.0.9",
        "httpx": "0.24.1",
        **CODECS_INSTALLED,
        "torch": "2.13.0+cpu",
        "safetensors": "0.4.5",
        "accelerate": "1.2.0",
        "transformers": "4.46.1",
        "diffusers": "0.31.0",
        "peft": "0.13.2",
        "clip-anytorch": "2.6.0",
        "rapidocr-onnxruntime": "1.4.4",
    }
    assert plan_install(installed, (3, 11), "standalone").is_empty


@pytest.mark.parametrize(
    "context, tests",
    [("webui", True), ("forge", False), ("", False)],
)
def test_plan_rejects_unknown_context_and_webui_tests(context, tests):
    with pytest.raises(ValueError):
        plan_install({}, (3, 11), context, tests=tests)


@pytest.mark.parametrize(
    "version, specifier, expected",
    [
        ("2.13.0+cpu", "==2.13.0", True),
        ("2.13", "==2.13.0", True),
        ("2.13.1", "==2.13.0", False),
        ("1.26.2", "<2", True),
        ("2.0.0", "<2", False),
        ("2.0.0rc1", ">=2.0", False),
        ("1.4.post1", ">1.4", True),
        ("0.13.2", ">=0.13.0,<0.14", True),
        ("0.14.0", ">=0.13.0,<0.14", False),
        ("3.0.0", ">=3.0.1,<4", False),
        ("3.0.2", ">=3.0.1,<4", True),
        ("2.2.5", "~=2.2", True),
        ("3.0", "~=2.2", False),
        ("2.2.9", "~=2.2.5", True),
        ("2.3.0", "~=2.2.5", False),
        ("1.0", "!=1.0.0", False),
        ("0.0.1", "", True),
    ],
)
def test_version_satisfies(version, specifier, expected):
    assert version_satisfies(version, specifier) is expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Pillow", "pillow"),
        ("huggingface_hub", "huggingface-hub"),
        ("python.gdcm", "python-gdcm"),
        ("PyYAML", "pyyaml"),
    ],
)
def test_normalize_name(name, expected):
    assert normalize_name(name) == expected


def test_pip_step_command_line_quotes_requirement():
    step = PipStep("pydicom>=3.0.1,<4", no_deps=True)
    assert step.pip_arguments() == ["install", "pydicom>=3.0.1,<4", "--no-deps"]
    assert step.pip_command_line() == 'install "pydicom>=3.0.1,<4" --no-deps'
    assert PipStep("peft==0.13.2").pip_command_line() == 'install "peft==0.13.2"'


def test_installed_distributions_sees_pytest():
    installed = install_plan.installed_distributions()
    assert installed["pytest"] == pytest.__version__


FAKE_LAUNCH = '''
import json, os, re

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "is_installed.json")) as handle:
    INSTALLED = json.load(handle)


def is_installed(name):
    return re.sub(r"[-_.]+", "-", name).lower() in INSTALLED


def run_pip(command, desc=None, live=False):
    with open(os.path.join(HERE, "run_pip_calls.jsonl"), "a") as handle:
        handle.write(json.dumps({"command": command, "desc": desc}) + "\\n")
    if os.environ.get("FAKE_RUN_PIP_RAISES") == "1":
        raise RuntimeError(f"Couldn't install {desc}.")
'''


def write_fake_environment(folder, installed):
    """Write a fake WebUI `launch` module and dist-info folders for an installed set."""
    folder.mkdir()
    (folder / "launch.py").write_text(FAKE_LAUNCH)
    (folder / "is_installed.json").write_text(json.dumps(sorted(normalize_name(name) for name in installed)))
    for name, version in installed.items():
        dist_info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def run_install_py(tmp_path, installed, *arguments, run_pip_raises=False):
    """Run install.py without site-packages, so only the fake environment is installed."""
    fake = write_fake_environment(tmp_path / "webui", installed) if installed is not None else tmp_path
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(fake),
        "FAKE_RUN_PIP_RAISES": "1" if run_pip_raises else "0",
    }
    result = subprocess.run(
        [sys.executable, "-S", str(REPO_ROOT / "install.py"), *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls_file = fake / "run_pip_calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return result, calls


def test_install_py_in_webui_installs_only_missing(tmp_path):
    installed = {**WEBUI_1_10_1, "python-gdcm": "3.2.6", "pylibjpeg": "2.1.0", "pylibjpeg-openjpeg": "2.3.0"}
    result, calls = run_install_py(tmp_path, installed)
    assert result.returncode == 0, result.stderr
    assert [call["command"] for call in calls] == [
        'install "pydicom>=3.0.1,<4" --no-deps',
        'install "peft==0.13.2" --no-deps',
        'install "pylibjpeg-rle>=2.0,<2.1" --no-deps',
    ]


def test_install_py_in_webui_does_nothing_when_complete(tmp_path):
    installed = {**FORGE, "pydicom": "3.0.2", **CODECS_INSTALLED}
    result, calls = run_install_py(tmp_path, installed)
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_install_py_in_webui_survives_pip_failure(tmp_path):
    installed = {**FORGE, **CODECS_INSTALLED}
    result, calls = run_install_py(tmp_path, installed, run_pip_raises=True)
    assert result.returncode == 0, result.stderr
    assert [call["command"] for call in calls] == ['install "pydicom>=3.0.1,<4" --no-deps']
    assert "pydicom" in result.stdout
    assert "-m pip install" in result.stdout


def test_install_py_in_webui_prints_problems(tmp_path):
    installed = {**FORGE, "pydicom": "2.3.1", **CODECS_INSTALLED}
    result, calls = run_install_py(tmp_path, installed)
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert "pydicom 2.3.1" in result.stdout


def test_install_py_standalone_dry_run_lists_plan(tmp_path):
    result, calls = run_install_py(tmp_path, None, "--dry-run", "--tests")
    assert result.returncode == 0, result.stderr
    assert calls == []
    for requirement in ("torch==2.13.0", "pydicom>=3.0.1,<4", "deid-data>=0.0.20"):
        assert f'"{requirement}"' in result.stdout
