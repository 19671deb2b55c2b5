"""The standalone generate panel: ``<lora:NAME:w>`` parsing and applying a registered adapter."""

import numpy as np
import pytest

from lib_lora_train.errors import ConfigError
from lib_lora_train.hosts.base import fingerprint_modules
from lib_lora_train.ui.generate import StandaloneGenerator, parse_prompt


@pytest.mark.parametrize("prompt, text, tags", [
    ("a ct scan", "a ct scan", []),
    ("a ct scan <lora:chest_ct:0.7>", "a ct scan", [("chest_ct", 0.7)]),
    ("<lora:chest_ct>, a ct scan", "a ct scan", [("chest_ct", 1.0)]),
    ("<lora:a.b-c:-0.5:te=1> x", "x", [("a.b-c", -0.5)]),
])
def test_parse_prompt(prompt, text, tags):
    assert parse_prompt(prompt) == (text, tags)


def test_a_weight_that_is_not_a_number_is_refused():
    with pytest.raises(ConfigError, match="must be a number"):
        parse_prompt("<lora:chest_ct:strong>")


def test_unknown_and_several_adapters_are_refused(home, embedded_host):
    generator = StandaloneGenerator(home, lambda: embedded_host, steps=2)
    with pytest.raises(ConfigError, match="no registered adapter named 'missing'"):
        generator("a ct scan <lora:missing:0.7>", seed=1)
    with pytest.raises(ConfigError, match="one adapter at a time"):
        generator("<lora:a:1> <lora:b:1>", seed=1)


def test_a_registered_adapter_is_applied_then_unusable_once_deleted(home, embedded_host, gradio_uploads):
    from lib_lora_train.config import IngestConfig
    from lib_lora_train.ui import adapters, datasets, training
    from lib_lora_train.webui.usage import UsageRecorder

    from .conftest import FAST_OPTIONS, RECORD, make_context

    context = make_context(home, embedded_host)
    upload_id = datasets.take_uploads(home, gradio_uploads)
    view = datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64), actor="alice")
    job = training.start_training(context, training.build_config(context, view.dataset_id, RECORD, FAST_OPTIONS),
                                  user=None)
    assert context.state.jobs.wait(job, timeout=300).state == "done"
    usage = UsageRecorder(home)
    generator = StandaloneGenerator(home, lambda: embedded_host, usage=usage, steps=2)
    base = fingerprint_modules(embedded_host.modules_to_fingerprint())
    plain = np.asarray(generator("a ct scan", seed=7))
    adapted = np.asarray(generator("a ct scan <lora:chest_ct:0.7>", seed=7, actor="alice"))
    assert plain.shape == adapted.shape and not np.array_equal(plain, adapted)
    assert np.array_equal(plain, np.asarray(generator("a ct scan", seed=7)))
    assert fingerprint_modules(embedded_host.modules_to_fingerprint()) == base
    usage.close()
    assert adapters.adapter_rows(home)[0].last_used != "never"
    adapters.delete_adapter(context, "chest_ct", user=None)
    with pytest.raises(ConfigError, match="no registered adapter named 'chest_ct'"):
        generator("a ct scan <lora:chest_ct:0.7>", seed=7)
