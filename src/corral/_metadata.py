"""Public names that say they are ``corral.X``, as trio's ``fixup_module_metadata`` does.

Tracebacks, ``repr`` and pickles name a class by its ``__module__`` and ``__qualname__``: without
this, ``corral.SerdeError`` would show as ``corral._errors.SerdeError``, and a pickle would
name the private module a refactoring may move it out of.

``corral`` loads its public names lazily (``corral.__getattr__``): :func:`load_exports` imports
the module that defines a name when it is first asked for, and then binds and renames every public
name of every defining module loaded by then, so that an error raised by a module the first one
imported is already named ``corral.X`` too.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["fixup_module_metadata", "load_exports"]


def load_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str], name: str
) -> None:
    """Import ``package``'s module that defines ``name`` (``exports`` maps each public name to
    it), then bind into ``namespace`` (the package's globals) each public name whose module is
    loaded, and fix up their metadata. Reentrant: resolving a class's annotations may load
    another module through the package's ``__getattr__``, which binds that module's names."""
    importlib.import_module(f"{package}.{exports[name]}")
    bound = []
    for public, module_name in exports.items():
        if public in namespace:
            continue
        module = sys.modules.get(f"{package}.{module_name}")
        if module is not None:
            namespace[public] = getattr(module, public)
            bound.append(public)
    fixup_module_metadata(package, namespace, bound)


def fixup_module_metadata(
    package: str, namespace: dict[str, Any], public_names: Iterable[str]
) -> None:
    """Set ``__module__`` to ``package`` for each public class, function and enum of
    ``namespace`` defined in a private module of ``package``, and for the functions and classes
    defined in a public class's body (``corral.Cmd.parse``).

    An object is renamed only where its ``__qualname__`` is the path it is exported at, so that
    ``<package>.<__qualname__>`` always finds it again (pickle looks objects up that way); an
    alias (``__copy__ = clone``) keeps the name it was defined with.

    ``typing.get_type_hints`` reads a class's annotations (text, under ``from __future__ import
    annotations``) in the module its ``__module__`` names, whose globals hold only the public
    names loaded so far: those the defining module or the package's public names can resolve
    are resolved first, so that they still resolve afterwards.
    """
    seen: set[int] = set()

    def fix(obj: object, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not module.startswith(f"{package}._"):
            return
        if getattr(obj, "__qualname__", None) != path:
            return
        if not isinstance(obj, type):
            obj.__module__ = package
            return
        _resolve_annotations(package, obj, sys.modules[module].__dict__)
        obj.__module__ = package
        for name, member in vars(obj).items():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            fix(member, f"{path}.{name}")

    for name in public_names:
        fix(namespace[name], name)


class _Names(dict[str, Any]):
    """The names an annotation is evaluated with: a missing one is looked up in the package,
    whose ``__getattr__`` loads it."""

    def __init__(self, package: str, names: dict[str, Any]) -> None:
        super().__init__(names)
        self._package = package

    def __missing__(self, key: str) -> Any:
        try:
            return getattr(sys.modules[self._package], key)
        except AttributeError:
            raise KeyError(key) from None


def _resolve_annotations(package: str, cls: type, module_globals: dict[str, Any]) -> None:
    annotations = inspect.get_annotations(cls)
    if not any(isinstance(value, str) for value in annotations.values()):
        return
    # As get_type_hints does: the module's names first, then the class's; then, for a name the
    # module only imports for type checking, the package's public names (loaded on demand).
    names = _Names(package, {**vars(cls), **module_globals})
    for name, value in annotations.items():
        if isinstance(value, str):
            with contextlib.suppress(Exception):  # a name only imported for type checking
                annotations[name] = eval(value, module_globals, names)
    cls.__annotations__ = annotations
