"""A minimal raw client of PostgreSQL's protocol 3.0, for what libpq hides: any bytes in
the startup packet, the server's first answer read as it comes, a token sent and the
connection dropped at once. Used by the integration tests and bench/flood.py."""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from pathlib import Path

PROTOCOL_3_0 = 196608
AUTH_CLEARTEXT_PASSWORD = 3  # the code of an AuthenticationCleartextPassword ('R')


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def startup_message(params: Mapping[str | bytes, str | bytes]) -> bytes:
    """A StartupMessage with these parameters (user, database, ...), in their order,
    as given: str is sent as UTF-8, bytes as they are."""
    body = struct.pack("!I", PROTOCOL_3_0) + b"".join(
        _bytes(k) + b"\0" + _bytes(v) + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def password_message(password: str | bytes) -> bytes:
    """A PasswordMessage ('p'): the password (a token), NUL-terminated."""
    payload = _bytes(password) + b"\0"
    return b"p" + struct.pack("!I", len(payload) + 4) + payload


def tcp(port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:port, in clear (no SSLRequest)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def unix(path: str | Path, timeout: float = 10) -> socket.socket:
    """A connection to the server's Unix socket file (…/.s.PGSQL.<port>)."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def start(sock: socket.socket, user: str | bytes, database: str | bytes = "postgres",
          **more: str) -> tuple[bytes, bytes]:  # fmt: skip
    """Send the StartupMessage (user, database, then the other parameters given); the
    server's first answer, as read_message returns it."""
    sock.sendall(startup_message({"user": user, "database": database, **more}))
    return read_message(sock)


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """The next message from the server: its type byte and its body."""
    header = recv_exact(sock, 5)
    length = struct.unpack("!I", header[1:5])[0]
    return header[:1], recv_exact(sock, length - 4)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def asks_for_password(mtype: bytes, body: bytes) -> bool:
    """Whether a message is AuthenticationCleartextPassword."""
    return mtype == b"R" and body[:4] == struct.pack("!I", AUTH_CLEARTEXT_PASSWORD)


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse's body by their code: S, C, M, D, H, ..."""
    return {chr(f[0]): f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
