#!/usr/bin/env python3
"""Write ``src/corral/_generated.py``: every facade of :class:`ProcessManagerHandle`'s operations.

An operation is defined once, as an async method of ``ProcessManagerHandle`` (``_handle.py``)
decorated with ``@operation(<Request class>)``. From that definition this script writes:

* ``ProcessMethods``: the same methods bound to one process (for ``ProcessHandle``), for every
  operation whose first parameter is ``process_id``;
* ``SyncManagerMethods``: the blocking methods of ``SyncProcessManager``, each running the async
  one on the manager's loop; async iterators become blocking ones;
* ``SyncProcessMethods``: the blocking methods bound to one process (for ``SyncProcessHandle``).

Signatures, defaults and docstrings are copied from the definition (docstrings of the blocking
methods turned into blocking code: ``await handle.x(...)`` becomes ``pm.x(...)``). The output is
formatted with ``ruff format``.

Usage: ``python scripts/gen_facades.py`` writes the file; ``--check`` only compares, and exits 1
when the file is stale (CI runs it through the tests).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "corral" / "_handle.py"
REQUESTS = ROOT / "src" / "corral" / "_requests.py"
ERRORS = ROOT / "src" / "corral" / "_errors.py"
TARGET = ROOT / "src" / "corral" / "_generated.py"

#: Methods of the async handle that have no blocking or per-process twin, and why.
NOT_FORWARDED = {
    "clone": "a blocking manager owns its thread: share the object instead",
    "__copy__": "as clone",
}

#: Where each name used in a generated annotation or default lives.
HOMES = {
    "AsyncIterator": "collections.abc",
    "ExitedProcessInfo": "._model",
    "LogStream": "._requests",
    "LogsQuery": "._logs",
    "FETCH_ALL": "._requests",
    "Message": "._messages",
    "MessageStream": "._broadcast",
    "ItemStream": "._broadcast",
    "Path": "pathlib",
    "ProcessEvent": "._supervision",
    "ProcessHandle": "._handle",
    "ProcessId": "._model",
    "ProcessInfo": "._model",
    "ProcessManagerHandle": "._handle",
    "Runnable": "._model",
    "ScopedProcessHandle": "._handle",
    "BlockingIterator": "._sync",
    "BlockingItemStream": "._sync",
    "BlockingMessageStream": "._sync",
    "SyncProcessHandle": "._sync",
    "SyncProcessManager": "._sync",
    "SyncScopedProcessHandle": "._sync",
    "Any": "typing",
    "Callable": "collections.abc",
    "Coroutine": "collections.abc",
    "CorralError": "._errors",
}

#: Modules that import this one: their names are imported for type checking only (an import
#: cycle otherwise). Every other name is imported when the module runs, so that
#: ``typing.get_type_hints()`` resolves the generated methods' annotations.
IMPORTERS = {"._handle", "._sync"}

#: Async return types and their blocking twins (and the sync manager's method that makes one).
BLOCKING_TYPES = [
    (r"^ScopedProcessHandle$", "SyncScopedProcessHandle", "_bind_scoped"),
    (r"^ProcessHandle$", "SyncProcessHandle", "_bind"),
    (r"^MessageStream$", "BlockingMessageStream", "_message_stream"),
    (r"^ItemStream\[(.*)\]$", r"BlockingItemStream[\1]", "_item_stream"),
    (r"^AsyncIterator\[(.*)\]$", r"BlockingIterator[\1]", "_iterator"),
]

#: Async idioms in docstrings, and what they are in blocking code.
UNASYNC_DOC = [
    ("async with await handle.", "with pm."),
    ("async with handle", "with pm"),
    ("async for ", "for "),
    ("(await handle.", "(pm."),
    ("await handle.", "pm."),
    ("``async with``", "``with``"),
    ("an async iterator of", "an iterator of"),
    (":class:`ProcessManagerHandle`", ":class:`SyncProcessManager`"),
    (":class:`ScopedProcessHandle`", ":class:`SyncScopedProcessHandle`"),
    (":class:`ProcessHandle`", ":class:`SyncProcessHandle`"),
    ("ProcessManagerHandle.", "SyncProcessManager."),
]


@dataclass
class Operation:
    """One public method of the async handle, as written in its source."""

    name: str
    is_async: bool
    is_property: bool
    params: list[str]  # rendered parameters, without self: "process_id: ProcessId | str"
    arg_names: list[tuple[str, bool]]  # (name, keyword-only)
    returns: str
    doc: str
    error: str  # the error class of the operation's request

    @property
    def per_process(self) -> bool:
        return bool(self.arg_names) and self.arg_names[0][0] == "process_id"


def _render_args(node: ast.arguments) -> tuple[list[str], list[tuple[str, bool]]]:
    params: list[str] = []
    names: list[tuple[str, bool]] = []
    positional = node.posonlyargs + node.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(node.defaults))
    defaults += node.defaults
    for arg, default in zip(positional, defaults, strict=True):
        if arg.arg == "self":
            continue
        params.append(_param(arg, default))
        names.append((arg.arg, False))
    if node.kwonlyargs:
        params.append("*")
        for arg, default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
            params.append(_param(arg, default))
            names.append((arg.arg, True))
    return params, names


def _param(arg: ast.arg, default: ast.expr | None) -> str:
    text = arg.arg
    if arg.annotation is not None:
        text += f": {ast.unparse(arg.annotation)}"
    if default is not None:
        text += f" = {ast.unparse(default)}"
    return text


def read_operations() -> list[Operation]:
    """The public methods of ``ProcessManagerHandle``, in source order."""
    errors = _request_errors()
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    cls = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "ProcessManagerHandle"
    )
    operations: list[Operation] = []
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if node.name.startswith("_") or node.name in NOT_FORWARDED:
            continue
        is_property = any(
            isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
        )
        params, names = _render_args(node.args)
        request = _operation_of(node)
        if request is None and not is_property:
            raise SystemExit(f"ProcessManagerHandle.{node.name} has no @operation(...)")
        assert node.returns is not None, f"{node.name} has no return annotation"
        operations.append(
            Operation(
                name=node.name,
                is_async=isinstance(node, ast.AsyncFunctionDef),
                is_property=is_property,
                params=params,
                arg_names=names,
                returns=ast.unparse(node.returns),
                doc=ast.get_docstring(node, clean=True) or "",
                error=errors[request] if request is not None else "",
            )
        )
    return operations


def _operation_of(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The request class named by the method's ``@operation(...)``, if any."""
    for decorator in node.decorator_list:
        match decorator:
            case ast.Call(func=ast.Name(id="operation"), args=[ast.Name(id=request)]):
                return request
    return None


