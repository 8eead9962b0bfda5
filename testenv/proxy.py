"""An HTTP proxy for the bed, and EC2 over HTTPS behind it: a cluster that reaches AWS only
through a proxy (no VPC endpoints), as the helper must work in.

* The proxy takes `CONNECT host:port` (RFC 9110 9.3.6: how HTTPS clients use a proxy) and
  opens a tunnel, and a request in absolute form (`GET http://host:port/...`, RFC 9112
  3.2.2: how HTTP clients use one) and forwards the connection. It counts each by kind and
  target (`host:port` as asked), answered or not, and resolves names through its own table:
  AWS's real names for the stand-in, what pods cannot resolve; addresses are taken as they
  are; other names get 502.
* EC2 over HTTPS: a TLS listener relaying to the plain EC2 endpoint, with a certificate for
  `ec2.<region>.amazonaws.com` and the bed's gateway address from a CA made for the bed
  (`ca_file`: for SSL_CERT_FILE). AWS's endpoints are HTTPS, so the proxy sees only CONNECT.

Bounded: 64 connections at once (more are closed at once), request heads of 16 KiB, read
within 10 s; everything runs on one asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONNECTIONS, HEAD_BYTES, HEAD_SECONDS, CHUNK = 64, 16 * 1024, 10, 64 * 1024


def split_target(target: str) -> tuple[str, int]:
    """`host:port` of a CONNECT (IPv6 in brackets) -> (host without brackets, port)."""
    host, _, port = target.rpartition(":")
    return host.strip("[]").lower(), int(port)


class Proxy:
    """The proxy's state: its name table and what it was asked."""

    def __init__(self, names: dict[str, str]):
        self.names = names
        self.lock = threading.Lock()
        self.requests: dict[str, dict[str, int]] = {"connect": {}, "forward": {}}
        self.active = 0  # touched on the loop's thread only

    def counts(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {kind: dict(targets) for kind, targets in self.requests.items()}

    def resolve(self, host: str) -> str | None:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return self.names.get(host)

    async def bounded(self, serve, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Runs `serve` on one client connection within the connection limit, then closes it."""
        if self.active >= CONNECTIONS:
            writer.close()
            return
        self.active += 1
        try:
            await serve(reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            kind, (host, port) = "connect", split_target(target)
        elif target.startswith("http://"):
            url = urllib.parse.urlsplit(target)
            kind, host, port = "forward", (url.hostname or "").lower(), url.port or 80
        else:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with self.lock:
            targets = self.requests[kind]
            targets[f"{host}:{port}"] = targets.get(f"{host}:{port}", 0) + 1
        address = self.resolve(host)
        if address is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(address, port), HEAD_SECONDS)
        if kind == "connect":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # the origin takes the absolute form as it is (RFC 9112 3.2.2)
            upstream_writer.write(head)
        await relay(reader, writer, upstream_reader, upstream_writer)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until end of input, then closes the other side."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def relay(reader, writer, upstream_reader, upstream_writer) -> None:
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


def certificates(names: list[str], address: str, ca_file: Path) -> ssl.SSLContext:
    """A CA (written to `ca_file`) and a server context with its certificate for `names` and
    `address`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def certificate(subject: str, key, issuer: x509.Name, issuer_key, extensions) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(validity[0]).not_valid_after(validity[1]))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipmgr testenv CA")])
    usage = dict.fromkeys(["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"], False)
    ca = certificate("ipmgr testenv CA", ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(**(usage | {"key_cert_sign": True, "crl_sign": True})), True)])
    server = certificate(names[0], server_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(**(usage | {"digital_signature": True})), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.DNSName(name) for name in names]
                                     + [x509.IPAddress(ipaddress.ip_address(address))]), False)])
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = ca_file.with_name(ca_file.name + ".server")
    try:  # ssl loads a chain from files only
        chain.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())
                          + server.public_bytes(serialization.Encoding.PEM))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(chain)
    finally:
        chain.unlink(missing_ok=True)
    return context


def start(host: str, region: str, ec2_port: int, ca_file: Path) -> tuple[Proxy, dict]:
    """The proxy and EC2 over HTTPS on `host`, relaying to the plain EC2 on `host`:`ec2_port`:
    the proxy's state and its control answer (URLs, the CA file)."""
    ec2_name = f"ec2.{region}.amazonaws.com"
    proxy = Proxy({ec2_name: host})
    context = certificates([ec2_name], host, ca_file)

    async def ec2_over_tls(reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, ec2_port)
        await relay(reader, writer, upstream_reader, upstream_writer)

    loop = asyncio.new_event_loop()
    listener = loop.run_until_complete(
        asyncio.start_server(lambda r, w: proxy.bounded(proxy.proxy, r, w), host, 0, limit=HEAD_BYTES))
    front = loop.run_until_complete(
        asyncio.start_server(lambda r, w: proxy.bounded(ec2_over_tls, r, w), host, 0, ssl=context))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    https_port = front.sockets[0].getsockname()[1]
    return proxy, {"proxy_url": f"http://{host}:{listener.sockets[0].getsockname()[1]}",
                   "ec2_https_endpoint": f"https://{host}:{https_port}",
                   "ec2_https_endpoint_by_name": f"https://{ec2_name}:{https_port}",
                   "ca_file": str(ca_file)}
