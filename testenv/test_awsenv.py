"""The stand-in's own contract: the EC2 rules moto lacks, fault injection, call counts, and
IMDSv2 answering from the same state. Runs the real server as a subprocess (no root: no pods)."""

from __future__ import annotations

import time
import urllib.request
import xml.etree.ElementTree as ElementTree

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from testenv import topology
from testenv.client import Bed, BedError


@pytest.fixture(scope="module")
def env():
    with Bed("how-to", pods=False) as bed:
        ec2 = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        yield bed, ec2


def eni_id(bed, node, name):
    return bed.eni(node, name)["id"]


def addresses(bed, eni):
    return bed.control("GET", f"eni/{eni}")


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_reassignment_moves_an_ipv4_and_is_refused_without_it(env):
    bed, ec2 = env
    here, there = eni_id(bed, "node1", "eth1"), eni_id(bed, "node2", "eth1")
    ec2.assign_private_ip_addresses(NetworkInterfaceId=there, PrivateIpAddresses=["10.0.1.50"])
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=here, PrivateIpAddresses=["10.0.1.50"])
    assert error_code(excinfo) == "PrivateIpAddressInUse"
    ec2.assign_private_ip_addresses(NetworkInterfaceId=here, PrivateIpAddresses=["10.0.1.50"], AllowReassignment=True)
    assert "10.0.1.50" in addresses(bed, here)["ipv4"]
    assert "10.0.1.50" not in addresses(bed, there)["ipv4"]


@pytest.mark.parametrize("address", ["10.0.2.9", "10.0.1.1", "10.0.1.255"])
def test_addresses_outside_the_subnet_or_reserved_are_invalid(env, address):
    bed, ec2 = env
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id(bed, "node1", "eth1"), PrivateIpAddresses=[address])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_a_batch_is_all_or_nothing(env):
    bed, ec2 = env
    eni = eni_id(bed, "node1", "eth2")
    with pytest.raises(ClientError):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.60", "10.0.9.9"])
    assert "10.0.1.60" not in addresses(bed, eni)["ipv4"]
    with pytest.raises(ClientError) as excinfo:
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.61"])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_the_primary_address_cannot_be_unassigned(env):
    bed, ec2 = env
    eni = bed.eni("node1", "eth1")
    with pytest.raises(ClientError) as excinfo:
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni["id"], PrivateIpAddresses=[eni["primary_ip"]])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_ipv6_has_one_holder_and_must_be_unassigned_first(env):
    bed, ec2 = env
    prefix = bed.ipv6_prefix()
    address = prefix + "80"
    here, there = eni_id(bed, "node1", "eth1"), eni_id(bed, "node2", "eth1")
    ec2.assign_ipv6_addresses(NetworkInterfaceId=there, Ipv6Addresses=[address])
    with pytest.raises(ClientError):
        ec2.assign_ipv6_addresses(NetworkInterfaceId=here, Ipv6Addresses=[address])
    found = ec2.describe_network_interfaces(Filters=[{"Name": "ipv6-addresses.ipv6-address", "Values": [address]}])
    assert [eni["NetworkInterfaceId"] for eni in found["NetworkInterfaces"]] == [there]
    ec2.unassign_ipv6_addresses(NetworkInterfaceId=there, Ipv6Addresses=[address])
    ec2.assign_ipv6_addresses(NetworkInterfaceId=here, Ipv6Addresses=[address])
    assert addresses(bed, here)["ipv6"] == [address]
    with pytest.raises(ClientError):
        ec2.assign_ipv6_addresses(NetworkInterfaceId=eni_id(bed, "node1", "eth3"), Ipv6Addresses=[address])


def test_secondary_address_filter_finds_the_holder(env):
    bed, ec2 = env
    eni = eni_id(bed, "node2", "eth1")
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.70"])
    found = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": ["10.0.1.70"]}])
    assert [item["NetworkInterfaceId"] for item in found["NetworkInterfaces"]] == [eni]
    none = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": ["10.0.1.71"]}])
    assert none["NetworkInterfaces"] == []


