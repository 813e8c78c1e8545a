"""A corral child that echoes every message back to its parent, byte for byte.

It works the same with named-pipe messaging (``INPUT_PIPE`` / ``OUTPUT_PIPE``) and with
standard-I/O messaging: ``corral.child`` picks the channel from the environment. Lines are
``str``; bytes that are not UTF-8 travel as surrogate escapes and are written back unchanged.

Spawn it with, for instance::

    Cmd(sys.executable, ["examples/echo_child.py"], CmdOptions.with_named_pipe_messaging())
"""

from corral import child

for line in child.messages():
    child.send(line)
