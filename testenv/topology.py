"""A bed's topology: a VPC, its subnets, and nodes (instances) with their ENIs, built in the
EC2 stand-in from one description.

The description is JSON (files in testenv/topologies/, or built by a test):

    {"vpc_cidr": "10.0.0.0/16",
     "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus1": {"cidr": "10.0.1.0/24", "ipv6": true}},
     "nodes": {"node1": {"instance_type": "c5.4xlarge",
                         "enis": [{"subnet": "node"}, {"subnet": "multus1", "multus": true}]}}}

A node may name its `instance_type` (default m5.large), any type of moto's copy of EC2's
DescribeInstanceTypes data (moto/ec2/resources/instance_types.json.gz): it sets the addresses
each of its ENIs may hold (testenv/ec2.py) and how many ENIs it may have. A description whose
node has more ENIs than its type's `NetworkInfo.MaximumNetworkInterfaces`, or more on a
network card than that card's `MaximumNetworkInterfaces` (EC2 user guide, "Maximum number of
network interfaces" and "Network cards"; EC2 answers AttachmentLimitExceeded), is refused
before anything is made, as is an unknown type.

Each node's first ENI is the instance's primary ENI (device 0). An ENI may say:

* `name`: how pods and tests refer to it, and the name of its link in the node's namespace
  (default `eth<position>`, as Amazon Linux names the node's interfaces; testenv/pods.py):
  up to 15 characters of letters, digits, `_`, `.` and `-`, one per ENI of the node, and not
  `eth0` or `lo` but for the primary ENI (whose link is the node's `eth0` whatever its name);
* `multus: true`: a Multus ENI, tagged `node.k8s.amazonaws.com/no_manage=true` as the EKS
  Multus guide tells operators to do (the VPC CNI then leaves it alone);
* `vpc_cni: true`: an ENI the VPC CNI created for its own pods: description `aws-K8S-<instance>`
  and tag `node.k8s.amazonaws.com/instance_id` (amazon-vpc-cni-k8s, pkg/awsutils/awsutils.go);
* `tags` (object) and `description`, as given;
* `secondary_ips`: addresses the ENI holds from the start (a number: the next free ones of
  its subnet; or a list), e.g. the VPC CNI's warm pool;
* `ipv4_prefixes`, `ipv6_prefixes`: delegated prefixes (/28, /80) it holds from the start (a
  number: that many from the upper half of its subnet; or a list);
* `card`: the network card it is attached to (default 0), at device index `device` (default:
  the next free one on that card, so the first ENI of card 1 is at device 0, as the VPC CNI
  attaches them on multi-card instances).

Primary and generated addresses are handed out from .10 up in each subnet; tests use .50 up.

The answer gives each node its `instance_id`, `instance_type`, `availability_zone`,
`eni_ipv4_limit` and `eni_ipv6_limit` (its type's addresses per ENI, primary included) and
its `enis`, each with its `name`, `interface` (its link in the node's namespace: `eth0` for
the primary ENI, else its name), `id`, `mac`, `card`, `device_index`, `subnet`,
`primary_ip`, `secondary_ips`, prefixes, `tags` and `description`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import boto3
from moto.ec2.models.instance_types import INSTANCE_TYPES

from testenv.ec2 import CREDENTIALS, State, instance_type_limits
from testenv.pods import PodError

TOPOLOGIES = Path(__file__).parent / "topologies"
NO_MANAGE_TAG = "node.k8s.amazonaws.com/no_manage"
VPC_CNI_INSTANCE_TAG = "node.k8s.amazonaws.com/instance_id"
VPC_CNI_DESCRIPTION = "aws-K8S-"
DEFAULT_INSTANCE_TYPE = "m5.large"
# A link name the kernel takes (IFNAMSIZ: 15 characters) and `ip` reads as a name.
LINK_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}")


class TopologyError(PodError):
    """A description the bed cannot build (HTTP 400, as a refused pod request)."""


def load(name: str) -> dict:
    """A topology file of testenv/topologies/ by name (`how-to`) or path."""
    path = Path(name) if name.endswith(".json") else TOPOLOGIES / f"{name}.json"
    return json.loads(path.read_text())


def eni_spec(spec: str | dict, position: int) -> dict:
    """The long form of one ENI of a node description."""
    spec = {"subnet": spec} if isinstance(spec, str) else dict(spec)
    spec.setdefault("name", f"eth{position}")
    spec["interface"] = spec["name"] if position else "eth0"
    spec["tags"] = dict(spec.get("tags", {}))
    if spec.get("multus"):
        spec["tags"].setdefault(NO_MANAGE_TAG, "true")
    return spec


def check(description: dict) -> None:
    """Refuses a description the bed cannot build, before anything is made: an unknown
    instance type, more ENIs than the type takes (in all, or on one network card), ENI names
    that cannot be the node's links, an ENI in no subnet of the description."""
    subnets = description.get("subnets", {})
    for node, node_spec in description.get("nodes", {}).items():
        instance_type = node_spec.get("instance_type", DEFAULT_INSTANCE_TYPE)
        if instance_type not in INSTANCE_TYPES:
            raise TopologyError(f"node {node}: EC2 has no instance type {instance_type!r}")
        network = INSTANCE_TYPES[instance_type]["NetworkInfo"]
        specs = [eni_spec(spec, position) for position, spec in enumerate(node_spec.get("enis", []))]
        if not specs:
            raise TopologyError(f"node {node}: no ENI (the first is the instance's primary ENI)")
        if len(specs) > network["MaximumNetworkInterfaces"]:
            raise TopologyError(
                f"node {node}: {len(specs)} ENIs, but a {instance_type} takes at most "
                f"{network['MaximumNetworkInterfaces']} (MaximumNetworkInterfaces; EC2 answers "
                "AttachmentLimitExceeded): name a larger instance_type")
        cards = {card["NetworkCardIndex"]: card["MaximumNetworkInterfaces"] for card in network.get("NetworkCards", [])}
        for card in sorted({spec.get("card", 0) for spec in specs}):
            on_card = sum(spec.get("card", 0) == card for spec in specs)
            if card not in cards:
                raise TopologyError(f"node {node}: a {instance_type} has no network card {card} "
                                    f"(MaximumNetworkCards {network.get('MaximumNetworkCards', 1)})")
            if on_card > cards[card]:
                raise TopologyError(f"node {node}: {on_card} ENIs on network card {card}, but that card of a "
                                    f"{instance_type} takes at most {cards[card]} (AttachmentLimitExceeded)")
        names = [spec["name"] for spec in specs]
        for position, spec in enumerate(specs):
            name = spec["name"]
            if not isinstance(name, str) or not LINK_NAME.fullmatch(name):
                raise TopologyError(f"node {node}: ENI name {name!r} cannot name a link (up to 15 letters, "
                                    "digits, '_', '.', '-')")
            if position and name in ("eth0", "lo"):
                raise TopologyError(f"node {node}: ENI {position} cannot be named {name}: the node's {name} "
                                    "is another link (eth0: the primary ENI's)")
            if spec.get("subnet") not in subnets:
                raise TopologyError(f"node {node}: ENI {name} is in no subnet of the topology ({spec.get('subnet')!r})")
        for name in names:
            if names.count(name) > 1:
                raise TopologyError(f"node {node}: two ENIs named {name}")