def test_per_eni_limit(env):
    bed, ec2 = env
    bed.control("POST", "config", {"eni_ipv4_limit": 3})
    try:
        eni = eni_id(bed, "node1", "eth3")
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.20", "10.0.2.21"])
        with pytest.raises(ClientError) as excinfo:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.22"])
        assert error_code(excinfo) == "PrivateIpAddressLimitExceeded"
    finally:
        bed.control("POST", "config", {"eni_ipv4_limit": None})


def test_faults_and_call_counts(env):
    bed, ec2 = env
    bed.control("POST", "calls/reset")
    bed.control("POST", "faults", {"action": "AssignPrivateIpAddresses", "code": "RequestLimitExceeded", "status": 503, "count": 2})
    client = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    eni = eni_id(bed, "node1", "eth2")
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.90"])
        assert error_code(excinfo) == "RequestLimitExceeded"
    client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.90"])
    assert bed.control("GET", "calls") == {"AssignPrivateIpAddresses": 3}


def test_a_fault_given_in_seconds_meets_every_call_until_it_ends(env):
    bed, _ = env
    bed.control("POST", "faults", {"action": "DescribeNetworkInterfaces", "code": "UnauthorizedOperation",
                                   "status": 403, "seconds": 1})
    client = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            client.describe_network_interfaces()
        assert error_code(excinfo) == "UnauthorizedOperation"
    time.sleep(1.1)
    client.describe_network_interfaces()


def test_a_fault_with_addresses_meets_only_the_calls_naming_one_of_them(env):
    bed, ec2 = env
    bed.control("POST", "faults", {"action": "AssignPrivateIpAddresses", "code": "RequestLimitExceeded",
                                   "status": 503, "count": 2, "addresses": ["10.0.1.92"]})
    client = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    eni = eni_id(bed, "node1", "eth2")
    try:
        client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.93"])
        for batch in (["10.0.1.92"], ["10.0.1.94", "10.0.1.92"]):
            with pytest.raises(ClientError) as excinfo:
                client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=batch)
            assert error_code(excinfo) == "RequestLimitExceeded"
        assert "10.0.1.93" in addresses(bed, eni)["ipv4"]
        assert "10.0.1.94" not in addresses(bed, eni)["ipv4"]
        client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.92"])
    finally:
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.93", "10.0.1.92"])


def test_unassigned_addresses_are_logged_with_their_eni_and_time(env):
    bed, ec2 = env
    eni = eni_id(bed, "node1", "eth2")
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.91"])
    before = time.time()
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.91"])
    at, released_from, address = bed.control("GET", "released")["released"][-1]
    assert (released_from, address) == (eni, "10.0.1.91")
    assert before <= at <= time.time()


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
    bed, ec2 = env
    node = bed.topology["nodes"]["node1"]
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
    bed.control("POST", "config", {"imds_delay_ms": 300})
    try:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni["id"], PrivateIpAddresses=["10.0.1.95"])
        assert "10.0.1.95" not in imds_get(imds, base + "local-ipv4s", token)[1].split()
        time.sleep(0.4)
        assert "10.0.1.95" in imds_get(imds, base + "local-ipv4s", token)[1].split()
    finally:
        bed.control("POST", "config", {"imds_delay_ms": 0})


def test_multus_enis_carry_the_no_manage_tag_and_others_do_not(env):
    bed, ec2 = env
    node = bed.topology["nodes"]["node1"]
    found = ec2.describe_network_interfaces(Filters=[{"Name": "attachment.instance-id", "Values": [node["instance_id"]]}])
    tags = {eni["NetworkInterfaceId"]: {tag["Key"]: tag["Value"] for tag in eni.get("TagSet", [])}
            for eni in found["NetworkInterfaces"]}
    assert tags[node["enis"][0]["id"]] == {}
    for eni in node["enis"][1:]:
        assert tags[eni["id"]] == {"node.k8s.amazonaws.com/no_manage": "true"}


@pytest.fixture(scope="module")
def eks():
    with Bed("eks-node", pods=False) as bed:
        ec2 = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        yield bed, ec2


