"""Decide which pip installs medical-lora needs; this module never runs pip itself.

``plan_install`` takes the installed distributions, the Python version and the context
(``"webui"``: inside AUTOMATIC1111 1.10.x / Forge, or ``"standalone"``) and returns an
ordered :class:`InstallPlan`. ``install.py`` carries the plan out. Stdlib only, so it can
run before anything else is installed.

Inside the WebUI the plan only adds what is missing, never touches the packages the WebUI
owns (:data:`PROTECTED`), and installs every step with ``--no-deps`` so that pip cannot
upgrade numpy or torch as a side effect. An installed package in a version we cannot use
is left alone and reported in ``InstallPlan.problems``.

Pixel-data codecs (checked by decoding pydicom's compressed test files next to the
WebUI 1.10.1 pins numpy 1.26.2 and Pillow 9.5.0, Python 3.11):

- ``python-gdcm`` (Apache-2.0): JPEG baseline, JPEG lossless, JPEG-LS, JPEG 2000. It is the
  only JPEG baseline decoder in WebUI 1.10, because pydicom's Pillow plugin needs Pillow>=10.
  python-gdcm 3.0.26 and 3.2.6 both work; neither depends on numpy.
- ``pylibjpeg`` + ``pylibjpeg-openjpeg`` + ``pylibjpeg-rle`` (MIT): JPEG 2000 and RLE.
  pylibjpeg-openjpeg>=2.4 and pylibjpeg-rle>=2.1 declare ``numpy>=2``; their wheels still
  decode correctly on numpy 1.26.2, but next to numpy 1.x the plan picks the last releases
  whose metadata accepts numpy 1.x (openjpeg 2.3.0, rle 2.0.0) so ``pip check`` stays clean.
- JPEG Extended with 12-bit samples is decoded by none of these (pydicom refuses it with
  GDCM). Only ``pylibjpeg-libjpeg`` decodes it, and it is GPL-3.0: it is never installed
  automatically; a site that accepts the licence may install it by hand.

peft in WebUI 1.10 (transformers 4.30.2, accelerate 0.21.0): 0.13.2 imports and trains a LoRA;
0.14 needs ``transformers.Cache`` and 0.21 needs a newer accelerate, so the WebUI gets
``peft==0.13.2`` with ``--no-deps``.
"""

import importlib.metadata
import re
from dataclasses import dataclass

CONTEXTS = ("webui", "standalone")

PROTECTED = frozenset(
    re.sub(r"[-_.]+", "-", name).lower()
    for name in (
        "torch",
        "torchvision",
        "transformers",
        "gradio",
        "huggingface_hub",
        "numpy",
        "pillow",
        "safetensors",
        "accelerate",
        "fastapi",
        "pydantic",
        "protobuf",
    )
)

WEBUI_PEFT_SPECIFIER = "==0.13.2"
TRANSFORMERS_WITH_CACHE = "4.36"
STANDALONE_TORCH_SPECIFIER = "==2.13.0"
# The tab targets the WebUI 1.10 pin, gradio 3.41.2, which only launches next to the WebUI's web
# pins; standalone installs get the same set (as pip constraints, so no later step moves them).
STANDALONE_GRADIO = "==3.41.2"
GRADIO_3_CONSTRAINTS = ("gradio==3.41.2", "fastapi==0.94.0", "pydantic<2", "httpx==0.24.1", "numpy<2", "Pillow<11")
# Debian packages the browser tests drive (headless Chromium; Playwright's own download is
# not reachable offline).
BROWSER_SYSTEM_PACKAGES = ("chromium",)
FIRST_PYTHON_WITHOUT_RAPIDOCR = (3, 13)

PEFT_RUNTIME_NEEDS = (
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "huggingface-hub",
    "numpy",
    "packaging",
    "psutil",
    "pyyaml",
    "tqdm",
)
NUMPY_1_CODEC_SPECIFIERS = {
    "pylibjpeg": ">=2.0,<3",
    "pylibjpeg-openjpeg": ">=2.3,<2.4",
    "pylibjpeg-rle": ">=2.0,<2.1",
}
NUMPY_2_CODEC_SPECIFIERS = {
    "pylibjpeg": ">=2.0,<3",
    "pylibjpeg-openjpeg": ">=2.3,<3",
    "pylibjpeg-rle": ">=2.0,<3",
}

