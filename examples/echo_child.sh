#!/usr/bin/env bash
# A corral child that echoes every message back to its parent, byte for byte.
#
# With named-pipe messaging corral sets INPUT_PIPE and OUTPUT_PIPE; with standard-I/O messaging
# the messages come on stdin and go to stdout. One message is one line, so `read` takes one.
set -u
export LC_ALL=C # bytes, not characters: any message comes back unchanged (NUL bytes aside)
if [[ -n ${INPUT_PIPE:-} ]]; then exec <"$INPUT_PIPE"; fi
if [[ -n ${OUTPUT_PIPE:-} ]]; then exec >"$OUTPUT_PIPE"; fi
while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$line"
done
