use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::MacAddr;

/// One network interface of the node, as instance metadata describes it under
/// `network/interfaces/macs/<mac>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    /// The interface's MAC (an ipvlan child in a pod carries it too).
    pub mac: MacAddr,
    /// `interface-id`, e.g. `eni-0123456789abcdef0`.
    pub id: String,
    /// `device-number`: the attachment's device index on its network card.
    pub device_number: u32,
    /// `network-card`: the network card it is attached to (0 when metadata has no such
    /// field, as on single-card instances).
    pub network_card: u32,
    /// `vpc-id`.
    pub vpc_id: String,
    /// `subnet-ipv4-cidr-block`.
    pub subnet_ipv4: Option<Ipv4Net>,
    /// `subnet-ipv6-cidr-blocks`.
    pub subnet_ipv6: Vec<Ipv6Net>,
    /// `local-ipv4s`; the first one is the ENI's primary private address.
    pub ipv4: Vec<Ipv4Addr>,
    /// `ipv6s`.
    pub ipv6: Vec<Ipv6Addr>,
    /// `ipv4-prefix`: delegated IPv4 prefixes; every address inside is routed to this ENI.
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// `ipv6-prefix`: delegated IPv6 prefixes.
    pub ipv6_prefixes: Vec<Ipv6Net>,
}

/// The raw metadata values of one ENI, as the IMDS answered them (`None` for a 404).
#[derive(Clone, Copy, Debug, Default)]
pub struct EniMetadata<'a> {
    /// `interface-id`.
    pub interface_id: &'a str,
    /// `device-number`.
    pub device_number: &'a str,
    /// `network-card`.
    pub network_card: Option<&'a str>,
    /// `vpc-id`.
    pub vpc_id: &'a str,
    /// `subnet-ipv4-cidr-block`.
    pub subnet_ipv4_cidr_block: Option<&'a str>,
    /// `subnet-ipv6-cidr-blocks`, one per line.
    pub subnet_ipv6_cidr_blocks: Option<&'a str>,
    /// `local-ipv4s`, one per line.
    pub local_ipv4s: Option<&'a str>,
    /// `ipv6s`, one per line.
    pub ipv6s: Option<&'a str>,
    /// `ipv4-prefix`, one per line.
    pub ipv4_prefix: Option<&'a str>,
    /// `ipv6-prefix`, one per line.
    pub ipv6_prefix: Option<&'a str>,
}

/// Instance metadata that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "instance metadata network/interfaces/macs/{mac}/{field} has {value:?}, which is not {expected}"
)]
pub struct FactsError {
    /// The ENI's MAC.
    pub mac: MacAddr,
    /// The metadata field.
    pub field: &'static str,
    /// What it held.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

/// The node: its instance, region and ENIs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `instance-id`.
    pub instance_id: String,
    /// `placement/region`.
    pub region: String,
    /// `mac`: the primary ENI's MAC (multi-card instances have other ENIs at device 0).
    pub primary_mac: Option<MacAddr>,
    /// Every ENI attached to the instance.
    pub enis: Vec<Eni>,
}

/// One global-scope address on one of the pod's interfaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodAddress {
    /// Interface name in the pod, e.g. `net1`.
    pub interface: String,
    /// The interface's MAC.
    pub mac: MacAddr,
    /// The address.
    pub address: IpAddr,
    /// Its prefix length on the interface.
    pub prefix_len: u8,
}

/// Parses every non-empty line of a metadata value.
fn parse_lines<T: std::str::FromStr>(
    mac: MacAddr,
    field: &'static str,
    value: Option<&str>,
    expected: &'static str,
) -> Result<Vec<T>, FactsError> {
    value
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.parse().map_err(|_| FactsError {
                mac,
                field,
                value: line.to_owned(),
                expected,
            })
        })
        .collect()
}

