"""EC2 for the test bed: the real third-party emulator moto (pinned in tests/requirements.txt)
behind a thin WSGI layer of ours that adds the EC2 rules moto lacks and the helper relies on.

Each rule names its source. Where moto is right it answers; where it is wrong or silent the
layer answers or rewrites the request first:

* AllowReassignment: an IPv4 held by another ENI moves only with it, otherwise
  PrivateIpAddressInUse (EC2 API reference, AssignPrivateIpAddresses; moto ignores the flag
  and leaves the address on both ENIs).
* Subnet range and reserved addresses (the first four and the last of a subnet: VPC user
  guide, "Subnet CIDR blocks"), InvalidParameterValue.
* One holder per IPv6 address; AssignIpv6Addresses cannot reassign (EC2 API reference).
* All-or-nothing batches: one address the ENI does not hold fails the whole unassign (EC2
  answers InvalidParameterValue naming the interface; moto succeeds).
* The ENI's primary private address can be neither unassigned nor taken.
* Per-ENI address limits by instance type (EC2 user guide, "Maximum IP addresses per network
  interface": the IPv4 and IPv6 addresses an ENI of that type holds, its primary address
  included, each delegated prefix counting as one; EC2 API reference, DescribeInstanceTypes:
  `NetworkInfo.Ipv4AddressesPerInterface`, `Ipv6AddressesPerInterface`). moto keeps the table
  (moto/ec2/resources/instance_types.json.gz; m5.large 10/10, c5.4xlarge 30/30, p5.48xlarge
  50/50, 0 IPv6 for types without IPv6 such as m3.large) but enforces none of it: an ENI
  attached to an instance takes its type's limits, an unattached one m5.large's (the bed's
  default node type). `POST config` can set one limit for every ENI instead (`null` clears
  it). Over the limit: PrivateIpAddressLimitExceeded / Ipv6AddressLimitExceeded.
* DescribeInstanceTypes with a type named twice: moto refuses the call with
  InvalidInstanceType naming no type ("do not exist: []"); the layer asks for each type once.
* The DescribeNetworkInterfaces filters `addresses.private-ip-address` (moto matches only
  the primary address) and `ipv6-addresses.ipv6-address` (moto answers HTTP 500).
* Prefix delegation, which moto ignores (EC2 user guide, "Assign prefixes to Amazon EC2
  network interfaces"): `Ipv4Prefix` (/28) and `Ipv6Prefix` (/80) on the assign and unassign
  calls, inside the subnet, overlapping no address or prefix in use, each counting against
  the ENI's limit; an address inside a delegated prefix cannot be assigned on its own; the
  prefixes show in DescribeNetworkInterfaces (`Ipv4Prefixes`, `Ipv6Prefixes`).
* Network cards: moto reports every attachment on card 0; an ENI the topology attached to
  another card reports that card (multi-card instances attach ENIs at device index 0 of
  cards 1..N).

* Account-wide token buckets per action (EC2 developer guide, "Request throttling"):
  AssignPrivateIpAddresses, UnassignPrivateIpAddresses and AssignIpv6Addresses each 100
  tokens refilling 5/s; UnassignIpv6Addresses and other mutating actions share the generic
  mutating bucket (50, 5/s); Describe calls 100 refilling 20/s, an unfiltered
  DescribeNetworkInterfaces or DescribeInstances 50 refilling 10/s. An empty bucket answers
  HTTP 503 RequestLimitExceeded. Sizes can be scaled down for tests (`POST config`).
* Metadata lags EC2 (the remap is asynchronous: AssignPrivateIpAddresses in the EC2 API
  reference): the layer records when each address came to or left each ENI, for the
  metadata emulator to show changes late (`imds_delay`).

Plus what tests need: fault injection, per-action call counts, throttle counts and a call
log.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections import Counter
from io import BytesIO
from urllib.parse import parse_qs, urlencode

from moto.ec2.models import ec2_backends
from moto.ec2.models import elastic_network_interfaces as moto_enis
from moto.ec2.models.instance_types import INSTANCE_TYPES

ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


_moto_attachment = moto_enis.Attachment.__init__


def _attachment_on_its_card(attachment, eni) -> None:
    _moto_attachment(attachment, eni)
    attachment.network_card_index = getattr(eni, "network_card_index", 0)


moto_enis.Attachment.__init__ = _attachment_on_its_card

PREFIX_LENGTH = {4: 28, 6: 80}

# The addresses an ENI attached to no instance may hold: an m5.large's (EC2 user guide,
# "Maximum IP addresses per network interface"), the bed's default node type.
DEFAULT_ENI_LIMITS = {4: 10, 6: 10}


def instance_type_limits(instance_type: str) -> dict[int, int] | None:
    """The IPv4 and IPv6 addresses per ENI of `instance_type` (moto's copy of EC2's
    DescribeInstanceTypes data: `NetworkInfo.Ipv4AddressesPerInterface`,
    `Ipv6AddressesPerInterface`, 0 without IPv6), None for a type EC2 does not have."""
    info = INSTANCE_TYPES.get(instance_type, {}).get("NetworkInfo")
    if info is None:
        return None
    return {4: int(info.get("Ipv4AddressesPerInterface", 0)), 6: int(info.get("Ipv6AddressesPerInterface", 0))}


# name: (size, refill per second), from the EC2 developer guide's throttling tables.
DEFAULT_BUCKETS = {
    "AssignPrivateIpAddresses": (100, 5.0),
    "UnassignPrivateIpAddresses": (100, 5.0),
    "AssignIpv6Addresses": (100, 5.0),
    "mutating": (50, 5.0),
    "describe": (100, 20.0),
    "describe-unfiltered": (50, 10.0),
}


def bucket_name(action: str, params: dict) -> str:
    """The token bucket an action draws from."""
    if action in ("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses"):
        return action
    if action.startswith("Describe"):
        unfiltered = action in ("DescribeNetworkInterfaces", "DescribeInstances") and not any(
            key.startswith(("Filter.", "NetworkInterfaceId.", "InstanceId.")) for key in params)
        return "describe-unfiltered" if unfiltered else "describe"
    return "mutating"


class TokenBucket:
    """`size` tokens refilling `rate` a second; a call takes one."""

    def __init__(self, size: float, rate: float):
        self.size, self.rate = size, rate
        self.tokens, self.at = size, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Ec2Error(Exception):
    """An EC2 error answer: code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class State:
    """Everything the layer keeps besides moto's own state."""

    def __init__(self, region: str):
        self.region = region
        self.endpoint = ""
        self.lock = threading.RLock()
        self.calls: Counter[str] = Counter()
        # (action, unix time, the call's NetworkInterfaceId or "")
        self.call_log: list[tuple[str, float, str]] = []
        self.faults: dict[str, list[dict]] = {}
        # One limit for every ENI (`POST config`), None: each ENI's own (`eni_limit`).
        self.eni_ipv4_limit: int | None = None
        self.eni_ipv6_limit: int | None = None
        self.imds_delay = 0.0
        self.imds_down_until = 0.0  # monotonic time until which metadata answers 503
        # Metadata by source address: each request answered, and each connection refused
        # (an attempt that got no answer).
        self.metadata_requests: Counter[str] = Counter()
        self.metadata_refused: Counter[str] = Counter()
        # (ENI, address) -> [(when it came or went, whether the ENI holds it since), ...]
        self.changed_at: dict[tuple[str, str], list[tuple[float, bool]]] = {}
        self.buckets = {name: TokenBucket(*size) for name, size in DEFAULT_BUCKETS.items()}
        self.throttled: Counter[str] = Counter()
        # Every address an unassign call took off an ENI: (wall-clock time, ENI, address).
        self.released: list[tuple[float, str, str]] = []
        self.building = False

    @property
    def backend(self):
        return ec2_backends[ACCOUNT][self.region]

    def eni(self, eni_id: str):
        try:
            return self.backend.get_network_interface(eni_id)
        except Exception as error:
            raise Ec2Error("InvalidNetworkInterfaceID.NotFound",
                           f"The networkInterface ID '{eni_id}' does not exist") from error

    def eni_limit(self, eni, version: int) -> int:
        """The IPv4 (4) or IPv6 (6) addresses and prefixes `eni` may hold: the override of
        `POST config` if set, else its instance's type's, else (unattached, or a type EC2 does
        not have) the default."""
        override = self.eni_ipv4_limit if version == 4 else self.eni_ipv6_limit
        if override is not None:
            return override
        instance = getattr(eni, "instance", None)
        limits = instance_type_limits(instance.instance_type) if instance is not None else None
        return (limits or DEFAULT_ENI_LIMITS)[version]

    def take_fault(self, action: str, params: dict) -> dict | None:
        """The fault the next `action` call meets: one of `count` calls, or every call until
        `until` (monotonic time) for a fault given in seconds; a fault with `addresses` only
        meets the calls that name one of them (as an address to assign or unassign)."""
        named = call_addresses(params)
        with self.lock:
            queue = self.faults.get(action) or self.faults.get("*")
            if not queue:
                return None
            now = time.monotonic()
            queue[:] = [fault for fault in queue if "until" not in fault or now < fault["until"]]
            for index, fault in enumerate(queue):
                if fault.get("addresses") and not named.intersection(fault["addresses"]):
                    continue
                if "until" in fault:
                    return fault
                fault["count"] -= 1
                if fault["count"] <= 0:
                    queue.pop(index)
                return fault
            return None

    def record(self, eni_id: str, addresses, present: bool) -> None:
        """Notes that `addresses` came to (`present`) or left the ENI now."""
        now = time.monotonic()
        for address in addresses:
            self.changed_at.setdefault((eni_id, address), []).append((now, present))

    def throttle(self, action: str, params: dict) -> bool:
        """Takes a token for the call; True when the bucket is empty (the call is refused)."""
        if self.building:
            return False
        with self.lock:
            bucket = self.buckets.get(bucket_name(action, params))
            if bucket is None or bucket.take():
                return False
            self.throttled[action] += 1
            return True

    def set_buckets(self, request: dict) -> None:
        """`{"name": [size, refill] | null}`; `"*"` applies to every bucket; `null` disables."""
        with self.lock:
            for name, size in request.items():
                for target in (DEFAULT_BUCKETS if name == "*" else [name]):
                    if size is None:
                        self.buckets.pop(target, None)
                    else:
                        self.buckets[target] = TokenBucket(float(size[0]), float(size[1]))

    def force_assign(self, eni_id: str, ipv4: list[str], ipv6: list[str]) -> None:
        """Test setup: puts addresses on an ENI directly, taking them from whichever ENI held
        them (as another node's helper would have)."""
        with self.lock:
            eni = self.eni(eni_id)
            for other in self.backend.enis.values():
                self.record(other.id, [ip for ip in ipv4 if ip in ipv4_of(other)]
                            + [ip for ip in ipv6 if ip in other.ipv6_addresses], present=False)
                other.private_ip_addresses[:] = [item for item in other.private_ip_addresses
                                                 if item["PrivateIpAddress"] not in ipv4]
                other.ipv6_addresses[:] = [address for address in other.ipv6_addresses if address not in ipv6]
            eni.private_ip_addresses.extend({"Primary": False, "PrivateIpAddress": ip} for ip in ipv4)
            eni.ipv6_addresses.extend(ipv6)
            self.record(eni.id, ipv4 + ipv6, present=True)

    def addresses(self, eni_id: str) -> dict:
        with self.lock:
            eni = self.eni(eni_id)
            return {"id": eni.id, "ipv4": ipv4_of(eni), "ipv6": list(eni.ipv6_addresses),
                    "ipv4_prefixes": prefixes_of(eni, 4), "ipv6_prefixes": prefixes_of(eni, 6)}


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