def _request_errors() -> dict[str, str]:
    """Each request class of ``_requests.py`` and the error class its ``error`` names.

    Read from the source, not imported: importing corral would import the file being written.
    """
    tree = ast.parse(REQUESTS.read_text(encoding="utf-8"))
    errors: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            match statement:
                case ast.Assign(targets=[ast.Name(id="error")], value=ast.Name(id=error)):
                    errors[node.name] = error
    return errors


def _blocking(returns: str) -> tuple[str, str | None]:
    """The blocking twin of an async return type, and the maker it needs (None: the value)."""
    for pattern, replacement, maker in BLOCKING_TYPES:
        if re.match(pattern, returns):
            return re.sub(pattern, replacement, returns), maker
    return returns, None


def _summary(doc: str) -> str:
    return doc.split("\n\n", 1)[0]


def _see(summary: str, target: str) -> str:
    """A summary and where the whole story is (unless the summary points somewhere already)."""
    if "see :meth:" in summary:
        return summary
    return f"{summary}\n\nSee :meth:`{target}`."


def _unasync(doc: str) -> str:
    for old, new in UNASYNC_DOC:
        doc = doc.replace(old, new)
    doc = re.sub(r"\bhandle\.", "pm.", doc)
    return re.sub(r"(?m)^(>>>|\.\.\.)(.*)\bawait ", r"\1\2", doc)


def _docstring(text: str) -> str:
    text = text.replace("\\", "\\\\")
    if "\n" not in text:
        return f'"""{text}"""'
    return f'"""{text}\n"""'


