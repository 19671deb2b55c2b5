"""Host test fixtures: no network at all, and tiny models shared per test module.

Every test here runs with ``HF_HUB_OFFLINE=1`` and with ``socket.connect`` raising, so any
attempt to reach a model hub (or anything else) fails the test instead of silently working.
"""

import socket
import sys

import pytest


class NetworkAccessError(RuntimeError):
    """Raised by the patched socket: a test tried to use the network."""


def _refuse(*args, **kwargs):
    raise NetworkAccessError("network access attempted during a host test")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Block the network for the whole module (before any module-scoped model fixture runs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setenv("DIFFUSERS_OFFLINE", "1")
        # huggingface_hub reads the variable at import; patch the constant if it is loaded already.
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket.socket, "connect_ex", _refuse)
        yield


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    """A model cache folder holding the embedded model, shared by one test module."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def embedded_host(embedded_cache):
    """The embedded tiny host (read-only use: tests that mutate weights load their own)."""
    from lib_lora_train.hosts.diffusers_host import DiffusersHost

    return DiffusersHost.embedded(embedded_cache)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory):
    """``(checkpoint, config_dir, modules)`` of a tiny SD 1.x-layout single file."""
    from tests.hosts.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("sd1"), "sd1")


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory):
    """``(checkpoint, config_dir, modules)`` of a tiny SD 2.x-layout (OpenCLIP) single file."""
    from tests.hosts.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("sd2"), "sd2")
