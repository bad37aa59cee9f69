"""Helpers for the publisher tests: a running ``CloudPublisher`` on a real mosquitto, and ``RawDevice`` — a paho
client logged in as a device that sends real protocol messages up and decodes what comes down (for tests that do
not need the real agent)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_sync.protocol import Codec, Envelope, Message, Topics, decode_message, to_envelope
from cloud_sync.publisher import CloudConfig, CloudPublisher

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "models" / "ctr-onnx-int8"
TIMEOUT = 5.0


def cloud_config(broker: Any, tmp_path: Path, **overrides: Any) -> CloudConfig:
    """A config for the broker's cloud user with the database in ``tmp_path``."""
    creds = broker.write_credentials_file(tmp_path / "credentials.json")
    overrides.setdefault("db_path", tmp_path / "cloud.db")
    overrides.setdefault("client_id", f"cloud-{tmp_path.name[-20:]}")
    return CloudConfig.from_credentials(creds, **overrides)


def start_cloud(broker: Any, tmp_path: Path, **overrides: Any) -> CloudPublisher:
    """A started, connected, serving publisher (stop it yourself)."""
    return CloudPublisher(cloud_config(broker, tmp_path, **overrides)).start()


def copy_bundle(tmp_path: Path, name: str = "bundle", *, version: int | None = None, source: Path = BUNDLE) -> Path:
    """A private copy of an example bundle (optionally with another version), unsigned."""
    target = tmp_path / name
    shutil.copytree(source, target)
    (target / "signature.json").unlink(missing_ok=True)
    if version is not None:
        import dataclasses

        from edge_runtime.models import Manifest

        manifest = Manifest.load(target / "manifest.json")
        (target / "manifest.json").write_bytes(dataclasses.replace(manifest, version=version).to_json())
    return target


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RawDevice:
    """A device made of a RecordingClient: subscribes to its own topics, sends and receives protocol messages."""

    def __init__(self, mqtt_client: Callable[..., Any], broker: Any, device: str, *, subscribe: bool = True) -> None:
        self.device = device
        self.topics = Topics("edge")
        self.codec = Codec()
        self.client = mqtt_client(broker, device)
        if subscribe:
            for topic in self.topics.device_subscriptions(device):
                self.client.subscribe(topic)

    def send(self, message: Message, name: str | None = None, *, retain: bool = False) -> Envelope:
        """Publish ``message`` on this device's up topic (waits for PUBACK)."""
        env = to_envelope(message, device=self.device)
        self.client.publish(self.topics.up(self.device, message.TYPE, name), self.codec.encode(env), retain=retain)
        return env

    def receive(self, timeout: float = TIMEOUT) -> tuple[str, Envelope, Any] | None:
        """The next non-empty message: (topic, envelope, body), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.receive(max(deadline - time.monotonic(), 0.01))
            if msg is None:
                return None
            if msg.payload:
                env, body = decode_message(msg.payload)
                return msg.topic, env, body

    def drain(self, quiet: float = 0.4, first: float = TIMEOUT) -> list[tuple[str, Any, Any]]:
        """Everything that arrives until ``quiet`` seconds pass without a message; empty payloads included as
        (topic, None, None)."""
        out: list[Any] = []
        for msg in self.client.drain(quiet=quiet, first=first):
            if msg.payload:
                env, body = decode_message(msg.payload)
                out.append((msg.topic, env, body))
            else:
                out.append((msg.topic, None, None))
        return out
