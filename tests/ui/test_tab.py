"""The tab builds on the installed gradio (3.41.2 in CI) with labelled, prefixed controls."""

import pytest

gr = pytest.importorskip("gradio")

from lib_lora_train.ui.tab import build_app, build_tab  # noqa: E402

from .conftest import make_context  # noqa: E402

INPUT_TYPES = {"textbox", "number", "dropdown", "checkbox", "radio", "file", "dataframe", "button"}


@pytest.fixture
def components(home, embedded_host):
    blocks = build_tab(make_context(home, embedded_host))
    return blocks, blocks.config["components"]


def test_every_control_has_an_accessible_label_and_a_prefixed_id(components):
    _, parts = components
    controls = [c for c in parts if c["type"] in INPUT_TYPES]
    assert len(controls) > 40
    for control in controls:
        props = control["props"]
        text = props.get("label") or props.get("value")
        assert text, f"{control['type']} {props.get('elem_id')} has no label"
        assert str(props.get("elem_id", "")).startswith("medlora_"), props.get("elem_id")


def test_the_steps_and_hidden_helpers_are_present(components):
    _, parts = components
    ids = {c["props"].get("elem_id") for c in parts}
    for required in ("medlora_files", "medlora_folder", "medlora_window", "medlora_captions", "medlora_name",
                     "medlora_expires", "medlora_preset", "medlora_start", "medlora_cancel", "medlora_progress",
                     "medlora_poll", "medlora_result", "medlora_adapters", "medlora_delete_name",
                     "medlora_delete_button", "medlora_patient", "medlora_forget", "medlora_audit",
                     "medlora_gen_prompt"):
        assert required in ids, required
    patient = next(c for c in parts if c["props"].get("elem_id") == "medlora_patient")
    assert patient["props"]["type"] == "password"


def test_a_host_without_training_disables_start(home, embedded_host):
    blocks = build_tab(make_context(home, embedded_host, training_refused="Forge cannot train in-process"))
    start = next(c for c in blocks.config["components"] if c["props"].get("elem_id") == "medlora_start")
    assert start["props"]["interactive"] is False


def test_the_standalone_page_carries_the_css_and_script(home, embedded_host):
    app = build_app(make_context(home, embedded_host))
    assert "medlora-hidden" in app.css
    assert any("medicalLora" in str(dep.get("js") or "") for dep in app.config["dependencies"])
