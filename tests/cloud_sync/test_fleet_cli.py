"""``cloud-sync simulate`` end to end, and the ``fleet`` fixture loaded as a plugin by a fresh pytest."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cloud_sync.cli import main

pytestmark = [pytest.mark.timeout(180), pytest.mark.mosquitto]


def test_simulate_rollout_prints_progress_and_the_convergence_table(
    mosquitto_binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--devices", "6", "--scenario", "rollout", "--rows", "600"]) == 0
    out = capsys.readouterr().out
    assert "6 devices up in" in out and "6/6 converged (100%)" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["converged", "devices", "seconds"])
    table = {line.split()[0]: line.split()[1:] for line in lines[header + 2 : header + 5]}
    assert set(table) == {"50%", "99%", "all"}
    assert table["all"][0] == "6" and float(table["all"][1]) >= float(table["50%"][1])
    assert "every device holds exactly the cloud's rows" in out


def test_simulate_canary_reports_the_halt(mosquitto_binary: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "10", "--scenario", "canary", "--no-row-check"]) == 0
    out = capsys.readouterr().out
    assert "state=halted" in out and "rows:" not in out


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed here")
def test_plot_without_matplotlib_names_the_extra_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "2", "--plot", "out.png"]) == 1
    err = capsys.readouterr()
    assert "pip install 'edge-runtime[plot]'" in err.err and "starting" not in err.out


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the plot extra")
def test_plot_writes_a_png(mosquitto_binary: str, tmp_path: Path) -> None:
    png = tmp_path / "c.png"
    assert main(["simulate", "--devices", "3", "--rows", "30", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "0"]) == 1
    assert "--devices must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--scenario", "meteor"])


def test_the_fleet_fixture_works_from_the_installed_plugin(mosquitto_binary: str, tmp_path: Path) -> None:
    test = tmp_path / "test_user_fleet.py"
    test.write_text(
        textwrap.dedent(
            """
            def test_two_devices_get_a_model(fleet):
                f = fleet(2)
                f.cut(1)
                f.release(f.build_model(2))
                f.wait_converged(30)
                assert f.device(0).probe()["models"] == {"sim": 2}
                f.restore(1)
                f.wait_converged(30)
                assert f.device(1).probe()["models"] == {"sim": 2}
            """
        )
    )
    # A fresh pytest in another directory: the fixture must come from the pytest11 entry point alone.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for leftover processes in /proc")
def test_sigterm_stops_the_fleet_and_its_broker(mosquitto_binary: str, tmp_path: Path) -> None:
    import os
    import signal

    from cloud_sync.fleet import wait_until

    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the fleet's temporary root, so we can look for leftovers
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_sync.cli", "simulate", "--devices", "3", "--scenario", "partitions"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "devices up in" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def leftovers() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(tmp_path) in cmd:
                found.append(cmd.replace("\0", " "))
        return found

    wait_until(lambda: not leftovers(), 10, describe=lambda: "\n".join(leftovers()))
    assert proc.returncode == 130
    assert not any(tmp_path.glob("fleet-*")), "the temporary fleet directory was not removed"
