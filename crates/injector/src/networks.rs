//! The pod's Multus network selections, read from its `k8s.v1.cni.cncf.io/networks`
//! annotation exactly as Multus reads them (multus-cni, pkg/k8sclient/k8sclient.go,
//! `parsePodNetworkAnnotation` and `parsePodNetworkObjectName`), and the interfaces the
//! helper manages for them.
//!
//! Multus names an interface by the `interface` a selection gives, else `net<idx>` where
//! idx counts every delegate of the pod: the cluster's default network at 0, then the
//! cluster's `defaultNetworks`, then the annotation's selections (pkg/multus/multus.go,
//! `getIfname`). The webhook cannot see the cluster's `defaultNetworks`, so it never guesses
//! a `net<idx>`: it passes the names the annotation gives, and asks the helper to find the
//! others by their MAC ([`ManagedInterfaces`]).

use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::excerpt;

/// Longest interface name Linux allows (`IFNAMSIZ` 16, less the terminating NUL).
const MAX_INTERFACE_BYTES: usize = 15;

/// An annotation Multus refuses too: the pod would never get its networks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNetworks {
    /// The annotation is in the JSON form (it holds `[`, `{` or `"`) but is not a JSON list.
    #[error(
        "it is in the JSON form (it contains '[', '{{' or '\"') but is not a JSON list of network selections: {0}"
    )]
    Json(String),
    /// One selection is wrong.
    #[error("selection {position} ({item}) {problem}")]
    Selection {
        /// Its position in the annotation, from 1.
        position: usize,
        /// The selection as written, shortened to an [`excerpt`].
        item: String,
        /// What is wrong with it.
        problem: SelectionProblem,
    },
}

/// What is wrong with one network selection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectionProblem {
    /// No network name (an empty item such as the middle of `a,,b`, or `ns/`).
    #[error("names no network; write NAME, NAMESPACE/NAME or NAME@INTERFACE")]
    NoName,
    /// More than one `/` in the short form.
    #[error("has more than one '/'; write NAMESPACE/NAME")]
    Slashes,
    /// More than one `@` in the short form.
    #[error("has more than one '@'; write NAME@INTERFACE")]
    Ats,
    /// A namespace or network name of the short form that is not a DNS-1123 label.
    #[error(
        "has {part} {value:?}, which is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
    )]
    NotALabel {
        /// `namespace` or `network name`.
        part: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An interface name Linux would refuse (Multus checks the short form's; the JSON
    /// form's fail later, when the pod's network is set up), or one with a comma, which
    /// `IPMGR_INTERFACES` cannot carry.
    #[error(
        "has interface name {0:?}, which is longer than 15 bytes or contains '/', ',' or whitespace"
    )]
    InterfaceName(String),
    /// A JSON item that is not an object.
    #[error("is not a JSON object")]
    NotAnObject,
    /// A JSON field that is not of the type Multus expects.
    #[error("has field {field:?} of the wrong type; it must be {expected}")]
    FieldType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A `mac` or `infiniband-guid` that is not a hardware address.
    #[error("has {field} {value:?}, which is not a hardware address (such as 02:00:00:00:00:01)")]
    HardwareAddress {
        /// `mac` or `infiniband-guid`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An item of `ips` that is neither an IP address nor a CIDR.
    #[error("has ips item {0:?}, which is neither an IP address nor a CIDR")]
    Ip(String),
}

/// One network selection of the annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSelection {
    /// The NetworkAttachmentDefinition's namespace, when the selection names one.
    pub namespace: Option<String>,
    /// The NetworkAttachmentDefinition's name.
    pub name: String,
    /// The interface name the selection asks for, if any.
    pub interface: Option<String>,
    /// The addresses of its `ips` (JSON form; a CIDR's address), in order.
    pub ips: Vec<IpAddr>,
}

impl NetworkSelection {
    /// How many IPv4 addresses the network gives the pod: those of `ips` when it lists
    /// any, else one (its IPAM's).
    pub fn ipv4_addresses(&self) -> u64 {
        if self.ips.is_empty() {
            1
        } else {
            self.ips.iter().filter(|ip| ip.is_ipv4()).count() as u64
        }
    }
}

impl fmt::Display for NetworkSelection {
    /// `[NAMESPACE/]NAME[@INTERFACE]`, as the selection gives them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(namespace) = &self.namespace {
            write!(f, "{namespace}/")?;
        }
        f.write_str(&self.name)?;
        if let Some(interface) = &self.interface {
            write!(f, "@{interface}")?;
        }
        Ok(())
    }
}

