"""Public names that say they are ``corral.X``, as trio's ``fixup_module_metadata`` does.

Tracebacks, ``repr`` and pickles name a class by its ``__module__`` and ``__qualname__``: without
this, ``corral.SerdeError`` would show as ``corral._errors.SerdeError``, and a pickle would
name the private module a refactoring may move it out of.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["fixup_module_metadata"]


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
    annotations``) in the module its ``__module__`` names: those the defining module can
    resolve are resolved there first, so that they still resolve afterwards.
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
        _resolve_annotations(obj, sys.modules[module].__dict__)
        obj.__module__ = package
        for name, member in vars(obj).items():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            fix(member, f"{path}.{name}")

    for name in public_names:
        fix(namespace[name], name)


def _resolve_annotations(cls: type, module_globals: dict[str, Any]) -> None:
    annotations = inspect.get_annotations(cls)
    if not any(isinstance(value, str) for value in annotations.values()):
        return
    # As get_type_hints does: the module's names first, then the class's.
    names = {**vars(cls), **module_globals}
    for name, value in annotations.items():
        if isinstance(value, str):
            with contextlib.suppress(Exception):  # a name only imported for type checking
                annotations[name] = eval(value, module_globals, names)
    cls.__annotations__ = annotations
