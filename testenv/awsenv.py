#!/usr/bin/env python3
"""Local AWS stand-in for the multus-ipmgr tests.

One process serves:

* EC2: the real third-party emulator moto (pinned in tests/requirements.txt), behind a thin
  layer of ours that adds what moto lacks and the helper relies on: AllowReassignment (an IPv4
  held elsewhere moves, otherwise PrivateIpAddressInUse), subnet range and reserved-address
  checks, one holder per IPv6 address, all-or-nothing unassign of addresses the ENI really
  holds, the ENI's primary address protected, a per-ENI address limit, the
  DescribeNetworkInterfaces filters moto answers wrongly, fault injection and per-action
  call counts.
* IMDSv2, one listener per emulated node, answering from the same EC2 state (optionally
  showing new addresses only after a delay, as real metadata does).
* A JSON control API under /_ctl/ on the EC2 port, for the tests.

Run: python3 testenv/awsenv.py [--port 0]. The first line on standard output is JSON with
"ec2_endpoint"; the process serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from urllib.parse import parse_qs, urlencode

import boto3
from moto.ec2.models import ec2_backends
from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class Ec2Error(Exception):
    """An EC2 error answer: code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class State:
    """Everything the layer keeps besides moto's own state."""

    def __init__(self, region: str, host: str):
        self.region = region
        self.host = host
        self.endpoint = ""
        self.lock = threading.RLock()
        self.calls: Counter[str] = Counter()
        self.call_log: list[tuple[str, float]] = []
        self.faults: dict[str, list[dict]] = {}
        self.eni_ipv4_limit = 10
        self.eni_ipv6_limit = 10
        self.imds_delay = 0.0
        self.assigned_at: dict[tuple[str, str], float] = {}
        self.imds: dict[str, ThreadingHTTPServer] = {}

    @property
    def backend(self):
        return ec2_backends[ACCOUNT][self.region]

    def take_fault(self, action: str) -> dict | None:
        with self.lock:
            queue = self.faults.get(action) or self.faults.get("*")
            if not queue:
                return None
            fault = queue[0]
            fault["count"] -= 1
            if fault["count"] <= 0:
                queue.pop(0)
            return fault


def error_response(error: Ec2Error):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{error.code}</Code><Message>{error.message}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return error.status, [("Content-Type", "text/xml")], body


def numbered(params: dict[str, list[str]], prefix: str) -> list[str]:
    """Values of Prefix.1, Prefix.2, ... in order."""
    found = []
    index = 1
    while f"{prefix}.{index}" in params:
        found.append(params[f"{prefix}.{index}"][0])
        index += 1
    return found


def ipv4_of(eni) -> list[str]:
    return [item["PrivateIpAddress"] for item in eni.private_ip_addresses]


def subnet_ipv6_networks(subnet) -> list[ipaddress.IPv6Network]:
    return [
        ipaddress.ip_network(association["ipv6CidrBlock"])
        for association in subnet.ipv6_cidr_block_associations.values()
        if association.get("ipv6CidrBlockState", {}).get("state", "associated") == "associated"
    ]


def check_ipv4_in_subnet(eni, address: str) -> None:
    network = ipaddress.ip_network(eni.subnet.cidr_block)
    ip = ipaddress.ip_address(address)
    if ip not in network:
        raise Ec2Error("InvalidParameterValue", f"Address {address} does not fall within the subnet's address range")
    offset = int(ip) - int(network.network_address)
    if offset < 4 or ip == network.broadcast_address:
        raise Ec2Error("InvalidParameterValue", f"Address {address} is reserved in subnet {eni.subnet.id}")


