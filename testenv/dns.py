"""The VPC's resolver for a bed: the names pods use to reach AWS resolve to the stand-in.

In a VPC, pods resolve `ec2.<region>.amazonaws.com` through CoreDNS, which forwards to the
Amazon-provided resolver (the VPC base + 2, or 169.254.169.253). Here one UDP listener on
the bed's gateway answers A queries for the EC2 endpoint's name with the stand-in's address,
AAAA queries for it with no address (the stand-in listens on IPv4 only), and everything else
with NXDOMAIN. It speaks the RFC 1035 message format (section 4.1), one question a query,
which is all a stub resolver (glibc's, the helper's) sends.
"""

from __future__ import annotations

import socket
import struct
import threading

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
# RFC 1035 4.1.1: QR (response), AA (authoritative), RD copied, RA; RCODE 0 or 3 (NXDOMAIN).
FLAGS_ANSWER, NXDOMAIN = 0x8580, 3


def question_name(message: bytes) -> tuple[str, int]:
    """The question's name and the offset just after it (uncompressed, as queries are)."""
    labels, offset = [], 12
    while message[offset]:
        length = message[offset]
        labels.append(message[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels).lower(), offset + 1


def answer(query: bytes, names: dict[str, str]) -> bytes | None:
    """The response to one query, None for what is not a query."""
    if len(query) < 17:
        return None
    ident, flags, questions = struct.unpack(">HHH", query[:6])
    if flags & 0x8000 or questions != 1:
        return None
    name, end = question_name(query)
    qtype, qclass = struct.unpack(">HH", query[end:end + 4])
    question = query[12:end + 4]
    address = names.get(name)
    records = b""
    if address and qtype == TYPE_A and qclass == CLASS_IN:
        # A pointer to the question's name (offset 12), TTL 60 s, four bytes of address.
        records = struct.pack(">HHHIH", 0xC00C, TYPE_A, CLASS_IN, 60, 4) + socket.inet_aton(address)
    rcode = 0 if address else NXDOMAIN
    header = struct.pack(">HHHHHH", ident, FLAGS_ANSWER | (flags & 0x0100) | rcode, 1, 1 if records else 0, 0, 0)
    return header + question + records


def query(name: str, qtype: int = TYPE_A, ident: int = 7) -> bytes:
    """A stub resolver's query for `name` (recursion desired), for tests."""
    labels = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split("."))
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", qtype, CLASS_IN)


def start(host: str, names: dict[str, str]) -> socket.socket:
    """Serves `names` (lower-case name -> IPv4 address) on UDP `host`:53 in a daemon thread."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((host, 53))

    def serve() -> None:
        while True:
            query, peer = listener.recvfrom(512)
            response = answer(query, names)
            if response:
                listener.sendto(response, peer)

    threading.Thread(target=serve, daemon=True, name="dns").start()
    return listener