impl Eni {
    /// Parses the metadata of the ENI with this MAC.
    pub fn from_metadata(mac: MacAddr, metadata: EniMetadata<'_>) -> Result<Eni, FactsError> {
        let error = |field, value: &str, expected| FactsError {
            mac,
            field,
            value: value.to_owned(),
            expected,
        };
        let id = metadata.interface_id.trim();
        if !id.starts_with("eni-") {
            return Err(error("interface-id", id, "an ENI id (eni-...)"));
        }
        let device_number = metadata.device_number.trim();
        let network_card = metadata.network_card.unwrap_or("0").trim();
        Ok(Eni {
            mac,
            id: id.to_owned(),
            device_number: device_number
                .parse()
                .map_err(|_| error("device-number", device_number, "a number"))?,
            network_card: network_card
                .parse()
                .map_err(|_| error("network-card", network_card, "a number"))?,
            vpc_id: metadata.vpc_id.trim().to_owned(),
            subnet_ipv4: parse_lines(
                mac,
                "subnet-ipv4-cidr-block",
                metadata.subnet_ipv4_cidr_block,
                "an IPv4 CIDR",
            )?
            .into_iter()
            .next(),
            subnet_ipv6: parse_lines(
                mac,
                "subnet-ipv6-cidr-blocks",
                metadata.subnet_ipv6_cidr_blocks,
                "IPv6 CIDRs",
            )?,
            ipv4: parse_lines(mac, "local-ipv4s", metadata.local_ipv4s, "IPv4 addresses")?,
            ipv6: parse_lines(mac, "ipv6s", metadata.ipv6s, "IPv6 addresses")?,
            ipv4_prefixes: parse_lines(mac, "ipv4-prefix", metadata.ipv4_prefix, "IPv4 prefixes")?,
            ipv6_prefixes: parse_lines(mac, "ipv6-prefix", metadata.ipv6_prefix, "IPv6 prefixes")?,
        })
    }

    /// Where the ENI sits on the instance: (network card, device index).
    pub fn device_order(&self) -> (u32, u32) {
        (self.network_card, self.device_number)
    }

    /// The ENI's primary private IPv4 address, which is never assigned or released.
    pub fn primary_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4.first().copied()
    }

    /// Whether the ENI holds `address` now.
    pub fn holds(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => self.ipv4.contains(&v4),
            IpAddr::V6(v6) => self.ipv6.contains(&v6),
        }
    }

    /// The delegated prefix of this ENI that contains `address`, if any: such an address is
    /// routed to the ENI without an assignment of its own.
    pub fn prefix_containing(&self, address: IpAddr) -> Option<IpNet> {
        match address {
            IpAddr::V4(v4) => self
                .ipv4_prefixes
                .iter()
                .find(|prefix| prefix.contains(&v4))
                .map(|&prefix| prefix.into()),
            IpAddr::V6(v6) => self
                .ipv6_prefixes
                .iter()
                .find(|prefix| prefix.contains(&v6))
                .map(|&prefix| prefix.into()),
        }
    }

    /// Whether traffic to `address` reaches this ENI: it holds the address, or a prefix
    /// that contains it.
    pub fn routes(&self, address: IpAddr) -> bool {
        self.holds(address) || self.prefix_containing(address).is_some()
    }

    /// Whether `address` lies in the ENI's subnet.
    pub fn subnet_contains(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => self.subnet_ipv4.is_some_and(|net| net.contains(&v4)),
            IpAddr::V6(v6) => self.subnet_ipv6.iter().any(|net| net.contains(&v6)),
        }
    }
}

impl NodeFacts {
    /// The ENI with this id.
    pub fn eni(&self, id: &str) -> Option<&Eni> {
        self.enis.iter().find(|eni| eni.id == id)
    }

    /// Whether `eni` is the instance's primary ENI: attached as the primary
    /// ([`crate::primary_attachment`]), or carrying the MAC `meta-data/mac` names.
    pub fn is_primary(&self, eni: &Eni) -> bool {
        self.primary_mac == Some(eni.mac)
            || crate::primary_attachment(eni.device_number, eni.network_card)
    }

    /// The node with the secondary addresses of the ENIs `ids` unknown (each keeps its
    /// primary address): a plan against it looks every address on them up in EC2, whatever
    /// metadata shows, and [`crate::vet`] drops what EC2 has in place already.
    pub(crate) fn without_secondaries(&self, ids: &[String]) -> NodeFacts {
        let mut node = self.clone();
        for eni in node.enis.iter_mut().filter(|eni| ids.contains(&eni.id)) {
            eni.ipv4.truncate(1);
            eni.ipv6.clear();
        }
        node
    }

