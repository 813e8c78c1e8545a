"""Every docstring example (``>>>``) in corral's modules runs, and prints what it shows.

The examples are found by :class:`doctest.DocTestFinder` in every module of the package, the
private ones included, and checked by doctest's own :class:`~doctest.OutputChecker` (with the
option flags an example sets, ``# doctest: +SKIP`` included). Unlike plain doctest they may
use ``await``, ``async for`` and ``async with`` at the top level: each example is compiled with
``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`` and, when that makes a coroutine, run on the docstring's
event loop, one loop for all the examples of a docstring.

Each docstring gets doctest's namespace (its module's globals) and, as a reader of the
documentation would expect, every public name of ``corral``, ``asyncio`` and ``signal``; and
when its examples name them:

* ``handle``: a :class:`~corral.ProcessManagerHandle` running on the docstring's loop;
* ``pm``: a :class:`~corral.SyncProcessManager`;
* ``pid``: the id of a running process that logs ``ready`` on stdout and ``starting`` on
  stderr (both written when the example starts), then echoes every message it is sent (named
  pipes) until it is killed; in ``pm`` when the docstring names ``pm``, else in ``handle``;
* ``stream``: a :class:`~corral.MessageStream` of a process (in ``handle``) that wrote the
  messages ``{"id": 1}`` and ``{"id": 2}`` and exited: iterating it ends.

After each docstring the managers are aborted and closed, the loop is closed, and no process
started by the examples is left.

:data:`KNOWN_BROKEN` lists the examples that are wrong in modules being rewritten elsewhere, each
with its fix; they are expected to fail and are not run (most of them would block: an endless
stream, a wait for a process that runs on).
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import contextlib
import doctest
import importlib
import inspect
import io
import pkgutil
import re
import select
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import children_of_self, pidfd, stat_fields

import corral
from corral import (
    INPUT_PIPE_ENV_NAME,
    OUTPUT_PIPE_ENV_NAME,
    Cmd,
    CmdOptions,
    LoggingType,
    ManagerAbortedError,
    MessageStream,
    MessagingType,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    SyncProcessManager,
)
from corral import _guardian as guardian_module

#: Bound for a docstring's examples: generous, never reached when they work.
DOCSTRING_TIMEOUT = 60

pytestmark = pytest.mark.timeout(DOCSTRING_TIMEOUT)

#: Examples known to be wrong, by docstring, in modules this branch does not change; the value
#: is the fix. They are marked xfail and not run; remove an entry once its fix is in.
KNOWN_BROKEN: dict[str, str] = {}

#: The process ``pid`` names: see the module's docstring.
ECHO = Cmd(
    "sh",
    [
        "-c",
        f'echo ready; echo starting >&2; exec cat <"${INPUT_PIPE_ENV_NAME}" '
        f'>"${OUTPUT_PIPE_ENV_NAME}"',
    ],
    CmdOptions(
        logging_type=LoggingType.STDOUT_AND_STDERR,
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
    ),
)

#: The process ``stream`` comes from.
TWO_MESSAGES = Cmd("printf", ['{"id": 1}\\n{"id": 2}\\n'], CmdOptions.with_standard_io_messaging())

PUBLIC: dict[str, Any] = {name: getattr(corral, name) for name in corral.__all__}


# --- finding the examples -------------------------------------------------------------------


def package_modules() -> list[Any]:
    """``corral`` and every module in it, private ones included."""
    modules = [corral]
    for info in pkgutil.walk_packages(corral.__path__, prefix="corral."):
        modules.append(importlib.import_module(info.name))
    return modules


def docstring_tests() -> list[doctest.DocTest]:
    """Every docstring with examples, each once: a public class is found in ``corral`` (its
    ``__module__``), a private one in its own module."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: dict[str, doctest.DocTest] = {}
    for module in package_modules():
        for test in finder.find(module):
            if test.examples:
                assert test.name not in found, f"{test.name} found twice"
                found[test.name] = test
    return sorted(found.values(), key=lambda test: test.name)


DOCSTRING_TESTS = docstring_tests()


