"""Every Python and shell example in README.md and docs/*.md runs as written, or says why it cannot.

A fenced ``python``, ``sh``, ``bash`` or ``console`` block runs in a fresh temporary directory that links the
repository's ``device_configs/`` and ``models/`` (the files the examples name), with ``HOME`` pointed there too
so profile paths such as ``~/.local/share`` stay inside it. A block that cannot run as written carries
``<!-- not-runnable: reason -->`` on the line before its fence; one marked ``<!-- continues: ... -->`` runs after
the previous Python block of the same page, in the same process (see docs/contributing-docs.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"python", "sh", "bash", "console"}
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*not-runnable:(.*?)-->\s*$")
CONTINUES = re.compile(r"^<!--\s*continues:.*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced example: where it is, its language, its code and the not-runnable reason (None = runs)."""

    file: str
    line: int
    lang: str
    code: str
    not_runnable: str | None
    #: the code of the earlier blocks this one continues (run first, in the same process)
    prelude: str = ""

    @property
    def id(self) -> str:
        """The pytest id, e.g. ``docs/serving.md:L6`` (the line of the opening fence)."""
        return f"{self.file}:L{self.line}"


def _blocks() -> list[Block]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        previous_python = ""  # prelude + code of the last python block on this page
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if m:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                marker = MARKER.match(lines[i - 1]) if i else None
                continues = bool(i) and CONTINUES.match(lines[i - 1]) is not None
                block = Block(
                    file=str(path.relative_to(ROOT)),
                    line=i + 1,
                    lang=m.group(1),
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    not_runnable=marker.group(1).strip() if marker else None,
                    prelude=previous_python if continues else "",
                )
                found.append(block)
                if block.lang == "python":
                    previous_python = block.prelude + block.code
                i = end
            i += 1
    return found


BLOCKS = [b for b in _blocks() if b.lang in RUN_LANGS]


def _env(tmp_path: Path) -> dict[str, str]:
    # wrappers so `edge-runtime` / `cloud-sync` in shell examples run this checkout, not the installed package
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, module in (("edge-runtime", "edge_runtime.cli"), ("cloud-sync", "cloud_sync.cli")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    env = dict(os.environ)
    env.pop("EDGE_DEVICE_ID", None)  # the examples must not depend on it
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin"])
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(tmp_path)
    return env


def test_there_are_examples_to_run() -> None:
    assert sum(b.not_runnable is None for b in BLOCKS) >= 5


def test_every_not_runnable_marker_gives_a_reason() -> None:
    for block in _blocks():
        if block.not_runnable is not None:
            assert block.not_runnable, f"{block.id}: not-runnable marker without a reason"
    # a marker with nothing after the colon must not slip through the regex as "runnable"
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # an indented line is a code sample of the marker (docs/contributing-docs.md), not a marker
            if line.startswith("<!--") and "not-runnable" in line:
                m = MARKER.match(line)
                assert m and m.group(1).strip(), f"{path.name}:L{n}: malformed not-runnable marker"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_example_runs(block: Block, tmp_path: Path) -> None:
    if block.not_runnable is not None:
        pytest.skip(f"not runnable: {block.not_runnable}")
    for name in ("device_configs", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.prelude + block.code]
    else:
        code = "\n".join(line.removeprefix("$ ") for line in block.code.splitlines())
        cmd = ["bash", "-e", "-c", code]
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"
