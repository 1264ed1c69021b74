"""Whole JSON lines from a child process's non-blocking text stdout (the soak harnesses).

A non-blocking ``readline`` may return the start of a line the child has not finished writing;
parsing it then fails, or succeeds on a prefix and fails on the rest. ``JsonLines`` keeps such a
start until its newline arrives.
"""

from __future__ import annotations

import json
from typing import TextIO


class JsonLines:
    """The JSON objects of the complete lines of ``stream`` (set non-blocking) that start with
    ``prefix``; other complete lines (a library's output) are skipped."""

    def __init__(self, stream: TextIO, prefix: str = "") -> None:
        self.stream, self.prefix, self.partial = stream, prefix, ""

    def read(self) -> list[dict]:
        """The objects of every line completed since the last call, in order."""
        out = []
        while True:
            try:
                piece = self.stream.readline()
            except (BlockingIOError, TypeError):  # nothing to read yet
                break
            if not piece:
                break
            self.partial += piece
            if not self.partial.endswith("\n"):
                continue
            line, self.partial = self.partial, ""
            if line.strip() and line.startswith(self.prefix):
                out.append(json.loads(line))
        return out