def where(test: doctest.DocTest) -> str:
    """``file:line`` of a docstring, found from its object (a public class's ``__module__`` is
    ``corral``, which is not where it is written)."""
    modules = [m for m in sys.modules if f"{test.name}.".startswith(f"{m}.")]
    if not modules:
        return f"{test.filename}:{test.lineno}"
    module_name = max(modules, key=len)
    obj: Any = sys.modules[module_name]
    for part in filter(None, test.name[len(module_name) :].split(".")):
        obj = inspect.getattr_static(obj, part, None)
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    code = getattr(obj, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    if isinstance(obj, type):  # the module that has it and a line "class <name>"
        pattern = re.compile(rf"^\s*class {re.escape(obj.__name__)}\b", re.MULTILINE)
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if vars(module).get(obj.__name__) is obj and file and file.endswith(".py"):
                match = pattern.search(Path(file).read_text(encoding="utf-8"))
                if match is not None:
                    line = Path(file).read_text(encoding="utf-8").count("\n", 0, match.start())
                    return f"{file}:{line + 1}"
    return f"{test.filename}:{test.lineno}"


# --- running them -----------------------------------------------------------------------------


def _future_flags(globs: dict[str, Any]) -> int:
    flags = 0
    for name in __future__.all_feature_names:
        feature = globs.get(name)
        if feature is getattr(__future__, name):
            flags |= feature.compiler_flag
    return flags


def _option_flags(example: doctest.Example) -> int:
    flags = 0
    for flag, on in example.options.items():
        flags = flags | flag if on else flags & ~flag
    return flags


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    saved_hook = sys.displayhook
    sys.displayhook = sys.__displayhook__  # an expression's value is printed, as in doctest
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        sys.displayhook = saved_hook


def run_examples(
    test: doctest.DocTest, globs: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> list[str]:
    """Run the examples of ``test`` in ``globs``, awaiting those that await on ``loop``; return
    a report of each one that failed."""
    checker = doctest.OutputChecker()
    compile_flags = _future_flags(globs) | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    failures: list[str] = []
    for number, example in enumerate(test.examples, 1):
        flags = _option_flags(example)
        if flags & doctest.SKIP:
            continue
        filename = f"<docstring {test.name}, example {number}>"
        exception: BaseException | None = None
        with _captured() as out:
            try:
                code = compile(example.source, filename, "single", compile_flags, dont_inherit=True)
                if code.co_flags & inspect.CO_COROUTINE:
                    loop.run_until_complete(eval(code, globs))
                else:
                    exec(code, globs)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                exception = exc
        got = out.getvalue()
        if exception is None:
            if example.exc_msg is None and checker.check_output(example.want, got, flags):
                continue
            if example.exc_msg is not None:
                got += "(no exception raised)\n"
        else:
            exc_msg = traceback.format_exception_only(type(exception), exception)[-1]
            if example.exc_msg is not None:
                if checker.check_output(example.exc_msg, exc_msg, flags):
                    continue
                if flags & doctest.IGNORE_EXCEPTION_DETAIL and checker.check_output(
                    _without_detail(example.exc_msg), _without_detail(exc_msg), flags
                ):
                    continue
            got += "".join(traceback.format_exception(exception))
        failures.append(
            f"example {number} (line {example.lineno + 1} of the docstring):\n"
            f"{_indent(example.source)}" + checker.output_difference(example, got, flags)
        )
    return failures


def _without_detail(exc_msg: str) -> str:
    # As doctest's IGNORE_EXCEPTION_DETAIL: the class's name without its module, no message.
    name = exc_msg.split(":", 1)[0].strip()
    return name.rsplit(".", 1)[-1]


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())


# --- the namespace ----------------------------------------------------------------------------


def _names_used(test: doctest.DocTest) -> set[str]:
    source = "\n".join(example.source for example in test.examples)
    return {name for name in ("handle", "pm", "pid", "stream") if re.search(rf"\b{name}\b", source)}


async def _start_handle(working_dir: Path) -> ProcessManagerHandle:
    return ProcessManager.spawn(working_dir)


async def _spawn_echo(handle: ProcessManagerHandle) -> ProcessId:
    pid = await handle.spawn(ECHO)
    async with asyncio.timeout(DOCSTRING_TIMEOUT / 2):  # both lines are written
        for stream in ("stdout", "stderr"):
            async for _ in handle.follow_logs(pid, stream):  # type: ignore[arg-type]
                break
    return pid


async def _finished_stream(handle: ProcessManagerHandle) -> MessageStream:
    writer = await handle.spawn(TWO_MESSAGES)
    stream = await handle.subscribe_message_stream(writer)  # the first: it gets every message
    await handle.wait(writer)
    return stream


def _guardian_pid() -> int | None:
    process = guardian_module._GUARDIAN._process
    return None if process is None else process.pid


def _leftovers(before: set[int]) -> list[str]:
    """The processes started since ``before`` that are still there (the guardian apart)."""
    spare = before | {_guardian_pid()}
    left = []
    for child in children_of_self() - spare:
        with pidfd(child) as fd:
            if fd is not None:
                select.select([fd], [], [], DOCSTRING_TIMEOUT / 4)
        fields = stat_fields(child)
        if fields is not None and child != _guardian_pid():
            left.append(f"{child} ({'zombie' if fields[0] == 'Z' else 'running'})")
    return left


@pytest.mark.parametrize(
    "test",
    [
        pytest.param(
            test,
            id=test.name,
            marks=[pytest.mark.xfail(run=False, reason=KNOWN_BROKEN[test.name])]
            if test.name in KNOWN_BROKEN
            else [],
        )
        for test in DOCSTRING_TESTS
    ],
)
def test_docstring_examples(test: doctest.DocTest, tmp_path: Path) -> None:
    before = children_of_self()
    used = _names_used(test)
    globs: dict[str, Any] = {**test.globs, **PUBLIC, "asyncio": asyncio, "signal": signal}
    loop = asyncio.new_event_loop()
    handle: ProcessManagerHandle | None = None
    pm: SyncProcessManager | None = None
    try:
        if used & {"handle", "stream"} or ("pid" in used and "pm" not in used):
            (tmp_path / "handle").mkdir()
            handle = loop.run_until_complete(_start_handle(tmp_path / "handle"))
            globs["handle"] = handle
        if "pm" in used:
            (tmp_path / "pm").mkdir()
            pm = SyncProcessManager(tmp_path / "pm")
            globs["pm"] = pm
        if "pid" in used:
            if pm is not None:
                globs["pid"] = _sync_echo(pm)
            else:
                assert handle is not None
                globs["pid"] = loop.run_until_complete(_spawn_echo(handle))
        if "stream" in used:
            assert handle is not None
            globs["stream"] = loop.run_until_complete(_finished_stream(handle))
        failures = run_examples(test, globs, loop)
    finally:
        _clean_up(loop, handle, pm)
    assert not failures, f"{where(test)}: {test.name}\n\n" + "\n".join(failures)
    assert not _leftovers(before), f"processes left by {test.name}: {_leftovers(before)}"


def _sync_echo(pm: SyncProcessManager) -> ProcessId:
    future = asyncio.run_coroutine_threadsafe(_spawn_echo(pm.handle), pm.loop)
    return future.result(DOCSTRING_TIMEOUT / 2)


def _clean_up(
    loop: asyncio.AbstractEventLoop,
    handle: ProcessManagerHandle | None,
    pm: SyncProcessManager | None,
) -> None:
    try:
        if handle is not None:
            with contextlib.suppress(ManagerAbortedError):  # an example aborted it already
                loop.run_until_complete(handle.abort())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        if pm is not None:
            pm.close()


# --- the list itself --------------------------------------------------------------------------


def test_examples_are_found_in_private_modules_and_public_classes() -> None:
    names = {test.name for test in DOCSTRING_TESTS}
    assert "corral" in names  # the package's own docstring
    assert "corral.LogsQuery.tail" in names  # a method of a public class, defined in _logs
    assert "corral._logs.split_lines" in names  # a private module's function
    assert "corral._pipes.LineFramer" in names  # a private class
    assert len(DOCSTRING_TESTS) > 50


def test_known_broken_names_are_docstrings_with_examples() -> None:
    names = {test.name for test in DOCSTRING_TESTS}
    assert set(KNOWN_BROKEN) <= names, set(KNOWN_BROKEN) - names
