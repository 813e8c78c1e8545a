"""From a :class:`Runnable` to a running child: its dir, its fds, its environment, the exec.

``spawn_child`` either returns a started child with everything the parent keeps for it, or
raises :class:`SpawnProcessError` having removed every file and closed every fd it made.

The exec goes through ``subprocess.Popen`` with no ``preexec_fn``: CPython then uses
``vfork``/``posix_spawn``-like fast paths, which matter when a parent holds much memory.
``process_group=0`` puts each child in its own process group, so signals reach its descendants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import _guardian as guardian
from ._errors import SpawnProcessError
from ._logs import LOG_FILE_NAMES, open_child_logs
from ._model import (
    INPUT_PIPE_ENV_NAME,
    OUTPUT_PIPE_ENV_NAME,
    PROCESS_DATA_DIR_ENV_NAME,
    Cmd,
    CmdOptions,
    MessagingType,
    ProcessId,
    Runnable,
    ensure_mode,
)
from ._platform import (
    cloexec_pipe,
    inherited_env,
    limits_setter,
    make_fifo,
    open_fifo_parent_end,
    signal_group,
)

__all__ = [
    "DATA_DIR_NAME",
    "SPARES_DIR_PREFIX",
    "SPARES_MAX",
    "ProcessDirs",
    "SpawnedChild",
    "build_env",
    "discard_child",
    "make_private_dir",
    "remove_process_dir",
    "retry_unremoved",
    "spawn_child",
    "start_child",
]

#: Name of the child's own data dir inside its process dir.
DATA_DIR_NAME = "data"


#: FIFO names in the process dir (named-pipe messaging).
INPUT_FIFO_NAME = "input.pipe"
OUTPUT_FIFO_NAME = "output.pipe"

#: What corral itself puts in a process dir, besides the data dir: removable by name.
_KNOWN_FILES = (INPUT_FIFO_NAME, OUTPUT_FIFO_NAME, *LOG_FILE_NAMES)

#: Process dirs that could not be removed (say, with no fd left for rmtree and a file of a
#: custom Runnable in them): tried again at the next spawn and when the working dir is released.
_UNREMOVED: set[str] = set()


@dataclass(slots=True)
class SpawnedChild:
    """What the parent keeps of a started child."""

    popen: subprocess.Popen[bytes]
    cmd: Cmd
    process_dir: Path
    #: Captured streams: "stdout" / "stderr" -> log file (one file for both when merged).
    logs: dict[str, Path]
    #: The parent's ends of the message input / output (pipe or FIFO), or None.
    message_in: int | None
    message_out: int | None


@dataclass(slots=True)
class _Stdio:
    """The child's three standard fds, and what the parent must close once it is started."""

    stdin: int
    stdout: int
    stderr: int
    child_ends: list[int] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)
    #: The parent's ends of the message channels, and the child's env naming the FIFOs.
    message_in: int | None = None
    message_out: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def close_child_ends(self) -> None:
        for fd in self.child_ends:
            os.close(fd)
        self.child_ends.clear()

    def close_all(self) -> None:
        """After a failed spawn: the parent's ends too."""
        self.close_child_ends()
        for fd in (self.message_in, self.message_out):
            if fd is not None:
                os.close(fd)
        self.message_in = self.message_out = None


def _fifo(path: Path) -> Path:
    """The FIFO at ``path``: made on the first run, the same one on a restart."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            return path
    return make_fifo(path)


def _prepare_messaging(options: CmdOptions, process_dir: Path, stdio: _Stdio) -> None:
    if options.message_input is MessagingType.STANDARD_IO:
        child_end, stdio.message_in = cloexec_pipe()
        stdio.child_ends.append(child_end)
        stdio.stdin = child_end
    elif options.message_input is MessagingType.NAMED_PIPE:
        path = _fifo(process_dir / INPUT_FIFO_NAME)
        stdio.message_in = open_fifo_parent_end(path)
        stdio.env[INPUT_PIPE_ENV_NAME] = str(path)
    if options.message_output is MessagingType.STANDARD_IO:
        stdio.message_out, child_end = cloexec_pipe()
        stdio.child_ends.append(child_end)
        stdio.stdout = child_end
    elif options.message_output is MessagingType.NAMED_PIPE:
        path = _fifo(process_dir / OUTPUT_FIFO_NAME)
        stdio.message_out = open_fifo_parent_end(path)
        stdio.env[OUTPUT_PIPE_ENV_NAME] = str(path)


def _prepare_logs(options: CmdOptions, process_dir: Path, stdio: _Stdio) -> None:
    logs = open_child_logs(options.logging_type, process_dir)
    stdio.child_ends.extend(logs.fds)
    if logs.stdout is not None:
        stdio.stdout = logs.stdout
    if logs.stderr is not None:
        stdio.stderr = logs.stderr
    stdio.logs = logs.paths


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` with mode 0700 whatever the umask (mkdir's mode is filtered by it)."""
    os.mkdir(path, 0o700)
    ensure_mode(path, 0o700)


