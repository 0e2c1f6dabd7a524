"""The public API: ``collabvit.__all__`` and every module's ``__all__`` match what exists."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import collabvit
from collabvit import errors
from collabvit.cli import COMMANDS


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(collabvit.__path__, "collabvit."))


LIBRARY_MODULES = [m for m in _modules() if not m.startswith("collabvit.commands")]
# the sub-commands; commands/_*.py are helpers they share (output checks, option types)
COMMAND_MODULES = [
    m
    for m in _modules()
    if m.startswith("collabvit.commands.") and not m.rsplit(".", 1)[1].startswith("_")
]


def test_package_all_matches_its_exports() -> None:
    names = collabvit.__all__
    assert len(names) == len(set(names)), "duplicates in collabvit.__all__"
    missing = [n for n in names if not hasattr(collabvit, n)]
    assert not missing, f"collabvit.__all__ names that do not exist: {missing}"
    public = {
        n
        for n, obj in vars(collabvit).items()
        if not n.startswith("_") and not isinstance(obj, ModuleType)
    }
    assert public == set(names) - {"__version__"}, "exported but not listed, or the reverse"
    assert isinstance(collabvit.__version__, str)


def test_package_exports_are_the_modules_objects() -> None:
    for name in collabvit.__all__:
        obj = getattr(collabvit, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        home = importlib.import_module(obj.__module__)
        assert obj.__module__.startswith("collabvit."), name
        assert getattr(home, name) is obj, f"collabvit.{name} is not {obj.__module__}.{name}"
        assert name in home.__all__, f"{name} is exported by collabvit but not by {home.__name__}"


@pytest.mark.parametrize("module_name", LIBRARY_MODULES)
def test_every_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"duplicates in {module_name}.__all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{module_name}.__all__ names that do not exist: {missing}"
    assert not [n for n in names if n.startswith("_")], f"private names in {module_name}.__all__"


@pytest.mark.parametrize("module_name", COMMAND_MODULES)
def test_every_command_module_has_the_command_interface(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module_name.rsplit(".", 1)[1] in COMMANDS, f"{module_name} is not in cli.COMMANDS"
    assert isinstance(module.HELP, str) and module.HELP
    assert callable(module.add_arguments)
    assert callable(module.run)
    assert module.__doc__, f"{module_name} has no docstring (it is the command's description)"


def test_error_tree() -> None:
    classes = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert set(errors.__all__) - set(classes) == {"exit_status"}
    for name in classes:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.CollabViTError), name
        assert cls.exit_status in (errors.USAGE, errors.RUNTIME), name
        assert cls.__doc__
    assert issubclass(errors.CheckpointError, errors.ModelError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.WireError, ValueError)