class Ec2Layer:
    """WSGI middleware in front of moto's EC2."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state
        self.rules = {
            "AssignPrivateIpAddresses": self.assign_private,
            "UnassignPrivateIpAddresses": self.unassign_private,
            "AssignIpv6Addresses": self.assign_ipv6,
            "UnassignIpv6Addresses": self.unassign_ipv6,
            "DescribeNetworkInterfaces": self.describe_interfaces,
        }

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/_ctl/"):
            return self.respond(start_response, *control_http(self.state, environ))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        params = parse_qs(body.decode(), keep_blank_values=True)
        action = params.get("Action", [""])[0]
        with self.state.lock:
            self.state.calls[action] += 1
            self.state.call_log.append((action, time.time()))
        fault = self.state.take_fault(action)
        if fault:
            time.sleep(fault.get("delay_ms", 0) / 1000)
            if fault.get("code"):
                return self.respond(start_response, *error_response(
                    Ec2Error(fault["code"], fault.get("message", "injected fault"), fault.get("status", 400))))
        rule = self.rules.get(action)
        if rule:
            try:
                with self.state.lock:
                    answer = rule(params)
            except Ec2Error as error:
                return self.respond(start_response, *error_response(error))
            if isinstance(answer, tuple):
                return self.respond(start_response, *answer)
            if answer is not None:
                body = urlencode(answer, doseq=True).encode()
        environ = dict(environ)
        environ["wsgi.input"] = BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    @staticmethod
    def respond(start_response, status, headers, body):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
        start_response(f"{status} {reason.get(status, 'Error')}", headers)
        return [body]

    def eni(self, params):
        eni_id = params.get("NetworkInterfaceId", [""])[0]
        try:
            return self.state.backend.get_network_interface(eni_id)
        except Exception as error:
            raise Ec2Error("InvalidNetworkInterfaceID.NotFound", f"The networkInterface ID '{eni_id}' does not exist") from error

    def enis_in_vpc(self, vpc_id):
        return [eni for eni in self.state.backend.enis.values() if eni.subnet.vpc_id == vpc_id]

    def assign_private(self, params):
        eni = self.eni(params)
        addresses = numbered(params, "PrivateIpAddress")
        reassign = params.get("AllowReassignment", ["false"])[0].lower() == "true"
        held = ipv4_of(eni)
        new = [address for address in dict.fromkeys(addresses) if address not in held]
        for address in new:
            check_ipv4_in_subnet(eni, address)
        if len(held) + len(new) > self.state.eni_ipv4_limit:
            raise Ec2Error("PrivateIpAddressLimitExceeded",
                           f"Number of private addresses will exceed limit of {self.state.eni_ipv4_limit} for {eni.id}")
        moves = []
        for address in new:
            for other in self.enis_in_vpc(eni.subnet.vpc_id):
                if other is eni or address not in ipv4_of(other):
                    continue
                if other.private_ip_address == address:
                    raise Ec2Error("InvalidParameterValue", f"Address {address} is the primary address of {other.id}")
                if not reassign:
                    raise Ec2Error("PrivateIpAddressInUse", f"Address {address} is in use by {other.id}")
                moves.append((other, address))
        for other, address in moves:
            other.private_ip_addresses[:] = [item for item in other.private_ip_addresses if item["PrivateIpAddress"] != address]
        now = time.monotonic()
        for address in new:
            self.state.assigned_at[(eni.id, address)] = now
        return None

    def unassign_private(self, params):
        eni = self.eni(params)
        for address in numbered(params, "PrivateIpAddress"):
            if address == eni.private_ip_address:
                raise Ec2Error("InvalidParameterValue", f"Address {address} is the primary address of {eni.id} and cannot be unassigned")
            if address not in ipv4_of(eni):
                raise Ec2Error("InvalidParameterValue", f"Some of the specified addresses are not assigned to interface {eni.id}")
        return None

    def assign_ipv6(self, params):
        eni = self.eni(params)
        addresses = list(dict.fromkeys(numbered(params, "Ipv6Addresses")))
        networks = subnet_ipv6_networks(eni.subnet)
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not any(ip in network for network in networks):
                raise Ec2Error("InvalidParameterValue", f"Address {address} does not fall within the subnet's IPv6 range")
            for other in self.enis_in_vpc(eni.subnet.vpc_id):
                if address in other.ipv6_addresses:
                    raise Ec2Error("InvalidParameterValue", f"Address {address} is in use by {other.id}")
        if len(eni.ipv6_addresses) + len(addresses) > self.state.eni_ipv6_limit:
            raise Ec2Error("Ipv6AddressLimitExceeded",
                           f"Number of IPv6 addresses will exceed limit of {self.state.eni_ipv6_limit} for {eni.id}")
        now = time.monotonic()
        for address in addresses:
            self.state.assigned_at[(eni.id, address)] = now
        return None

    def unassign_ipv6(self, params):
        eni = self.eni(params)
        for address in numbered(params, "Ipv6Addresses"):
            if address not in eni.ipv6_addresses:
                raise Ec2Error("InvalidParameterValue", f"Some of the specified addresses are not assigned to interface {eni.id}")
        return None

    def describe_interfaces(self, params):
        """Answers the address filters moto gets wrong by turning them into an id list."""
        own = {"addresses.private-ip-address": ipv4_of, "ipv6-addresses.ipv6-address": lambda eni: eni.ipv6_addresses}
        index, kept, matching = 1, {}, None
        while f"Filter.{index}.Name" in params:
            name = params[f"Filter.{index}.Name"][0]
            values = set(numbered(params, f"Filter.{index}.Value"))
            if name in own:
                found = {eni.id for eni in self.state.backend.enis.values() if values & set(own[name](eni))}
                matching = found if matching is None else matching & found
            else:
                kept[name] = params[f"Filter.{index}.Name"], values
            index += 1
        if matching is None:
            return None
        if not matching:
            body = (f'<DescribeNetworkInterfacesResponse xmlns="{EC2_XMLNS}"><requestId>{uuid.uuid4()}</requestId>'
                    "<networkInterfaceSet/></DescribeNetworkInterfacesResponse>").encode()
            return 200, [("Content-Type", "text/xml")], body
        rewritten = {key: value for key, value in params.items() if not key.startswith("Filter.")}
        for position, (name, (_, values)) in enumerate(kept.items(), start=1):
            rewritten[f"Filter.{position}.Name"] = [name]
            for value_index, value in enumerate(sorted(values), start=1):
                rewritten[f"Filter.{position}.Value.{value_index}"] = [value]
        existing = numbered(params, "NetworkInterfaceId")
        ids = sorted(matching & set(existing)) if existing else sorted(matching)
        for key in [key for key in rewritten if key.startswith("NetworkInterfaceId.")]:
            del rewritten[key]
        for position, eni_id in enumerate(ids, start=1):
            rewritten[f"NetworkInterfaceId.{position}"] = [eni_id]
        return rewritten


# ---------------------------------------------------------------- instance metadata


def imds_handler(state: State, instance_id: str):
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

        def do_PUT(self):
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
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                return self.reply(401)
            with state.lock:
                value = metadata(state, instance_id, self.path)
            if value is None:
                return self.reply(404, "Not Found")
            self.reply(200, value)

    return Handler


def visible(state: State, eni_id: str, address: str) -> bool:
    assigned = state.assigned_at.get((eni_id, address))
    return assigned is None or time.monotonic() - assigned >= state.imds_delay


def metadata(state: State, instance_id: str, path: str) -> str | None:
    backend = state.backend
    instance = backend.get_instance(instance_id)
    prefix = "/latest/meta-data/"
    if not path.startswith(prefix):
        return None
    key = path[len(prefix):]
    simple = {
        "instance-id": instance.id,
        "placement/region": state.region,
        "placement/availability-zone": instance.placement,
        "iam/security-credentials/": "ipmgr-node-role",
        "iam/security-credentials/ipmgr-node-role": json.dumps({
            "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "testing", "SecretAccessKey": "testing",
            "Token": "testing", "Expiration": "2099-01-01T00:00:00Z", "LastUpdated": "2026-01-01T00:00:00Z"}),
    }
    if key in simple:
        return simple[key]
    nics = {eni.mac_address: (index, eni) for index, eni in instance.nics.items()}
    macs_prefix = "network/interfaces/macs/"
    if key == macs_prefix:
        return "\n".join(f"{mac}/" for mac in nics)
    if not key.startswith(macs_prefix):
        return None
    mac, _, field = key[len(macs_prefix):].partition("/")
    if mac not in nics:
        return None
    device_index, eni = nics[mac]
    ipv6_networks = subnet_ipv6_networks(eni.subnet)
    ipv4s = [address for address in ipv4_of(eni) if visible(state, eni.id, address)]
    ipv6s = [address for address in eni.ipv6_addresses if visible(state, eni.id, address)]
    fields = {
        "": "\n".join(["device-number", "interface-id", "local-ipv4s", "mac", "subnet-id",
                       "subnet-ipv4-cidr-block", "vpc-id"] + (["ipv6s"] if ipv6s else [])
                      + (["subnet-ipv6-cidr-blocks"] if ipv6_networks else [])),
        "device-number": str(device_index),
        "interface-id": eni.id,
        "mac": mac,
        "subnet-id": eni.subnet.id,
        "vpc-id": eni.subnet.vpc_id,
        "subnet-ipv4-cidr-block": eni.subnet.cidr_block,
        "local-ipv4s": "\n".join(ipv4s),
        "subnet-ipv6-cidr-blocks": "\n".join(str(network) for network in ipv6_networks) or None,
        "ipv6s": "\n".join(ipv6s) or None,
    }
    return fields.get(field)


def start_imds(state: State, instance_id: str) -> int:
    server = ThreadingHTTPServer((state.host, 0), imds_handler(state, instance_id))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.imds[instance_id] = server
    return server.server_address[1]


# ---------------------------------------------------------------- control API


def build_topology(state: State, spec: dict) -> dict:
    """Creates a VPC, subnets and nodes (instances with ENIs), each node with its IMDS."""
    ec2 = boto3.client("ec2", region_name=state.region, endpoint_url=state.endpoint, **CREDENTIALS)
    vpc = ec2.create_vpc(CidrBlock=spec.get("vpc_cidr", "10.0.0.0/16"), AmazonProvidedIpv6CidrBlock=True)["Vpc"]
    vpc_ipv6 = ipaddress.ip_network(
        ec2.describe_vpcs(VpcIds=[vpc["VpcId"]])["Vpcs"][0]["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"])
    ipv6_subnets = vpc_ipv6.subnets(new_prefix=64)
    subnets = {}
    for name, subnet_spec in spec["subnets"].items():
        arguments = {"VpcId": vpc["VpcId"], "CidrBlock": subnet_spec["cidr"]}
        if subnet_spec.get("ipv6"):
            arguments["Ipv6CidrBlock"] = str(next(ipv6_subnets))
        subnet = ec2.create_subnet(**arguments)["Subnet"]
        subnets[name] = {"id": subnet["SubnetId"], "cidr": subnet_spec["cidr"], "ipv6_cidr": arguments.get("Ipv6CidrBlock")}
    # Primary addresses are handed out from .10 up in each subnet, so tests can use .50 and up.
    next_host = {name: 10 for name in subnets}

    def primary_ip(subnet_name: str) -> str:
        address = ipaddress.ip_network(subnets[subnet_name]["cidr"]).network_address + next_host[subnet_name]
        next_host[subnet_name] += 1
        return str(address)

    nodes = {}
    for name, node_spec in spec["nodes"].items():
        first, *others = node_spec["enis"]
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.large",
                                     SubnetId=subnets[first]["id"], PrivateIpAddress=primary_ip(first))["Instances"][0]
        instance_id = instance["InstanceId"]
        for device_index, subnet_name in enumerate(others, start=1):
            eni = ec2.create_network_interface(SubnetId=subnets[subnet_name]["id"],
                                               PrivateIpAddress=primary_ip(subnet_name))["NetworkInterface"]
            ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"], InstanceId=instance_id,
                                         DeviceIndex=device_index)
        enis = []
        for device_index, eni in sorted(state.backend.get_instance(instance_id).nics.items()):
            subnet_name = next(key for key, value in subnets.items() if value["id"] == eni.subnet.id)
            enis.append({"id": eni.id, "mac": eni.mac_address, "device_index": device_index,
                         "subnet": subnet_name, "primary_ip": eni.private_ip_address})
        nodes[name] = {"instance_id": instance_id, "imds_endpoint": f"http://{state.host}:{start_imds(state, instance_id)}",
                       "enis": enis}
    with state.lock:  # count only what the code under test calls
        state.calls.clear()
        state.call_log.clear()
    return {"vpc_id": vpc["VpcId"], "region": state.region, "subnets": subnets, "nodes": nodes}


def control(state: State, method: str, path: str, request: dict) -> tuple[int, dict]:
    """One control call: (status, JSON answer)."""
    try:
        if method == "POST" and path == "topology":
            return 200, build_topology(state, request)
        if method == "POST" and path == "faults":
            with state.lock:
                state.faults.setdefault(request["action"], []).append(dict(request, count=request.get("count", 1)))
            return 200, {}
        if method == "GET" and path == "calls":
            with state.lock:
                return 200, dict(state.calls)
        if method == "GET" and path == "calls/log":
            with state.lock:
                return 200, {"calls": [[action, at] for action, at in state.call_log]}
        if method == "POST" and path == "calls/reset":
            with state.lock:
                state.calls.clear()
                state.call_log.clear()
            return 200, {}
        if method == "POST" and path == "config":
            with state.lock:
                state.eni_ipv4_limit = request.get("eni_ipv4_limit", state.eni_ipv4_limit)
                state.eni_ipv6_limit = request.get("eni_ipv6_limit", state.eni_ipv6_limit)
                state.imds_delay = request.get("imds_delay_ms", state.imds_delay * 1000) / 1000
            return 200, {}
        if method == "GET" and path.startswith("eni/"):
            with state.lock:
                eni = state.backend.get_network_interface(path[len("eni/"):])
                return 200, {"id": eni.id, "ipv4": ipv4_of(eni), "ipv6": list(eni.ipv6_addresses)}
        if method == "POST" and path == "assign":
            # Test setup: move addresses onto an ENI directly, as another node's helper would
            # have (taking them from whichever ENI held them).
            with state.lock:
                eni = state.backend.get_network_interface(request["eni"])
                ipv4, ipv6 = request.get("ipv4", []), request.get("ipv6", [])
                for other in state.backend.enis.values():
                    other.private_ip_addresses[:] = [item for item in other.private_ip_addresses
                                                     if item["PrivateIpAddress"] not in ipv4]
                    other.ipv6_addresses[:] = [address for address in other.ipv6_addresses if address not in ipv6]
                eni.private_ip_addresses.extend({"Primary": False, "PrivateIpAddress": ip} for ip in ipv4)
                eni.ipv6_addresses.extend(ipv6)
            return 200, {}
        return 404, {"error": f"unknown control call {method} {path}"}
    except Exception as error:  # the test sees the reason
        return 500, {"error": repr(error)}


def control_http(state: State, environ):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    request = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
    status, answer = control(state, environ["REQUEST_METHOD"], environ["PATH_INFO"][len("/_ctl/"):], request)
    return status, [("Content-Type", "application/json")], json.dumps(answer).encode()


def control_stdio(state: State, stop: threading.Event) -> None:
    """Control over standard input and output, one JSON object a line each way:
    {"method", "path", "body"} in, {"status", "body"} out. End of input stops the server."""
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        status, answer = control(state, request.get("method", "GET"), request["path"], request.get("body") or {})
        print(json.dumps({"status": status, "body": answer}), flush=True)
    stop.set()


class NoDelayHandler(WSGIRequestHandler):
    """werkzeug's handler with TCP_NODELAY, for the same reason as the IMDS handler."""

    disable_nagle_algorithm = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-2")
    parser.add_argument("--control", choices=["http", "stdio"], default="http",
                        help="stdio: also take control calls on standard input (stops at its end)")
    arguments = parser.parse_args()

    state = State(arguments.region, arguments.host)
    app = Ec2Layer(create_backend_app("ec2"), state)
    server = make_server(arguments.host, arguments.port, app, threaded=True, request_handler=NoDelayHandler)
    state.endpoint = f"http://{arguments.host}:{server.server_port}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"ec2_endpoint": state.endpoint, "region": state.region}), flush=True)
    if arguments.control == "stdio":
        threading.Thread(target=control_stdio, args=(state, stop), daemon=True).start()
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
