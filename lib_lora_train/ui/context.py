"""What the tab needs from its host, in one object: the REST API's state plus UI-only extras."""

import dataclasses

ANONYMOUS = "anonymous"


class AccessDeniedError(PermissionError):
    """The signed-in user may not do this; the message names the user and the setting."""


@dataclasses.dataclass
class UiContext:
    """Injected by the host (WebUI glue or standalone app).

    Args:
        state (`ApiState`): home, job manager, trainer factory, lock, delete hooks, ingest
            config and ``after_register`` (shared with the REST API, so both see one job queue).
        host_name (`str`): ``"webui"``, ``"forge"`` or ``"standalone"`` (shown and audited).
        auth_enabled (`bool`): whether users must sign in; without it the tab warns that access
            control is off and actions are recorded as ``anonymous``.
        train_users, delete_users (`tuple[str, ...]`): if non-empty, only these signed-in users
            may upload/train or delete/forget.
        generate (`Callable[[str, int], PIL.Image.Image] | None`): renders a prompt (with
            ``<lora:NAME:w>`` tags) at a seed, for the before/after preview and the generate
            panel; None hides them.
        training_refused (`str | None`): why training cannot run in this host (Forge), shown
            instead of the Train button.
        notices (`Callable[[], list[str]] | None`): start-up problems to show (missing
            packages, registry inconsistencies).
        expiry_days (`int`): the default lifetime of a new adapter, offered in the form.
        training_previews (`bool`): the host can render ``sample_prompt`` during training.
    """

    state: object
    host_name: str = "standalone"
    auth_enabled: bool = False
    train_users: tuple = ()
    delete_users: tuple = ()
    generate: object = None
    training_refused: str | None = None
    notices: object = None
    expiry_days: int = 365
    training_previews: bool = True

    @property
    def home(self):
        return self.state.home

    def actor(self, user):
        """The name recorded in the audit log for a signed-in user (or ``anonymous``)."""
        return user if self.auth_enabled and user else ANONYMOUS

    def check_allowed(self, user, action):
        """Return the actor, or raise :class:`AccessDeniedError` for an action outside the user's list.

        Args:
            user (`str | None`): the signed-in Gradio user.
            action (`str`): ``"train"`` (upload, captions, training) or ``"delete"``.
        """
        allowed = {"train": self.train_users, "delete": self.delete_users}[action]
        actor = self.actor(user)
        if allowed and actor not in allowed:
            from ..api import audit_refusal

            audit_refusal(self.home, actor, f"tab:{action}", "not_allowed")
            raise AccessDeniedError(f"user {actor!r} may not {action} here: not in the allowed list for "
                                    f"{'training' if action == 'train' else 'deletion'} (Settings > Medical LoRA)")
        return actor

    def current_notices(self):
        """Start-up problems to show at the top of the tab; never raises."""
        notes = []
        if not self.auth_enabled:
            notes.append("Access control is off: no sign-in is configured, so anyone who can open this page can "
                         "train and delete, and the audit log records them as 'anonymous'. Start with "
                         "--gradio-auth (WebUI) or --auth (standalone).")
        if self.notices is not None:
            try:
                notes.extend(self.notices())
            except Exception as exc:  # a broken check must not take the tab down
                notes.append(f"The start-up check could not run ({type(exc).__name__}).")
        return notes