def imds_token(imds: str) -> str:
    request = urllib.request.Request(f"{imds}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    return urllib.request.urlopen(request, timeout=5).read().decode()


def test_prefixes_show_in_describe_and_metadata_and_their_addresses_cannot_be_assigned(eks):
    bed, ec2 = eks
    eth1 = bed.eni("node1", "eth1")
    (prefix,), (prefix6,) = eth1["ipv4_prefixes"], eth1["ipv6_prefixes"]
    found = ec2.describe_network_interfaces(NetworkInterfaceIds=[eth1["id"]])["NetworkInterfaces"][0]
    assert found["Ipv4Prefixes"] == [{"Ipv4Prefix": prefix}]
    assert found["Ipv6Prefixes"] == [{"Ipv6Prefix": prefix6}]
    imds = bed.topology["nodes"]["node1"]["imds_endpoint"]
    token = imds_token(imds)
    base = f"network/interfaces/macs/{eth1['mac']}/"
    assert imds_get(imds, base + "ipv4-prefix", token) == (200, prefix)
    assert imds_get(imds, base + "ipv6-prefix", token) == (200, prefix6)
    assert imds_get(imds, f"network/interfaces/macs/{bed.eni('node1', 'eth4')['mac']}/ipv4-prefix", token)[0] == 404
    inside = prefix.replace(".128/28", ".130")
    for eni in (eth1["id"], bed.eni("node1", "eth2")["id"]):
        with pytest.raises(ClientError) as excinfo:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[inside], AllowReassignment=True)
        assert error_code(excinfo) == "InvalidParameterValue"
        assert prefix in excinfo.value.response["Error"]["Message"]


def test_prefixes_are_delegated_whole_and_overlap_nothing(eks):
    bed, ec2 = eks
    eth4 = bed.eni("node1", "eth4")["id"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eth4, Ipv4Prefixes=["10.0.2.96/28"])
    assert addresses(bed, eth4)["ipv4_prefixes"] == ["10.0.2.96/28"]
    for bad in ("10.0.2.96/28", "10.0.2.100/30", "10.0.1.16/28"):
        with pytest.raises(ClientError) as excinfo:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eth4, Ipv4Prefixes=[bad])
        assert error_code(excinfo) == "InvalidParameterValue", bad
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eth4, PrivateIpAddresses=["10.0.2.50"])
    with pytest.raises(ClientError):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eth4, Ipv4Prefixes=["10.0.2.48/28"])
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eth4, Ipv4Prefixes=["10.0.2.96/28"])
    assert addresses(bed, eth4)["ipv4_prefixes"] == []
    with pytest.raises(ClientError):
        ec2.unassign_private_ip_addresses(NetworkInterfaceId=eth4, Ipv4Prefixes=["10.0.2.96/28"])


def test_vpc_cni_enis_and_multus_enis_are_told_apart_by_tag_and_description(eks):
    bed, ec2 = eks
    node = bed.topology["nodes"]["node1"]
    found = {eni["NetworkInterfaceId"]: eni for eni in ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [node["instance_id"]]}])["NetworkInterfaces"]}
    tags = lambda name: {t["Key"]: t["Value"] for t in found[bed.eni("node1", name)["id"]].get("TagSet", [])}  # noqa: E731
    assert tags("eth1") == {"node.k8s.amazonaws.com/no_manage": "true"}
    assert tags("eth2") == {}
    assert tags("eth3") == {"node.k8s.amazonaws.com/instance_id": node["instance_id"]}
    assert found[bed.eni("node1", "eth3")["id"]]["Description"] == f"aws-K8S-{node['instance_id']}"
    held = {item["PrivateIpAddress"] for item in found[bed.eni("node1", "eth2")["id"]]["PrivateIpAddresses"]}
    assert set(bed.eni("node1", "eth2")["secondary_ips"]) < held


def test_a_multi_card_instance_reports_device_0_on_card_1_and_its_primary_by_mac(eks):
    bed, ec2 = eks
    node = bed.topology["nodes"]["node2"]
    eth1 = bed.eni("node2", "eth1")
    attachment = ec2.describe_network_interfaces(NetworkInterfaceIds=[eth1["id"]])["NetworkInterfaces"][0]["Attachment"]
    assert (attachment["NetworkCardIndex"], attachment["DeviceIndex"]) == (1, 0)
    imds = node["imds_endpoint"]
    token = imds_token(imds)
    assert imds_get(imds, "mac", token) == (200, bed.eni("node2", "eth0")["mac"])
    base = f"network/interfaces/macs/{eth1['mac']}/"
    assert imds_get(imds, base + "device-number", token) == (200, "0")
    assert imds_get(imds, base + "network-card", token) == (200, "1")
    assert imds_get(imds, base + "vpc-ipv4-cidr-blocks", token) == (200, "10.0.0.0/16")


