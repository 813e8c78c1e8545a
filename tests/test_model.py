"""The value types: Cmd, Script, ScriptRunConfig, CmdOptions, ProcessId, ProcessInfo, ExitStatus."""

from __future__ import annotations

import dataclasses
import io
import os
import resource
import shlex
import signal
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import (
    SCRIPT_FILE_PATH_PLACEHOLDER,
    Cmd,
    CmdError,
    CmdOptions,
    CmdOptionsError,
    CorralError,
    ExitStatus,
    LoggingType,
    MessagingType,
    ProcessId,
    ProcessInfo,
    RestartMode,
    RestartPolicy,
    Runnable,
    Script,
    ScriptingLanguage,
    ScriptRunConfig,
)

# --- Cmd ---------------------------------------------------------------------------------------


def test_cmd_keeps_program_args_and_options() -> None:
    options = CmdOptions(envs={"A": "1"})
    cmd = Cmd("echo", ["a b", "$HOME", "|", ">"], options)
    assert cmd.cmd == "echo"
    assert cmd.args == ("a b", "$HOME", "|", ">")
    assert cmd.argv() == ["echo", "a b", "$HOME", "|", ">"]
    assert cmd.options is options


def test_cmd_defaults() -> None:
    cmd = Cmd("true")
    assert cmd.args == ()
    assert cmd.options == CmdOptions()
    # Each command has options of its own, mutable containers included, still validated.
    other = Cmd("true")
    assert other.options is not cmd.options
    cmd.options.envs["A"] = "1"
    cmd.options.envs_to_remove.append("B")
    cmd.options.rlimits[0] = (1, 1)
    cmd.options.nice = 5
    assert other.options == CmdOptions()
    with pytest.raises(CmdOptionsError):
        other.options.output_buffer_capacity = 0


def test_cmd_accepts_a_path_and_any_iterable_of_args() -> None:
    cmd = Cmd(Path("/bin/echo"), (a for a in ["x", "y"]))
    assert cmd.argv() == ["/bin/echo", "x", "y"]


def test_cmd_equality_and_str() -> None:
    assert Cmd("echo", ["a"]) == Cmd("echo", ["a"])
    assert Cmd("echo", ["a"]) != Cmd("echo", ["b"])
    assert Cmd("echo", ["a"]) != Cmd("echo", ["a"], CmdOptions(clear_envs=True))
    assert hash(Cmd("echo", ["a"])) == hash(Cmd("echo", ["a"]))
    assert str(Cmd("echo", ["a b", "c"])) == "echo 'a b' c"


@pytest.mark.parametrize(
    ("program", "args", "options"),
    [
        ("", [], None),
        ("a\0b", [], None),
        ("echo", "not a list", None),
        ("echo", ["ok", 3], None),
        ("echo", ["nul\0inside"], None),
        ("echo", [], {"clear_envs": True}),
        ("echo", 5, None),  # not iterable
        ("echo", b"ab", None),
        (5, [], None),
        (b"echo", [], None),
    ],
)
def test_cmd_rejects_bad_parts(program: str, args: Any, options: Any) -> None:
    with pytest.raises(CmdError):
        Cmd(program, args, options)


def test_options_passed_as_args_say_where_options_go() -> None:
    options = CmdOptions(clear_envs=True)
    for build in (
        lambda: Cmd("true", options),  # type: ignore[arg-type]
        lambda: Script(ScriptingLanguage.BASH, "true", options),  # type: ignore[arg-type]
    ):
        with pytest.raises(CmdError, match="options go in options="):
            build()


