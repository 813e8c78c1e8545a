"""The guardian below the manager (corral._guardian): what a parent registers dies with it.

Each test runs a "parent" Python program that imports corral, spawns a child with
``spawn_child`` (the child starts a job in its group), registers what the scenario says through
the guardian's module functions (or through a ManagedProcess), prints the pids, dirs and its
guardian as JSON, then dies: ``os._exit`` or a SIGKILL from the test. The test opens pidfds on
everything while it is known to run, and waits, with a bound, for the guardian to exit (it exits
after its clean-up) and for each process that must die. Nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, pid_alive, pidfds, wait_fd_readable

#: The parent: argv[1] the scenario, argv[2] the working dir, argv[3] how it ends ("exit": at
#: once with os._exit after its report; "wait": blocked until the test SIGKILLs it).
PARENT = textwrap.dedent(
    r"""
    import asyncio, functools, json, os, sys
    from pathlib import Path
    from corral import Backoff, Cmd, CmdOptions, MessagingType, ProcessId, RestartPolicy
    from corral import _guardian
    from corral._platform import ExitWatcher
    from corral._process import ManagedProcess
    from corral._spawn import spawn_child, start_child

    scenario, work, ending = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    SAYS = CmdOptions(message_output=MessagingType.STANDARD_IO)
    WITH_JOB = "sleep 300 >/dev/null & echo $!; wait"
    LEAVES_JOB = "sleep 300 >/dev/null & echo $!"

    def started(pid):
        text = open(f"/proc/{pid}/stat").read()
        return int(text[text.rindex(")") + 2 :].split()[19])

    def guardian():
        # The parent's one child in a session of its own (its other children share its session).
        me, found = os.getpid(), []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = open(f"/proc/{entry}/stat").read()
                    fields = text[text.rindex(")") + 2 :].split()
                    if int(fields[1]) == me and os.getsid(int(entry)) == int(entry):
                        found.append(int(entry))
                except (OSError, ValueError):
                    pass
        assert len(found) == 1, found
        return found[0]

    def spawn(script):
        child = spawn_child(ProcessId.new(), Cmd("sh", ["-c", script], SAYS), work, devnull)
        with open(child.message_out, "rb", closefd=False) as out:
            job = int(out.readline())
        return child, job

    report = {"alive": [], "kept": [], "dirs": [], "gone": []}

    def mind(pids, must_die):
        report["gone" if must_die else "alive"] += [[pid, started(pid)] for pid in pids]

    if scenario == "group and process dir":
        child, job = spawn(WITH_JOB)
        _guardian.register_group(child.popen.pid, child.process_dir)
        mind([child.popen.pid, job], True)
        report["dirs"].append(str(child.process_dir))
    elif scenario == "group only":
        child, job = spawn(WITH_JOB)
        _guardian.register_group(child.popen.pid)
        mind([child.popen.pid, job], True)
        report["kept"].append(str(child.process_dir))
    elif scenario == "reaped leader":
        child, job = spawn(LEAVES_JOB)
        entry = _guardian.register_group(child.popen.pid, child.process_dir)
        os.waitid(os.P_PID, child.popen.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        _guardian.leader_exited(entry, child.popen.pid)
        assert child.popen.wait() == 0
        mind([job], True)
        report["dirs"].append(str(child.process_dir))
    elif scenario == "unregistered":
        child, job = spawn(WITH_JOB)
        entry = _guardian.register_group(child.popen.pid, child.process_dir)
        _guardian.unregister_group(entry)
        _guardian.unregister_process_dir(child.process_dir)
        extra = work / "extra"
        extra.mkdir()
        _guardian.register_dir(extra)
        _guardian.unregister_dir(extra)
        mind([child.popen.pid, job], False)
        report["kept"] += [str(child.process_dir), str(extra)]
    elif scenario == "dirs by the socket":
        # A dir registered alone, and a process dir whose name is too long for a table entry.
        extra = work / "extra"
        (extra / "nested").mkdir(parents=True)
        _guardian.register_dir(extra)
        child, job = spawn(WITH_JOB)
        long_dir = work / ("long-" + "x" * 80)
        child.process_dir.rename(long_dir)
        _guardian.register_group(child.popen.pid, long_dir)
        mind([child.popen.pid, job], True)
        report["dirs"] += [str(extra), str(long_dir)]
    elif scenario.startswith("managed"):  # "managed", "managed, guard_dir", "... restarted"
        restarted = scenario.endswith("restarted")
        guard_dir = "guard_dir" in scenario

        async def main():
            loop = asyncio.get_running_loop()
            policy = RestartPolicy()
            script = WITH_JOB
            if restarted:  # a first run that exits leaving a job, then one that runs on
                policy = RestartPolicy.always(1, Backoff(initial=0.01, cap=0.01))
                script = ('if [ -e "$PROCESS_DATA_DIR/ran" ]; then ' + WITH_JOB + "; else "
                          + 'touch "$PROCESS_DATA_DIR/ran"; ' + LEAVES_JOB + "; exit 1; fi")
            process_id = ProcessId.new()
            cmd = Cmd("sh", ["-c", script], SAYS.replace(restart_policy=policy))
            child = spawn_child(process_id, cmd, work, devnull)
            respawn = functools.partial(start_child, process_id, cmd, child.process_dir, devnull)
            process = ManagedProcess(process_id, child, ExitWatcher(loop), respawn,
                                     loop.call_soon, lambda event: None, guard_dir=guard_dir)
            stream = process.broadcast.subscribe()
            lines = [(await anext(stream)).to_string() for _ in range(1 + restarted)]
            assert process.info().restarts == int(restarted)
            return process, int(lines[-1])

        process, job = asyncio.run(main())
        mind([process.pid, job], True)
        report["dirs" if guard_dir else "kept"].append(str(process.process_dir))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    report["guardian"] = [guardian(), started(guardian())]
    print(json.dumps(report), flush=True)
    if ending == "exit":
        os._exit(0)
    sys.stdin.read()  # until the test kills this process
    """
)


async def read_report(parent: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The parent's JSON report: its first line, within a bound."""
    assert parent.stdout is not None
    fd = parent.stdout.fileno()
    os.set_blocking(fd, False)
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while not data.endswith(b"\n"):
            await wait_fd_readable(fd)
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data) if data else {}