/// The interfaces the helper manages for a pod (the values of `IPMGR_INTERFACES` and
/// `IPMGR_INTERFACES_BY_MAC`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedInterfaces {
    /// The interface names the selections give, in order, each once.
    pub names: Vec<String>,
    /// Whether some selection names no interface: the helper then also manages the
    /// interfaces that carry the MAC of one of its node's Multus ENIs.
    pub by_mac: bool,
}

impl ManagedInterfaces {
    /// The interfaces of these selections.
    pub fn of(selections: &[NetworkSelection]) -> Self {
        let mut managed = ManagedInterfaces::default();
        for selection in selections {
            match &selection.interface {
                Some(name) if !managed.names.contains(name) => managed.names.push(name.clone()),
                Some(_) => {}
                None => managed.by_mac = true,
            }
        }
        managed
    }
}

/// The interfaces the helper manages for the networks `annotation` selects.
pub fn managed_interfaces(annotation: &str) -> Result<ManagedInterfaces, InvalidNetworks> {
    parse_networks(annotation).map(|selections| ManagedInterfaces::of(&selections))
}

/// The selections of `annotation`, in order, or why Multus would refuse it.
pub fn parse_networks(annotation: &str) -> Result<Vec<NetworkSelection>, InvalidNetworks> {
    // Multus takes the JSON form whenever one of these characters appears anywhere.
    if annotation.contains(['[', '{', '"']) {
        let items: Vec<Value> = serde_json::from_str(annotation)
            .map_err(|error| InvalidNetworks::Json(error.to_string()))?;
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                json_selection(item).map_err(|problem| InvalidNetworks::Selection {
                    position: index + 1,
                    item: excerpt(&item.to_string()).into_owned(),
                    problem,
                })
            })
            .collect()
    } else {
        annotation
            .split(',')
            .enumerate()
            .map(|(index, item)| {
                short_selection(item.trim()).map_err(|problem| InvalidNetworks::Selection {
                    position: index + 1,
                    item: format!("{:?}", excerpt(item.trim())),
                    problem,
                })
            })
            .collect()
    }
}

/// `[NAMESPACE/]NAME[@INTERFACE]`, each part trimmed, as `parsePodNetworkObjectName` reads it.
fn short_selection(item: &str) -> Result<NetworkSelection, SelectionProblem> {
    let (namespace, rest) = match item.split('/').collect::<Vec<_>>()[..] {
        [name] => ("", name),
        [namespace, name] => (namespace.trim(), name),
        _ => return Err(SelectionProblem::Slashes),
    };
    let (name, interface) = match rest.split('@').collect::<Vec<_>>()[..] {
        [name] => (name.trim(), ""),
        [name, interface] => (name.trim(), interface.trim()),
        _ => return Err(SelectionProblem::Ats),
    };
    for (part, value) in [("namespace", namespace), ("network name", name)] {
        if !value.is_empty() && !is_dns_label(value) {
            return Err(SelectionProblem::NotALabel {
                part,
                value: excerpt(value).into_owned(),
            });
        }
    }
    selection(namespace, name, interface, Vec::new())
}

/// One item of the JSON form. Multus (Go's `encoding/json`) matches field names in any case
/// and ignores fields it does not know; it checks `mac`, `infiniband-guid` and `ips`, and
/// takes the deprecated `interfaceRequest` when `interface` is absent.
fn json_selection(item: &Value) -> Result<NetworkSelection, SelectionProblem> {
    let object = item.as_object().ok_or(SelectionProblem::NotAnObject)?;
    let text = |field| string_field(object, field);
    let name = text("name")?;
    let interface = match text("interface")? {
        "" => text("interfaceRequest")?,
        interface => interface,
    };
    for field in ["mac", "infiniband-guid"] {
        let value = text(field)?;
        if !value.is_empty() && !is_hardware_address(value) {
            return Err(SelectionProblem::HardwareAddress {
                field,
                value: excerpt(value).into_owned(),
            });
        }
    }
    let mut ips = Vec::new();
    if let Some(items) = field(object, "ips").filter(|ips| !ips.is_null()) {
        let wrong = || SelectionProblem::FieldType {
            field: "ips",
            expected: "a list of strings",
        };
        for ip in items.as_array().ok_or_else(wrong)? {
            let ip = ip.as_str().ok_or_else(wrong)?;
            ips.push(ip_or_cidr(ip).ok_or_else(|| SelectionProblem::Ip(excerpt(ip).into_owned()))?);
        }
    }
    selection(text("namespace")?, name, interface, ips)
}