def os_text(value: object) -> bool:
    """The oracle: a str the OS can take has no NUL and an encoding by ``os.fsencode``."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


#: Characters the OS can take (hypothesis draws lone surrogates too, which it cannot).
os_char = st.characters(exclude_characters="\0").filter(os_text)

#: Lone surrogates that os.fsencode cannot encode (U+DC80..U+DCFF it can: undecodable bytes).
UNENCODABLE = ["\ud800", "a\udfff", "\udc7f"]


@pytest.mark.parametrize("text", UNENCODABLE, ids=ascii)
def test_text_the_os_cannot_take_is_refused_at_construction(text: str) -> None:
    for build in (
        lambda: Cmd(text),
        lambda: Cmd("echo", ["ok", text]),
        lambda: Cmd.parse(f"echo {text}"),
        lambda: ScriptRunConfig(text, ["@FILE_PATH"], "sh"),
        lambda: ScriptRunConfig("sh", ["@FILE_PATH", text], "sh"),
        lambda: ScriptRunConfig("sh", ["@FILE_PATH"], text),
        lambda: Script(ScriptingLanguage.BASH, "true", [text]),
        lambda: Script(ScriptingLanguage.BASH, f"echo {text}"),
    ):
        with pytest.raises(CmdError):
            build()
    for options in (
        {"envs": {"A": text}},
        {"envs": {text: "x"}},
        {"envs_to_remove": [text]},
        {"current_dir": text},
        {"current_dir": Path("/tmp", text)},
    ):
        with pytest.raises(CmdOptionsError):
            CmdOptions(**options)


def test_undecodable_bytes_from_the_os_are_taken() -> None:
    # surrogateescape: how Python reads bytes that are not UTF-8 from argv, environ, file names
    raw = os.fsdecode(b"caf\xe9")
    assert Cmd("echo", [raw]).args == (raw,)
    assert CmdOptions(envs={"A": raw}, current_dir=raw).envs == {"A": raw}


@settings(deadline=None, max_examples=300)
@given(
    text=st.lists(
        # the edges of what surrogateescape encodes, drawn often; any character besides
        st.sampled_from(["\udc7f", "\udc80", "\udcff", "\udd00", "\ud800", "\0"]) | st.characters(),
        max_size=6,
    ).map("".join)
)
def test_env_values_are_taken_exactly_when_the_os_can_take_them(text: str) -> None:
    if os_text(text):
        assert CmdOptions(envs={"A": text}).envs == {"A": text}
        assert Cmd("echo", [text]).args == (text,)
    else:
        with pytest.raises(CmdOptionsError):
            CmdOptions(envs={"A": text})
        with pytest.raises(CmdError):
            Cmd("echo", [text])


def test_cmd_is_a_runnable_that_bootstraps_to_itself(tmp_path: Path) -> None:
    cmd = Cmd("true")
    assert isinstance(cmd, Runnable)
    assert cmd.bootstrap_cmd(tmp_path) is cmd
    cmd.clean_after_fail(tmp_path)  # nothing to clean, nothing raised
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("ls", ["ls"]),
        ("ls -l '/a b'", ["ls", "-l", "/a b"]),
        ('echo "x y" z\\ w', ["echo", "x y", "z w"]),
        ("echo a|b > c $X `id` ;", ["echo", "a|b", ">", "c", "$X", "`id`", ";"]),
        ("  spaced   out  ", ["spaced", "out"]),
        ("echo ''", ["echo", ""]),
        ("echo # not a comment", ["echo", "#", "not", "a", "comment"]),
    ],
)
def test_cmd_parse_splits_like_shlex(line: str, argv: list[str]) -> None:
    assert Cmd.parse(line).argv() == argv
    assert Cmd.parse(line).argv() == shlex.split(line)


def test_cmd_parse_passes_options() -> None:
    options = CmdOptions(clear_envs=True)
    assert Cmd.parse("ls -l", options).options is options


@pytest.mark.parametrize(
    "line", ["", "   ", "\t\n", "'unterminated", '"unterminated', "trailing\\", "''' "]
)
def test_cmd_parse_rejects_empty_and_unparsable(line: str) -> None:
    with pytest.raises(CmdError) as caught:
        Cmd.parse(line)
    assert repr(line) in str(caught.value)


@pytest.mark.parametrize("line", [None, 123, b"ls -l", ["ls", "-l"]], ids=repr)
def test_cmd_parse_takes_only_a_str_and_never_reads_stdin(
    line: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shlex.split(None) reads sys.stdin: a command piped into the program would be built.
    monkeypatch.setattr(sys, "stdin", io.StringIO("rm -rf /important\n"))
    with pytest.raises(CmdError, match="str"):
        Cmd.parse(line)
    assert sys.stdin.read() == "rm -rf /important\n"


def test_cmd_parse_rejects_an_empty_program() -> None:
    with pytest.raises(CmdError):
        Cmd.parse("'' arg")


_arg = st.text(os_char)


@settings(deadline=None, max_examples=300)
@given(program=_arg.filter(bool), args=st.lists(_arg, max_size=8))
def test_cmd_parse_round_trips_shlex_join(program: str, args: list[str]) -> None:
    argv = [program, *args]
    assert Cmd.parse(shlex.join(argv)).argv() == argv


# --- ScriptRunConfig and ScriptingLanguage ----------------------------------------------------

EXPECTED_ARGV = {
    ScriptingLanguage.BASH: (["bash", "{f}"], "sh"),
    ScriptingLanguage.PYTHON: ([sys.executable, "-u", "{f}"], "py"),
    ScriptingLanguage.PHP: (["php", "-f", "{f}"], "php"),
    ScriptingLanguage.JAVASCRIPT: (["node", "{f}"], "js"),
    ScriptingLanguage.PERL: (["perl", "{f}"], "pl"),
    ScriptingLanguage.LUA: (["lua", "{f}"], "lua"),
    ScriptingLanguage.RUBY: (["ruby", "{f}"], "rb"),
    ScriptingLanguage.GROOVY: (["groovy", "{f}"], "groovy"),
}


def test_every_language_has_an_expected_run_config() -> None:
    assert set(EXPECTED_ARGV) == set(ScriptingLanguage)


@pytest.mark.parametrize("lang", list(ScriptingLanguage), ids=lambda lang: lang.name)
def test_language_run_config_argv_shape(lang: ScriptingLanguage, tmp_path: Path) -> None:
    template, extension = EXPECTED_ARGV[lang]
    config = lang.run_config
    assert config.file_extension == extension
    assert SCRIPT_FILE_PATH_PLACEHOLDER in config.args
    path = tmp_path / f"script.{extension}"
    assert config.argv(path) == [a.format(f=path) for a in template]


def test_script_run_config_replaces_the_placeholder() -> None:
    config = ScriptRunConfig("deno", ["run", "--allow-all", "@FILE_PATH", "--"], ".ts")
    assert config.file_extension == "ts"
    assert config.argv(Path("/p/script.ts")) == ["deno", "run", "--allow-all", "/p/script.ts", "--"]
    deno = Path("/opt/deno")
    assert ScriptRunConfig(deno, ["@FILE_PATH"], "ts").cmd == "/opt/deno"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cmd", "args", "extension"),
    [
        ("deno", ["run"], "ts"),  # no placeholder
        ("deno", [], "ts"),
        ("deno", ["@FILE_PATH_X"], "ts"),  # the placeholder is a whole arg, not a prefix
        ("", ["@FILE_PATH"], "ts"),
        ("deno", ["@FILE_PATH"], "a/b"),
        ("deno", ["@FILE_PATH"], "t\0s"),
        (5, ["@FILE_PATH"], "ts"),
        (None, ["@FILE_PATH"], "ts"),
        ("deno", "@FILE_PATH", "ts"),  # a str, not a list of args
        ("deno", ["@FILE_PATH", 3], "ts"),
        ("deno", 7, "ts"),
        ("deno", ["@FILE_PATH"], None),
        ("deno", ["@FILE_PATH"], 3),
    ],
)
def test_script_run_config_rejects_bad_configs(cmd: str, args: list[str], extension: str) -> None:
    with pytest.raises(CmdError):
        ScriptRunConfig(cmd, args, extension)


def test_script_run_config_is_frozen() -> None:
    config = ScriptRunConfig("bash", ["@FILE_PATH"], "sh")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cmd = "zsh"  # type: ignore[misc]


# --- Script ------------------------------------------------------------------------------------


def test_script_bootstrap_writes_a_private_file_and_builds_the_cmd(tmp_path: Path) -> None:
    options = CmdOptions(envs={"A": "1"})
    script = Script(ScriptingLanguage.BASH, "echo hi\n", ["x", "y z"], options)
    assert isinstance(script, Runnable)
    cmd = script.bootstrap_cmd(tmp_path)
    path = tmp_path / "script.sh"
    assert path.read_text() == "echo hi\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cmd.argv() == ["bash", str(path), "x", "y z"]
    assert cmd.options is options
    script.clean_after_fail(tmp_path)
    assert not path.exists()


def test_script_with_a_custom_run_config(tmp_path: Path) -> None:
    config = ScriptRunConfig("bash", ["-e", "@FILE_PATH", "first"], "bash")
    cmd = Script(config, "true", ["second"]).bootstrap_cmd(tmp_path)
    assert cmd.argv() == ["bash", "-e", str(tmp_path / "script.bash"), "first", "second"]


@pytest.mark.parametrize(
    ("lang", "args"),
    [
        ("bash", []),
        (ScriptingLanguage.BASH, "a str"),
        (None, []),
        (ScriptingLanguage.BASH, ["ok", 3]),
        (ScriptingLanguage.BASH, ["nul\0inside"]),
        (ScriptingLanguage.BASH, 5),
    ],
)
def test_script_rejects_bad_parts(lang: Any, args: Any) -> None:
    with pytest.raises(CmdError):
        Script(lang, "true", args)


@pytest.mark.parametrize("content", [None, b"echo hi", 3, ["echo hi"]], ids=repr)
def test_script_content_must_be_a_str(content: Any) -> None:
    with pytest.raises(CmdError, match="content"):
        Script(ScriptingLanguage.BASH, content)


def test_script_options_must_be_cmd_options() -> None:
    with pytest.raises(CmdError, match="options"):
        Script(ScriptingLanguage.BASH, "true", [], {"clear_envs": True})  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_umask")
def test_script_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0o277)
    Script(ScriptingLanguage.BASH, "true").bootstrap_cmd(tmp_path)
    assert stat.S_IMODE((tmp_path / "script.sh").stat().st_mode) == 0o600


# --- CmdOptions --------------------------------------------------------------------------------


def test_cmd_options_defaults() -> None:
    options = CmdOptions()
    assert options.current_dir is None
    assert options.clear_envs is False
    assert options.envs == {}
    assert options.envs_to_remove == []
    assert options.message_input is None
    assert options.message_output is None
    assert options.logging_type is None
    assert options.output_buffer_capacity == 16


def test_cmd_options_constructors() -> None:
    assert CmdOptions.with_standard_io_messaging() == CmdOptions(
        message_input=MessagingType.STANDARD_IO, message_output=MessagingType.STANDARD_IO
    )
    assert CmdOptions.with_named_pipe_messaging() == CmdOptions(
        message_input=MessagingType.NAMED_PIPE, message_output=MessagingType.NAMED_PIPE
    )
    assert CmdOptions.with_message_input(MessagingType.NAMED_PIPE) == CmdOptions(
        message_input=MessagingType.NAMED_PIPE
    )
    assert CmdOptions.with_message_output(MessagingType.STANDARD_IO) == CmdOptions(
        message_output=MessagingType.STANDARD_IO
    )
    for logging_type in LoggingType:
        assert CmdOptions.with_logging(logging_type).logging_type is logging_type


def test_cmd_options_normalizes_values() -> None:
    options = CmdOptions(current_dir="/tmp", envs_to_remove=("A", "B"))
    assert options.current_dir == Path("/tmp")
    assert options.envs_to_remove == ["A", "B"]
    source = {"A": "1"}
    options.envs = source
    source["B"] = "2"  # the options hold their own copy
    assert options.envs == {"A": "1"}


#: For each field: a good value and bad values (each must raise CmdOptionsError).
BAD_VALUES: dict[str, tuple[Any, list[Any]]] = {
    "current_dir": (Path("/tmp"), [3, b"/tmp", "", "a\0b", ["/tmp"]]),
    "clear_envs": (True, [1, 0, "yes", None]),
    "auto_release": (True, [1, 0, "yes", None]),
    "envs": (
        {"A": "1"},
        [
            [("A", "1")],
            "A=1",
            None,
            {1: "x"},
            {"": "x"},
            {"A=B": "x"},
            {"A\0": "x"},
            {"A": 1},
            {"A": None},
            {"A": "x\0y"},
        ],
    ),
    "envs_to_remove": (["A"], ["PATH", 5, None, [""], ["A=B"], [1], ["A\0"]]),
    "message_input": (
        MessagingType.NAMED_PIPE,
        ["standard_io", 1, LoggingType.STDOUT_ONLY, True],
    ),
    "message_output": (
        MessagingType.NAMED_PIPE,
        ["named_pipe", 1, LoggingType.STDERR_ONLY],
    ),
    "logging_type": (
        LoggingType.STDERR_ONLY,
        ["stdout_only", 2, MessagingType.STANDARD_IO],
    ),
    "output_buffer_capacity": (1, [0, -1, True, False, 1.5, "16", None, 2**62, 2**20 + 1]),
    "max_message_bytes": (1024, [0, -1, True, False, 1.5, "16", None]),
    "restart_policy": (RestartPolicy.on_failure(), ["always", None, 3, RestartMode.ALWAYS]),
    "rlimits": (
        {resource.RLIMIT_NOFILE: (64, 128)},
        [
            [],
            None,
            {"NOPE": 1},
            {9999: 1},
            {True: 1},
            {resource.RLIMIT_NOFILE: (10, 5)},
            {resource.RLIMIT_NOFILE: (resource.RLIM_INFINITY, 5)},
            {resource.RLIMIT_NOFILE: -5},
            {"nofile": "x"},
            {resource.RLIMIT_NOFILE: (1, 2, 3)},
            {resource.RLIMIT_NOFILE: 1.5},
        ],
    ),
    "umask": (0o022, [-1, 0o1000, "022", True, 1.0]),
    "nice": (5, [20, -21, "5", True, 1.5]),
}

_BAD_CASES = [(name, bad) for name, (_, bads) in BAD_VALUES.items() for bad in bads]


def test_every_field_has_bad_values() -> None:
    assert set(BAD_VALUES) == {f.name for f in dataclasses.fields(CmdOptions)}


@pytest.mark.parametrize(("name", "bad"), _BAD_CASES, ids=lambda v: repr(v)[:20])
def test_cmd_options_rejects_bad_values_at_construction(name: str, bad: Any) -> None:
    with pytest.raises(CmdOptionsError) as caught:
        CmdOptions(**{name: bad})
    assert name in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, CorralError)


@pytest.mark.parametrize(("name", "bad"), _BAD_CASES, ids=lambda v: repr(v)[:20])
def test_cmd_options_rejected_set_keeps_the_old_value(name: str, bad: Any) -> None:
    good = BAD_VALUES[name][0]
    options = CmdOptions(**{name: good})
    with pytest.raises(CmdOptionsError):
        setattr(options, name, bad)
    assert getattr(options, name) == good


def test_cmd_options_rejects_bad_values_in_replace() -> None:
    with pytest.raises(CmdOptionsError):
        CmdOptions().replace(output_buffer_capacity=0)
    assert CmdOptions().replace(output_buffer_capacity=3).output_buffer_capacity == 3


def test_cmd_options_output_buffer_capacity_is_bounded() -> None:
    # The ring is allocated at spawn: a huge capacity must fail here, before any child runs.
    assert CmdOptions(output_buffer_capacity=1_048_576).output_buffer_capacity == 1_048_576
    for huge in (1_048_577, 2**62):
        with pytest.raises(CmdOptionsError, match="1048576"):
            CmdOptions(output_buffer_capacity=huge)


def test_cmd_options_output_buffer_capacity_zero() -> None:
    with pytest.raises(CmdOptionsError, match="output_buffer_capacity"):
        CmdOptions(output_buffer_capacity=0)
    options = CmdOptions(output_buffer_capacity=4)
    with pytest.raises(CmdOptionsError, match="output_buffer_capacity"):
        options.output_buffer_capacity = 0
    assert options.output_buffer_capacity == 4


def test_cmd_options_unknown_field() -> None:
    options = CmdOptions()
    with pytest.raises(AttributeError):
        options.envz = {}  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        CmdOptions(envz={})  # type: ignore[call-arg]


STDOUT_LOGGING = [t for t in LoggingType if t.captures_stdout]


def test_logging_type_streams() -> None:
    assert STDOUT_LOGGING == [
        LoggingType.STDOUT_ONLY,
        LoggingType.STDOUT_AND_STDERR,
        LoggingType.STDOUT_AND_STDERR_MERGED,
    ]
    assert [t for t in LoggingType if t.captures_stderr] == [
        LoggingType.STDERR_ONLY,
        LoggingType.STDOUT_AND_STDERR,
        LoggingType.STDOUT_AND_STDERR_MERGED,
    ]


@pytest.mark.parametrize("logging_type", STDOUT_LOGGING, ids=lambda t: t.name)
def test_stdout_conflict_at_construction(logging_type: LoggingType) -> None:
    with pytest.raises(CmdOptionsError, match="stdout"):
        CmdOptions(message_output=MessagingType.STANDARD_IO, logging_type=logging_type)
    with pytest.raises(CmdOptionsError, match="stdout"):
        CmdOptions.with_standard_io_messaging().replace(logging_type=logging_type)


@pytest.mark.parametrize("logging_type", STDOUT_LOGGING, ids=lambda t: t.name)
def test_stdout_conflict_setting_logging_last(logging_type: LoggingType) -> None:
    options = CmdOptions.with_standard_io_messaging()
    with pytest.raises(CmdOptionsError, match="stdout"):
        options.logging_type = logging_type
    assert options.logging_type is None
    assert options.message_output is MessagingType.STANDARD_IO


@pytest.mark.parametrize("logging_type", STDOUT_LOGGING, ids=lambda t: t.name)
def test_stdout_conflict_setting_messaging_last(logging_type: LoggingType) -> None:
    options = CmdOptions.with_logging(logging_type)
    with pytest.raises(CmdOptionsError, match="stdout"):
        options.message_output = MessagingType.STANDARD_IO
    assert options.message_output is None
    assert options.logging_type is logging_type


def test_no_conflict_without_stdout_sharing() -> None:
    CmdOptions(message_output=MessagingType.STANDARD_IO, logging_type=LoggingType.STDERR_ONLY)
    CmdOptions(message_input=MessagingType.STANDARD_IO, logging_type=LoggingType.STDOUT_ONLY)
    for logging_type in LoggingType:
        CmdOptions(message_output=MessagingType.NAMED_PIPE, logging_type=logging_type)
    options = CmdOptions.with_standard_io_messaging()
    options.logging_type = LoggingType.STDERR_ONLY
    assert options.logging_type is LoggingType.STDERR_ONLY


_env_name = st.text(os_char.filter(lambda c: c != "="), min_size=1, max_size=8)
_env_value = st.text(os_char, max_size=8)

#: Per field: a strategy of valid values (and how they read back), one of invalid values.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "current_dir": st.none()
    | st.text(os_char, min_size=1, max_size=10)
    | st.builds(Path, st.sampled_from(["/", "/tmp", "rel/dir"])),
    "clear_envs": st.booleans(),
    "envs": st.dictionaries(_env_name, _env_value, max_size=4),
    "envs_to_remove": st.lists(_env_name, max_size=4) | st.tuples(_env_name),
    "message_input": st.none() | st.sampled_from(MessagingType),
    "message_output": st.none() | st.sampled_from(MessagingType),
    "logging_type": st.none() | st.sampled_from(LoggingType),
    "output_buffer_capacity": st.integers(min_value=1, max_value=2**20),
}
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "current_dir": st.sampled_from(["", "a\0b", 3, 1.5, b"/tmp", ["/"], *UNENCODABLE]),
    "clear_envs": st.sampled_from([0, 1, "", "true", None, 1.0]),
    "envs": st.sampled_from([None, "A=1", [("A", "1")]])
    | st.dictionaries(_env_name, st.integers(), min_size=1, max_size=2)
    | st.dictionaries(_env_name, st.sampled_from(UNENCODABLE), min_size=1, max_size=2)
    | st.dictionaries(
        st.sampled_from(["", "A=B", "X\0", *UNENCODABLE]), _env_value, min_size=1, max_size=2
    ),
    "envs_to_remove": st.sampled_from(
        ["NAME", None, 3, [""], ["A=B"], [None], *([t] for t in UNENCODABLE)]
    ),
    "message_input": st.sampled_from(["standard_io", 0, True, LoggingType.STDOUT_ONLY]),
    "message_output": st.sampled_from(["named_pipe", 0, LoggingType.STDERR_ONLY]),
    "logging_type": st.sampled_from(["stdout_only", 1, MessagingType.NAMED_PIPE]),
    "output_buffer_capacity": st.integers(max_value=0)
    | st.integers(min_value=2**20 + 1)
    | st.sampled_from([True, False, 2.0, "8", None]),
}


def _read_back(name: str, value: Any) -> Any:
    if name == "current_dir":
        return None if value is None else Path(value)
    if name == "envs_to_remove":
        return list(value)
    return value


def _conflicts(values: dict[str, Any]) -> bool:
    logging_type = values.get("logging_type")
    return (
        values.get("message_output") is MessagingType.STANDARD_IO
        and logging_type is not None
        and logging_type.captures_stdout
    )


@st.composite
def _option_values(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    values: dict[str, Any] = {}
    valid = True
    for name in VALID:
        choice = draw(st.sampled_from(["absent", "valid", "valid", "invalid"]))
        if choice == "valid":
            values[name] = draw(VALID[name])
        elif choice == "invalid":
            values[name] = draw(INVALID[name])
            valid = False
    return values, valid


@settings(deadline=None, max_examples=300)
@given(case=_option_values())
def test_cmd_options_property_construction(case: tuple[dict[str, Any], bool]) -> None:
    values, valid = case
    if valid and not _conflicts(values):
        options = CmdOptions(**values)
        for name, value in values.items():
            assert getattr(options, name) == _read_back(name, value)
    else:
        with pytest.raises(CmdOptionsError):
            CmdOptions(**values)


class _Invalid(Exception):
    pass


def _expected(name: str, value: Any) -> Any:
    """What ``name`` reads back after being set to ``value``; raise _Invalid if it is invalid."""

    def env_name(key: object) -> bool:
        return os_text(key) and bool(key) and "=" not in key

    ok: bool
    match name:
        case "current_dir":
            ok = value is None or (isinstance(value, Path) and os_text(str(value)))
            ok = ok or (os_text(value) and bool(value))
        case "clear_envs":
            ok = isinstance(value, bool)
        case "envs":
            ok = isinstance(value, dict) and all(
                env_name(k) and os_text(v) for k, v in value.items()
            )
        case "envs_to_remove":
            ok = isinstance(value, list | tuple) and all(env_name(k) for k in value)
        case "message_input" | "message_output":
            ok = value is None or isinstance(value, MessagingType)
        case "logging_type":
            ok = value is None or isinstance(value, LoggingType)
        case "output_buffer_capacity":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**20
        case _:
            raise AssertionError(name)
    if not ok:
        raise _Invalid
    return _read_back(name, value)


@settings(deadline=None, max_examples=300)
@given(case=_option_values())
def test_cmd_options_property_setters(case: tuple[dict[str, Any], bool]) -> None:
    options = CmdOptions()
    current = {f.name: getattr(options, f.name) for f in dataclasses.fields(CmdOptions)}
    values, _ = case
    for name, value in values.items():
        try:
            expected = _expected(name, value)
            accepted = not _conflicts({**current, name: expected})
        except _Invalid:
            accepted = False
        if accepted:
            setattr(options, name, value)
            current[name] = expected
        else:
            with pytest.raises(CmdOptionsError):
                setattr(options, name, value)
        # a rejected set changes nothing; an accepted one changes only its field
        assert {n: getattr(options, n) for n in current} == current


# --- ProcessId, ProcessInfo, ExitStatus --------------------------------------------------------


def test_process_id_is_a_uuid4_with_canonical_text() -> None:
    pid = ProcessId.new()
    assert isinstance(pid.uuid, uuid.UUID)
    assert pid.uuid.version == 4
    assert str(pid) == str(pid.uuid)
    assert str(pid) == str(uuid.UUID(str(pid)))  # canonical: lower case, hyphenated
    assert len(str(pid)) == 36
    assert str(pid) in repr(pid)


def test_process_id_parse_round_trip_and_hash() -> None:
    pid = ProcessId.new()
    again = ProcessId.parse(str(pid))
    assert again == pid
    assert hash(again) == hash(pid)
    assert {pid: 1}[again] == 1
    assert ProcessId.parse(str(pid).upper()) == pid
    assert ProcessId.new() != pid
    assert len({ProcessId.new() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("text", ["", "not-a-uuid", "1234"])
def test_process_id_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="UUID"):
        ProcessId.parse(text)


def test_process_id_is_frozen() -> None:
    pid = ProcessId.new()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pid.uuid = uuid.uuid4()  # type: ignore[misc]


def test_process_info_is_frozen() -> None:
    info = ProcessInfo(pid=42, exit_status=None, is_running=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pid = 43  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.is_running = False  # type: ignore[misc]
    assert info == ProcessInfo(pid=42, exit_status=None, is_running=True)
    assert hash(info) == hash(ProcessInfo(pid=42, exit_status=None, is_running=True))


@pytest.mark.parametrize(
    ("returncode", "expected", "text"),
    [
        (0, ExitStatus(code=0, signal=None, success=True), "exit code 0"),
        (3, ExitStatus(code=3, signal=None, success=False), "exit code 3"),
        (255, ExitStatus(code=255, signal=None, success=False), "exit code 255"),
        (-9, ExitStatus(code=None, signal=9, success=False), "killed by SIGKILL"),
        (-15, ExitStatus(code=None, signal=15, success=False), "killed by SIGTERM"),
    ],
)
def test_exit_status_from_returncode(returncode: int, expected: ExitStatus, text: str) -> None:
    status = ExitStatus.from_returncode(returncode)
    assert status == expected
    assert str(status) == text


def test_exit_status_unknown_signal_and_frozen() -> None:
    status = ExitStatus(code=None, signal=200, success=False)
    assert "200" in str(status)
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.code = 1  # type: ignore[misc]
    assert ExitStatus.from_returncode(-signal.SIGTERM).signal == signal.SIGTERM
