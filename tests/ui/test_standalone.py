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
    assert "topsecret" not in str(error.value) and str(error.value).startswith("--auth entry 2")
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


def test_the_start_up_check_runs_once_however_often_the_page_polls(home):
    context = standalone.build_context(home)
    log = home.audit_log_path.read_text()
    for _ in range(3):
        context.current_notices()
    assert home.audit_log_path.read_text() == log and log.count('"verify"') == 1


def test_registry_problems_are_shown_at_start_up(home):
    home.adapters_dir.mkdir(parents=True, exist_ok=True)
    (home.adapters_dir / "stray.safetensors").write_bytes(b"not registered")
    notes = standalone.startup_notices(home)
    assert notes == [note for note in notes if note.startswith("Registry check: orphan_file")] and len(notes) == 1


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_empties_only_its_own_temp_folder(home, tmp_path, monkeypatch):
    """Gradio's temp folder inside the data home is emptied at start; one set by someone else is left alone."""
    pytest.importorskip("gradio")
    import httpx

    theirs = tmp_path / "shared-temp"
    theirs.mkdir()
    (theirs / "someone_elses_file").write_bytes(b"keep me")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(theirs))
    blocks, _, url = standalone.serve(home, port=_free_port(), block=False)
    try:
        assert httpx.get(url + "medical-lora/v1/adapters").status_code == 200  # local, no --auth
    finally:
        blocks.close()
    assert (theirs / "someone_elses_file").exists()
    ours = home.root / "uploads" / "gradio"
    (ours / "abc").mkdir(parents=True)
    (ours / "abc" / "Doe^John.dcm").write_bytes(b"left by a crash")
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    blocks, _, _ = standalone.serve(home, port=_free_port(), block=False)
    blocks.close()
    assert ours.is_dir() and not list(ours.iterdir())


def test_a_failed_sign_in_is_audited_with_the_offered_name_only(home):
    import json

    check = standalone.login_checker(home, {"alice": "pw1"})
    assert check("alice", "pw1")
    assert not check("alice", "guess") and not check("mallory", "pw1") and not check("bad\nname", "x")
    entries = [json.loads(line) for line in home.audit_log_path.read_text().splitlines()]
    assert [(e["action"], e["actor"], e["target"], e["details"]["reason_code"]) for e in entries] == [
        ("auth_failed", "alice", "ui:login", "bad_credentials"), ("auth_failed", "mallory", "ui:login",
                                                                   "bad_credentials"),
        ("auth_failed", "anonymous", "ui:login", "bad_credentials")]
    assert "guess" not in home.audit_log_path.read_text()