/// The selection of these parts (empty: not given).
fn selection(
    namespace: &str,
    name: &str,
    interface: &str,
    ips: Vec<IpAddr>,
) -> Result<NetworkSelection, SelectionProblem> {
    if name.is_empty() {
        return Err(SelectionProblem::NoName);
    }
    if interface.len() > MAX_INTERFACE_BYTES
        || interface.contains(|c: char| c == '/' || c == ',' || c.is_whitespace())
    {
        return Err(SelectionProblem::InterfaceName(
            excerpt(interface).into_owned(),
        ));
    }
    let given = |part: &str| (!part.is_empty()).then(|| part.to_owned());
    Ok(NetworkSelection {
        namespace: given(namespace),
        name: name.to_owned(),
        interface: given(interface),
        ips,
    })
}

/// The value of `name` in `object`, its key matched in any ASCII case, the last one winning
/// (as Go's `encoding/json` decodes into a struct).
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .next_back()
}

/// A string field (absent or `null`: empty).
fn string_field<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, SelectionProblem> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(SelectionProblem::FieldType {
            field: name,
            expected: "a string",
        }),
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, the check Multus applies (without the 63-byte limit).
fn is_dns_label(value: &str) -> bool {
    let alphanumeric = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alphanumeric(first)
                && alphanumeric(last)
                && bytes.iter().all(|&c| alphanumeric(c) || c == b'-')
        }
        _ => false,
    }
}

/// Whether Go's `net.ParseMAC` accepts `value`: 6, 8 or 20 bytes as pairs of hex digits
/// separated by `:` or `-`, or as groups of four separated by `.`.
fn is_hardware_address(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 14 {
        return false;
    }
    let groups = |size: usize, separator: u8| {
        let pieces: Vec<&[u8]> = bytes.split(|&c| c == separator).collect();
        let count = pieces.len() * size / 2;
        [6, 8, 20].contains(&count)
            && pieces
                .iter()
                .all(|piece| piece.len() == size && piece.iter().all(u8::is_ascii_hexdigit))
    };
    match (bytes[2], bytes[4]) {
        (separator @ (b':' | b'-'), _) => groups(2, separator),
        (_, b'.') => groups(4, b'.'),
        _ => false,
    }
}