    /// The node with the address lists of the ENIs EC2 described (`records`, read just
    /// now) in place of metadata's, which lag EC2; prefixes and the other ENIs as they were.
    pub fn with_ec2(&self, records: &[crate::EniRecord]) -> NodeFacts {
        let mut node = self.clone();
        for eni in &mut node.enis {
            if let Some(record) = records.iter().find(|record| record.id == eni.id) {
                eni.ipv4.clone_from(&record.ipv4);
                eni.ipv6.clone_from(&record.ipv6);
            }
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "02:00:00:00:00:01".parse().expect("mac")
    }

    #[test]
    fn parses_metadata_values() {
        let eni = Eni::from_metadata(
            mac(),
            EniMetadata {
                interface_id: "eni-0abc\n",
                device_number: "1",
                vpc_id: "vpc-1",
                subnet_ipv4_cidr_block: Some("10.10.1.0/24"),
                subnet_ipv6_cidr_blocks: Some("2600:1f14:abc:100::/64\n"),
                local_ipv4s: Some("10.10.1.10\n10.10.1.80"),
                ipv6s: None,
                network_card: Some("1"),
                ipv4_prefix: Some("10.10.1.128/28"),
                ipv6_prefix: None,
            },
        )
        .expect("parses");
        assert_eq!(eni.network_card, 1);
        assert!(eni.routes("10.10.1.130".parse().expect("ip")));
        assert!(!eni.holds("10.10.1.130".parse().expect("ip")));
        assert_eq!(
            eni.prefix_containing("10.10.1.143".parse().expect("ip")),
            Some("10.10.1.128/28".parse().expect("prefix"))
        );
        assert_eq!(
            eni.prefix_containing("10.10.1.144".parse().expect("ip")),
            None
        );
        assert_eq!(eni.id, "eni-0abc");
        assert_eq!(eni.device_number, 1);
        assert_eq!(eni.primary_ipv4(), Some(Ipv4Addr::new(10, 10, 1, 10)));
        assert!(eni.holds("10.10.1.80".parse().expect("ip")));
        assert!(eni.subnet_contains("2600:1f14:abc:100::5".parse().expect("ip")));
        assert!(!eni.subnet_contains("10.10.2.5".parse().expect("ip")));
        assert!(eni.ipv6.is_empty());
    }

    #[test]
    fn ec2s_address_lists_replace_metadatas_for_the_enis_it_described() {
        let eni = |id: &str, ipv4: &str| Eni {
            mac: mac(),
            id: id.to_owned(),
            device_number: 1,
            network_card: 0,
            vpc_id: "vpc-1".to_owned(),
            subnet_ipv4: None,
            subnet_ipv6: Vec::new(),
            ipv4: vec![ipv4.parse().expect("ip")],
            ipv6: Vec::new(),
            ipv4_prefixes: vec!["10.0.9.0/28".parse().expect("prefix")],
            ipv6_prefixes: Vec::new(),
        };
        let node = NodeFacts {
            enis: vec![eni("eni-a", "10.0.1.10"), eni("eni-b", "10.0.2.10")],
            ..NodeFacts::default()
        };
        let described = crate::EniRecord {
            id: "eni-a".to_owned(),
            ipv4: vec![
                "10.0.1.10".parse().expect("ip"),
                "10.0.1.50".parse().expect("ip"),
            ],
            ipv6: vec!["2600:1f14::50".parse().expect("ip")],
            ..crate::EniRecord::default()
        };
        let now = node.with_ec2(&[described]);
        let a = now.eni("eni-a").expect("eni-a");
        assert!(a.holds("10.0.1.50".parse().expect("ip")));
        assert!(a.holds("2600:1f14::50".parse().expect("ip")));
        assert_eq!(a.ipv4_prefixes, node.enis[0].ipv4_prefixes);
        assert_eq!(now.eni("eni-b"), node.eni("eni-b"));
        let asking = now.without_secondaries(&["eni-a".to_owned()]);
        let a = asking.eni("eni-a").expect("eni-a");
        assert_eq!(a.ipv4, vec!["10.0.1.10".parse::<Ipv4Addr>().expect("ip")]);
        assert!(a.ipv6.is_empty());
        assert_eq!(asking.eni("eni-b"), node.eni("eni-b"));
    }

    #[test]
    fn errors_name_the_field_and_the_mac() {
        let error = Eni::from_metadata(
            mac(),
            EniMetadata {
                interface_id: "eni-1",
                device_number: "1",
                local_ipv4s: Some("10.10.1.10\nbogus"),
                ..EniMetadata::default()
            },
        )
        .expect_err("bogus address");
        assert_eq!(
            error.to_string(),
            "instance metadata network/interfaces/macs/02:00:00:00:00:01/local-ipv4s has \"bogus\", which is not IPv4 addresses"
        );
    }
}
