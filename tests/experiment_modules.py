"""The scripts of ``experiments/`` imported as modules, for the tests that run them."""

import importlib.util
import pathlib

EXPERIMENTS = pathlib.Path(__file__).parents[1] / "experiments"


def load(name: str, monkeypatch):
    """``experiments/<name>.py`` as a module, its siblings importable as when it runs."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
