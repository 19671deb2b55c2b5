"""Install medical-lora's Python dependencies: inside the WebUI only what is missing, else the standalone set.

Inside AUTOMATIC1111 / Forge the WebUI runs this file on every start (``import launch`` works
there). It installs only missing packages, each with ``--no-deps`` through ``launch.run_pip``,
does nothing at all when nothing is missing, and never fails the WebUI's start.

Run directly, it installs the standalone requirements with this Python's pip::

    python install.py            # the tool's requirements
    python install.py --tests    # plus pytest and the public DICOM test corpora
    python install.py --dry-run  # print the plan, install nothing
"""

import argparse
import os
import subprocess
import sys

EXTENSION_DIR = os.path.dirname(os.path.abspath(__file__))
if EXTENSION_DIR not in sys.path:
    sys.path.insert(0, EXTENSION_DIR)

from lib_lora_train import install_plan  # noqa: E402

PREFIX = "[medical-lora]"


def webui_launch_module():
    """Return the WebUI's ``launch`` module, or ``None`` when not running inside the WebUI.

    Returns:
        `module | None`: A module with ``run_pip`` and ``is_installed``.
    """
    try:
        import launch
    except Exception:
        return None
    if callable(getattr(launch, "run_pip", None)) and callable(getattr(launch, "is_installed", None)):
        return launch
    return None


def manual_command(step):
    """Return the command a person can run to install one step by hand.

    Args:
        step (`install_plan.PipStep`): The step that could not be installed.

    Returns:
        `str`: e.g. ``'"/venv/bin/python" -m pip install "pydicom>=3.0.1,<4" --no-deps'``.
    """
    return f'"{sys.executable}" -m pip {step.pip_command_line()}'


def print_problems(plan):
    """Print the findings the plan leaves for a person.

    Args:
        plan (`install_plan.InstallPlan`): The plan.
    """
    for problem in plan.problems:
        print(f"{PREFIX} note: {problem}")


def print_failures(failed_steps, feature_word):
    """Print what could not be installed and how to install it by hand.

    Args:
        failed_steps (`list[install_plan.PipStep]`): The steps that failed.
        feature_word (`str`): How to call them, e.g. ``"required"`` or ``"optional"``.
    """
    names = ", ".join(step.name for step in failed_steps)
    print(f"{PREFIX} {feature_word} packages are missing: {names}. Install them by hand:")
    for step in failed_steps:
        print(f"    {manual_command(step)}")


def steps_still_missing(plan, launch):
    """Drop the steps for packages the WebUI reports as installed after all.

    Args:
        plan (`install_plan.InstallPlan`): The WebUI plan.
        launch (`module`): The WebUI's ``launch`` module.

    Returns:
        `list[install_plan.PipStep]`: The steps to run.
    """
    return [step for step in plan.steps if not launch.is_installed(step.name)]


def install_in_webui(launch):
    """Install what the extension misses inside the WebUI; never raise.

    Args:
        launch (`module`): The WebUI's ``launch`` module.

    Returns:
        `int`: Always 0, so the WebUI starts whatever happens here.
    """
    try:
        plan = install_plan.plan_install(install_plan.installed_distributions(), sys.version_info, "webui")
        print_problems(plan)
        steps = steps_still_missing(plan, launch)
    except Exception as error:
        print(f"{PREFIX} could not check its Python packages ({type(error).__name__}: {error}); skipping installs.")
        return 0
    failed_steps = []
    for step in steps:
        try:
            launch.run_pip(step.pip_command_line(), f"{step.name} for medical-lora")
        except Exception as error:
            print(f"{PREFIX} installing {step.requirement} failed: {type(error).__name__}: {error}")
            failed_steps.append(step)
    required_failures = [step for step in failed_steps if not step.optional]
    optional_failures = [step for step in failed_steps if step.optional]
    if required_failures:
        print_failures(required_failures, "required")
        print(f"{PREFIX} the DICOM LoRA tab will not work until they are installed; the rest of the WebUI is fine.")
    if optional_failures:
        print_failures(optional_failures, "optional")
        print(f"{PREFIX} without them some compressed DICOM files cannot be decoded.")
    return 0