def test_the_account_buckets_throttle_per_action_and_refill(env):
    bed, ec2 = env
    client = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    eni = eni_id(bed, "node1", "eth3")
    bed.control("POST", "config", {"buckets": {"AssignPrivateIpAddresses": [2, 2]}})
    bed.control("POST", "calls/reset")
    try:
        client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.60"])
        client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.61"])
        with pytest.raises(ClientError) as excinfo:
            client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.62"])
        assert error_code(excinfo) == "RequestLimitExceeded"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        client.describe_network_interfaces(NetworkInterfaceIds=[eni])  # another bucket
        time.sleep(0.6)  # refills one token at 2/s
        client.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.2.62"])
        assert bed.control("GET", "throttled") == {"AssignPrivateIpAddresses": 1}
        assert bed.control("GET", "calls")["AssignPrivateIpAddresses"] == 4
    finally:
        bed.control("POST", "config", {"buckets": {"AssignPrivateIpAddresses": [100, 5]}})


def test_metadata_shows_arrivals_late_and_departures_late_too(env):
    bed, ec2 = env
    node = bed.topology["nodes"]["node1"]
    here, there = node["enis"][1], node["enis"][2]
    imds = node["imds_endpoint"]
    token = imds_token(imds)
    local = lambda eni: imds_get(imds, f"network/interfaces/macs/{eni['mac']}/local-ipv4s", token)[1].split()  # noqa: E731
    ec2.assign_private_ip_addresses(NetworkInterfaceId=here["id"], PrivateIpAddresses=["10.0.1.120"])
    bed.control("POST", "config", {"imds_delay_ms": 400})
    try:
        time.sleep(0.5)  # the assignment is older than the lag: metadata shows it
        assert "10.0.1.120" in local(here)
        ec2.assign_private_ip_addresses(NetworkInterfaceId=there["id"], PrivateIpAddresses=["10.0.1.120"],
                                        AllowReassignment=True)
        assert "10.0.1.120" in local(here), "the departure is not visible yet"
        assert "10.0.1.120" not in local(there), "nor the arrival"
        time.sleep(0.5)
        assert "10.0.1.120" not in local(here)
        assert "10.0.1.120" in local(there)
    finally:
        bed.control("POST", "config", {"imds_delay_ms": 0})


# Nodes of three instance types: m5.large (the default), c5.4xlarge, and m3.large (no IPv6).
TYPES = {
    "subnets": {"node": {"cidr": "10.0.0.0/24", "ipv6": True}},
    "nodes": {
        "small": {"enis": [{"subnet": "node"}, {"subnet": "node"}]},
        "big": {"instance_type": "c5.4xlarge", "enis": [{"subnet": "node"}, {"subnet": "node"}]},
        "old": {"instance_type": "m3.large", "enis": [{"subnet": "node"}]},
    },
}


@pytest.fixture(scope="module")
def types():
    with Bed(TYPES, pods=False) as bed:
        ec2 = boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        yield bed, ec2


def single_attempt(bed):
    return boto3.client("ec2", region_name="us-east-2", endpoint_url=bed.ec2_endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def ipv4s(first: int, count: int) -> list[str]:
    return [f"10.0.0.{host}" for host in range(first, first + count)]


def test_an_enis_addresses_are_limited_by_its_instance_type(types):
    bed, ec2 = types
    nodes = bed.topology["nodes"]
    assert [(nodes[name]["eni_ipv4_limit"], nodes[name]["eni_ipv6_limit"]) for name in ("small", "big", "old")] == [
        (10, 10), (30, 30), (10, 0)]
    # The primary address counts: an m5.large ENI takes 9 secondaries, a c5.4xlarge one 29.
    for node, first, room in (("small", 50, 9), ("big", 100, 29)):
        eni = eni_id(bed, node, "eth1")
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=ipv4s(first, room - 1))
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=ipv4s(first + room - 1, 1))
        assert len(addresses(bed, eni)["ipv4"]) == room + 1
        with pytest.raises(ClientError) as excinfo:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=ipv4s(first + room, 1))
        assert error_code(excinfo) == "PrivateIpAddressLimitExceeded"
        assert f"limit of {room + 1} " in excinfo.value.response["Error"]["Message"]
    prefix = bed.ipv6_prefix("node")
    small = eni_id(bed, "small", "eth1")
    ec2.assign_ipv6_addresses(NetworkInterfaceId=small, Ipv6Addresses=[f"{prefix}{host:x}" for host in range(80, 90)])
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_ipv6_addresses(NetworkInterfaceId=small, Ipv6Addresses=[f"{prefix}5a"])
    assert error_code(excinfo) == "Ipv6AddressLimitExceeded"
    with pytest.raises(ClientError) as excinfo:  # an instance type without IPv6
        ec2.assign_ipv6_addresses(NetworkInterfaceId=eni_id(bed, "old", "eth0"), Ipv6Addresses=[f"{prefix}60"])
    assert error_code(excinfo) == "Ipv6AddressLimitExceeded"