def prefixes_of(eni, version: int) -> list[str]:
    """The delegated prefixes of an ENI, kept where moto's serializer finds them."""
    key = f"Ipv{version}Prefix"
    return [item[key] for item in getattr(eni, f"ipv{version}_prefixes", None) or []]


def set_prefixes(eni, version: int, prefixes: list[str]) -> None:
    setattr(eni, f"ipv{version}_prefixes", [{f"Ipv{version}Prefix": prefix} for prefix in prefixes])


def prefix_holding(enis, address: str) -> tuple[str, object] | None:
    """(prefix, ENI) of the delegated prefix that contains `address`, if any."""
    ip = ipaddress.ip_address(address)
    for eni in enis:
        for prefix in prefixes_of(eni, ip.version):
            if ip in ipaddress.ip_network(prefix):
                return prefix, eni
    return None


def refuse_inside_a_prefix(enis, address: str) -> None:
    """EC2 refuses to assign an address of a delegated prefix on its own."""
    inside = prefix_holding(enis, address)
    if inside:
        raise Ec2Error("InvalidParameterValue",
                       f"Address {address} is part of prefix {inside[0]} delegated to {inside[1].id}; "
                       "the addresses of a prefix cannot be assigned one by one")


def addresses_response(action: str, eni_id: str) -> tuple:
    """A successful answer the layer gives itself (prefix-only calls, which moto ignores)."""
    body = (f'<{action}Response xmlns="{EC2_XMLNS}"><requestId>{uuid.uuid4()}</requestId>'
            f"<networkInterfaceId>{eni_id}</networkInterfaceId><return>true</return></{action}Response>").encode()
    return 200, [("Content-Type", "text/xml")], body


