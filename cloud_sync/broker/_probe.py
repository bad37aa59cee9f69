"""A minimal MQTT 3.1.1 CONNECT/CONNACK exchange over a raw socket, to tell when a broker really serves logins.

A TCP accept only proves the listener is bound; a CONNACK proves mosquitto has loaded its password file too.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path

#: CONNACK return codes of MQTT 3.1.1.
CONNACK_CODES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT packet with a clean session."""
    flags = 0x02
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_login(
    *,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    unix_socket: Path | None = None,
    ca_file: Path | None = None,
    timeout: float = 2.0,
) -> int:
    """Send CONNECT and return the CONNACK return code (0 = accepted); OSError when no CONNACK comes back."""
    if unix_socket is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(unix_socket))
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.sendall(connect_packet(f"probe-{os.urandom(6).hex()}", username, password))
        reply = b""
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError("the broker closed the connection before sending CONNACK")
            reply += chunk
        if reply[0] != 0x20 or reply[1] != 2:
            raise ConnectionError(f"expected a CONNACK, got {reply.hex()}")
        if reply[3] == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return reply[3]
    finally:
        sock.close()