async def run_parent(scenario: str, work_dir: Path, ending: str, tmp_path: Path) -> dict[str, Any]:
    """Run the parent to its report, end it as ``ending`` says, wait for its guardian's exit.

    Returns the report once the guardian is gone (its clean-up done). Every process in "gone"
    is then waited for; those in "alive" must still run (the test ends them).
    """
    stderr = tmp_path / "parent.stderr"
    with stderr.open("wb") as err:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, scenario, str(work_dir), ending],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        report = await read_report(parent)
        assert report, f"the parent failed: {stderr.read_text()}"
        with pidfds([report["guardian"]]) as [guardian], pidfds(report["gone"]) as doomed:
            try:
                for fd in doomed:
                    assert not select.select([fd], [], [], 0)[0]  # alive while the parent lives
                if ending == "kill":
                    parent.kill()
                assert parent.wait(TIMEOUT) == (-signal.SIGKILL if ending == "kill" else 0)
                await wait_fd_readable(guardian)  # it exits once it has cleaned up
                for fd in doomed:
                    await wait_fd_readable(fd)
            finally:
                kill(doomed)  # if the guardian failed: nothing outlives the test
        return report
    finally:
        parent.kill()
        parent.wait(TIMEOUT)
        assert parent.stdout is not None
        parent.stdout.close()
        assert parent.stdin is not None
        parent.stdin.close()


def assert_dirs(report: dict[str, Any]) -> None:
    assert not [d for d in report["dirs"] if os.path.lexists(d)], "dirs left"
    assert all(os.path.isdir(d) for d in report["kept"]), "dirs removed"


def kill(fds: list[int]) -> None:
    """SIGKILL the processes of pidfds ``fds`` that still run."""
    for fd in fds:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)


def end(processes: list[list[int]]) -> None:
    """SIGKILL the processes a scenario left running, those still the ones reported."""
    fds = []
    try:
        for pid, started in processes:
            with contextlib.suppress(ProcessLookupError):
                fds.append(os.pidfd_open(pid))
                if not pid_alive(pid, started):  # gone, its pid reused: not ours to kill
                    os.close(fds.pop())
        kill(fds)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("ending", ["exit", "kill"])
async def test_a_registered_group_and_process_dir_go_when_the_parent_dies(
    work_dir: Path, tmp_path: Path, ending: str
) -> None:
    report = await run_parent("group and process dir", work_dir, ending, tmp_path)
    assert len(report["gone"]) == 2  # the child and the job in its group
    assert_dirs(report)
    assert os.listdir(work_dir) == []


async def test_a_group_registered_without_a_dir_leaves_the_dir(
    work_dir: Path, tmp_path: Path
) -> None:
    report = await run_parent("group only", work_dir, "exit", tmp_path)
    assert len(report["gone"]) == 2
    assert_dirs(report)


async def test_the_job_left_by_a_reaped_leader_dies_with_the_parent(
    work_dir: Path, tmp_path: Path
) -> None:
    """The group whose leader was reaped (told with leader_exited) is still SIGKILLed: no
    process has its id as pid, so the id is still that group's."""
    report = await run_parent("reaped leader", work_dir, "kill", tmp_path)
    assert len(report["gone"]) == 1
    assert_dirs(report)


async def test_what_was_unregistered_is_left_alone(work_dir: Path, tmp_path: Path) -> None:
    report = await run_parent("unregistered", work_dir, "exit", tmp_path)
    try:
        # The guardian has exited: whatever it was going to kill is dead or dying by now.
        assert all(pid_alive(pid, started) for pid, started in report["alive"])
        assert_dirs(report)
    finally:
        end(report["alive"])


async def test_dirs_told_through_the_socket_are_removed(work_dir: Path, tmp_path: Path) -> None:
    report = await run_parent("dirs by the socket", work_dir, "exit", tmp_path)
    assert len(report["dirs"]) == 2
    assert_dirs(report)
    assert os.listdir(work_dir) == []


@pytest.mark.parametrize(
    "scenario", ["managed", "managed, guard_dir", "managed, guard_dir, restarted"]
)
async def test_a_managed_process_is_in_the_guardians_care(
    work_dir: Path, tmp_path: Path, scenario: str
) -> None:
    """Its group always; its process dir with guard_dir, after a restart too (the dir goes with
    the first run's entry, which outlives that run's group)."""
    report = await run_parent(scenario, work_dir, "kill", tmp_path)
    assert len(report["gone"]) == 2
    assert_dirs(report)
    assert len(report["dirs" if "guard_dir" in scenario else "kept"]) == 1
