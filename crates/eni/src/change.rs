use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address on an ENI: one that was assigned, or is to be confirmed or released.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Assignment {
    /// The ENI.
    pub eni_id: String,
    /// The address.
    pub address: IpAddr,
}

/// Addresses of one ENI that one EC2 call per family changes: what to assign
/// (AssignPrivateIpAddresses, AssignIpv6Addresses) or to release (the Unassign calls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EniChange {
    /// The ENI.
    pub eni_id: String,
    /// IPv4 addresses, sorted.
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 addresses, sorted.
    pub ipv6: Vec<Ipv6Addr>,
}

impl EniChange {
    /// Groups `assignments` per ENI (ordered by ENI id), each address once, sorted.
    pub fn group(assignments: impl IntoIterator<Item = Assignment>) -> Vec<EniChange> {
        let mut changes: BTreeMap<String, EniChange> = BTreeMap::new();
        for Assignment { eni_id, address } in assignments {
            let change = changes
                .entry(eni_id)
                .or_insert_with_key(|eni_id| EniChange {
                    eni_id: eni_id.clone(),
                    ..EniChange::default()
                });
            match address {
                IpAddr::V4(v4) => change.ipv4.push(v4),
                IpAddr::V6(v6) => change.ipv6.push(v6),
            }
        }
        changes
            .into_values()
            .map(|mut change| {
                change.ipv4.sort_unstable();
                change.ipv4.dedup();
                change.ipv6.sort_unstable();
                change.ipv6.dedup();
                change
            })
            .collect()
    }

    /// The change split into one per EC2 call: its IPv4 part and its IPv6 part, the empty
    /// ones left out.
    pub fn calls(&self) -> impl Iterator<Item = EniChange> + '_ {
        let ipv4 = EniChange {
            ipv6: Vec::new(),
            ..self.clone()
        };
        let ipv6 = EniChange {
            ipv4: Vec::new(),
            ..self.clone()
        };
        [ipv4, ipv6].into_iter().filter(|call| !call.is_empty())
    }

    /// The change split into one per address.
    pub fn singles(&self) -> impl Iterator<Item = EniChange> + '_ {
        self.assignments()
            .flat_map(|assignment| EniChange::group([assignment]))
    }

    /// Whether the change has no address.
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_empty() && self.ipv6.is_empty()
    }

    /// How many addresses it changes.
    pub fn len(&self) -> usize {
        self.ipv4.len() + self.ipv6.len()
    }

    /// Every (ENI, address) pair of the change.
    pub fn assignments(&self) -> impl Iterator<Item = Assignment> + '_ {
        let ipv4 = self.ipv4.iter().map(|&v4| IpAddr::V4(v4));
        let ipv6 = self.ipv6.iter().map(|&v6| IpAddr::V6(v6));
        ipv4.chain(ipv6).map(|address| Assignment {
            eni_id: self.eni_id.clone(),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(eni_id: &str, address: &str) -> Assignment {
        Assignment {
            eni_id: eni_id.to_owned(),
            address: address.parse().expect("address"),
        }
    }

    #[test]
    fn groups_per_eni_sorted_once_each_and_round_trips() {
        let input = [
            assignment("eni-b", "10.0.1.9"),
            assignment("eni-a", "2600::5"),
            assignment("eni-b", "10.0.1.5"),
            assignment("eni-b", "10.0.1.9"),
        ];
        let changes = EniChange::group(input.clone());
        assert_eq!(
            changes,
            vec![
                EniChange {
                    eni_id: "eni-a".to_owned(),
                    ipv4: vec![],
                    ipv6: vec!["2600::5".parse().expect("ip")],
                },
                EniChange {
                    eni_id: "eni-b".to_owned(),
                    ipv4: vec![
                        "10.0.1.5".parse().expect("ip"),
                        "10.0.1.9".parse().expect("ip")
                    ],
                    ipv6: vec![],
                },
            ]
        );
        let calls: Vec<EniChange> = changes[1].calls().collect();
        assert_eq!(calls.len(), 1, "IPv4 only");
        assert_eq!(changes[1].singles().count(), 2);
        assert!(changes[1].singles().all(|single| single.len() == 1));
        let back: Vec<Assignment> = changes.iter().flat_map(EniChange::assignments).collect();
        assert_eq!(back.len(), 3);
        assert!(input.iter().all(|item| back.contains(item)));
    }
}
