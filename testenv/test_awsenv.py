"""The stand-in's own contract: the EC2 rules moto lacks, fault injection, call counts, and
IMDSv2 answering from the same state. Runs the real server as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).parent
TOPOLOGY = {
    "subnets": {
        "node": {"cidr": "10.0.0.0/24"},
        "multus1": {"cidr": "10.0.1.0/24", "ipv6": True},
        "multus2": {"cidr": "10.0.2.0/24"},
    },
    "nodes": {"node1": {"enis": ["node", "multus1", "multus1", "multus2"]}, "node2": {"enis": ["node", "multus1"]}},
}


def call(endpoint: str, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(f"{endpoint}/_ctl/{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def env():
    process = subprocess.Popen([sys.executable, str(HERE / "awsenv.py")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        endpoint = json.loads(process.stdout.readline())["ec2_endpoint"]
        topology = call(endpoint, "POST", "topology", TOPOLOGY)
        ec2 = boto3.client("ec2", region_name="us-east-2", endpoint_url=endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        yield endpoint, topology, ec2
    finally:
        process.terminate()
        process.wait(timeout=10)


def enis(topology, node):
    return topology["nodes"][node]["enis"]


def addresses(endpoint, eni_id):
    return call(endpoint, "GET", f"eni/{eni_id}")


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_reassignment_moves_an_ipv4_and_is_refused_without_it(env):
    endpoint, topology, ec2 = env
    here, there = enis(topology, "node1")[1]["id"], enis(topology, "node2")[1]["id"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=there, PrivateIpAddresses=["10.0.1.50"])
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=here, PrivateIpAddresses=["10.0.1.50"])
    assert error_code(excinfo) == "PrivateIpAddressInUse"
    ec2.assign_private_ip_addresses(NetworkInterfaceId=here, PrivateIpAddresses=["10.0.1.50"], AllowReassignment=True)
    assert "10.0.1.50" in addresses(endpoint, here)["ipv4"]
    assert "10.0.1.50" not in addresses(endpoint, there)["ipv4"]


@pytest.mark.parametrize("address", ["10.0.2.9", "10.0.1.1", "10.0.1.255"])
def test_addresses_outside_the_subnet_or_reserved_are_invalid(env, address):
    _, topology, ec2 = env
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=enis(topology, "node1")[1]["id"], PrivateIpAddresses=[address])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_a_batch_is_all_or_nothing(env):
    endpoint, topology, ec2 = env
    eni = enis(topology, "node1")[2]["id"]
    with pytest.raises(ClientError):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.60", "10.0.9.9"])
    assert "10.0.1.60" not in addresses(endpoint, eni)["ipv4"]
    with pytest.raises(ClientError) as excinfo:
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.61"])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_the_primary_address_cannot_be_unassigned(env):
    _, topology, ec2 = env
    eni = enis(topology, "node1")[1]
    with pytest.raises(ClientError) as excinfo:
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni["id"], PrivateIpAddresses=[eni["primary_ip"]])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_ipv6_has_one_holder_and_must_be_unassigned_first(env):
    endpoint, topology, ec2 = env
    prefix = topology["subnets"]["multus1"]["ipv6_cidr"].split("/")[0]
    address = prefix + "80"
    here, there = enis(topology, "node1")[1]["id"], enis(topology, "node2")[1]["id"]
    ec2.assign_ipv6_addresses(NetworkInterfaceId=there, Ipv6Addresses=[address])
    with pytest.raises(ClientError):
        ec2.assign_ipv6_addresses(NetworkInterfaceId=here, Ipv6Addresses=[address])
    found = ec2.describe_network_interfaces(Filters=[{"Name": "ipv6-addresses.ipv6-address", "Values": [address]}])
    assert [eni["NetworkInterfaceId"] for eni in found["NetworkInterfaces"]] == [there]
    ec2.unassign_ipv6_addresses(NetworkInterfaceId=there, Ipv6Addresses=[address])
    ec2.assign_ipv6_addresses(NetworkInterfaceId=here, Ipv6Addresses=[address])
    assert addresses(endpoint, here)["ipv6"] == [address]
    with pytest.raises(ClientError):
        ec2.assign_ipv6_addresses(NetworkInterfaceId=enis(topology, "node1")[3]["id"], Ipv6Addresses=[address])


def test_secondary_address_filter_finds_the_holder(env):
    _, topology, ec2 = env
    eni = enis(topology, "node2")[1]["id"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.70"])
    found = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": ["10.0.1.70"]}])
    assert [item["NetworkInterfaceId"] for item in found["NetworkInterfaces"]] == [eni]
    none = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": ["10.0.1.71"]}])
    assert none["NetworkInterfaces"] == []


def test_per_eni_limit(env):
    endpoint, topology, ec2 = env
    call(endpoint, "POST", "config", {"eni_ipv4_limit": 3})
    try:
        eni = enis(topology, "node1")[3]["id"]
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.20", "10.0.2.21"])
        with pytest.raises(ClientError) as excinfo:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.22"])
        assert error_code(excinfo) == "PrivateIpAddressLimitExceeded"
    finally:
        call(endpoint, "POST", "config", {"eni_ipv4_limit": 10})


def test_faults_and_call_counts(env):
    endpoint, topology, ec2 = env
    call(endpoint, "POST", "calls/reset")
    call(endpoint, "POST", "faults", {"action": "AssignPrivateIpAddresses", "code": "RequestLimitExceeded", "status": 503, "count": 2})
    client = boto3.client("ec2", region_name="us-east-2", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    eni = enis(topology, "node1")[2]["id"]
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.90"])
        assert error_code(excinfo) == "RequestLimitExceeded"
    client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.90"])
    assert call(endpoint, "GET", "calls") == {"AssignPrivateIpAddresses": 3}


def imds_get(endpoint: str, path: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"{endpoint}/latest/meta-data/{path}")
    if token:
        request.add_header("X-aws-ec2-metadata-token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_imds_v2_reads_the_same_state_with_a_delay(env):
    endpoint, topology, ec2 = env
    node = topology["nodes"]["node1"]
    imds = node["imds_endpoint"]
    assert imds_get(imds, "instance-id", None)[0] == 401
    request = urllib.request.Request(f"{imds}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(request, timeout=5).read().decode()
    assert imds_get(imds, "instance-id", token) == (200, node["instance_id"])
    assert imds_get(imds, "placement/region", token) == (200, "us-east-2")
    macs = imds_get(imds, "network/interfaces/macs/", token)[1].split()
    assert macs == [f"{eni['mac']}/" for eni in node["enis"]]
    eni = node["enis"][2]
    base = f"network/interfaces/macs/{eni['mac']}/"
    assert imds_get(imds, base + "interface-id", token) == (200, eni["id"])
    assert imds_get(imds, base + "device-number", token) == (200, "2")
    assert imds_get(imds, base + "subnet-ipv4-cidr-block", token) == (200, "10.0.1.0/24")
    call(endpoint, "POST", "config", {"imds_delay_ms": 300})
    try:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni["id"], PrivateIpAddresses=["10.0.1.95"])
        assert "10.0.1.95" not in imds_get(imds, base + "local-ipv4s", token)[1].split()
        time.sleep(0.4)
        assert "10.0.1.95" in imds_get(imds, base + "local-ipv4s", token)[1].split()
    finally:
        call(endpoint, "POST", "config", {"imds_delay_ms": 0})
