"""The bed's resolver answers as the VPC's does for the names the helper uses (no root)."""

import socket
import struct

from testenv import dns

NAMES = {"ec2.us-east-2.amazonaws.com": "198.18.0.1"}


def parse(response: bytes) -> tuple[int, int, int, list[str]]:
    ident, flags, _, count, _, _ = struct.unpack(">HHHHHH", response[:12])
    _, offset = dns.question_name(response)
    offset += 4
    addresses = []
    for _ in range(count):
        _, rtype, _, _, length = struct.unpack(">HHHIH", response[offset:offset + 12])
        addresses.append(socket.inet_ntoa(response[offset + 12:offset + 12 + length]))
        offset += 12 + length
    return ident, flags & 0x8000, flags & 0xF, addresses


def test_the_ec2_name_resolves_to_the_stand_in_in_any_case():
    assert parse(dns.answer(dns.query("EC2.us-east-2.amazonaws.com", ident=42), NAMES)) == (42, 0x8000, 0, ["198.18.0.1"])


def test_aaaa_for_a_known_name_is_an_empty_answer_and_other_names_do_not_exist():
    assert parse(dns.answer(dns.query("ec2.us-east-2.amazonaws.com", dns.TYPE_AAAA), NAMES))[2:] == (0, [])
    assert parse(dns.answer(dns.query("sts.us-east-2.amazonaws.com"), NAMES))[2:] == (dns.NXDOMAIN, [])


def test_responses_and_short_packets_are_not_answered():
    response = dns.answer(dns.query("ec2.us-east-2.amazonaws.com"), NAMES)
    assert dns.answer(response, NAMES) is None
    assert dns.answer(b"\0" * 5, NAMES) is None
