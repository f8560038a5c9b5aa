import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own EMBENCH_HOME, never the user's cache."""
    home = tmp_path_factory.mktemp("embench-home")
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    return home
