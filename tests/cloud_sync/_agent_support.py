"""Helpers for the agent and end-to-end tests: a device (feature store, model store, agent) on a real mosquitto,
signed model bundles, and ``RawCloud`` — a paho client logged in as the broker's cloud user that publishes real
protocol messages and answers chunk requests (optionally corrupting some), for tests that drive the agent
message by message."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from cloud_sync.agent import Credentials, DeviceAgent
from cloud_sync.protocol import (
    Codec,
    FeatureBatch,
    MessageType,
    ModelChunk,
    ModelChunkRequest,
    ModelManifestMessage,
    Topics,
    decode_message,
    encode_feature_batches,
    to_envelope,
)
from edge_runtime import Entity, FeatureStore, FeatureView, Field, ModelStore, SyncSettings

VIEW = "user_stats"
N_IN = 4


def define_store(path: Path) -> FeatureStore:
    """A feature store with the view ``user_stats`` (user_id → score float64, clicks int64)."""
    store = FeatureStore(path)
    user = Entity(name="user", join_keys=["user_id"])
    store.apply(
        [
            user,
            FeatureView(
                name=VIEW,
                entities=[user],
                schema=[Field(name="score", dtype="float64"), Field(name="clicks", dtype="int64")],
            ),
        ]
    )
    return store


def rows_batch(
    ids: list[int],
    *,
    score: float = 1.0,
    kind: str = "delta",
    ts: float = 1_700_000_000.0,
    tombstones: list[int] | None = None,
) -> FeatureBatch:
    """A batch of ``user_stats`` rows (score = ``score`` + id, clicks = id)."""
    cols = {
        "user_id": np.array(ids, dtype=np.int64),
        "score": np.array([score + i for i in ids], dtype=np.float64),
        "clicks": np.array(ids, dtype=np.int64),
        "event_timestamp": np.array([ts] * len(ids), dtype=np.float64),
    }
    tomb = {"user_id": np.array(tombstones, dtype=np.int64)} if tombstones else None
    return FeatureBatch.from_columns(VIEW, cols, kind=kind, dtypes={"event_timestamp": "timestamp"}, tombstones=tomb)


def write_mlp(path: Path, seed: int, hidden: int = 8) -> Path:
    """An ONNX perceptron x[batch, 4] → y[batch, 1]; ``hidden`` sets its size (about 24 bytes per unit)."""
    from tests.edge_runtime.models._model_factory import save_perceptron

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((N_IN, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(1, dtype=np.float32)
    return save_perceptron(path, w1, b1, w2, b2)


def make_bundle(
    root: Path, version: int, key: Any, *, name: str = "ctr", hidden: int = 8, metadata: dict[str, Any] | None = None
) -> Path:
    """A signed bundle ``root/<name>-v<version>`` (``key``: private key path, None = unsigned)."""
    from edge_runtime.models import package_bundle

    model = write_mlp(root / "src" / f"{name}-{version}-{hidden}.onnx", version, hidden)
    x = np.random.default_rng(7).standard_normal((3, N_IN)).astype(np.float32)
    return package_bundle(
        model,
        root / f"{name}-v{version}",
        name=name,
        version=version,
        health_check={"inputs": x, "atol": 1e-4},
        metadata=metadata or {"variant": "onnx-fp32"},
        signing_key=key,
    )


def manifest_message(
    bundle: Path, *, chunk_size: int = 65536, model: str | None = None
) -> tuple[ModelManifestMessage, bytes]:
    """The manifest message of ``bundle`` and the model file's bytes."""
    import json

    manifest = (bundle / "manifest.json").read_bytes()
    sig_path = bundle / "signature.json"
    signature = sig_path.read_bytes() if sig_path.exists() else b""
    info = json.loads(manifest)
    data = (bundle / info["model_file"]).read_bytes()
    chunks = tuple(hashlib.sha256(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size))
    msg = ModelManifestMessage(
        model or info["name"],
        info["version"],
        manifest,
        signature,
        len(data),
        hashlib.sha256(data).digest(),
        chunk_size,
        chunks,
    )
    return msg, data


@dataclass
class Served:
    """A release the RawCloud serves chunks of."""

    data: bytes
    chunk_size: int
    corrupt: set[int] = field(default_factory=set)  # indices to corrupt once each
    limit: int | None = None  # serve at most this many chunks (a transfer that breaks off)
    sent: int = 0
    requests: list[tuple[int, ...]] = field(default_factory=list)


