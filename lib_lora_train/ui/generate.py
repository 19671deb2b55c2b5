"""The standalone generate panel: a prompt with ``<lora:NAME:weight>`` tags, rendered on the
standalone host through the same kohya file the WebUI would load.

The tag syntax is the WebUI's (``<lora:NAME>`` means weight 1.0); only registered, active
adapters can be named, so a deleted adapter can no longer change an image.
"""

import contextlib
import re
import threading
import time

from ..errors import ConfigError

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
DEFAULT_STEPS = 20
# A training job holds the model for its whole run: a preview waits this long, then says so.
LOCK_WAIT_S = 10
BUSY = "the model is busy (a training job is running); generate again when the job has finished"


@contextlib.contextmanager
def held(lock, wait_s=None):
    """Hold ``lock``, waiting at most ``wait_s`` (default :data:`LOCK_WAIT_S`, ``inf``: as long as
    it takes); a clear error instead of a frozen page."""
    if not _acquire(lock, LOCK_WAIT_S if wait_s is None else wait_s):
        raise ConfigError(BUSY)
    try:
        yield
    finally:
        lock.release()


def _acquire(lock, wait_s):
    if wait_s == float("inf"):
        return lock.acquire()  # blocking, in the lock's own order (the WebUI's FIFOLock is fair)
    try:
        return lock.acquire(timeout=wait_s)
    except TypeError:  # the WebUI's FIFOLock takes no timeout: try until the deadline
        deadline = time.monotonic() + wait_s
        while not lock.acquire(False):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


def parse_prompt(prompt):
    """Split a prompt into its text and its ``<lora:...>`` tags.

    Returns:
        `tuple[str, list[tuple[str, float]]]`: the prompt without tags, and ``(name, weight)``.

    Raises:
        ConfigError: a weight is not a number.
    """
    tags = []
    for match in LORA_TAG.finditer(prompt or ""):
        name, weight_text = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ConfigError(f"<lora:{name}:{weight_text}>: the weight must be a number such as 0.7") from None
        tags.append((name, weight))
    text = " ".join(LORA_TAG.sub(" ", prompt or "").split()).strip(" ,")
    return text, tags


class StandaloneGenerator:
    """Render prompts on a :class:`DiffusersHost`, applying at most one registered adapter.

    Args:
        home (`DataHome`): where the registry lives.
        host_provider (`Callable[[], DiffusersHost]`): the loaded model (shared with training).
        lock (`threading.Lock`): held while generating, the same one training jobs hold, since
            training injects LoRA layers into the same modules.
        usage (`UsageRecorder`, *optional*): records ``use`` for the unused-adapter expiry.
        steps (`int`): sampling steps.
    """

    def __init__(self, home, host_provider, lock=None, usage=None, steps=DEFAULT_STEPS):
        self.home, self.host_provider, self.usage, self.steps = home, host_provider, usage, steps
        self.lock = lock or threading.Lock()

    def __call__(self, prompt, seed, actor=None):
        """One image; returns a ``PIL.Image.Image``.

        Raises:
            ConfigError: more than one tag, or an unknown or deleted adapter name.
        """
        from ..lora.apply import applied_adapter

        text, tags = parse_prompt(prompt)
        if len(tags) > 1:
            raise ConfigError("the standalone preview applies one adapter at a time; keep one <lora:NAME:w> tag")
        path = self._adapter_file(tags[0][0]) if tags else None
        with held(self.lock):
            host = self.host_provider()
            if path is None:
                image = host.generate(text, seed=int(seed), steps=self.steps)
            else:
                with applied_adapter(host, path, tags[0][1]):
                    image = host.generate(text, seed=int(seed), steps=self.steps)
        if tags and self.usage is not None:
            self.usage.record([tags[0][0]], actor)
        return image

    def _adapter_file(self, name):
        from ..registry import AdapterNotFoundError, Registry

        with Registry(self.home) as registry:
            try:
                record = registry.get(name)
            except AdapterNotFoundError:
                record = None
        if record is None or not record.is_active:
            raise ConfigError(f"no registered adapter named {name!r}: see the Adapters list")
        return record.file_path
