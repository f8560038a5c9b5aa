"""Plugin discovery through entry points: the one place encoders and tasks are found.

Built-in plugins are declared in ``pyproject.toml`` exactly like a third party's, in the groups
``embench.encoders`` and ``embench.tasks``. Entry points are loaded lazily; a plugin that fails
to import is reported with its error and does not hide the others. An encoder that is not
packaged can be named as ``module.path:factory``.

A third group, ``embench.weights``, names the function behind ``embench weights fetch``: the
plugin that knows where perceptual-network weights come from provides it, so the core never
imports a plugin module to reach it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from embench.errors import ConfigError, PluginError, UnknownNameError
from embench.storage import safe_name

ENCODER_GROUP = "embench.encoders"
TASK_GROUP = "embench.tasks"
#: Functions ``fetch(network, home, weights_path) -> dict`` behind ``embench weights fetch``.
WEIGHTS_GROUP = "embench.weights"
_GROUPS = {"encoder": ENCODER_GROUP, "task": TASK_GROUP, "weights": WEIGHTS_GROUP}


@dataclass
class PluginInfo:
    """One registered plugin: its name, entry point and where it comes from."""

    name: str
    kind: str
    value: str
    distribution: str
    entry_point: EntryPoint | None = None

    def load(self) -> Any:
        """Import and return the plugin's factory.

        Raises:
            PluginError: naming the plugin and the reason when the import fails.
        """
        try:
            if self.entry_point is not None:
                return self.entry_point.load()
            return _load_object(self.value)
        except Exception as exc:  # a broken plugin must not take the tool down
            raise PluginError(
                f"{self.kind.capitalize()} plugin {self.name!r} ({self.value}) failed to load: "
                f"{type(exc).__name__}: {exc}.",
                f"Fix or uninstall the distribution {self.distribution!r}.",
            ) from exc

    def describe(self) -> str:
        """One-line description: the first line of the factory's docstring, or the error."""
        try:
            factory = self.load()
        except PluginError as exc:
            return f"[red]failed to load:[/red] {exc.message}"
        doc = inspect.getdoc(factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def _load_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def discover(kind: str) -> dict[str, PluginInfo]:
    """All plugins of ``kind`` (``"encoder"`` or ``"task"``), by name, without importing them."""
    group = _GROUPS[kind]
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=group):
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
        found.setdefault(ep.name, PluginInfo(ep.name, kind, ep.value, dist, ep))
    return dict(sorted(found.items()))


def get_plugin(kind: str, name: str) -> PluginInfo:
    """Find one plugin by name; ``module.path:factory`` names one that is not packaged.

    Raises:
        UnknownNameError: with "did you mean" and the available names.
        ConfigError: for a ``module:factory`` spec that cannot be imported.
    """
    plugins = discover(kind)
    if name in plugins:
        return plugins[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not module_name or not attr:
            raise ConfigError(
                f"Invalid {kind} spec {name!r}.", "Use 'package.module:factory'."
            )
        label = attr.split(".")[-1]
        return PluginInfo(safe_name(label, f"{kind} name"), kind, name, "(not packaged)")
    raise UnknownNameError(kind, name, plugins)


def load_task(name: str, options: dict[str, Any] | None = None) -> Any:
    """Construct a registered task by name (its data comes later, from ``task.load``).

    Raises:
        UnknownNameError: for a name no plugin has, with "did you mean".
        PluginError: the plugin failed to import or to construct.
        ConfigError: an option the task does not take.
    """
    info = get_plugin("task", name)
    task, _ = instantiate(info.load(), name, "task", {}, options or {})
    return task


def accepts_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` takes keyword ``name`` (or ``**kwargs``).

    This decides what embench passes to a plugin's factory, ``fit`` or ``load``.
    """
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def instantiate(
    factory: Any, name: str, kind: str, hints: dict[str, Any], options: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Construct a plugin from keyword config; return it and the config it was given.

    Args:
        factory: the plugin's class or factory function.
        name: plugin name, for messages.
        kind: ``"encoder"`` or ``"task"``.
        hints: config embench offers (seed, epochs, device, ...); passed only where accepted.
        options: config the user asked for by name; each must be accepted.

    Raises:
        ConfigError: an option the factory does not take.
        PluginError: the factory raised; the message names the plugin.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in hints.items() if takes_any or k in params}
    unknown = [k for k in options if not takes_any and k not in params]
    if unknown:
        allowed = ", ".join(p for p in params if p not in hints) or "(none)"
        raise ConfigError(
            f"{kind.capitalize()} {name!r} does not take option(s) {', '.join(unknown)}.",
            f"Its options are: {allowed}.",
        )
    accepted.update(options)
    try:
        return factory(**accepted), accepted
    except (ConfigError, PluginError):
        raise
    except Exception as exc:
        raise PluginError(
            f"{kind.capitalize()} {name!r} could not be constructed: {type(exc).__name__}: {exc}."
        ) from exc
