//! Which floating addresses a namespace's pods may have: the cluster admin's grant, the
//! namespace annotation `multus-ipmgr.io/floating-ip-cidrs` (comma list of CIDRs; an entry
//! that is not a CIDR grants nothing and is logged, as the admission policy reads it).
//! Namespaces are cluster-scoped, so the tenants of a namespace, who may write any
//! annotation on their pods, cannot write this one (Calico's
//! `cni.projectcalico.org/ipv4pools` namespace annotation is the precedent). A pod's
//! `multus-ipmgr.io/floating-ips` counts only inside its namespace's grant.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The namespace annotation in which a cluster admin grants a namespace floating addresses.
pub const FLOATING_IP_CIDRS_ANNOTATION: &str = "multus-ipmgr.io/floating-ip-cidrs";

/// An entry of a grant annotation that is not a CIDR: it grants nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "namespace {namespace}'s {FLOATING_IP_CIDRS_ANNOTATION} annotation has {entry:?}, which is not a CIDR, so it grants nothing; a cluster admin fixes it: kubectl annotate --overwrite namespace {namespace} {FLOATING_IP_CIDRS_ANNOTATION}=10.0.1.96/28,2600:1f14::100/128"
)]
pub struct GrantError {
    /// The namespace.
    pub namespace: String,
    /// The entry.
    pub entry: String,
}

/// What one namespace is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant<'a> {
    /// No grant annotation: no floating address at all.
    None,
    /// These CIDRs (none when no entry is one).
    Cidrs(&'a [IpNet]),
}

impl Grant<'_> {
    /// Whether the grant covers `address`.
    pub fn covers(self, address: IpAddr) -> bool {
        matches!(self, Grant::Cidrs(cidrs) if cidrs.iter().any(|cidr| cidr.contains(&address)))
    }

    /// The part of `declared` (a pod's floating CIDR) that the grant covers: the smaller of
    /// each overlapping pair (two CIDRs either nest or are disjoint).
    pub fn within(self, declared: IpNet) -> Vec<IpNet> {
        let Grant::Cidrs(cidrs) = self else {
            return Vec::new();
        };
        cidrs
            .iter()
            .filter_map(|&granted| {
                if granted.contains(&declared) {
                    Some(declared)
                } else if declared.contains(&granted) {
                    Some(granted)
                } else {
                    None
                }
            })
            .collect()
    }
}

impl fmt::Display for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::None => f.write_str("no grant"),
            Grant::Cidrs([]) => f.write_str("a grant with no valid CIDR"),
            Grant::Cidrs(cidrs) => {
                let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                write!(f, "the grant {}", list.join(","))
            }
        }
    }
}

/// Two namespaces granted overlapping addresses: both may float them, so a pod of either
/// can move them from the other's pods. Logged as a warning for the admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// One namespace and its CIDR.
    pub first: (String, IpNet),
    /// The other namespace and its CIDR.
    pub second: (String, IpNet),
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "namespaces {} ({}) and {} ({}) are granted overlapping floating addresses in {FLOATING_IP_CIDRS_ANNOTATION}: pods of either can take those addresses from pods of the other; give each namespace its own range",
            self.first.0, self.first.1, self.second.0, self.second.1
        )
    }
}

/// One namespace's grant annotation, read: its CIDRs, and the entries that are not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Granted {
    cidrs: Vec<IpNet>,
    invalid: Vec<GrantError>,
}

/// Every namespace's grant, by namespace name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(BTreeMap<String, Granted>);

impl Grants {
    /// Takes in `namespace` with its grant annotation (`None`: no grant); whether that
    /// changed what it is granted.
    pub fn set(&mut self, namespace: &str, annotation: Option<&str>) -> bool {
        let Some(text) = annotation else {
            return self.0.remove(namespace).is_some();
        };
        let grant = parse(namespace, text);
        if self.0.get(namespace) == Some(&grant) {
            return false;
        }
        self.0.insert(namespace.to_owned(), grant);
        true
    }

    /// Forgets `namespace` (deleted); whether it had a grant.
    pub fn remove(&mut self, namespace: &str) -> bool {
        self.0.remove(namespace).is_some()
    }

    /// What `namespace` is granted.
    pub fn of(&self, namespace: &str) -> Grant<'_> {
        match self.0.get(namespace) {
            None => Grant::None,
            Some(granted) => Grant::Cidrs(&granted.cidrs),
        }
    }

    /// The namespaces other than `namespace` whose grant covers `address`.
    pub fn others_covering(&self, namespace: &str, address: IpAddr) -> Vec<&str> {
        self.0
            .keys()
            .filter(|other| *other != namespace && self.of(other).covers(address))
            .map(String::as_str)
            .collect()
    }

    /// The grant entries that are not CIDRs.
    pub fn invalid(&self) -> impl Iterator<Item = &GrantError> {
        self.0.values().flat_map(|granted| &granted.invalid)
    }

    /// Every pair of namespaces granted overlapping CIDRs.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let granted: Vec<(&String, IpNet)> = self
            .0
            .iter()
            .flat_map(|(namespace, granted)| {
                granted.cidrs.iter().map(move |&cidr| (namespace, cidr))
            })
            .collect();
        let mut overlaps = Vec::new();
        for (index, &(first, a)) in granted.iter().enumerate() {
            for &(second, b) in &granted[index + 1..] {
                if first != second && (a.contains(&b) || b.contains(&a)) {
                    overlaps.push(Overlap {
                        first: (first.clone(), a),
                        second: (second.clone(), b),
                    });
                }
            }
        }
        overlaps
    }
}