def test_the_config_limit_holds_for_every_eni_until_cleared(types):
    bed, ec2 = types
    big = eni_id(bed, "big", "eth0")
    unattached = ec2.create_network_interface(SubnetId=bed.topology["subnets"]["node"]["id"],
                                              PrivateIpAddress="10.0.0.200")["NetworkInterface"]["NetworkInterfaceId"]
    bed.control("POST", "config", {"eni_ipv4_limit": 2, "eni_ipv6_limit": 1})
    try:
        for eni, first in ((big, 150), (unattached, 201)):
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=ipv4s(first, 1))
            with pytest.raises(ClientError) as excinfo:
                ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=ipv4s(first + 1, 1))
            assert error_code(excinfo) == "PrivateIpAddressLimitExceeded"
        with pytest.raises(BedError, match="eni_ipv4_limit must be a count"):
            bed.control("POST", "config", {"eni_ipv4_limit": -1})
        bed.control("POST", "config", {"eni_ipv6_limit": None})  # IPv4's stays
        with pytest.raises(ClientError):
            ec2.assign_private_ip_addresses(NetworkInterfaceId=big, PrivateIpAddresses=ipv4s(151, 1))
    finally:
        bed.control("POST", "config", {"eni_ipv4_limit": None})
    # Cleared: the c5.4xlarge's 30, and an unattached ENI's 10 (an m5.large's).
    ec2.assign_private_ip_addresses(NetworkInterfaceId=big, PrivateIpAddresses=ipv4s(151, 28))
    with pytest.raises(ClientError):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=big, PrivateIpAddresses=ipv4s(179, 1))
    ec2.assign_private_ip_addresses(NetworkInterfaceId=unattached, PrivateIpAddresses=ipv4s(202, 8))
    with pytest.raises(ClientError) as excinfo:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=unattached, PrivateIpAddresses=ipv4s(210, 1))
    assert error_code(excinfo) == "PrivateIpAddressLimitExceeded"


