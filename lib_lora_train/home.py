"""The data home: the one folder where medical-lora keeps its data.

Resolved once, in this order: an explicit folder (``--home DIR`` or, inside the WebUI, its
setting), the ``MEDICAL_LORA_HOME`` environment variable, then ``~/.medical-lora``.
Everything the product writes on its own goes below it; commands that take an explicit
output folder write there and nowhere else.
"""

import dataclasses
import os
import pathlib

from .errors import HomeError

HOME_ENV_VAR = "MEDICAL_LORA_HOME"
DEFAULT_HOME = "~/.medical-lora"


@dataclasses.dataclass(frozen=True)
class DataHome:
    """Paths inside the data home.

    Attributes:
        root (`pathlib.Path`): the home folder itself.
    """

    root: pathlib.Path

    @property
    def secrets_dir(self):
        return self.root / "secrets"

    @property
    def site_key_path(self):
        return self.secrets_dir / "site.key"

    @property
    def datasets_dir(self):
        return self.root / "datasets"

    @property
    def adapters_dir(self):
        return self.root / "adapters"

    @property
    def registry_path(self):
        return self.root / "registry.sqlite"

    @property
    def audit_log_path(self):
        return self.root / "audit.jsonl"

    def ensure(self):
        """Create the home (owner-only permissions) if needed and return self.

        Raises:
            HomeError: the folder cannot be created or is not a folder.
        """
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.secrets_dir, 0o700)
        except OSError as exc:
            raise HomeError(
                f"cannot create the data home {self.root} ({exc.strerror}); "
                f"choose another folder with --home or {HOME_ENV_VAR}"
            ) from None
        return self


def resolve_home(explicit=None, environ=None):
    """Decide where the data home is, without creating it.

    Args:
        explicit (`str` or `os.PathLike`, *optional*): ``--home`` or the WebUI setting.
        environ (`Mapping[str, str]`, *optional*): environment; defaults to ``os.environ``.

    Returns:
        `DataHome`
    """
    environ = os.environ if environ is None else environ
    chosen = explicit or environ.get(HOME_ENV_VAR) or DEFAULT_HOME
    root = pathlib.Path(os.path.expanduser(str(chosen))).resolve()
    if root.exists() and not root.is_dir():
        raise HomeError(f"the data home {root} exists but is not a folder")
    return DataHome(root=root)