_NAME_PATTERN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_VERSION_PATTERN = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$")
_POST_RELEASE_PATTERN = re.compile(r"^(?:[._-]?(?:post|rev|r)\d*|-\d+)$")
_CLAUSE_PATTERN = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*(\S+)\s*$")


def normalize_name(name):
    """Normalise a distribution name as PEP 503 does.

    Args:
        name (`str`): A distribution name such as ``"Pillow"`` or ``"huggingface_hub"``.

    Returns:
        `str`: The lower-case name with runs of ``-``, ``_`` and ``.`` replaced by ``-``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement):
    """Return the normalised distribution name of a requirement string.

    Args:
        requirement (`str`): A requirement such as ``"pydicom>=3.0.1,<4"``.

    Returns:
        `str`: The PEP 503 normalised name, e.g. ``"pydicom"``.
    """
    match = _NAME_PATTERN.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize_name(match.group(1))


def version_key(version):
    """Turn a version string into a key that orders versions as pip does in plain cases.

    Trailing zeros are ignored (``2.13 == 2.13.0``), so is a local label (``2.13.0+cpu``).
    Pre-releases and dev releases sort before the release, post-releases after it.

    Args:
        version (`str`): A version such as ``"2.13.0+cpu"`` or ``"4.46.0.dev0"``.

    Returns:
        `tuple`: ``(release numbers without trailing zeros, -1 | 0 | 1)``.
    """
    match = _VERSION_PATTERN.match(version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    suffix = match.group(2).split("+", 1)[0].lower()
    if not suffix:
        stage = 0
    elif _POST_RELEASE_PATTERN.match(suffix):
        stage = 1
    else:
        stage = -1
    return tuple(release), stage


def _clause_holds(version, clause):
    match = _CLAUSE_PATTERN.match(clause)
    if match is None:
        raise ValueError(f"not a version clause: {clause!r}")
    operator, bound = match.groups()
    have, want = version_key(version), version_key(bound)
    if operator == "~=":
        prefix = want[0][:-1] if len(bound.split(".")) > 1 else want[0]
        return have >= want and have[0][: len(prefix)] == prefix
    comparisons = {
        "==": have == want,
        "!=": have != want,
        "<=": have <= want,
        ">=": have >= want,
        "<": have < want,
        ">": have > want,
    }
    return comparisons[operator]


def version_satisfies(version, specifier):
    """Tell whether a version lies in a comma-separated specifier.

    Args:
        version (`str`): An installed version such as ``"1.26.2"``.
        specifier (`str`): Clauses such as ``">=3.0.1,<4"``; an empty string allows any version.

    Returns:
        `bool`: ``True`` when every clause holds.
    """
    clauses = [clause for clause in specifier.split(",") if clause.strip()]
    return all(_clause_holds(version, clause) for clause in clauses)


@dataclass(frozen=True)
class PipStep:
    """One ``pip install`` of one requirement.

    Args:
        requirement (`str`): What to install, e.g. ``"pydicom>=3.0.1,<4"``.
        no_deps (`bool`): Install with ``--no-deps``.
        optional (`bool`): A failure only loses a feature; the rest still works.
        reason (`str`): Why this step is in the plan, for people.
    """

    requirement: str
    no_deps: bool = False
    optional: bool = False
    reason: str = ""

    @property
    def name(self):
        """`str`: The normalised distribution name of the requirement."""
        return requirement_name(self.requirement)

    def pip_arguments(self):
        """Return the arguments after ``python -m pip``, one list item each.

        Returns:
            `list[str]`: e.g. ``["install", "peft==0.13.2", "--no-deps"]``.
        """
        arguments = ["install", self.requirement]
        if self.no_deps:
            arguments.append("--no-deps")
        return arguments

    def pip_command_line(self):
        """Return the arguments after ``python -m pip`` as one shell string.

        The requirement is double-quoted so ``<`` and ``>`` are not redirections; double
        quotes work in both POSIX shells and ``cmd.exe`` (the WebUI's ``run_pip`` uses a shell).

        Returns:
            `str`: e.g. ``'install "pydicom>=3.0.1,<4" --no-deps'``.
        """
        quoted = [f'"{argument}"' if argument == self.requirement else argument for argument in self.pip_arguments()]
        return " ".join(quoted)


@dataclass(frozen=True)
class InstallPlan:
    """What to install, in order, and what is wrong but will not be changed.

    Args:
        context (`str`): ``"webui"`` or ``"standalone"``.
        steps (`tuple[PipStep, ...]`): The installs, in the order to run them.
        problems (`tuple[str, ...]`): Human-readable findings the plan does not fix.
        constraints (`tuple[str, ...]`): pip constraints every step must be run with
            (``-c``), so one step cannot move a version another needs.
        system_packages (`tuple[str, ...]`): Debian packages the tests need (browser).
    """

    context: str
    steps: tuple = ()
    problems: tuple = ()
    constraints: tuple = ()
    system_packages: tuple = ()

    @property
    def required_steps(self):
        """`tuple[PipStep, ...]`: The steps whose failure must be reported as an error."""
        return tuple(step for step in self.steps if not step.optional)

    @property
    def optional_steps(self):
        """`tuple[PipStep, ...]`: The steps whose failure only loses a feature."""
        return tuple(step for step in self.steps if step.optional)

    @property
    def is_empty(self):
        """`bool`: ``True`` when there is nothing to install."""
        return not self.steps


@dataclass(frozen=True)
class _Package:
    """A row of the requirement table.

    ``specifier`` is what gets installed when the package is missing (or, standalone, out of
    range); ``accepted`` is the range an installed version may be in to be left alone
    (``None``: the same as ``specifier``; ``""``: any version).
    """

    name: str
    specifier: str
    reason: str
    optional: bool = False
    accepted: str | None = None
    needs: tuple = ()
    no_deps: bool = False

    @property
    def requirement(self):
        return f"{self.name}{self.specifier}"

    @property
    def accepted_range(self):
        return self.specifier if self.accepted is None else self.accepted


def _installed_version(installed, name):
    return installed.get(normalize_name(name))


def _version_below(installed, name, bound):
    version = _installed_version(installed, name)
    return version is not None and _is_version(version) and version_key(version) < version_key(str(bound))


def _pydicom_package(python_version):
    if tuple(python_version[:2]) >= (3, 10):
        return _Package("pydicom", ">=3.0.1,<4", "reads and de-identifies DICOM files")
    return _Package("pydicom", ">=2.4,<3", "reads and de-identifies DICOM files (pydicom 3 needs Python 3.10)")


def _ingest_packages(python_version, context, numpy_range=">=1.24,<3"):
    packages = [_pydicom_package(python_version)]
    if context == "standalone":
        packages += [
            _Package("numpy", numpy_range, "pixel arithmetic"),
            _Package("Pillow", ">=10.0", "image files; pydicom decodes JPEG baseline with Pillow>=10"),
        ]
    packages += [
        _Package("tqdm", ">=4.40", "progress bars"),
        _Package("PyYAML", ">=5.4", "configuration files"),
    ]
    return packages


def _codec_packages(python_version, installed):
    reason = "decodes compressed DICOM pixel data"
    gdcm = _Package(
        "python-gdcm",
        ">=3.0.24,<4",
        f"{reason}: JPEG baseline, 8-bit extended and lossless, JPEG-LS, JPEG 2000",
        optional=True,
    )
    if tuple(python_version[:2]) < (3, 10):
        return [gdcm]
    specifiers = NUMPY_1_CODEC_SPECIFIERS if _version_below(installed, "numpy", 2) else NUMPY_2_CODEC_SPECIFIERS
    pylibjpeg_rows = (
        ("pylibjpeg", "plugin host for JPEG 2000 and RLE"),
        ("pylibjpeg-openjpeg", "JPEG 2000"),
        ("pylibjpeg-rle", "fast RLE"),
    )
    return [gdcm] + [
        _Package(name, specifiers[name], f"{reason}: {role}", optional=True, accepted=">=2.0,<3", needs=("numpy",))
        for name, role in pylibjpeg_rows
    ]


def _webui_training_packages(installed):
    old_transformers = _version_below(installed, "transformers", TRANSFORMERS_WITH_CACHE)
    return [
        _Package(
            "peft",
            WEBUI_PEFT_SPECIFIER,
            "LoRA layers; 0.13.2 is the newest peft that imports with the WebUI's transformers 4.30 / accelerate 0.21",
            accepted=">=0.13.0,<0.14" if old_transformers else ">=0.13.0,<1",
            needs=PEFT_RUNTIME_NEEDS,
        )
    ]


def _standalone_training_packages():
    return [
        _Package(
            "torch",
            STANDALONE_TORCH_SPECIFIER,
            "training; pinned so pip takes the CPU wheel on hand instead of a multi-GB CUDA build",
            accepted="",
        ),
        _Package("safetensors", ">=0.4.2,<1", "adapter files"),
        _Package("accelerate", ">=0.31,<2", "training loop"),
        _Package("transformers", ">=4.41,<6", "text encoders"),
        _Package("diffusers", ">=0.30,<1", "diffusion models"),
        _Package("peft", ">=0.13.2,<1", "LoRA layers"),
        # Only its data file (OpenAI's CLIP BPE vocabulary, MIT) is used, to build the tokenizer of
        # local SD checkpoints offline; its own imports (torchvision, ftfy) are never needed.
        _Package("clip-anytorch", "==2.6.0", "CLIP tokenizer vocabulary for local SD checkpoints",
                 accepted=">=2.5,<3", no_deps=True),
    ]


def _rapidocr_package(python_version, optional):
    if tuple(python_version[:2]) >= FIRST_PYTHON_WITHOUT_RAPIDOCR:
        return None
    return _Package(
        "rapidocr-onnxruntime",
        ">=1.3,<2",
        "finds burned-in text in pixel data (OCR, bundled models, offline)",
        optional=optional,
    )


def _test_packages():
    return [
        _Package("pytest", ">=7", "runs the tests"),
        _Package("pydicom-data", ">=1.0", "public DICOM test corpus"),
        _Package("deid-data", ">=0.0.20", "public DICOM test corpus with burned-in text"),
        _Package("playwright", ">=1.40,<2", "browser tests (drives Debian's chromium; no browser download)"),
    ]


def _uses_gradio_3(installed):
    """Standalone gets gradio 3.41.2 unless a gradio 4 is already installed (then it is kept)."""
    version = _installed_version(installed, "gradio")
    return version is None or not _is_version(version) or not version_satisfies(version, ">=4,<5")


def _web_packages(gradio_3):
    gradio = _Package("gradio", STANDALONE_GRADIO if gradio_3 else ">=4,<5", "the tab and the standalone app",
                      accepted=">=3.41.2,<3.42" if gradio_3 else ">=4,<5")
    return [
        gradio,
        _Package("fastapi", "==0.94.0" if gradio_3 else ">=0.100,<1", "the REST API (the WebUI provides it)",
                 accepted="==0.94.0" if gradio_3 else ">=0.100,<1"),
        _Package("python-multipart", ">=0.0.5", "multipart uploads"),
        _Package("httpx", "==0.24.1" if gradio_3 else ">=0.24", "FastAPI's test client and gradio's start-up check",
                 accepted="==0.24.1" if gradio_3 else ">=0.24"),
    ]


def _standalone_table(python_version, installed, tests):
    gradio_3 = _uses_gradio_3(installed)
    if gradio_3:  # the codec choice must see the numpy the constraints will leave
        installed = dict(installed, numpy="1.26.4") if not _version_below(installed, "numpy", 2) else installed
    table = _ingest_packages(python_version, "standalone", ">=1.24,<2" if gradio_3 else ">=1.24,<3")
    table += _web_packages(gradio_3) + _codec_packages(python_version, installed)
    table += _standalone_training_packages()
    rapidocr = _rapidocr_package(python_version, optional=not tests)
    if rapidocr is not None:
        table.append(rapidocr)
    if tests:
        table += _test_packages()
    return table


def _webui_table(python_version, installed):
    table = _ingest_packages(python_version, "webui") + _webui_training_packages(installed)
    table += _codec_packages(python_version, installed)
    return [package for package in table if normalize_name(package.name) not in PROTECTED]


def _python_problems(python_version, context, tests):
    problems = []
    version_text = ".".join(str(part) for part in python_version[:2])
    if tuple(python_version[:2]) < (3, 10):
        problems.append(f"Python {version_text}: only pydicom 2.4 is available; pydicom 3 needs Python 3.10 or newer.")
    if context == "standalone" and tuple(python_version[:2]) >= FIRST_PYTHON_WITHOUT_RAPIDOCR:
        needed = "the OCR tests will be skipped" if tests else "burned-in text cannot be found by OCR"
        problems.append(f"Python {version_text}: rapidocr-onnxruntime has no release for it, so {needed}.")
    return problems


def _is_version(text):
    return _VERSION_PATTERN.match(text) is not None


def _step_for(package, installed, context):
    """Return ``(step or None, problem or None)`` for one table row."""
    no_deps = context == "webui" or package.no_deps
    version = _installed_version(installed, package.name)
    if version is None:
        return PipStep(package.requirement, no_deps, package.optional, f"missing: {package.reason}"), None
    if not _is_version(version):
        return None, f"{package.name} is installed with an unreadable version {version!r}; it is left unchanged."
    if version_satisfies(version, package.accepted_range):
        return None, None
    if context == "webui":
        problem = (
            f"{package.name} {version} is installed, but medical-lora needs {package.name}{package.accepted_range} "
            f"({package.reason}); it is left unchanged so the WebUI keeps working."
        )
        return None, problem
    reason = f"installed {version} is outside {package.accepted_range}: {package.reason}"
    return PipStep(package.requirement, package.no_deps, package.optional, reason), None


def _missing_needs_problems(steps, table, installed):
    """Report what a ``--no-deps`` step needs that is neither installed nor planned."""
    planned = {step.name for step in steps}
    problems = []
    for package in table:
        if normalize_name(package.name) not in planned:
            continue
        missing = [need for need in package.needs if need not in planned and need not in installed]
        if missing:
            problems.append(f"{package.name} is installed with --no-deps but needs {', '.join(missing)}: missing.")
    return problems


def plan_install(installed, python_version, context, tests=False):
    """Decide what to install for one environment.

    Args:
        installed (`dict[str, str]`): Installed distributions, name -> version (names in any
            spelling; see :func:`installed_distributions`).
        python_version (`tuple[int, ...]`): e.g. ``(3, 10, 14)`` or ``sys.version_info``.
        context (`str`): ``"webui"`` (only add what is missing, never touch :data:`PROTECTED`,
            always ``--no-deps``) or ``"standalone"`` (the full set, with dependencies).
        tests (`bool`): Also install the test dependencies (standalone only).

    Returns:
        `InstallPlan`: The ordered steps and the problems left for a person.
    """
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, not {context!r}")
    if tests and context == "webui":
        raise ValueError("test dependencies are only installed standalone")
    installed = {normalize_name(name): version for name, version in installed.items()}
    if context == "webui":
        table = _webui_table(python_version, installed)
    else:
        table = _standalone_table(python_version, installed, tests)
    steps, problems = [], _python_problems(python_version, context, tests)
    for package in table:
        step, problem = _step_for(package, installed, context)
        if step is not None:
            steps.append(step)
        if problem is not None:
            problems.append(problem)
    if context == "webui":
        problems += _missing_needs_problems(steps, table, installed)
        return InstallPlan(context=context, steps=tuple(steps), problems=tuple(problems))
    constraints = GRADIO_3_CONSTRAINTS if _uses_gradio_3(installed) else ()
    return InstallPlan(context=context, steps=tuple(steps), problems=tuple(problems), constraints=constraints,
                       system_packages=BROWSER_SYSTEM_PACKAGES if tests else ())


def installed_distributions():
    """List the installed distributions the way pip and the WebUI see them.

    Returns:
        `dict[str, str]`: PEP 503 normalised name -> version; where a name is installed twice,
        the one found first on ``sys.path`` (the one that imports) wins.
    """
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"] if distribution.metadata else None
        if name and distribution.version:
            versions.setdefault(normalize_name(name), distribution.version)
    return versions
