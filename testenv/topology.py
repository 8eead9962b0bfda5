"""A bed's topology: a VPC, its subnets, and nodes (instances) with their ENIs, built in the
EC2 stand-in from one description.

The description is JSON (files in testenv/topologies/, or built by a test):

    {"vpc_cidr": "10.0.0.0/16",
     "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus1": {"cidr": "10.0.1.0/24", "ipv6": true}},
     "nodes": {"node1": {"enis": [{"subnet": "node"}, {"subnet": "multus1", "multus": true}]}}}

Each node's first ENI is the instance's primary ENI (device 0). An ENI may say:

* `name`: how pods and tests refer to it (default `eth<position>`, as the node names it);
* `multus: true`: a Multus ENI, tagged `node.k8s.amazonaws.com/no_manage=true` as the EKS
  Multus guide tells operators to do (the VPC CNI then leaves it alone);
* `vpc_cni: true`: an ENI the VPC CNI created for its own pods: description `aws-K8S-<instance>`
  and tag `node.k8s.amazonaws.com/instance_id` (amazon-vpc-cni-k8s, pkg/awsutils/awsutils.go);
* `tags` (object) and `description`, as given;
* `secondary_ips`: addresses the ENI holds from the start (a number: the next free ones of
  its subnet; or a list), e.g. the VPC CNI's warm pool.

Primary and generated addresses are handed out from .10 up in each subnet; tests use .50 up.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import boto3

from testenv.ec2 import CREDENTIALS, State

TOPOLOGIES = Path(__file__).parent / "topologies"
NO_MANAGE_TAG = "node.k8s.amazonaws.com/no_manage"
VPC_CNI_INSTANCE_TAG = "node.k8s.amazonaws.com/instance_id"
VPC_CNI_DESCRIPTION = "aws-K8S-"


def load(name: str) -> dict:
    """A topology file of testenv/topologies/ by name (`how-to`) or path."""
    path = Path(name) if name.endswith(".json") else TOPOLOGIES / f"{name}.json"
    return json.loads(path.read_text())


def eni_spec(spec: str | dict, position: int) -> dict:
    """The long form of one ENI of a node description."""
    spec = {"subnet": spec} if isinstance(spec, str) else dict(spec)
    spec.setdefault("name", f"eth{position}")
    spec["tags"] = dict(spec.get("tags", {}))
    if spec.get("multus"):
        spec["tags"].setdefault(NO_MANAGE_TAG, "true")
    return spec


class Builder:
    """Creates what a description asks for through EC2 (boto3 against the stand-in)."""

    def __init__(self, state: State):
        self.state = state
        self.ec2 = boto3.client("ec2", region_name=state.region, endpoint_url=state.endpoint, **CREDENTIALS)
        self.subnets: dict[str, dict] = {}
        self.next_host: dict[str, int] = {}

    def address(self, subnet_name: str) -> str:
        network = ipaddress.ip_network(self.subnets[subnet_name]["cidr"])
        address = network.network_address + self.next_host[subnet_name]
        self.next_host[subnet_name] += 1
        return str(address)

    def build(self, description: dict) -> dict:
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
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType=node_spec.get("instance_type", "m5.large"),
            SubnetId=self.subnets[primary["subnet"]]["id"],
            PrivateIpAddress=self.address(primary["subnet"]))["Instances"][0]
        instance_id = instance["InstanceId"]
        eni_ids = [instance["NetworkInterfaces"][0]["NetworkInterfaceId"]]
        for device_index, spec in enumerate(others, start=1):
            eni = self.ec2.create_network_interface(SubnetId=self.subnets[spec["subnet"]]["id"],
                                                    PrivateIpAddress=self.address(spec["subnet"]),
                                                    Description=self.description(spec, instance_id))
            eni_id = eni["NetworkInterface"]["NetworkInterfaceId"]
            self.ec2.attach_network_interface(NetworkInterfaceId=eni_id, InstanceId=instance_id,
                                              DeviceIndex=device_index)
            eni_ids.append(eni_id)
        enis = []
        for spec, eni_id in zip(specs, eni_ids):
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
            eni = self.state.backend.get_network_interface(eni_id)
            enis.append({"name": spec["name"], "id": eni_id, "mac": eni.mac_address,
                         "device_index": len(enis), "subnet": spec["subnet"], "primary_ip": eni.private_ip_address,
                         "secondary_ips": secondary, "tags": tags, "description": eni.description or ""})
        return {"instance_id": instance_id, "enis": enis}

    @staticmethod
    def description(spec: dict, instance_id: str) -> str:
        if "description" in spec:
            return spec["description"]
        return f"{VPC_CNI_DESCRIPTION}{instance_id}" if spec.get("vpc_cni") else ""
