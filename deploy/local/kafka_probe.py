#!/usr/bin/env python3
"""Readiness probe for a Kafka broker, standard library only.

Usage: kafka_probe.py [--timeout SECONDS] [--quiet]
                      [--cafile CA --user NAME --password-file FILE] [HOST:PORT]

Connects to HOST:PORT (default: $RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS, first entry,
or 127.0.0.1:29092), sends an ApiVersions request (v3, falling back to v0) and,
when the broker supports it, a Metadata v12 request with an empty topic list.
Exits 0 when the responses are well-formed, carry no error and the Metadata
response lists at least one broker; prints a one-line summary.

With --cafile the connection is TLS (the broker's certificate checked against CA
and 127.0.0.1/localhost); with --user it authenticates with SASL SCRAM-SHA-512
(SaslHandshake v1, SaslAuthenticate v1) before the Metadata request.

Exit codes: 0 healthy, 1 not healthy (refused, timeout, bad or error response),
2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import struct
import sys

API_METADATA = 3
API_SASL_HANDSHAKE = 17
API_API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
ERR_UNSUPPORTED_VERSION = 35
CLIENT_ID = "runstream-kafka-probe"


class ProbeError(Exception):
    pass


# --------------------------------------------------------------- encoding
def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return uvarint(len(raw) + 1) + raw


def nullable_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">h", len(raw)) + raw


def request_header(api_key: int, version: int, correlation_id: int, flexible: bool) -> bytes:
    header = struct.pack(">hhi", api_key, version, correlation_id) + nullable_string(CLIENT_ID)
    if flexible:  # request header v2 ends with an empty tagged-field section
        header += uvarint(0)
    return header


# --------------------------------------------------------------- decoding
class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProbeError(
                f"truncated response (need {n} bytes at offset {self.pos}, have {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise ProbeError("malformed varint in response")

    def compact_nullable_string(self) -> str | None:
        n = self.uvarint()
        if n == 0:
            return None
        return self.take(n - 1).decode("utf-8", "replace")

    def compact_array_len(self) -> int:
        n = self.uvarint()
        return -1 if n == 0 else n - 1

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())


# --------------------------------------------------------------- transport
def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by broker before a full response arrived")
        buf += chunk
    return bytes(buf)


def round_trip(
    sock: socket.socket, payload: bytes, correlation_id: int, flexible_response_header: bool
) -> Reader:
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    if size <= 0 or size > 64 * 1024 * 1024:
        raise ProbeError(f"implausible response size {size}")
    reader = Reader(recv_exact(sock, size))
    got = reader.int32()
    if got != correlation_id:
        raise ProbeError(f"correlation id mismatch: sent {correlation_id}, got {got}")
    if flexible_response_header:
        reader.skip_tagged_fields()
    return reader


def api_versions(sock: socket.socket) -> dict[int, tuple[int, int]]:
    # v3 request; the response header is always v0 for ApiVersions.
    body = compact_string(CLIENT_ID) + compact_string("1.0") + uvarint(0)
    reader = round_trip(sock, request_header(API_API_VERSIONS, 3, 1, True) + body, 1, False)
    error = reader.int16()
    if error == ERR_UNSUPPORTED_VERSION:
        # Old broker: it answers in v0 format; ask again with v0.
        reader = round_trip(sock, request_header(API_API_VERSIONS, 0, 2, False), 2, False)
        error = reader.int16()
        if error:
            raise ProbeError(f"ApiVersions v0 returned error code {error}")
        count = reader.int32()
        apis = {}
        for _ in range(max(count, 0)):
            key, lo, hi = reader.int16(), reader.int16(), reader.int16()
            apis[key] = (lo, hi)
        return apis
    if error:
        raise ProbeError(f"ApiVersions v3 returned error code {error}")
    apis = {}
    for _ in range(max(reader.compact_array_len(), 0)):
        key, lo, hi = reader.int16(), reader.int16(), reader.int16()
        reader.skip_tagged_fields()
        apis[key] = (lo, hi)
    reader.int32()  # throttle_time_ms
    reader.skip_tagged_fields()
    if API_API_VERSIONS not in apis:
        raise ProbeError("ApiVersions response does not list ApiVersions itself")
    return apis


def metadata_v12(sock: socket.socket) -> tuple[list[str], str | None, int]:
    # topics = empty compact array (not null: null would mean "all topics"),
    # allow_auto_topic_creation = false, include_topic_authorized_operations = false.
    body = uvarint(1) + b"\x00" + b"\x00" + uvarint(0)
    reader = round_trip(sock, request_header(API_METADATA, 12, 3, True) + body, 3, True)
    reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(max(reader.compact_array_len(), 0)):
        node_id = reader.int32()
        host = reader.compact_nullable_string()
        port = reader.int32()
        reader.compact_nullable_string()  # rack
        reader.skip_tagged_fields()
        brokers.append(f"{node_id}@{host}:{port}")
    cluster_id = reader.compact_nullable_string()
    controller_id = reader.int32()
    return brokers, cluster_id, controller_id


# --------------------------------------------------------------- SASL SCRAM-SHA-512
def sasl_request(sock: socket.socket, api_key: int, body: bytes, correlation_id: int) -> Reader:
    """A non-flexible request (header v1, response header v0)."""
    return round_trip(
        sock, request_header(api_key, 1, correlation_id, False) + body, correlation_id, False
    )


def sasl_bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def sasl_authenticate(sock: socket.socket, payload: bytes, correlation_id: int) -> bytes:
    reader = sasl_request(sock, API_SASL_AUTHENTICATE, sasl_bytes(payload), correlation_id)
    error = reader.int16()
    length = reader.int16()
    message = reader.take(length).decode("utf-8", "replace") if length >= 0 else ""
    if error:
        raise ProbeError(f"SASL authentication failed (error {error}): {message}")
    return reader.take(reader.int32())


def scram_sha512(sock: socket.socket, user: str, password: str) -> None:
    reader = sasl_request(sock, API_SASL_HANDSHAKE, nullable_string("SCRAM-SHA-512"), 11)
    error = reader.int16()
    if error:
        raise ProbeError(f"the broker does not offer SCRAM-SHA-512 (SaslHandshake error {error})")
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    name = user.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={name},r={nonce}"
    server_first = sasl_authenticate(sock, f"n,,{first_bare}".encode(), 12).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise ProbeError("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha512")
    without_proof = f"c={base64.b64encode(b'n,,').decode()},r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    server_final = sasl_authenticate(sock, final.encode(), 13).decode()
    expected = hmac.digest(hmac.digest(salted, b"Server Key", "sha512"), auth_message, "sha512")
    if server_final != f"v={base64.b64encode(expected).decode()}":
        raise ProbeError("SCRAM: the server's signature is wrong")


def connect(host: str, port: int, timeout: float, cafile: str | None) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ProbeError(f"cannot connect to {host}:{port}: {exc}") from exc
    if cafile is None:
        return sock
    context = ssl.create_default_context(cafile=cafile)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ProbeError(f"TLS with {host}:{port} failed: {exc}") from exc


def probe(
    host: str,
    port: int,
    timeout: float,
    cafile: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> str:
    sock = connect(host, port, timeout, cafile)
    with sock:
        sock.settimeout(timeout)
        try:
            apis = api_versions(sock)
            if credentials is not None:
                scram_sha512(sock, *credentials)
            lo, hi = apis.get(API_METADATA, (-1, -1))
            if lo <= 12 <= hi:
                brokers, cluster_id, controller_id = metadata_v12(sock)
                if not brokers:
                    raise ProbeError("Metadata response lists no brokers (broker not ready yet)")
                return (
                    f"kafka at {host}:{port} answers: {len(apis)} APIs, "
                    f"brokers={','.join(brokers)} controller={controller_id} cluster_id={cluster_id}"
                )
            return f"kafka at {host}:{port} answers ApiVersions: {len(apis)} APIs (Metadata v12 unsupported, skipped)"
        except TimeoutError as exc:
            raise ProbeError(f"timed out after {timeout:g}s waiting for {host}:{port}") from exc
        except OSError as exc:
            raise ProbeError(f"socket error talking to {host}:{port}: {exc}") from exc


def parse_address(text: str) -> tuple[str, int]:
    text = text.split(",")[0].strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Check that a Kafka broker answers real protocol requests."
    )
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
        help="bootstrap address HOST:PORT (default: $RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:29092)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="socket timeout in seconds (default 3)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing, only set the exit code"
    )
    parser.add_argument("--cafile", help="speak TLS; trust this CA (PEM)")
    parser.add_argument("--user", help="authenticate with SASL SCRAM-SHA-512 as this user")
    parser.add_argument("--password-file", help="the user's password (first line)")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    credentials = None
    if args.user:
        if not args.password_file:
            parser.error("--user needs --password-file")
        with open(args.password_file, encoding="utf-8") as handle:
            credentials = (args.user, handle.readline().rstrip("\n"))
    try:
        summary = probe(host, port, args.timeout, args.cafile, credentials)
    except ProbeError as exc:
        if not args.quiet:
            print(f"kafka probe failed: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
