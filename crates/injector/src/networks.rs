//! The pod's Multus interfaces, from its `k8s.v1.cni.cncf.io/networks` annotation, named as
//! Multus names them: the `interface` a selection gives (`"interface"` in the JSON form,
//! `name@ifname` in the short form), else `net<position>` counting the selections from 1
//! (multus-cni, pkg/multus/multus.go, `getIfname`).

use serde::Deserialize;

/// An annotation Multus would not accept either.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidNetworks(pub String);

#[derive(Deserialize)]
struct Selection {
    name: String,
    #[serde(default)]
    interface: Option<String>,
}

/// The interface names of the networks `annotation` selects, in order.
pub fn multus_interfaces(annotation: &str) -> Result<Vec<String>, InvalidNetworks> {
    let annotation = annotation.trim();
    let named: Vec<(String, Option<String>)> = if annotation.starts_with('[') {
        serde_json::from_str::<Vec<Selection>>(annotation)
            .map_err(|error| {
                InvalidNetworks(format!(
                    "its JSON does not parse as a list of network selections: {error}"
                ))
            })?
            .into_iter()
            .map(|selection| (selection.name, selection.interface))
            .collect()
    } else {
        annotation
            .split(',')
            .map(str::trim)
            .map(|item| match item.rsplit_once('@') {
                Some((name, interface)) => (name.to_owned(), Some(interface.to_owned())),
                None => (item.to_owned(), None),
            })
            .collect()
    };
    named
        .into_iter()
        .enumerate()
        .map(|(index, (name, interface))| {
            if name.trim().is_empty() {
                return Err(InvalidNetworks(format!(
                    "selection {} names no network",
                    index + 1
                )));
            }
            Ok(interface
                .filter(|interface| !interface.trim().is_empty())
                .unwrap_or_else(|| format!("net{}", index + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::one("ipvlan-multus", &["net1"])]
    #[case::several("a, other/b ,c", &["net1", "net2", "net3"])]
    #[case::named_interface("a@data0, ns/b", &["data0", "net2"])]
    #[case::json(r#"[{"name": "a"}, {"name": "b", "namespace": "x", "interface": "storage"}]"#, &["net1", "storage"])]
    #[case::json_with_more_fields(r#"[{"name": "a", "ips": ["10.0.1.5/24"], "mac": "02:00:00:00:00:01"}]"#, &["net1"])]
    fn names_interfaces_as_multus_does(#[case] annotation: &str, #[case] expected: &[&str]) {
        assert_eq!(multus_interfaces(annotation).expect("valid"), expected);
    }

    #[rstest]
    #[case::bad_json("[{\"name\": ")]
    #[case::json_without_name("[{\"interface\": \"net5\"}]")]
    #[case::empty_item("a,,b")]
    fn refuses_what_multus_refuses(#[case] annotation: &str) {
        assert!(multus_interfaces(annotation).is_err());
    }
}
