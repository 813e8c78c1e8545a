"""corral: spawn and manage many child processes from one asyncio program."""