def run_pip_step(step, constraints_file=None):
    """Run one step with this Python's pip, showing pip's output.

    Args:
        step (`install_plan.PipStep`): The step.
        constraints_file (`str`, *optional*): pip constraints every step honours.

    Returns:
        `bool`: ``True`` when pip succeeded.
    """
    command = [sys.executable, "-m", "pip", *step.pip_arguments(), "--prefer-binary"]
    if constraints_file:
        command += ["-c", constraints_file]
    print(f"{PREFIX} pip {step.pip_command_line()}  ({step.reason})", flush=True)
    return subprocess.call(command) == 0


def write_constraints(constraints):
    """Write the plan's pip constraints to a file next to this script's temp files; its path or None."""
    if not constraints:
        return None
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", prefix="medical-lora-constraints-", suffix=".txt", delete=False)
    with handle:
        handle.write("\n".join(constraints) + "\n")
    print(f"{PREFIX} pip constraints for every step: {', '.join(constraints)}", flush=True)
    return handle.name


def install_system_packages(names, dry_run):
    """Install missing Debian packages the tests need (Chromium for the browser tests).

    Uses apt-get as root, else ``sudo -n``; anything else is reported with the command to run.

    Returns:
        `bool`: ``True`` when the packages are present afterwards (or in a dry run).
    """
    import shutil

    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return True
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if dry_run:
        print(f"{PREFIX} would run: {' '.join(command)}")
        return True
    prefix = [] if hasattr(os, "geteuid") and os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None or (prefix and shutil.which("sudo") is None):
        print(f"{PREFIX} error: the browser tests need {', '.join(missing)} (Debian package); install it with: "
              f"sudo {' '.join(command)}")
        return False
    print(f"{PREFIX} {' '.join(prefix + command)}  (browser tests)", flush=True)
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.call(prefix + command, env=environment) != 0:  # a fresh machine may have no package lists yet
        subprocess.call(prefix + ["apt-get", "update", "-qq"], env=environment)
        if subprocess.call(prefix + command, env=environment) != 0:
            print(f"{PREFIX} error: could not install {', '.join(missing)}; run: sudo {' '.join(command)}")
            return False
    return True


def install_standalone(tests, dry_run):
    """Install the standalone requirements; stop at the first required failure.

    Args:
        tests (`bool`): Also install the test dependencies.
        dry_run (`bool`): Print the plan only.

    Returns:
        `int`: 0 when every required step succeeded, 1 otherwise.
    """
    plan = install_plan.plan_install(install_plan.installed_distributions(), sys.version_info, "standalone", tests)
    print_problems(plan)
    if plan.system_packages and not install_system_packages(plan.system_packages, dry_run):
        return 1
    if plan.is_empty:
        print(f"{PREFIX} everything is installed.")
        return 0
    if dry_run:
        for step in plan.steps:
            kind = "optional" if step.optional else "required"
            print(f"{PREFIX} would run ({kind}): {manual_command(step)}  ({step.reason})")
        return 0
    optional_failures = []
    constraints_file = write_constraints(plan.constraints)
    try:
        for step in plan.steps:
            if run_pip_step(step, constraints_file):
                continue
            if not step.optional:
                print(f"{PREFIX} error: required package {step.requirement} could not be installed; stopping.")
                print(f"{PREFIX} fix the cause shown by pip above, then run: {manual_command(step)}")
                return 1
            optional_failures.append(step)
    finally:
        if constraints_file:
            os.unlink(constraints_file)
    if optional_failures:
        print_failures(optional_failures, "optional")
    print(f"{PREFIX} done.")
    return 0


def parse_arguments(argv):
    """Parse the command line.

    Args:
        argv (`list[str]`): The arguments after the program name.

    Returns:
        `argparse.Namespace`: ``tests`` and ``dry_run``.
    """
    parser = argparse.ArgumentParser(description="Install medical-lora's Python dependencies.")
    parser.add_argument("--tests", action="store_true", help="also install pytest and the public DICOM test corpora")
    parser.add_argument("--dry-run", action="store_true", help="print what would be installed, install nothing")
    return parser.parse_args(argv)


def main(argv=None):
    """Install in the WebUI or standalone, whichever this is.

    Args:
        argv (`list[str] | None`): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        `int`: The exit status.
    """
    launch = webui_launch_module()
    if launch is not None:
        return install_in_webui(launch)
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    return install_standalone(arguments.tests, arguments.dry_run)


if __name__ == "__main__":
    sys.exit(main())