class Builder:
    """Creates what a description asks for through EC2 (boto3 against the stand-in)."""

    def __init__(self, state: State):
        self.state = state
        self.ec2 = boto3.client("ec2", region_name=state.region, endpoint_url=state.endpoint, **CREDENTIALS)
        self.subnets: dict[str, dict] = {}
        self.next_host: dict[str, int] = {}
        self.next_prefix: dict[tuple[str, int], int] = {}

    def address(self, subnet_name: str) -> str:
        network = ipaddress.ip_network(self.subnets[subnet_name]["cidr"])
        address = network.network_address + self.next_host[subnet_name]
        self.next_host[subnet_name] += 1
        return str(address)

    def build(self, description: dict) -> dict:
        check(description)
        vpc = self.ec2.create_vpc(CidrBlock=description.get("vpc_cidr", "10.0.0.0/16"),
                                  AmazonProvidedIpv6CidrBlock=True)["Vpc"]
        vpc_ipv6 = ipaddress.ip_network(self.ec2.describe_vpcs(VpcIds=[vpc["VpcId"]])["Vpcs"][0]
                                        ["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"])
        ipv6_subnets = vpc_ipv6.subnets(new_prefix=64)
        for name, subnet_spec in description["subnets"].items():
            arguments = {"VpcId": vpc["VpcId"], "CidrBlock": subnet_spec["cidr"]}
            if subnet_spec.get("ipv6"):
                arguments["Ipv6CidrBlock"] = str(next(ipv6_subnets))
            subnet = self.ec2.create_subnet(**arguments)["Subnet"]
            self.subnets[name] = {"id": subnet["SubnetId"], "cidr": subnet_spec["cidr"],
                                  "ipv6_cidr": arguments.get("Ipv6CidrBlock")}
            self.next_host[name] = 10
        nodes = {name: self.node(node_spec) for name, node_spec in description["nodes"].items()}
        return {"vpc_id": vpc["VpcId"], "region": self.state.region, "subnets": self.subnets, "nodes": nodes}

    def node(self, node_spec: dict) -> dict:
        specs = [eni_spec(spec, position) for position, spec in enumerate(node_spec["enis"])]
        primary, *others = specs
        instance = self.ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
            InstanceType=node_spec.get("instance_type", DEFAULT_INSTANCE_TYPE),
            SubnetId=self.subnets[primary["subnet"]]["id"],
            PrivateIpAddress=self.address(primary["subnet"]))["Instances"][0]
        instance_id = instance["InstanceId"]
        eni_ids = [instance["NetworkInterfaces"][0]["NetworkInterfaceId"]]
        used = {(0, 0)}
        for spec in others:
            card = spec.get("card", 0)
            device = spec.get("device", min(index for index in range(100) if (card, index) not in used))
            used.add((card, device))
            eni_ids.append(self.attach_new(instance_id, spec, card, device))
        enis = [self.finish(instance_id, spec, eni_id) for spec, eni_id in zip(specs, eni_ids)]
        limits = instance_type_limits(instance["InstanceType"])
        return {"instance_id": instance_id, "instance_type": instance["InstanceType"],
                "availability_zone": instance["Placement"]["AvailabilityZone"],
                "eni_ipv4_limit": limits[4], "eni_ipv6_limit": limits[6], "enis": enis}

    def attach_new(self, instance_id: str, spec: dict, card: int, device: int) -> str:
        """A new ENI of `spec`, attached to the instance at `device` of `card`: its id."""
        eni = self.ec2.create_network_interface(SubnetId=self.subnets[spec["subnet"]]["id"],
                                                PrivateIpAddress=self.address(spec["subnet"]),
                                                Description=self.description(spec, instance_id))
        eni_id = eni["NetworkInterface"]["NetworkInterfaceId"]
        # moto keys an instance's ENIs by device index alone: attach at a unique one, then
        # record the real card and device index, which Describe and metadata report.
        self.ec2.attach_network_interface(NetworkInterfaceId=eni_id, InstanceId=instance_id,
                                          DeviceIndex=100 * card + device)
        with self.state.lock:
            attached = self.state.backend.get_network_interface(eni_id)
            attached.device_index, attached.network_card_index = device, card
        return eni_id

    def finish(self, instance_id: str, spec: dict, eni_id: str) -> dict:
        """Gives the ENI the tags, addresses and prefixes of `spec`: the ENI as the topology
        answers it."""
        tags = dict(spec["tags"])
        if spec.get("vpc_cni"):
            tags.setdefault(VPC_CNI_INSTANCE_TAG, instance_id)
        if tags:
            self.ec2.create_tags(Resources=[eni_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        secondary = spec.get("secondary_ips", [])
        if isinstance(secondary, int):
            secondary = [self.address(spec["subnet"]) for _ in range(secondary)]
        if secondary:
            self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, PrivateIpAddresses=secondary)
        prefixes = {version: self.prefixes(spec, version) for version in (4, 6)}
        if prefixes[4]:
            self.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=prefixes[4])
        if prefixes[6]:
            self.ec2.assign_ipv6_addresses(NetworkInterfaceId=eni_id, Ipv6Prefixes=prefixes[6])
        eni = self.state.backend.get_network_interface(eni_id)
        return {"name": spec["name"], "interface": spec["interface"], "id": eni_id, "mac": eni.mac_address,
                "card": getattr(eni, "network_card_index", 0), "device_index": eni.device_index,
                "subnet": spec["subnet"], "primary_ip": eni.private_ip_address, "secondary_ips": secondary,
                "ipv4_prefixes": prefixes[4], "ipv6_prefixes": prefixes[6], "tags": tags,
                "description": eni.description or ""}

    def attach(self, name: str, node: dict, request: dict) -> dict:
        """A new ENI attached to built node `name` (`node`: as the topology answered it) at the
        card and device index `request` names (default: card 0, the lowest free device), as
        an operator attaches one to a running instance; `request` is an ENI of a node
        description, named `eth<device>` by default (as Amazon Linux names the device's
        link). Refused like a description: a name the node has, more ENIs than the type
        takes, an occupied device index. -> the ENI as the topology answers it."""
        card = request.get("card", 0)
        used = {(eni["card"], eni["device_index"]) for eni in node["enis"]}
        device = request.get("device", min(index for index in range(100) if (card, index) not in used))
        if (card, device) in used:
            raise TopologyError(f"device index {device} of network card {card} has an ENI attached: "
                                "detach it first")
        spec = eni_spec(dict(request, name=request.get("name", f"eth{device}")), len(node["enis"]))
        described = [*node["enis"], spec]
        check({"subnets": self.subnets, "nodes": {name: {"instance_type": node["instance_type"], "enis": described}}})
        return self.finish(node["instance_id"], spec, self.attach_new(node["instance_id"], spec, card, device))

    def detach(self, eni: dict) -> None:
        """Detaches ENI `eni` (as the topology answered it) from its instance; it stays, not
        attached, with its addresses (EC2 keeps an ENI's addresses across attachments)."""
        with self.state.lock:
            attached = self.state.backend.get_network_interface(eni["id"])
            # Back to the unique index it was attached at (attach_new), which moto keys it by.
            attached.device_index = 100 * eni["card"] + eni["device_index"]
            attachment = attached.attachment_id
        self.ec2.detach_network_interface(AttachmentId=attachment)

    def prefixes(self, spec: dict, version: int) -> list[str]:
        """The ENI's prefixes: as listed, or that many taken from the upper half of its subnet
        (IPv4 /28 from offset 128, IPv6 /80 after the first), away from the .10+ and .50+
        addresses topologies and tests use."""
        wanted = spec.get(f"ipv{version}_prefixes", [])
        if not isinstance(wanted, int):
            return list(wanted)
        subnet = self.subnets[spec["subnet"]]
        network = ipaddress.ip_network(subnet["cidr"] if version == 4 else subnet["ipv6_cidr"])
        length, start = (28, network.num_addresses // 2) if version == 4 else (80, 1 << 48)
        taken = self.next_prefix.setdefault((spec["subnet"], version), 0)
        self.next_prefix[(spec["subnet"], version)] = taken + wanted
        step = 1 << (network.max_prefixlen - length)
        return [str(ipaddress.ip_network((int(network.network_address) + start + step * (taken + index), length)))
                for index in range(wanted)]

    @staticmethod
    def description(spec: dict, instance_id: str) -> str:
        if "description" in spec:
            return spec["description"]
        return f"{VPC_CNI_DESCRIPTION}{instance_id}" if spec.get("vpc_cni") else ""