def _call_args(names: list[tuple[str, bool]], skip_first: bool = False) -> str:
    rendered = [f"{n}={n}" if kw else n for n, kw in names[1 if skip_first else 0 :]]
    return ", ".join(rendered)


def _method(
    name: str, params: list[str], returns: str, doc: str, body: str, *, is_async: bool = False
) -> str:
    signature = ", ".join(["self", *params])
    head = f"{'async ' if is_async else ''}def {name}({signature}) -> {returns}:"
    return f"{head}\n{textwrap.indent(_docstring(doc), '    ')}\n    {body}\n"


def process_methods(operations: list[Operation]) -> str:
    """``ProcessMethods``: the async handle's per-process operations, without the id."""
    out: list[str] = []
    for op in operations:
        if not op.per_process:
            continue
        doc = _see(_summary(op.doc), f"ProcessManagerHandle.{op.name}")
        call = f"self._manager.{op.name}(self.id, {_call_args(op.arg_names, True)})"
        call = call.replace(", )", ")")
        body = f"return await {call}" if op.is_async else f"return {call}"
        out.append(_method(op.name, op.params[1:], op.returns, doc, body, is_async=op.is_async))
    return _class(
        "ProcessMethods",
        "The methods of :class:`ProcessHandle`: each operation of a\n"
        ":class:`ProcessManagerHandle` that takes a process id, bound to ``self.id``.",
        ["_manager: ProcessManagerHandle", "id: ProcessId"],
        out,
    )


def sync_manager_methods(operations: list[Operation]) -> str:
    """``SyncManagerMethods``: every operation, blocking."""
    out: list[str] = []
    for op in operations:
        if op.is_property:
            body = f"return self._handle.{op.name}"
            out.append(f"@property\n{_method(op.name, [], op.returns, op.doc, body)}")
            continue
        returns, maker = _blocking(op.returns)
        args = _call_args(op.arg_names)
        make = f"lambda: self._handle.{op.name}({args})"
        what = f'"{op.name}()"'
        if maker in ("_message_stream", "_item_stream", "_iterator"):
            opener = "_open" if op.is_async else "_open_now"
            body = f"return self.{maker}(*self.{opener}({what}, {op.error}, {make}))"
        elif maker is not None:
            body = f"return self.{maker}(self._call({what}, {op.error}, {make}))"
        else:
            body = f"return self._call({what}, {op.error}, {make})"
        out.append(_method(op.name, op.params, returns, _unasync(op.doc), body))
    return _class(
        "SyncManagerMethods",
        "The methods of :class:`SyncProcessManager`: each operation of a\n"
        ":class:`ProcessManagerHandle`, blocking until the manager's loop has run it.",
        [
            "_handle: ProcessManagerHandle",
            "def _call(self, what: str, error: type[CorralError], "
            "make: Callable[[], Coroutine[Any, Any, R]]) -> R: ...",
            "def _open(self, what: str, error: type[CorralError], "
            "make: Callable[[], Coroutine[Any, Any, It]]) "
            "-> tuple[It, type[CorralError], str]: ...",
            "def _open_now(self, what: str, error: type[CorralError], "
            "make: Callable[[], It]) -> tuple[It, type[CorralError], str]: ...",
            "def _bind(self, handle: ProcessHandle) -> SyncProcessHandle: ...",
            "def _message_stream(self, stream: MessageStream, error: type[CorralError], "
            "what: str) -> BlockingMessageStream: ...",
            "def _item_stream(self, stream: ItemStream[T], error: type[CorralError], "
            "what: str) -> BlockingItemStream[T]: ...",
            "def _iterator(self, iterator: AsyncIterator[T], error: type[CorralError], "
            "what: str) -> BlockingIterator[T]: ...",
            "def _bind_scoped(self, handle: ScopedProcessHandle) -> SyncScopedProcessHandle: ...",
        ],
        out,
    )


