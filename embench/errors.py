"""One exception hierarchy for everything embench reports to a user.

Every error carries a message that says what was wrong, where, and how to fix it. The CLI
prints ``str(error)`` as one line and exits non-zero; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EmbenchError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


class ConfigError(EmbenchError):
    """An option, preset or argument value that is not allowed."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A name (encoder, task, preset, network) that is not registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=1)
        did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(choices) if choices else "(none installed)"
        super().__init__(f"Unknown {kind} {name!r}.{did_you_mean} Available: {listed}.")
        self.kind, self.name, self.choices = kind, name, choices


class PluginError(EmbenchError):
    """A plugin that failed to import or broke its contract."""


class EncoderContractError(PluginError):
    """An encoder returned something that is not an (N, D) finite float array."""


class DataError(EmbenchError):
    """A dataset that is missing, corrupted, or not in the expected format."""


class WeightsError(EmbenchError):
    """Pretrained weights that cannot be found, fetched or verified."""


class StorageError(EmbenchError):
    """EMBENCH_HOME cannot be written (read-only, full) or a stored file is unusable."""


class WorkerDiedError(EmbenchError):
    """A worker process died (killed, out of memory, crashed) before finishing its work."""


class NotFittedError(EmbenchError, ValueError):
    """An estimator or encoder used before ``fit``."""

    def __init__(self, obj: object) -> None:
        name = type(obj).__name__
        super().__init__(f"This {name} instance is not fitted yet. Call 'fit' first.")
