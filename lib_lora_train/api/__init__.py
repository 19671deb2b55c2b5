"""The REST API's state and access control; the routes are in :mod:`.routes`.

This module does not import FastAPI, so the host can build an :class:`ApiState` (and parse
``--api-auth``) before it knows whether the API will be mounted:

    state = ApiState(home=home, jobs=JobManager(), make_trainer=lambda config: LoRATrainer(config, home, host),
                     auth=ApiAuth(parse_credentials(cmd_opts.api_auth)), lock=queue_lock)
    app.include_router(build_router(state))   # from lib_lora_train.api.routes import build_router

Every refused request writes an ``auth_failed`` audit entry with a reason code.
"""

import dataclasses
import ipaddress
import logging
import re
import secrets

from ..errors import ConfigError, LoraTrainError

LOCAL_HOSTS = ("127.0.0.1", "::1")
logger = logging.getLogger(__name__)

# An offered user name is written to the audit log only if it is printable and short.
AUDIT_ACTOR_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
NOT_CONFIGURED = ("API authentication is not configured; set --api-auth, or enable unauthenticated local access in "
                  "settings")


class AuthRefusedError(LoraTrainError, PermissionError):
    """A request was refused.

    Attributes:
        status_code (`int`): 401 (missing or wrong credentials) or 403 (not allowed).
        reason_code (`str`): machine-readable reason, written to the audit log.
        user (`str | None`): the user name that was offered, if any.
    """

    def __init__(self, message, status_code, reason_code, user=None):
        super().__init__(message)
        self.status_code, self.reason_code, self.user = status_code, reason_code, user


def parse_credentials(text, option="--api-auth"):
    """Parse the WebUI's ``--api-auth`` form, ``"user:password,user2:password2"``.

    ``option`` names the flag in error messages (the standalone app's is ``--auth``).

    Returns:
        `dict[str, str]`: user to password; empty for empty or None text.

    Raises:
        ConfigError: an entry has no ``:`` or an empty user name (the entry is named by
            position only, since it holds a password).
    """
    credentials = {}
    for position, entry in enumerate((text or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user.strip():
            raise ConfigError(f"{option} entry {position} must be 'user:password' (entries separated by commas)")
        credentials[user.strip()] = password
    return credentials


@dataclasses.dataclass(frozen=True)
class ApiAuth:
    """Who may call the API, and which action.

    Args:
        credentials (`Mapping[str, str]`): user to password for HTTP Basic; empty refuses all
            requests unless local unauthenticated access is enabled.
        allow_unauthenticated_local (`bool`): without credentials, accept requests from
            127.0.0.1 / ::1 only (as user ``anonymous``).
        train_users, delete_users (`Collection[str]`): if non-empty, only these users may
            upload/train, or delete/forget.
    """

    credentials: dict = dataclasses.field(default_factory=dict)
    allow_unauthenticated_local: bool = False
    train_users: tuple = ()
    delete_users: tuple = ()

    def check(self, authorization, client_host, action=None):
        """Return the user name of an allowed request.

        Args:
            authorization (`str | None`): the ``Authorization`` header.
            client_host (`str | None`): the peer address.
            action (`str | None`): ``"train"`` or ``"delete"`` to apply that allow-list.

        Raises:
            AuthRefusedError
        """
        if not self.credentials:
            if self.allow_unauthenticated_local and _is_local(client_host):
                return "anonymous"
            reason = "not_local" if self.allow_unauthenticated_local else "auth_not_configured"
            raise AuthRefusedError(NOT_CONFIGURED, 403, reason)
        user = self._authenticated_user(authorization)
        allowed = {"train": self.train_users, "delete": self.delete_users}.get(action) or ()
        if allowed and user not in allowed:
            raise AuthRefusedError(f"user {user!r} may not {action} (not in the {action}_users list)", 403,
                                   "not_allowed", user)
        return user

    def _authenticated_user(self, authorization):
        user, password = _basic_credentials(authorization)
        if user is None:
            raise AuthRefusedError("credentials required (HTTP Basic)", 401, "missing_credentials")
        return self.verify(user, password)

    def verify(self, user, password):
        """Return ``user`` if the password is theirs (also the standalone app's sign-in).

        Raises:
            AuthRefusedError: 401, ``bad_credentials``.
        """
        expected = self.credentials.get(user)
        # Compare against a dummy for unknown users too, so timing does not reveal user names.
        match = secrets.compare_digest(password.encode(), (expected if expected is not None else "\0").encode())
        if expected is None or not match:
            raise AuthRefusedError("invalid user name or password", 401, "bad_credentials", user)
        return user


def audit_refusal(home, user, target, reason_code):
    """Write one ``auth_failed`` entry for a refused request, tab action or sign-in.

    The actor is the offered user name when it is printable, else ``anonymous``. Never raises:
    the refusal is answered even when the log cannot be written (that is logged as an error).
    """
    from ..registry import Registry

    actor = user if user and AUDIT_ACTOR_PATTERN.fullmatch(user) else "anonymous"
    try:
        with Registry(home) as registry:
            registry.audit.append("auth_failed", actor=actor, target=target, outcome="refused",
                                  details={"reason_code": reason_code})
    except (LoraTrainError, OSError, ValueError) as error:
        logger.error("could not write the auth_failed audit entry (%s)", type(error).__name__)


def _basic_credentials(authorization):
    import base64
    import binascii

    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def _is_local(host):
    try:
        return ipaddress.ip_address(host or "").is_loopback and host in LOCAL_HOSTS
    except ValueError:
        return False


@dataclasses.dataclass
class ApiState:
    """What the routes need, injected by the host.

    Args:
        home (`DataHome`): the data home (uploads, datasets, registry).
        jobs (`JobManager`): the one job manager of this process.
        make_trainer (`Callable[[TrainConfig], LoRATrainer]`): builds a trainer for a job on
            the worker thread (the WebUI passes its loaded-model host, standalone the embedded
            or single-file one).
        auth (`ApiAuth`): access control.
        lock (*optional*): held for each whole run (the WebUI's ``call_queue.queue_lock``).
        delete_hooks (`tuple`): passed to ``Registry.delete`` / ``forget_patient`` (the WebUI
            drops the adapter from its lists).
        ingest_config (`IngestConfig`, *optional*): options for uploads; defaults when None.
        output_root (`pathlib.Path`, *optional*): where adapters are written, one folder per
            name; the home's ``adapters`` folder when None.
        after_register (*optional*): ``(exported, record)`` callback after registration (the
            WebUI publishes the adapter into its Lora folder there).
    """

    home: object
    jobs: object
    make_trainer: object
    auth: ApiAuth = dataclasses.field(default_factory=ApiAuth)
    lock: object = None
    delete_hooks: tuple = ()
    ingest_config: object = None
    output_root: object = None
    after_register: object = None


__all__ = ["AUDIT_ACTOR_PATTERN", "ApiAuth", "ApiState", "AuthRefusedError", "audit_refusal", "parse_credentials"]
