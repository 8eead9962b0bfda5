"""Instance metadata (IMDSv2) for the test bed: one listener per emulated node, answering
from the same EC2 state as the EC2 layer.

Paths and formats follow the EC2 user guide, "Instance metadata categories": a token from
`PUT /latest/api/token`, then `instance-id`, `instance-type`, `mac`, `placement/...` and
`network/interfaces/macs/<mac>/...` per ENI. Like real metadata it lags EC2 by
`State.imds_delay`: an address that came to an ENI shows only after the delay, one that left
it still shows until then (EC2 API reference, AssignPrivateIpAddresses: the remap is
asynchronous; check `local-ipv4s` to confirm it).

A listener can admit only some sources, as a node whose pods cannot reach metadata (EKS best
practices, "Restrict access to the instance profile assigned to the worker node": hop limit
1, or 169.254.169.254 blocked for pods): it closes a refused connection without an answer,
as a dropped packet would leave the client without one, but at once. It counts requests
and refusals by source (`State.metadata_requests`, `State.metadata_refused`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from testenv.ec2 import State, ipv4_of, prefixes_of, subnet_ipv6_networks


def handler(state: State, instance_id: str):
    tokens: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle holds the
        # body for the client's delayed ACK (~40 ms a request), which real IMDS does not do.
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet
            pass

        def reply(self, status: int, text: str = ""):
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            if parsed:
                with state.lock:
                    state.metadata_requests[self.client_address[0]] += 1
            return parsed

        def do_PUT(self):
            if time.monotonic() < state.imds_down_until:
                return self.reply(503)
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self.reply(400)
            token = secrets.token_urlsafe(24)
            tokens.add(token)
            self.send_response(200)
            self.send_header("X-aws-ec2-metadata-token-ttl-seconds", self.headers["X-aws-ec2-metadata-token-ttl-seconds"])
            data = token.encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if time.monotonic() < state.imds_down_until:
                return self.reply(503)
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                return self.reply(401)
            with state.lock:
                value = metadata(state, instance_id, self.path)
            if value is None:
                return self.reply(404, "Not Found")
            self.reply(200, value)

    return Handler


def lagging(state: State, eni_id: str, held: list[str]) -> list[str]:
    """What metadata shows of an ENI whose addresses are `held` now: EC2's view as it was
    `imds_delay` ago (recent arrivals not yet, recent departures still)."""
    when = time.monotonic() - state.imds_delay
    events: dict[str, list[tuple[float, bool]]] = {}
    for (eni, address), history in state.changed_at.items():
        if eni == eni_id:
            events[address] = history

    def shown(address: str) -> bool:
        history = events.get(address, [])
        before = [present for at, present in history if at <= when]
        if before:
            return before[-1]
        return not history[0][1] if history else address in held

    return [address for address in dict.fromkeys(held + list(events)) if shown(address)]


def metadata(state: State, instance_id: str, path: str) -> str | None:
    backend = state.backend
    instance = backend.get_instance(instance_id)
    prefix = "/latest/meta-data/"
    if not path.startswith(prefix):
        return None
    key = path[len(prefix):]
    simple = {
        "instance-id": instance.id,
        "instance-type": instance.instance_type,  # as RunInstances launched it
        "placement/region": state.region,
        "placement/availability-zone": instance.placement,
        "iam/security-credentials/": "ipmgr-node-role",
        "iam/security-credentials/ipmgr-node-role": json.dumps({
            "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "testing", "SecretAccessKey": "testing",
            "Token": "testing", "Expiration": "2099-01-01T00:00:00Z", "LastUpdated": "2026-01-01T00:00:00Z"}),
    }
    enis = sorted(instance.nics.values(), key=lambda eni: (getattr(eni, "network_card_index", 0), eni.device_index))
    # The primary ENI is the one at device 0 of card 0; `mac` names it (multi-card instances
    # have other ENIs at device 0, of other cards).
    simple["mac"] = enis[0].mac_address
    if key in simple:
        return simple[key]
    nics = {eni.mac_address: eni for eni in enis}
    macs_prefix = "network/interfaces/macs/"
    if key == macs_prefix:
        return "\n".join(f"{mac}/" for mac in nics)
    if not key.startswith(macs_prefix):
        return None
    mac, _, field = key[len(macs_prefix):].partition("/")
    if mac not in nics:
        return None
    eni = nics[mac]
    ipv6_networks = subnet_ipv6_networks(eni.subnet)
    shown = lagging(state, eni.id, ipv4_of(eni) + list(eni.ipv6_addresses))
    ipv4s = [address for address in shown if ":" not in address]
    ipv6s = [address for address in shown if ":" in address]
    fields = {
        "device-number": str(eni.device_index),
        "network-card": str(getattr(eni, "network_card_index", 0)),
        "interface-id": eni.id,
        "mac": mac,
        "subnet-id": eni.subnet.id,
        "vpc-id": eni.subnet.vpc_id,
        "subnet-ipv4-cidr-block": eni.subnet.cidr_block,
        "local-ipv4s": "\n".join(ipv4s),
        "subnet-ipv6-cidr-blocks": "\n".join(str(network) for network in ipv6_networks) or None,
        "ipv6s": "\n".join(ipv6s) or None,
        "vpc-ipv4-cidr-blocks": backend.get_vpc(eni.subnet.vpc_id).cidr_block,
        "ipv4-prefix": "\n".join(prefixes_of(eni, 4)) or None,
        "ipv6-prefix": "\n".join(prefixes_of(eni, 6)) or None,
    }
    # The directory listing names the fields this ENI has.
    fields[""] = "\n".join(sorted(name for name, value in fields.items() if value is not None))
    return fields.get(field)


class MetadataServer(ThreadingHTTPServer):
    """A metadata listener that closes, unanswered, each connection `admits` refuses."""

    daemon_threads = True

    def __init__(self, host: str, state: State, instance_id: str, admits: Callable[[str], bool]):
        super().__init__((host, 0), handler(state, instance_id))
        self.state, self.admits = state, admits

    def verify_request(self, request, client_address) -> bool:
        if self.admits(client_address[0]):
            return True
        with self.state.lock:
            self.state.metadata_requests[client_address[0]] += 1
            self.state.metadata_refused[client_address[0]] += 1
        return False


def start(state: State, host: str, instance_id: str, admits: Callable[[str], bool]) -> ThreadingHTTPServer:
    """Serves the instance's metadata on `host`, on a port of its own, to the sources `admits`
    lets in."""
    server = MetadataServer(host, state, instance_id, admits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
