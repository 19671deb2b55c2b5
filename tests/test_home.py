"""Where data lives: --home, MEDICAL_LORA_HOME, default; created owner-only."""

import os
import stat

import pytest

from lib_lora_train.errors import HomeError
from lib_lora_train.home import resolve_home


def test_explicit_beats_environment_beats_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_home(None, {}).root == (tmp_path / "user" / ".medical-lora").resolve()
    env = {"MEDICAL_LORA_HOME": str(tmp_path / "env")}
    assert resolve_home(None, env).root == (tmp_path / "env").resolve()
    assert resolve_home(tmp_path / "cli", env).root == (tmp_path / "cli").resolve()


def test_ensure_creates_private_folders(tmp_path):
    home = resolve_home(tmp_path / "h", {}).ensure()
    assert stat.S_IMODE(os.stat(home.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home.secrets_dir).st_mode) == 0o700
    assert home.site_key_path.parent == home.secrets_dir


def test_home_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HomeError, match="not a folder"):
        resolve_home(tmp_path / "file", {})
