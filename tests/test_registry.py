import sys
from importlib.metadata import EntryPoint

import pytest

from embench import registry
from embench.errors import ConfigError, PluginError, UnknownNameError

BUILTIN_ENCODERS = {"pca", "ae", "vae", "p_ae", "p_vae"}


def test_builtins_come_from_entry_points():
    encoders = registry.discover("encoder")
    assert BUILTIN_ENCODERS <= set(encoders)
    assert encoders["pca"].distribution == "embench"
    assert "lunarlander" in registry.discover("task")


def test_bare_package_names_are_never_imported():
    registry.get_plugin("encoder", "pca").load()
    registry.get_plugin("task", "lunarlander").load()
    assert "encoders" not in sys.modules and "tasks" not in sys.modules
    assert "embench.encoders.pca" in sys.modules


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownNameError) as info:
        registry.get_plugin("encoder", "pcaa")
    message = str(info.value)
    assert "Did you mean 'pca'?" in message and "p_vae" in message
    assert "\n" not in message


def test_broken_plugin_is_reported_and_others_keep_working(monkeypatch):
    real = registry.entry_points

    def with_broken(group):
        eps = list(real(group=group))
        if group == registry.ENCODER_GROUP:
            eps.append(EntryPoint("broken", "embench_no_such_module:Thing", group))
        return eps

    monkeypatch.setattr(registry, "entry_points", with_broken)
    plugins = registry.discover("encoder")
    assert "broken" in plugins and "pca" in plugins
    assert "failed to load" in plugins["broken"].describe()
    assert "ModuleNotFoundError" in plugins["broken"].describe()
    with pytest.raises(PluginError, match="'broken'"):
        plugins["broken"].load()
    assert plugins["pca"].load().__name__ == "PCAEncoder"


def test_module_factory_spec():
    info = registry.get_plugin("encoder", "embench.encoders.pca:PCAEncoder")
    assert info.name == "PCAEncoder" and info.load().__name__ == "PCAEncoder"
    with pytest.raises(ConfigError):
        registry.get_plugin("encoder", ":x")


def test_instantiate_passes_accepted_hints_and_refuses_unknown_options():
    from embench.encoders.pca import PCAEncoder

    enc, given = registry.instantiate(PCAEncoder, "pca", "encoder",
                                      {"z_dim": 4, "max_epochs": 9}, {"seed": 3})
    assert (enc.z_dim, enc.seed) == (4, 3) and "max_epochs" not in given
    with pytest.raises(ConfigError, match="does not take option"):
        registry.instantiate(PCAEncoder, "pca", "encoder", {}, {"nope": 1})
