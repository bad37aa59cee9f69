"""The version locks agree with setup.cfg: every requirement the suite installs is pinned, within its range.

`make demo` and `make test` install with `requirements/lock-pyX.Y.txt` as pip constraints, so a fresh machine gets
the versions the suite last passed with; library users installing with pip still get setup.cfg's ranges. A lock
that drifted from the ranges (a range raised, a dependency added, a pin outside its range) would make one of the
two installs wrong, so this test fails until `make lock` is run.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = sorted((ROOT / "requirements").glob("lock-*.txt"))


def _setup_requirements(*extras: str) -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]


def _pins(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{lock.name}: {raw!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _lock_python(lock: Path) -> str:
    return lock.stem.rsplit("-py", 1)[1]


def test_a_lock_exists_for_the_python_that_runs_ci() -> None:
    names = {lock.name for lock in LOCKS}
    assert "lock-py3.11.txt" in names and "lock-tflite-py3.11.txt" in names


@pytest.mark.parametrize("lock", LOCKS, ids=[lock.name for lock in LOCKS])
def test_every_requirement_is_pinned_within_its_range(lock: Path) -> None:
    extras = ("tflite",) if "tflite" in lock.name else ("dev",)
    version = _lock_python(lock)
    env = {**default_environment(), "python_version": version, "python_full_version": f"{version}.0"}
    pins = _pins(lock)
    for req in _setup_requirements(*extras):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock.name} does not pin {req.name} (setup.cfg asks for {req}): run 'make lock'"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {req.name}=={pins[name]}, outside setup.cfg's range {req.specifier}: run 'make lock'"
        )


def test_the_running_suite_uses_the_locked_versions_when_installed_from_the_lock() -> None:
    """When this venv was installed from the lock (the stamp says so), what is installed is what is pinned."""
    from importlib.metadata import version as installed

    stamp = Path(sys.prefix) / ".installed-dev-lock"
    lock = ROOT / "requirements" / f"lock-py{sys.version_info[0]}.{sys.version_info[1]}.txt"
    if not stamp.exists() or not lock.exists():
        pytest.skip("this environment was not installed by 'make test' from a lock")
    pins = _pins(lock)
    for req in _setup_requirements("dev"):
        name = canonicalize_name(req.name)
        if name in pins and (req.marker is None or req.marker.evaluate()):
            assert installed(req.name) == pins[name], f"{req.name}: installed {installed(req.name)}, lock {pins[name]}"