class RawCloud:
    """The cloud side, message by message, as the broker's ``cloud`` user. Records every up-message decoded."""

    def __init__(self, broker: Any, prefix: str = "edge") -> None:
        self.topics = Topics(prefix)
        self.codec = Codec()
        self.ups: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self.seen: list[tuple[str, Any, Any]] = []
        self.served: dict[tuple[str, int], Served] = {}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
            transport=broker.transport,
        )
        broker.configure_client(self.client, "cloud")
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect(broker.host, broker.port or 1883, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(5), "cloud client did not connect"
        time.sleep(0.2)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        # A clean session each time: (re)subscribe on every connect, e.g. after a broker restart.
        client.subscribe(self.topics.cloud_subscriptions()[0], 1)
        self._connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            env, msg = decode_message(bytes(message.payload))
        except Exception as exc:
            self.seen.append((message.topic, None, exc))
            return
        self.seen.append((message.topic, env, msg))
        if isinstance(msg, ModelChunkRequest):
            self._serve(env.device, msg)
        self.ups.put((message.topic, env, msg))

    def _serve(self, device: str, req: ModelChunkRequest) -> None:
        served = self.served.get((req.model, req.version))
        if served is None:
            return
        served.requests.append(req.chunks)
        for idx in req.chunks:
            if served.limit is not None and served.sent >= served.limit:
                return
            served.sent += 1
            data = served.data[idx * served.chunk_size : (idx + 1) * served.chunk_size]
            if idx in served.corrupt:
                served.corrupt.discard(idx)
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            msg = ModelChunk(req.model, req.version, idx, data)
            self.publish(self.topics.down(device, MessageType.MODEL_CHUNK, req.model), msg, device=device)

    # --- publishing -------------------------------------------------------------------------------------------

    def publish(
        self, topic: str, message: Any, *, device: str, retain: bool = False, wait: bool = False, **env: Any
    ) -> None:
        payload = self.codec.encode(to_envelope(message, device=device, **env))
        self.publish_raw(topic, payload, retain=retain, wait=wait)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(5)

    def batch_frames(
        self, device: str, batch: FeatureBatch, *, epoch: int, first_seq: int, broadcast: bool = False
    ) -> list[tuple[str, bytes]]:
        """(topic, payload) of each message of ``batch``."""
        dev = "*" if broadcast else device
        frames = encode_feature_batches(batch, codec=self.codec, device=dev, epoch=epoch, first_seq=first_seq)
        topic = (
            self.topics.broadcast(MessageType.FEATURE_BATCH, batch.view)
            if broadcast
            else self.topics.down(device, MessageType.FEATURE_BATCH, batch.view)
        )
        return [(topic, f.payload) for f in frames]

    def send_batch(self, device: str, batch: FeatureBatch, *, epoch: int, first_seq: int) -> int:
        """Publish a batch (possibly several messages); returns the last seq used."""
        frames = self.batch_frames(device, batch, epoch=epoch, first_seq=first_seq)
        for topic, payload in frames:
            self.publish_raw(topic, payload)
        return first_seq + len(frames) - 1

    def release(
        self,
        device: str | None,
        bundle: Path,
        *,
        channel: str | None = None,
        chunk_size: int = 65536,
        corrupt: set[int] | None = None,
        limit: int | None = None,
    ) -> ModelManifestMessage:
        """Publish ``bundle``'s retained manifest (to ``device``, or broadcast when None) and serve its chunks."""
        msg, data = manifest_message(bundle, chunk_size=chunk_size, model=channel)
        self.served[(msg.model, msg.version)] = Served(data, chunk_size, set(corrupt or ()), limit)
        topic = (
            self.topics.down(device, MessageType.MODEL_MANIFEST, msg.model)
            if device
            else self.topics.broadcast(MessageType.MODEL_MANIFEST, msg.model)
        )
        self.publish(topic, msg, device=device or "*", retain=True, wait=True)
        return msg

    def wait_for(self, pred: Callable[[str, Any, Any], bool], timeout: float = 10.0) -> tuple[str, Any, Any]:
        """The next up-message matching ``pred`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "expected message did not arrive; got: "
                    + ", ".join(f"{t}:{type(m).__name__}" for t, _, m in self.seen[-20:])
                )
            try:
                item = self.ups.get(timeout=left)
            except queue.Empty:
                continue
            if pred(*item):
                return item


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sync_settings(broker: Any, device: str = "dev-a", **kw: Any) -> SyncSettings:
    """Settings for ``device`` on ``broker`` with fast reconnects."""
    kw.setdefault("reconnect_min_s", 0.1)
    kw.setdefault("reconnect_max_s", 0.5)
    kw.setdefault("keepalive_s", 10)
    return SyncSettings(broker_url=broker.url, device_id=device, **kw)


@dataclass
class Device:
    """One device under test: its stores and agent."""

    agent: DeviceAgent
    features: FeatureStore
    models: ModelStore
    root: Path

    def close(self) -> None:
        self.agent.stop()
        self.features.close()
        self.models.close()


def make_device(
    root: Path,
    broker: Any,
    device: str = "dev-a",
    *,
    trusted: tuple[Path, ...] = (),
    start: bool = True,
    hello_interval_s: float = 60.0,
    window: int = 16,
    wall_clock: Callable[[], float] = time.time,
    preference: tuple[str, ...] = ("onnx-int8", "onnx-fp32"),
    **settings: Any,
) -> Device:
    """A device with fresh (or existing, on restart) stores under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    features = define_store(root / "features.db")
    models = ModelStore(root / "models", trusted_keys=list(trusted) or None)
    agent = DeviceAgent(
        sync_settings(broker, device, trusted_keys=trusted, **settings),
        features=features,
        models=models,
        data_dir=root / "sync",
        credentials=Credentials(device, broker.password(device)),
        variant_preference=preference,
        hello_interval_s=hello_interval_s,
        window=window,
        wall_clock=wall_clock,
    )
    if start:
        agent.start()
    return Device(agent, features, models, root)


def score_of(store: FeatureStore, user_id: int) -> Any:
    """The stored score of ``user_id`` (None when absent)."""
    resp = store.get_online_features([f"{VIEW}:score"], [{"user_id": user_id}]).to_dict()
    return resp["score"][0]
