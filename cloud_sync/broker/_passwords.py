"""mosquitto password files, written directly in mosquitto 2.0's PBKDF2-SHA512 format (no mosquitto_passwd run)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

#: mosquitto_passwd's default iteration count; the broker re-derives the hash on every CONNECT, so this is a
#: trade-off between connect cost and offline guessing cost, and these brokers are for tests and demos.
ITERATIONS = 101


def new_password() -> str:
    """A random 144-bit password, URL-safe."""
    return secrets.token_urlsafe(18)


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$<iterations>$<salt>$<hash>`` line mosquitto 2.0 stores for ``password`` (PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 via a temp file, fsync and rename (readers never see half)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file for ``{username: password}``."""
    write_private(path, "".join(f"{user}:{hash_password(pw)}\n" for user, pw in users.items()))