/// The address of `value`, an IP address, or a CIDR (`ADDRESS/PREFIX`) when it holds a `/`.
fn ip_or_cidr(value: &str) -> Option<IpAddr> {
    match value.split_once('/') {
        None => value.parse().ok(),
        Some((address, prefix)) => {
            let address: IpAddr = address.parse().ok()?;
            let bits = if address.is_ipv4() { 32 } else { 128 };
            let valid = !prefix.is_empty()
                && prefix.bytes().all(|c| c.is_ascii_digit())
                && prefix.parse::<u8>().is_ok_and(|prefix| prefix <= bits);
            valid.then_some(address)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn selection(namespace: Option<&str>, name: &str, interface: Option<&str>) -> NetworkSelection {
        NetworkSelection {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            interface: interface.map(str::to_owned),
            ips: Vec::new(),
        }
    }

    #[rstest]
    #[case::one("ipvlan-multus", &[(None, "ipvlan-multus", None)])]
    #[case::several_trimmed(" a, other/b ,c ", &[(None, "a", None), (Some("other"), "b", None), (None, "c", None)])]
    #[case::named_interface("a@data0, ns/b", &[(None, "a", Some("data0")), (Some("ns"), "b", None)])]
    #[case::spaces_around_the_at("a@ data0,b @data1, c @ data2", &[(None, "a", Some("data0")), (None, "b", Some("data1")), (None, "c", Some("data2"))])]
    #[case::spaces_around_the_slash("ns / a", &[(Some("ns"), "a", None)])]
    #[case::empty_namespace("/a", &[(None, "a", None)])]
    #[case::empty_interface("a@", &[(None, "a", None)])]
    #[case::longest_interface("a@abcdefghijklmno", &[(None, "a", Some("abcdefghijklmno"))])]
    #[case::interface_with_dots_and_capitals("a@Data.0", &[(None, "a", Some("Data.0"))])]
    #[case::json(r#"[{"name": "a"}, {"name": "b", "namespace": "x", "interface": "storage"}]"#, &[(None, "a", None), (Some("x"), "b", Some("storage"))])]
    #[case::json_more_fields(r#"[{"name": "a", "mac": "02:00:00:00:00:01", "cni-args": {"x": 1}}]"#, &[(None, "a", None)])]
    #[case::json_keys_in_any_case(r#"[{"Name": "a", "INTERFACE": "data0"}]"#, &[(None, "a", Some("data0"))])]
    #[case::json_last_key_wins(r#"[{"name": "a", "Name": "b"}]"#, &[(None, "b", None)])]
    #[case::json_deprecated_interface_request(r#"[{"name": "a", "interfaceRequest": "old0"}]"#, &[(None, "a", Some("old0"))])]
    #[case::json_interface_beats_the_deprecated_one(r#"[{"name": "a", "interface": "new0", "interfaceRequest": "old0"}]"#, &[(None, "a", Some("new0"))])]
    #[case::json_nulls(r#"[{"name": "a", "interface": null, "ips": null}]"#, &[(None, "a", None)])]
    #[case::json_names_are_not_checked_as_labels(r#"[{"name": "A_b", "namespace": "N"}]"#, &[(Some("N"), "A_b", None)])]
    #[case::json_mac_with_dots(r#"[{"name": "a", "mac": "0200.0000.0001"}]"#, &[(None, "a", None)])]
    #[case::json_guid_of_20_bytes(r#"[{"name": "a", "infiniband-guid": "00:00:04:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"}]"#, &[(None, "a", None)])]
    fn reads_selections_as_multus_does(
        #[case] annotation: &str,
        #[case] expected: &[(Option<&str>, &str, Option<&str>)],
    ) {
        let expected: Vec<NetworkSelection> = expected
            .iter()
            .map(|(namespace, name, interface)| selection(*namespace, name, *interface))
            .collect();
        assert_eq!(parse_networks(annotation), Ok(expected));
    }

    #[rstest]
    #[case::two_slashes("ns/a/b", 1, SelectionProblem::Slashes)]
    #[case::two_ats("a@b@c", 1, SelectionProblem::Ats)]
    #[case::two_ats_later("a, b@x@y", 2, SelectionProblem::Ats)]
    #[case::empty_item("a,,b", 2, SelectionProblem::NoName)]
    #[case::trailing_comma("a,b,", 3, SelectionProblem::NoName)]
    #[case::namespace_only("ns/", 1, SelectionProblem::NoName)]
    #[case::interface_only("@data0", 1, SelectionProblem::NoName)]
    #[case::capital_name("Net", 1, SelectionProblem::NotALabel { part: "network name", value: "Net".to_owned() })]
    #[case::underscore_namespace("my_ns/a", 1, SelectionProblem::NotALabel { part: "namespace", value: "my_ns".to_owned() })]
    #[case::name_ending_with_a_dash("a-", 1, SelectionProblem::NotALabel { part: "network name", value: "a-".to_owned() })]
    #[case::dotted_name("a.b", 1, SelectionProblem::NotALabel { part: "network name", value: "a.b".to_owned() })]
    #[case::space_inside_a_name("a b", 1, SelectionProblem::NotALabel { part: "network name", value: "a b".to_owned() })]
    #[case::interface_too_long("a@abcdefghijklmnop", 1, SelectionProblem::InterfaceName("abcdefghijklmnop".to_owned()))]
    #[case::space_inside_an_interface("a@da ta", 1, SelectionProblem::InterfaceName("da ta".to_owned()))]
    #[case::json_without_name(r#"[{"interface": "net5"}]"#, 1, SelectionProblem::NoName)]
    #[case::json_interface_too_long(r#"[{"name": "a", "interface": "abcdefghijklmnop"}]"#, 1, SelectionProblem::InterfaceName("abcdefghijklmnop".to_owned()))]
    #[case::json_interface_with_a_comma(r#"[{"name": "a", "interface": "d,e"}]"#, 1, SelectionProblem::InterfaceName("d,e".to_owned()))]
    #[case::json_not_an_object(r#"[{"name": "a"}, "b"]"#, 2, SelectionProblem::NotAnObject)]
    #[case::json_name_not_a_string(r#"[{"name": 5}]"#, 1, SelectionProblem::FieldType { field: "name", expected: "a string" })]
    #[case::json_ips_not_a_list(r#"[{"name": "a", "ips": "10.0.0.1"}]"#, 1, SelectionProblem::FieldType { field: "ips", expected: "a list of strings" })]
    #[case::json_bad_mac(r#"[{"name": "a", "mac": "02:00:00:00:00"}]"#, 1, SelectionProblem::HardwareAddress { field: "mac", value: "02:00:00:00:00".to_owned() })]
    #[case::json_mixed_separators(r#"[{"name": "a", "mac": "02:00-00:00:00:01"}]"#, 1, SelectionProblem::HardwareAddress { field: "mac", value: "02:00-00:00:00:01".to_owned() })]
    #[case::json_bad_guid(r#"[{"name": "a", "infiniband-guid": "guid"}]"#, 1, SelectionProblem::HardwareAddress { field: "infiniband-guid", value: "guid".to_owned() })]
    #[case::json_bad_ip(r#"[{"name": "a", "ips": ["10.0.0.300"]}]"#, 1, SelectionProblem::Ip("10.0.0.300".to_owned()))]
    #[case::json_bad_prefix(r#"[{"name": "a", "ips": ["10.0.0.1/33"]}]"#, 1, SelectionProblem::Ip("10.0.0.1/33".to_owned()))]
    fn refuses_what_multus_refuses(
        #[case] annotation: &str,
        #[case] position: usize,
        #[case] problem: SelectionProblem,
    ) {
        match parse_networks(annotation) {
            Err(InvalidNetworks::Selection {
                position: at,
                problem: found,
                ..
            }) => assert_eq!((at, found), (position, problem)),
            other => panic!("{annotation}: expected a refusal, got {other:?}"),
        }
    }

    #[rstest]
    #[case::truncated("[{\"name\": ")]
    #[case::an_object_not_a_list(r#"{"name": "a"}"#)]
    #[case::a_quote_in_the_short_form(r#"a,"b""#)]
    #[case::a_brace_in_a_name("a{b}")]
    fn the_json_form_must_be_a_json_list(#[case] annotation: &str) {
        assert!(
            matches!(parse_networks(annotation), Err(InvalidNetworks::Json(_))),
            "{annotation}"
        );
    }

    #[rstest]
    #[case::none(r#"[{"name": "a"}]"#, &[], 1)]
    #[case::null(r#"[{"name": "a", "ips": null}]"#, &[], 1)]
    #[case::short_form("a", &[], 1)]
    #[case::two_v4_one_v6(r#"[{"name": "a", "ips": ["10.0.1.5/24", "fd00::5", "10.0.1.6"]}]"#, &["10.0.1.5", "fd00::5", "10.0.1.6"], 2)]
    #[case::v6_only(r#"[{"name": "a", "IPS": ["fd00::5/64"]}]"#, &["fd00::5"], 0)]
    fn keeps_the_ips_and_counts_their_ipv4_addresses(
        #[case] annotation: &str,
        #[case] ips: &[&str],
        #[case] ipv4: u64,
    ) {
        let selections = parse_networks(annotation).expect("valid");
        let expected: Vec<IpAddr> = ips
            .iter()
            .map(|ip| ip.parse().expect("an address"))
            .collect();
        assert_eq!(selections[0].ips, expected);
        assert_eq!(selections[0].ipv4_addresses(), ipv4);
    }

    #[rstest]
    #[case::name("a", "a")]
    #[case::all_parts(" ns / a @ data0 ", "ns/a@data0")]
    #[case::json(
        r#"[{"name": "a", "namespace": "ns", "interface": "net1", "ips": ["10.0.0.1"]}]"#,
        "ns/a@net1"
    )]
    fn shows_a_selection_as_the_short_form(#[case] annotation: &str, #[case] shown: &str) {
        let selections = parse_networks(annotation).expect("valid");
        assert_eq!(selections[0].to_string(), shown);
    }

    #[test]
    fn errors_name_the_selection_and_the_fix() {
        let message = |annotation| parse_networks(annotation).expect_err("refused").to_string();
        assert_eq!(
            message("a, b@x@y"),
            "selection 2 (\"b@x@y\") has more than one '@'; write NAME@INTERFACE"
        );
        assert_eq!(
            message(r#"[{"name": "a", "ips": ["x"]}]"#),
            r#"selection 1 ({"name":"a","ips":["x"]}) has ips item "x", which is neither an IP address nor a CIDR"#
        );
        assert!(message("[").starts_with("it is in the JSON form"));
    }

    #[rstest]
    #[case::unnamed("a, b", &[], true)]
    #[case::all_named("a@data0, b@data1", &["data0", "data1"], false)]
    #[case::mixed("a@data0, b", &["data0"], true)]
    #[case::spaces_around_the_at("a @ data0", &["data0"], false)]
    #[case::a_name_given_twice("a@data0, b@data0", &["data0"], false)]
    #[case::json_mixed(r#"[{"name": "a"}, {"name": "b", "interface": "storage"}]"#, &["storage"], true)]
    fn names_what_the_annotation_names_and_finds_the_rest_by_mac(
        #[case] annotation: &str,
        #[case] names: &[&str],
        #[case] by_mac: bool,
    ) {
        assert_eq!(
            managed_interfaces(annotation),
            Ok(ManagedInterfaces {
                names: names.iter().map(|name| (*name).to_owned()).collect(),
                by_mac,
            })
        );
    }
}