def sync_process_methods(operations: list[Operation]) -> str:
    """``SyncProcessMethods``: the blocking per-process operations, without the id."""
    out: list[str] = []
    for op in operations:
        if not op.per_process:
            continue
        returns, _ = _blocking(op.returns)
        doc = _see(_summary(_unasync(op.doc)), f"SyncProcessManager.{op.name}")
        call = f"self._manager.{op.name}(self.id, {_call_args(op.arg_names, True)})"
        out.append(
            _method(op.name, op.params[1:], returns, doc, f"return {call}".replace(", )", ")"))
        )
    return _class(
        "SyncProcessMethods",
        "The methods of :class:`SyncProcessHandle`: each operation of a\n"
        ":class:`SyncProcessManager` that takes a process id, bound to ``self.id``.",
        ["_manager: SyncProcessManager", "id: ProcessId"],
        out,
    )


def _class(name: str, doc: str, declarations: list[str] | None, methods: list[str]) -> str:
    """A class named ``name`` (bases included), with what it expects of the class it is mixed
    into declared for the type checker."""
    head = f"class {name}:\n{textwrap.indent(_docstring(doc), '    ')}\n\n    __slots__ = ()\n\n"
    if declarations:
        declared = textwrap.indent("\n".join(declarations), "        ")
        head += f"    if TYPE_CHECKING:\n{declared}\n\n"
    return head + textwrap.indent("\n".join(methods), "    ")


def _imports(code: str) -> str:
    used = {name for name in HOMES if re.search(rf"\b{name}\b", code)}
    errors = sorted(set(re.findall(r"\b\w+Error\b", code)) & _error_names())
    runtime: dict[str, set[str]] = {"._errors": set(errors)}
    typing_only: dict[str, set[str]] = {}
    for name in used:
        target = typing_only if HOMES[name] in IMPORTERS else runtime
        target.setdefault(HOMES[name], set()).add(name)
    runtime.setdefault("typing", set()).add("TypeVar")

    def lines(modules: dict[str, set[str]], indent: str) -> list[str]:
        stdlib = sorted(m for m in modules if not m.startswith(".") and modules[m])
        local = sorted(m for m in modules if m.startswith(".") and modules[m])
        out = [f"{indent}from {m} import {', '.join(sorted(modules[m]))}" for m in stdlib]
        if stdlib and local:
            out.append("")
        out += [f"{indent}from {m} import {', '.join(sorted(modules[m]))}" for m in local]
        return out

    top = ["from typing import TYPE_CHECKING", "", *lines(runtime, "")]
    guarded = ["if TYPE_CHECKING:", *lines(typing_only, "    ")]
    variables = ['T = TypeVar("T")', 'R = TypeVar("R")', 'It = TypeVar("It")']
    return "\n".join([*top, "", *guarded, "", *variables])


def _error_names() -> set[str]:
    tree = ast.parse(ERRORS.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


HEADER = '''\
"""The per-process and blocking facades of every operation, generated from
:class:`~corral.ProcessManagerHandle` by ``scripts/gen_facades.py``: do not edit by hand.

Change an operation in ``_handle.py``, then run ``python scripts/gen_facades.py``; the tests fail
while this file is stale.
"""

from __future__ import annotations
'''


def generate() -> str:
    operations = read_operations()
    classes = [
        process_methods(operations),
        sync_manager_methods(operations),
        sync_process_methods(operations),
    ]
    body = "\n\n".join(classes)
    all_names = '__all__ = ["ProcessMethods", "SyncManagerMethods", "SyncProcessMethods"]'
    code = f"{HEADER}\n{_imports(body)}\n\n{all_names}\n\n\n{body}"
    return _format(code)


def _format(code: str) -> str:
    # The interpreter's own ruff, the project's .venv's (make test makes it), or any on PATH.
    places = [Path(sys.executable).parent, ROOT / ".venv" / "bin"]
    ruff = next(
        (found for place in places if (found := shutil.which("ruff", path=str(place)))), None
    ) or shutil.which("ruff")
    if ruff is None:
        raise SystemExit("ruff is needed to format the generated code: run make test first")
    fix = [ruff, "check", "--fix-only", "--quiet", "--stdin-filename", str(TARGET), "-"]
    code = subprocess.run(fix, input=code, capture_output=True, text=True, check=True).stdout
    fmt = [ruff, "format", "--quiet", "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(fmt, input=code, capture_output=True, text=True, check=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    code = generate()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if code != current:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_facades.py")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is up to date")
        return 0
    if code != current:
        TARGET.write_text(code, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
