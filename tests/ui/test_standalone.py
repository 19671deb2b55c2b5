"""``python -m lib_lora_train ui``: sign-in credentials and the context it builds."""

import pytest

from lib_lora_train.errors import ConfigError
from lib_lora_train.ui import standalone


def test_auth_from_the_command_line_and_from_a_file(tmp_path):
    assert standalone.parse_auth("alice:pw1,bob:pw:2") == {"alice": "pw1", "bob": "pw:2"}
    path = tmp_path / "users.txt"
    path.write_text("alice:pw1\n\nbob:pw2\n")
    assert standalone.parse_auth(str(path)) == {"alice": "pw1", "bob": "pw2"}
    assert standalone.parse_auth(None) == {}


def test_malformed_auth_never_echoes_a_password(tmp_path):
    with pytest.raises(ConfigError) as error:
        standalone.parse_auth("alice:pw1,:topsecret")
    assert "topsecret" not in str(error.value)
    with pytest.raises(ConfigError, match="user:password"):
        standalone.parse_auth(str(tmp_path / "missing-file"))


def test_the_context_requires_a_real_checkpoint_file(home, tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        standalone.build_context(home, base_model=str(tmp_path / "v1-5-pruned.safetensors"))


def test_without_credentials_access_control_is_off_and_said_so(home):
    context = standalone.build_context(home)
    assert not context.auth_enabled and context.actor("alice") == "anonymous"
    assert any("Access control is off" in note for note in context.current_notices())
    assert context.state.auth.allow_unauthenticated_local  # the API answers this machine only
    signed = standalone.build_context(home, credentials={"alice": "pw"})
    assert signed.actor("alice") == "alice" and not signed.state.auth.allow_unauthenticated_local
    assert not any("Access control is off" in note for note in signed.current_notices())


def test_registry_problems_are_shown_at_start_up(home):
    home.adapters_dir.mkdir(parents=True, exist_ok=True)
    (home.adapters_dir / "stray.safetensors").write_bytes(b"not registered")
    notes = standalone.startup_notices(home)
    assert notes == [note for note in notes if note.startswith("Registry check: orphan_file")] and len(notes) == 1
