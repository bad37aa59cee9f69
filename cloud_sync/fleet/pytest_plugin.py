"""The ``fleet`` pytest fixture (registered as the ``cloud_sync_fleet`` plugin through the ``pytest11`` entry point).

Use it in a test::

    def test_rollout_survives_a_partition(fleet):
        f = fleet(10)                               # 10 devices, a mosquitto, the cloud publisher
        f.cut(3)                                    # device #3 loses connectivity
        f.release(f.build_model(2))                 # a signed model v2 to the whole fleet
        f.wait_converged(30)                        # the 9 online devices run v2
        f.restore(3)
        f.wait_converged(30)                        # and now #3 too

``fleet(n, **options)`` takes :class:`~cloud_sync.fleet.Fleet`'s options; every fleet is closed (devices,
publisher, proxies, broker) at teardown. Without mosquitto the test is skipped with the install hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Factory: ``fleet(devices=3, **Fleet options)`` → a started :class:`~cloud_sync.fleet.Fleet`."""
    from cloud_sync import BrokerNotInstalledError
    from cloud_sync.broker import find_mosquitto
    from cloud_sync.fleet import Fleet

    try:
        find_mosquitto()
    except BrokerNotInstalledError as exc:
        pytest.skip(str(exc))
    started: list[Fleet] = []

    def make(devices: int = 3, **options: Any) -> Fleet:
        root: Path = options.pop("root", None) or tmp_path_factory.mktemp("fleet")
        f = Fleet(devices, root=root, **options)
        started.append(f)
        return f.start()

    yield make
    for f in reversed(started):
        f.close()