def describe_instance_types_query(endpoint: str, body: str) -> tuple[int, ElementTree.Element]:
    """A DescribeInstanceTypes request as the AWS SDKs send it (EC2 Query API, form-encoded)."""
    request = urllib.request.Request(endpoint + "/", data=body.encode(), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-2/ec2/aws4_request, "
                         "SignedHeaders=host, Signature=0"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, ElementTree.fromstring(response.read())
    except urllib.error.HTTPError as error:
        return error.code, ElementTree.fromstring(error.read())


def local(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """The descendants named `name`, whatever their namespace."""
    return [item for item in element.iter() if item.tag.rsplit("}", 1)[-1] == name]


def test_describe_instance_types_passes_through_counted_and_throttled(types):
    bed, ec2 = types
    bed.control("POST", "calls/reset")
    found = ec2.describe_instance_types(InstanceTypes=["m5.large", "c5.4xlarge", "p5.48xlarge", "m3.large"])
    network = {item["InstanceType"]: item["NetworkInfo"] for item in found["InstanceTypes"]}
    assert {name: (info["Ipv4AddressesPerInterface"], info["Ipv6AddressesPerInterface"], info["Ipv6Supported"],
                   info["MaximumNetworkInterfaces"]) for name, info in network.items()} == {
        "m5.large": (10, 10, True, 3), "c5.4xlarge": (30, 30, True, 8), "p5.48xlarge": (50, 50, True, 64),
        "m3.large": (10, 0, False, 3)}
    status, answer = describe_instance_types_query(
        bed.ec2_endpoint, "Action=DescribeInstanceTypes&Version=2016-11-15&InstanceType.1=m5.large")
    assert status == 200
    assert [item.text for item in local(answer, "instanceType")] == ["m5.large"]
    assert [item.text for item in local(answer, "ipv4AddressesPerInterface")] == ["10"]
    # A type named twice is answered once (moto alone refuses it as unknown).
    status, answer = describe_instance_types_query(
        bed.ec2_endpoint,
        "Action=DescribeInstanceTypes&Version=2016-11-15&InstanceType.1=c5.4xlarge&InstanceType.2=c5.4xlarge")
    assert status == 200 and [item.text for item in local(answer, "ipv4AddressesPerInterface")] == ["30"]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_instance_types(InstanceTypes=["m5.nosuch"])
    assert error_code(excinfo) == "InvalidInstanceType"
    assert bed.control("GET", "calls") == {"DescribeInstanceTypes": 4}
    assert [entry[0] for entry in bed.control("GET", "calls/log")["calls"]] == ["DescribeInstanceTypes"] * 4
    # It draws from the Describe calls' bucket.
    client = single_attempt(bed)
    bed.control("POST", "config", {"buckets": {"describe": [1, 0.01]}})
    try:
        client.describe_instance_types(InstanceTypes=["m5.large"])
        with pytest.raises(ClientError) as excinfo:
            client.describe_instance_types(InstanceTypes=["m5.large"])
        assert error_code(excinfo) == "RequestLimitExceeded"
        with pytest.raises(ClientError):
            client.describe_network_interfaces(NetworkInterfaceIds=[eni_id(bed, "small", "eth0")])
        assert bed.control("GET", "throttled") == {"DescribeInstanceTypes": 1, "DescribeNetworkInterfaces": 1}
    finally:
        bed.control("POST", "config", {"buckets": {"describe": [100, 20]}})


def test_metadata_answers_the_instance_type(types):
    bed, _ = types
    for node, expected in (("small", "m5.large"), ("big", "c5.4xlarge"), ("old", "m3.large")):
        imds = bed.topology["nodes"][node]["imds_endpoint"]
        assert imds_get(imds, "instance-type", imds_token(imds)) == (200, expected)


def test_enis_name_their_node_interfaces(types):
    bed, _ = types
    assert [(eni["name"], eni["interface"]) for eni in bed.topology["nodes"]["big"]["enis"]] == [
        ("eth0", "eth0"), ("eth1", "eth1")]


def test_the_shipped_topologies_fit_their_instance_types():
    for name in ("how-to", "eks-node"):
        topology.check(topology.load(name))


@pytest.mark.parametrize("node, refusal", [
    ({"enis": ["node"] * 4}, "4 ENIs, but a m5.large takes at most 3"),
    ({"instance_type": "p5.48xlarge", "enis": ["node", {"subnet": "node", "card": 1}, "node", "node"]},
     "3 ENIs on network card 0, but that card of a p5.48xlarge takes at most 2"),
    ({"instance_type": "c5.4xlarge", "enis": ["node", {"subnet": "node", "card": 1}]},
     "a c5.4xlarge has no network card 1"),
    ({"instance_type": "m5.huge", "enis": ["node"]}, "EC2 has no instance type 'm5.huge'"),
    ({"enis": ["node", {"subnet": "node", "name": "net"}, {"subnet": "node", "name": "net"}]}, "two ENIs named net"),
    ({"enis": ["node", {"subnet": "node", "name": "eth0"}]}, "ENI 1 cannot be named eth0"),
    ({"enis": ["node", {"subnet": "node", "name": "sixteen-chars-ab"}]}, "cannot name a link"),
    ({"enis": ["node", "elsewhere"]}, "ENI eth1 is in no subnet"),
])
def test_a_topology_the_instance_type_cannot_hold_is_refused(node, refusal):
    with pytest.raises(topology.TopologyError, match=refusal):
        topology.check({"subnets": {"node": {"cidr": "10.0.0.0/24"}}, "nodes": {"node1": node}})

