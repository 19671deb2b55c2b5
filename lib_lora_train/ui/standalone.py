"""``python -m lib_lora_train ui``: the tab and the REST API without the WebUI.

One process serves the Gradio tab at ``/`` and the same ``/medical-lora/v1`` API as the WebUI
extension, both behind ``--auth`` (Gradio's sign-in for the page, HTTP Basic for the API). It
binds 127.0.0.1 unless told otherwise: patient data should not be reachable from the network
by accident. The model (embedded tiny default or ``--base-model``) is loaded once, on first
use, and shared by training and the generate panel under one lock.
"""

import logging
import os
import pathlib
import threading

from ..errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7870
QUEUE_WORKERS = 4


def parse_auth(value):
    """``--auth``: ``user:password[,user2:password2]``, or the path of a file with one per line.

    Returns:
        `dict[str, str]`: user -> password (empty for no value).

    Raises:
        ConfigError: an entry is malformed (named by position, never echoing a password).
    """
    from ..api import parse_credentials

    if not value:
        return {}
    path = pathlib.Path(value)
    if ":" not in value or path.is_file():
        if not path.is_file():
            raise ConfigError("--auth must be 'user:password' or the path of a file of such lines")
        value = ",".join(line.strip() for line in path.read_text().splitlines() if line.strip())
    return parse_credentials(value, option="--auth")


class SharedHost:
    """Load the model once, on first use, from the job thread or the generate panel."""

    def __init__(self, home, base_model="embedded"):
        self.home, self.base_model = home, base_model
        self._host = None
        self._guard = threading.Lock()

    def __call__(self):
        with self._guard:
            if self._host is None:
                self._host = self._load()
            return self._host

    def _load(self):
        from ..hosts.diffusers_host import DiffusersHost

        cache = self.home.ensure().root / "models"
        if self.base_model == "embedded":
            return DiffusersHost.embedded(cache)
        return DiffusersHost.from_single_file(self.base_model, cache)


def login_checker(home, credentials):
    """Gradio's sign-in as a function, so a failed sign-in is audited (``auth_failed``, reason
    ``bad_credentials``, the offered user name when printable) like a refused API request.

    Returns:
        `Callable[[str, str], bool]`
    """
    from ..api import ApiAuth, AuthRefusedError, audit_refusal

    checker = ApiAuth(dict(credentials))

    def check(username, password):
        try:
            checker.verify(username, password)
            return True
        except AuthRefusedError as exc:
            audit_refusal(home, username, "ui:login", exc.reason_code)
            return False

    return check


def build_context(home, *, credentials=None, base_model="embedded"):
    """The :class:`UiContext` of a standalone app (also used by the browser tests)."""
    from ..api import ApiAuth, ApiState
    from ..config import IngestConfig
    from ..jobs import JobManager
    from ..trainer.api import LoRATrainer
    from ..webui.usage import UsageRecorder
    from .context import UiContext

    home = home.ensure()
    if base_model != "embedded" and not pathlib.Path(base_model).is_file():
        raise ConfigError(f"--base-model {base_model} is not a file; give a local .safetensors or .ckpt checkpoint")
    lock = threading.RLock()
    shared_host = SharedHost(home, base_model)

    def make_trainer(config):
        return LoRATrainer(config, home, host=shared_host())

    state = ApiState(home=home, jobs=JobManager(), make_trainer=make_trainer, auth=ApiAuth(dict(credentials or {}), allow_unauthenticated_local=not credentials),
                     lock=lock, ingest_config=IngestConfig())
    from .generate import StandaloneGenerator

    generator = StandaloneGenerator(home, shared_host, lock, usage=UsageRecorder(home))
    # Checked once, at start (it hashes every adapter file and is audited), as the WebUI's maintenance does;
    # the page asks for the notices with every poll.
    problems = startup_notices(home)
    return UiContext(state=state, host_name="standalone", auth_enabled=bool(credentials), generate=generator,
                     notices=lambda: list(problems))


def startup_notices(home):
    """Registry/disk problems and missing optional packages, for the tab's notice area."""
    from ..registry import Registry

    notes = []
    with Registry(home) as registry:
        problems = registry.verify(actor="standalone:startup")
    notes.extend(f"Registry check: {problem.kind} {problem.target}: {problem.detail}" for problem in problems)
    return notes


def _queued(blocks):
    """Several workers, so polls, cancel and lists answer while a preview renders (gradio 3's
    queue has one worker by default)."""
    import gradio as gr

    if gr.__version__.startswith("3."):
        return blocks.queue(concurrency_count=QUEUE_WORKERS)
    return blocks.queue(default_concurrency_limit=QUEUE_WORKERS)


def serve(home, *, host=DEFAULT_HOST, port=DEFAULT_PORT, auth=None, base_model="embedded", block=True):
    """Start the app; returns ``(blocks, fastapi_app, url)`` (blocks until stopped when ``block``).

    Gradio keeps uploads under the client's file names in its temporary folder until the tab
    takes them; unless ``GRADIO_TEMP_DIR`` is set, that folder is placed in the data home and
    emptied at every start, so such copies never outlive a crash outside the configured folders.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    own_temp = None
    if not os.environ.get("GRADIO_TEMP_DIR"):  # a folder set by someone else is theirs: never emptied here
        own_temp = home.ensure().root / "uploads" / "gradio"
        os.environ["GRADIO_TEMP_DIR"] = str(own_temp)
    from ..api.routes import build_router
    from .datasets import sweep_folder, sweep_stale_uploads
    from .tab import build_app

    credentials = parse_auth(auth)
    context = build_context(home, credentials=credentials, base_model=base_model)
    sweep_stale_uploads(context.home)
    if own_temp is not None:
        sweep_folder(own_temp)
    blocks = build_app(context)
    launch_auth = login_checker(context.home, credentials) if credentials else None
    app, local_url, _ = _queued(blocks).launch(server_name=host, server_port=port, auth=launch_auth,
                                              prevent_thread_lock=True, show_api=False, inbrowser=False,
                                              quiet=True)
    app.include_router(build_router(context.state))
    url = f"http://{host}:{port}/"
    print(f"medical-lora: serving the tab at {url} and the REST API at {url}medical-lora/v1", flush=True)
    if not credentials:
        print("medical-lora: no --auth given: access control is off (anyone reaching this address can train "
              "and delete)", flush=True)
    if block:
        blocks.block_thread()
    return blocks, app, url