def call_addresses(params: dict) -> set[str]:
    """The addresses a call names: `PrivateIpAddress.N` and `Ipv6Addresses.N` (the assign
    and unassign calls, EC2 API reference)."""
    return {
        value
        for name, values in params.items()
        if name.startswith(("PrivateIpAddress.", "Ipv6Addresses."))
        for value in values
    }


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
    """WSGI middleware in front of moto's EC2; `control` answers paths under /_ctl/."""

    def __init__(self, app, state: State, control):
        self.app, self.state, self.control = app, state, control
        self.rules = {
            "AssignPrivateIpAddresses": self.assign_private,
            "UnassignPrivateIpAddresses": lambda params: self.unassign(params, 4),
            "AssignIpv6Addresses": self.assign_ipv6,
            "UnassignIpv6Addresses": lambda params: self.unassign(params, 6),
            "DescribeNetworkInterfaces": self.describe_interfaces,
            "DescribeInstanceTypes": self.describe_instance_types,
        }

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/_ctl/"):
            return self.respond(start_response, *self.control(environ))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        params = parse_qs(body.decode(), keep_blank_values=True)
        action = params.get("Action", [""])[0]
        with self.state.lock:
            self.state.calls[action] += 1
            self.state.call_log.append((action, time.time(), params.get("NetworkInterfaceId", [""])[0]))
        if self.state.throttle(action, params):
            return self.respond(start_response, *error_response(
                Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503)))
        fault = self.state.take_fault(action, params)
        if fault:
            time.sleep(fault.get("delay_ms", 0) / 1000)
            if fault.get("code") == "RequestLimitExceeded":  # an injected throttle counts as one
                with self.state.lock:
                    self.state.throttled[action] += 1
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
        return self.state.eni(params.get("NetworkInterfaceId", [""])[0])

    def enis_in_vpc(self, vpc_id):
        return [eni for eni in self.state.backend.enis.values() if eni.subnet.vpc_id == vpc_id]

    def assign_private(self, params):
        eni = self.eni(params)
        addresses = numbered(params, "PrivateIpAddress")
        reassign = params.get("AllowReassignment", ["false"])[0].lower() == "true"
        held = ipv4_of(eni)
        new = [address for address in dict.fromkeys(addresses) if address not in held]
        vpc_enis = self.enis_in_vpc(eni.subnet.vpc_id)
        for address in new:
            check_ipv4_in_subnet(eni, address)
            refuse_inside_a_prefix(vpc_enis, address)
        prefixes = self.new_prefixes(eni, params, 4, vpc_enis)
        limit = self.state.eni_limit(eni, 4)
        if len(held) + len(new) + len(prefixes_of(eni, 4)) + len(prefixes) > limit:
            raise Ec2Error("PrivateIpAddressLimitExceeded",
                           f"Number of private addresses will exceed limit of {limit} for {eni.id}")
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
            self.state.record(other.id, [address], present=False)
        self.state.record(eni.id, new, present=True)
        set_prefixes(eni, 4, prefixes_of(eni, 4) + prefixes)
        return None if addresses else addresses_response("AssignPrivateIpAddresses", eni.id)

    def new_prefixes(self, eni, params, version: int, vpc_enis) -> list[str]:
        """The prefixes of an assign call, checked: the delegated size, inside the subnet,
        overlapping no address or prefix in use in the VPC."""
        requested = list(dict.fromkeys(numbered(params, f"Ipv{version}Prefix")))
        subnets = ([ipaddress.ip_network(eni.subnet.cidr_block)] if version == 4
                   else subnet_ipv6_networks(eni.subnet))
        for text in requested:
            prefix = ipaddress.ip_network(text)
            if prefix.prefixlen != PREFIX_LENGTH[version] or not any(prefix.subnet_of(net) for net in subnets):
                raise Ec2Error("InvalidParameterValue",
                               f"Prefix {text} is not a /{PREFIX_LENGTH[version]} inside the subnet of {eni.id}")
            for other in vpc_enis:
                used = ipv4_of(other) if version == 4 else list(other.ipv6_addresses)
                if any(ipaddress.ip_address(address) in prefix for address in used) or any(
                        prefix.overlaps(ipaddress.ip_network(held)) for held in prefixes_of(other, version)):
                    raise Ec2Error("InvalidParameterValue", f"Prefix {text} overlaps addresses in use by {other.id}")
        return requested

    def drop_prefixes(self, eni, params, version: int) -> list[str]:
        """The prefixes of an unassign call, all held by the ENI (or the whole call fails)."""
        requested = numbered(params, f"Ipv{version}Prefix")
        held = prefixes_of(eni, version)
        if any(prefix not in held for prefix in requested):
            raise Ec2Error("InvalidParameterValue", f"Some of the specified prefixes are not assigned to interface {eni.id}")
        return requested

    def assign_ipv6(self, params):
        eni = self.eni(params)
        addresses = list(dict.fromkeys(numbered(params, "Ipv6Addresses")))
        networks = subnet_ipv6_networks(eni.subnet)
        vpc_enis = self.enis_in_vpc(eni.subnet.vpc_id)
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not any(ip in network for network in networks):
                raise Ec2Error("InvalidParameterValue", f"Address {address} does not fall within the subnet's IPv6 range")
            for other in vpc_enis:
                if address in other.ipv6_addresses:
                    raise Ec2Error("InvalidParameterValue", f"Address {address} is in use by {other.id}")
            refuse_inside_a_prefix(vpc_enis, address)
        prefixes = self.new_prefixes(eni, params, 6, vpc_enis)
        limit = self.state.eni_limit(eni, 6)
        if len(eni.ipv6_addresses) + len(addresses) + len(prefixes_of(eni, 6)) + len(prefixes) > limit:
            raise Ec2Error("Ipv6AddressLimitExceeded",
                           f"Number of IPv6 addresses will exceed limit of {limit} for {eni.id}")
        self.state.record(eni.id, addresses, present=True)
        set_prefixes(eni, 6, prefixes_of(eni, 6) + prefixes)
        return None if addresses else addresses_response("AssignIpv6Addresses", eni.id)

    def unassign(self, params, version: int):
        """Unassign{PrivateIp,Ipv6}Addresses: all or nothing; never the primary address."""
        eni = self.eni(params)
        if version == 4:
            addresses, held, action = numbered(params, "PrivateIpAddress"), ipv4_of(eni), "UnassignPrivateIpAddresses"
        else:
            addresses, held, action = numbered(params, "Ipv6Addresses"), eni.ipv6_addresses, "UnassignIpv6Addresses"
        for address in addresses:
            if version == 4 and address == eni.private_ip_address:
                raise Ec2Error("InvalidParameterValue", f"Address {address} is the primary address of {eni.id} and cannot be unassigned")
            if address not in held:
                raise Ec2Error("InvalidParameterValue", f"Some of the specified addresses are not assigned to interface {eni.id}")
        dropped = self.drop_prefixes(eni, params, version)
        set_prefixes(eni, version, [prefix for prefix in prefixes_of(eni, version) if prefix not in dropped])
        self.state.record(eni.id, addresses, present=False)
        self.state.released.extend((time.time(), eni.id, address) for address in addresses)
        return None if addresses else addresses_response(action, eni.id)

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
                kept[name] = values
            index += 1
        if matching is None:
            return None
        if not matching:
            body = (f'<DescribeNetworkInterfacesResponse xmlns="{EC2_XMLNS}"><requestId>{uuid.uuid4()}</requestId>'
                    "<networkInterfaceSet/></DescribeNetworkInterfacesResponse>").encode()
            return 200, [("Content-Type", "text/xml")], body
        rewritten = {key: value for key, value in params.items() if not key.startswith("Filter.")}
        for position, (name, values) in enumerate(kept.items(), start=1):
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

    @staticmethod
    def describe_instance_types(params):
        """Names each type of `InstanceType.N` once: moto refuses a repeated one as unknown."""
        named = numbered(params, "InstanceType")
        once = list(dict.fromkeys(named))
        if once == named:
            return None
        rewritten = {key: value for key, value in params.items() if not key.startswith("InstanceType.")}
        for position, instance_type in enumerate(once, start=1):
            rewritten[f"InstanceType.{position}"] = [instance_type]
        return rewritten
