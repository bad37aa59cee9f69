"""Shared benchmark plumbing: a summary of ratios against raw baselines, printed after the benchmark tables.

A benchmark module appends human-readable lines to the session-wide ``bench_summary`` list (for example from a
module-scoped fixture's teardown, once both a figure and its raw twin are known); they are printed at the end of
the run, where captured output would otherwise hide them.
"""

from __future__ import annotations

import pytest

_SUMMARY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARY] = []


@pytest.fixture(scope="session")
def bench_summary(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the terminal summary."""
    return request.config.stash[_SUMMARY]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("ratios against raw baselines (same data, same run)")
        for line in lines:
            terminalreporter.write_line(line)