def _rmdir(path: str) -> bool:
    """Remove the empty dir ``path``; whether it is gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_process_dir(process_dir: str | os.PathLike[str]) -> bool:
    """Delete a process dir and everything in it; whether it is gone.

    What corral makes there is removed by name, with no fd: that still works when the process
    has no fd left (a spawn that failed for want of fds), where rmtree, which opens every dir it
    walks, fails. The empty case costs two rmdirs. Anything else goes to rmtree; a dir even that
    cannot remove is kept for :func:`retry_unremoved`, never forgotten.
    """
    path = os.fspath(process_dir)
    _rmdir(os.path.join(path, DATA_DIR_NAME))
    if _rmdir(path):
        return True
    for name in _KNOWN_FILES:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(path, name))
    if _rmdir(os.path.join(path, DATA_DIR_NAME)) and _rmdir(path):
        return True
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        _UNREMOVED.add(path)
        return False
    return True


#: Emptied process dirs a manager keeps for reuse, at most (each is two inodes).
SPARES_MAX = 128
#: Name prefix of the dir, in the working dir, that holds a manager's spare process dirs.
SPARES_DIR_PREFIX = ".corral-spares-"


class ProcessDirs:
    """The process dirs of one manager: made at spawn, gone at kill or release, recycled.

    On a disk, making and removing directories can be most of what a spawn costs: on ext4
    without a journal (as on some VMs), where every new inode is checked against those freed
    recently, a mkdir+rmdir pair took up to ~0.8 ms under churn (12 µs on a journaled ext4), a
    rename ~2 µs, against ~0.5 ms for a whole spawn+wait of ``/bin/true`` (bench/spawn.py,
    default working dir). So a process dir whose process is gone is emptied of its files and
    renamed into a spares dir of the manager's; the next spawn renames it back under its own id.
    The caller sees no difference: a process dir exists, with its data dir, both 0700, from the
    spawn on, and is gone once ``kill`` or ``release`` returns. A dir that holds more than files
    (anything in the data dir, a subdir, a changed mode) is removed instead, as are spares past
    :data:`SPARES_MAX` and every dir that goes after :meth:`close`.

    The spares dir lives in the working dir: removed with it when corral made it, else removed
    at :meth:`close` and, should the program die first, by the guardian.
    """

    __slots__ = ("_closed", "_guarded", "_made", "_spares", "spares_dir", "working_dir")

    def __init__(self, working_dir: Path, *, guard: bool) -> None:
        self.working_dir = working_dir
        self.spares_dir = os.path.join(working_dir, SPARES_DIR_PREFIX + os.urandom(8).hex())
        self._guarded = guard  # the guardian must remove the spares dir if the program dies
        self._made = False
        self._closed = False  # no spares any more: a dir that goes later is removed
        self._spares: list[str] = []

    def make(self, process_id: ProcessId) -> Path:
        """The dir of a new process, with its data dir; raises ``OSError``."""
        process_dir = self.working_dir / str(process_id)
        spares = self._spares
        while spares:
            spare = spares.pop()
            try:
                os.rename(spare, process_dir)
            except OSError:  # gone meanwhile: someone else's doing; try the next one
                remove_process_dir(spare)
                continue
            return process_dir
        try:
            make_private_dir(process_dir)
            # A str: a Path costs ~3 µs per join on the way to the exec (python -m timeit).
            make_private_dir(os.path.join(process_dir, DATA_DIR_NAME))
        except BaseException:
            remove_process_dir(process_dir)
            raise
        return process_dir

    def remove(self, process_dir: str | os.PathLike[str]) -> bool:
        """Make ``process_dir`` disappear, into the spares when it can; whether it is gone."""
        path = os.fspath(process_dir)
        if not self._closed and len(self._spares) < SPARES_MAX and self._empty(path):
            spare = os.path.join(self._spares_dir(), os.urandom(8).hex())
            try:
                os.rename(path, spare)
            except OSError:
                return remove_process_dir(path)
            self._spares.append(spare)
            return True
        return remove_process_dir(path)

    def _empty(self, path: str) -> bool:
        """Unlink the files of a process dir; whether it now holds only an empty data dir, both
        0700 (else it is left for :func:`remove_process_dir`)."""
        try:
            if stat.S_IMODE(os.lstat(path).st_mode) != 0o700:
                return False
            files: list[str] = []
            data = False
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name == DATA_DIR_NAME:
                        mode = entry.stat(follow_symlinks=False).st_mode
                        data = stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700
                        if not data:
                            return False
                    elif entry.is_dir(follow_symlinks=False):
                        return False
                    else:
                        files.append(entry.path)
            if not data:
                return False
            with os.scandir(os.path.join(path, DATA_DIR_NAME)) as entries:
                if next(entries, None) is not None:
                    return False
            for file in files:
                os.unlink(file)
        except OSError:
            return False
        return True

    def _spares_dir(self) -> str:
        if not self._made:
            make_private_dir(self.spares_dir)
            if self._guarded:
                guardian.register_dir(Path(self.spares_dir))
            self._made = True
        return self.spares_dir

    def close(self) -> None:
        """Remove the spares (at the manager's end); no dir becomes a spare after this."""
        self._closed = True
        self._spares.clear()
        if self._made:
            shutil.rmtree(self.spares_dir, ignore_errors=True)
            if self._guarded:
                guardian.unregister_dir(Path(self.spares_dir))
            self._made = False


def retry_unremoved(working_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Try again to remove the process dirs that could not be removed (those in ``working_dir``,
    or all); return the ones still there."""
    parent = None if working_dir is None else os.fspath(working_dir)
    left: list[str] = []
    for path in list(_UNREMOVED):  # a copy: another thread's manager may add meanwhile
        if parent is None or os.path.dirname(path) == parent:
            _UNREMOVED.discard(path)
            if not remove_process_dir(path):
                left.append(path)
    return left


def build_env(options: CmdOptions, extra: Mapping[str, str]) -> dict[bytes, bytes]:
    """The child's environment: inherited (unless ``clear_envs``), minus removals, plus ``envs``.

    corral's own variables (``extra``) come last so that they always hold. Built from the bytes
    of ``os.environb``: what ``exec`` takes anyway, without decoding and re-encoding every
    inherited variable on each spawn.
    """
    encode = os.fsencode
    env = {} if options.clear_envs else inherited_env()
    for name in options.envs_to_remove:
        env.pop(encode(name), None)
    for name, value in (*options.envs.items(), *extra.items()):
        env[encode(name)] = encode(value)
    return env


#: Where exec looks when the environment has no PATH.
_DEFAULT_PATH = os.fsencode(os.defpath)
#: exec checks permissions with the effective ids, access() with the real ones unless told.
_EFFECTIVE_IDS = os.access in os.supports_effective_ids
#: PATH value -> its entries, or None when one is relative (resolved against the child's cwd).
_PATH_ENTRIES: dict[bytes, tuple[bytes, ...] | None] = {}


def _find_program(program: str, env: Mapping[bytes, bytes]) -> bytes | None:
    """The file ``exec`` would run for a bare ``program`` name, found in the child's PATH.

    Given a bare name, ``Popen`` builds the list of every PATH entry in Python and the child
    tries them in turn, a failed ``execve`` per miss while the parent waits: about 70 µs per
    spawn with a PATH of 11 entries on a 2-core VM. One ``access`` per entry here finds the same
    file, and the child execs once. None where ``exec`` must search itself: a name with a
    slash, a relative PATH entry, or nothing found (the error is then exec's own).
    """
    if "/" in program or not program:
        return None
    path = env.get(b"PATH", _DEFAULT_PATH)
    entries = _PATH_ENTRIES.get(path, ())
    if entries == ():
        split = tuple(path.split(b":"))
        entries = split if all(entry.startswith(b"/") for entry in split) else None
        if len(_PATH_ENTRIES) >= 64:  # PATHs come in few values: a bound, not an eviction policy
            _PATH_ENTRIES.clear()
        _PATH_ENTRIES[path] = entries
    if entries is None:
        return None
    name = b"/" + os.fsencode(program)
    access, x_ok = os.access, os.X_OK
    for entry in entries:
        candidate = entry + name
        if access(candidate, x_ok, effective_ids=_EFFECTIVE_IDS):
            return candidate  # a dir would pass too: its exec fails, and exec searches again
    return None


def _describe(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename)!r}"
    return text


def spawn_child(
    process_id: ProcessId,
    runnable: Runnable,
    working_dir: Path,
    devnull: int,
    dirs: ProcessDirs | None = None,
) -> SpawnedChild:
    """Create the process dir (through ``dirs``, the manager's, when given), bootstrap
    ``runnable`` in it and start the child.

    ``devnull`` is an fd open on ``/dev/null`` (shared by all children of a manager).
    """
    if _UNREMOVED:
        retry_unremoved()
    if dirs is None:
        dirs = ProcessDirs(working_dir, guard=False)
    try:
        process_dir = dirs.make(process_id)
    except OSError as exc:
        raise SpawnProcessError(
            f"cannot create the process dir of process {process_id} in {str(working_dir)!r}: "
            f"{_describe(exc)}",
            process_id=process_id,
        ) from exc

    bootstrapped = False
    try:
        try:
            cmd = runnable.bootstrap_cmd(process_dir)
        except Exception as exc:
            reason = _describe(exc) if isinstance(exc, OSError) else repr(exc)
            raise SpawnProcessError(
                f"cannot prepare process {process_id}: {reason}", process_id=process_id
            ) from exc
        bootstrapped = True
        if not isinstance(cmd, Cmd):
            raise SpawnProcessError(
                f"cannot spawn process {process_id}: bootstrap_cmd returned {cmd!r}, not a Cmd",
                process_id=process_id,
            )
        child = start_child(process_id, cmd, process_dir, devnull)
    except BaseException:
        if bootstrapped:
            with contextlib.suppress(Exception):
                runnable.clean_after_fail(process_dir)
        remove_process_dir(process_dir)
        raise
    return child


def _spawn_error(process_id: ProcessId, cmd: Cmd, exc: Exception) -> SpawnProcessError:
    """What a failure of ``start_child`` is reported as, saying which part of ``cmd`` failed."""
    if isinstance(exc, subprocess.SubprocessError):  # raised by limits_setter in the child
        return SpawnProcessError(
            f"cannot apply the rlimits / nice of process {process_id} ({cmd}) in the child "
            f"(raising a hard limit or lowering niceness needs privileges)",
            process_id=process_id,
        )
    if not isinstance(exc, OSError):  # not expected of valid options: say what it was
        return SpawnProcessError(
            f"cannot spawn process {process_id} ({cmd}): {exc!r}", process_id=process_id
        )
    current_dir = cmd.options.current_dir
    # Popen names its cwd (the very Path passed) in an error from before the exec: the chdir.
    if current_dir is not None and exc.filename is current_dir:
        return SpawnProcessError(
            f"bad working directory (current_dir) {str(current_dir)!r} of process {process_id} "
            f"({cmd}): {exc.strerror or exc}",
            process_id=process_id,
        )
    return SpawnProcessError(
        f"cannot spawn process {process_id} ({cmd}): {_describe(exc)}", process_id=process_id
    )


def start_child(process_id: ProcessId, cmd: Cmd, process_dir: Path, devnull: int) -> SpawnedChild:
    """Start ``cmd`` in its existing process dir: a first run, or a restart.

    Log files are appended to and FIFOs reused, so a restart goes on where the last run ended.
    On any failure raises :class:`SpawnProcessError` having closed every fd it opened.
    """
    data_dir = os.path.join(process_dir, DATA_DIR_NAME)
    options = cmd.options
    # Every fd opened from here on is recorded in stdio as soon as it exists, for close_all.
    stdio = _Stdio(devnull, devnull, devnull)
    try:
        _prepare_messaging(options, process_dir, stdio)
        _prepare_logs(options, process_dir, stdio)
        env = build_env(options, {PROCESS_DATA_DIR_ENV_NAME: data_dir, **stdio.env})
        argv = cmd.argv()
        found = _find_program(argv[0], env)
        limits = limits_setter(options.rlimits, options.nice)

        def start(executable: bytes | None) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                executable=executable,
                stdin=stdio.stdin,
                stdout=stdio.stdout,
                stderr=stdio.stderr,
                cwd=options.current_dir,
                env=env,
                process_group=0,
                close_fds=True,
                umask=-1 if options.umask is None else options.umask,
                preexec_fn=limits,
            )

        try:
            popen = start(found)
        except OSError:
            if found is None:
                raise
            # The file found did not exec (a dir, a bad format, gone meanwhile): exec's own
            # search decides, and its error names the program as given.
            popen = start(None)
    except BaseException as exc:
        stdio.close_all()
        if isinstance(exc, Exception):
            raise _spawn_error(process_id, cmd, exc) from exc
        raise
    stdio.close_child_ends()  # the child has its copies
    return SpawnedChild(
        popen=popen,
        cmd=cmd,
        process_dir=process_dir,
        logs=stdio.logs,
        message_in=stdio.message_in,
        message_out=stdio.message_out,
    )


def discard_child(child: SpawnedChild) -> None:
    """Undo a spawn that succeeded but could not be recorded: SIGKILL the child's group, reap
    it, close the parent's fds and remove its process dir. Blocks only for the reap of a child
    that was SIGKILLed."""
    with contextlib.suppress(OSError):
        signal_group(child.popen.pid, signal.SIGKILL)  # not reaped yet: the group is still ours
    child.popen.wait()
    for fd in (child.message_in, child.message_out):
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    remove_process_dir(child.process_dir)
    guardian.unregister_process_dir(child.process_dir)