/// A grant annotation's CIDRs, host bits cleared, and the entries that are not CIDRs (a
/// bare address too: `10.0.1.7/32` grants one, as `isCIDR` in the admission policy wants).
fn parse(namespace: &str, text: &str) -> Granted {
    let mut granted = Granted::default();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        match entry.parse::<IpNet>() {
            Ok(cidr) => granted.cidrs.push(cidr.trunc()),
            Err(_) => granted.invalid.push(GrantError {
                namespace: namespace.to_owned(),
                entry: entry.to_owned(),
            }),
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use rstest::rstest;

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("CIDR")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn grants(entries: &[(&str, &str)]) -> Grants {
        let mut grants = Grants::default();
        for (namespace, annotation) in entries {
            grants.set(namespace, Some(annotation));
        }
        grants
    }

    #[rstest]
    #[case::inside("10.0.1.100", true)]
    #[case::the_bare_address("2600:1f14::7", true)]
    #[case::outside("10.0.1.200", false)]
    #[case::another_family("2600:1f14::8", false)]
    fn a_grant_covers_its_cidrs_and_addresses(#[case] address: &str, #[case] covered: bool) {
        let grants = grants(&[("tenant-a", " 10.0.1.96/27 , 2600:1f14::7/128")]);
        assert_eq!(grants.of("tenant-a").covers(ip(address)), covered);
        assert!(
            !grants.of("tenant-b").covers(ip(address)),
            "no grant, no cover"
        );
    }

    #[test]
    fn host_bits_are_cleared() {
        let grants = grants(&[("tenant-a", "10.0.1.100/27")]);
        assert_eq!(grants.of("tenant-a"), Grant::Cidrs(&[net("10.0.1.96/27")]));
    }

    #[test]
    fn an_entry_that_is_not_a_cidr_grants_nothing_and_names_the_namespace_and_the_fix() {
        let grants = grants(&[("tenant-a", "10.0.1.96/27,eth1,10.0.2.7")]);
        assert_eq!(grants.of("tenant-a"), Grant::Cidrs(&[net("10.0.1.96/27")]));
        assert!(grants.of("tenant-a").covers(ip("10.0.1.100")));
        assert!(
            !grants.of("tenant-a").covers(ip("10.0.2.7")),
            "a bare address is no CIDR"
        );
        let errors: Vec<String> = grants.invalid().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2);
        for named in [
            "tenant-a",
            "\"eth1\"",
            FLOATING_IP_CIDRS_ANNOTATION,
            "kubectl annotate",
        ] {
            assert!(errors[0].contains(named), "{} names {named}", errors[0]);
        }
        let nothing = self::grants(&[("tenant-b", "eth1")]);
        assert_eq!(
            nothing.of("tenant-b").to_string(),
            "a grant with no valid CIDR"
        );
    }

    #[rstest]
    #[case::declared_inside("10.0.1.100/32", &["10.0.1.100/32"])]
    #[case::declared_wider("0.0.0.0/0", &["10.0.1.96/27"])]
    #[case::declared_elsewhere("10.0.2.0/24", &[])]
    fn a_declaration_counts_only_inside_the_grant(
        #[case] declared: &str,
        #[case] protected: &[&str],
    ) {
        let grants = grants(&[("tenant-a", "10.0.1.96/27")]);
        let expected: Vec<IpNet> = protected.iter().map(|text| net(text)).collect();
        assert_eq!(grants.of("tenant-a").within(net(declared)), expected);
        assert_eq!(grants.of("tenant-b").within(net(declared)), Vec::new());
    }

    #[test]
    fn overlapping_grants_of_two_namespaces_are_reported_once() {
        let grants = grants(&[
            ("tenant-a", "10.0.1.96/27"),
            ("tenant-b", "10.0.1.100/32,10.0.2.0/24"),
            ("tenant-c", "10.0.3.0/24"),
        ]);
        let overlaps = grants.overlaps();
        assert_eq!(
            overlaps,
            vec![Overlap {
                first: ("tenant-a".to_owned(), net("10.0.1.96/27")),
                second: ("tenant-b".to_owned(), net("10.0.1.100/32")),
            }]
        );
        assert!(overlaps[0].to_string().contains("tenant-a"));
        assert_eq!(
            grants.others_covering("tenant-a", ip("10.0.1.100")),
            vec!["tenant-b"]
        );
    }

    #[test]
    fn set_says_whether_the_grant_changed() {
        let mut grants = Grants::default();
        assert!(grants.set("tenant-a", Some("10.0.1.96/27")));
        assert!(!grants.set("tenant-a", Some("10.0.1.96/27")));
        assert!(grants.set("tenant-a", Some("10.0.1.96/28")));
        assert!(grants.set("tenant-a", None));
        assert!(!grants.remove("tenant-a"));
        assert_eq!(grants.of("tenant-a"), Grant::None);
    }
}
