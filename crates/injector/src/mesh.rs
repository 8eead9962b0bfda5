//! Service meshes whose proxies capture a pod's outbound traffic, and the annotations that
//! keep the helper's connection to its node's agent out of them.

use crate::{Choice, PodTemplate, annotations, labels};

/// A service mesh whose proxy would capture the helper's connection to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mesh {
    /// Istio (sidecar mode).
    Istio,
    /// Linkerd.
    Linkerd,
}

impl Mesh {
    /// Every mesh, in the order their annotations are added.
    pub const ALL: [Mesh; 2] = [Mesh::Istio, Mesh::Linkerd];

    /// The name of the mesh's proxy container.
    pub const fn proxy_container(self) -> &'static str {
        match self {
            Mesh::Istio => "istio-proxy",
            Mesh::Linkerd => "linkerd-proxy",
        }
    }

    /// The pod annotation listing the outbound ports the mesh's proxy leaves alone.
    pub fn exclusion_annotation(self) -> &'static str {
        match self {
            Mesh::Istio => annotations::ISTIO_EXCLUDE_OUTBOUND_PORTS,
            Mesh::Linkerd => annotations::LINKERD_SKIP_OUTBOUND_PORTS,
        }
    }

    /// Whether the pod shows that the mesh injects it: its proxy container is there already,
    /// or it asks for it (Istio: annotation or label `sidecar.istio.io/inject` true, as Istio
    /// reads it: `true`, `yes`, `y` or `on`, any case; Linkerd: annotation `linkerd.io/inject`
    /// `enabled` or `ingress`). Injection a namespace asks for is not visible in a pod.
    pub fn injects(self, pod: &PodTemplate) -> bool {
        let proxy = self.proxy_container();
        if pod.containers().holds(proxy) || pod.init_containers().holds(proxy) {
            return true;
        }
        match self {
            Mesh::Istio => [
                pod.annotation(annotations::ISTIO_INJECT),
                pod.label(labels::ISTIO_INJECT),
            ]
            .into_iter()
            .flatten()
            .any(|value| {
                ["true", "yes", "y", "on"]
                    .iter()
                    .any(|yes| value.trim().eq_ignore_ascii_case(yes))
            }),
            Mesh::Linkerd => pod
                .annotation(annotations::LINKERD_INJECT)
                .is_some_and(|value| matches!(value.trim(), "enabled" | "ingress")),
        }
    }

    /// The value of [`Mesh::exclusion_annotation`] that also excludes `port`: the pod's own
    /// value with `port` appended, or `port` alone when the pod has none; `None` when the
    /// pod's value excludes `port` already (a port or a range `low-high`).
    pub(crate) fn excluding(self, pod: &PodTemplate, port: u16) -> Option<String> {
        let existing = pod
            .annotation(self.exclusion_annotation())
            .map(|value| value.trim().trim_end_matches(',').trim_end())
            .unwrap_or_default();
        if existing.is_empty() {
            return Some(port.to_string());
        }
        let excluded = existing.split(',').map(str::trim).any(|item| {
            let bound = |text: &str| text.trim().parse::<u16>().ok();
            match item.split_once('-') {
                Some((low, high)) => bound(low)
                    .zip(bound(high))
                    .is_some_and(|(low, high)| (low..=high).contains(&port)),
                None => bound(item) == Some(port),
            }
        });
        (!excluded).then(|| format!("{existing},{port}"))
    }
}

/// Which injected pods get the meshes' exclusion annotations for the agent port (agent
/// backend only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshExclusions {
    /// The pods that show a mesh's injection ([`Mesh::injects`]), that mesh's annotation.
    Auto,
    /// Every injected pod, both annotations (harmless without a mesh): for meshes a
    /// namespace turns on.
    Always,
    /// None.
    Never,
}

impl Choice for MeshExclusions {
    const SETTING: &'static str = "mesh exclusions";
    const ALL: &'static [Self] = &[
        MeshExclusions::Auto,
        MeshExclusions::Always,
        MeshExclusions::Never,
    ];

    fn name(self) -> &'static str {
        match self {
            MeshExclusions::Auto => "auto",
            MeshExclusions::Always => "always",
            MeshExclusions::Never => "never",
        }
    }
}

impl MeshExclusions {
    /// The meshes whose exclusion annotation `pod` gets.
    pub fn meshes(self, pod: &PodTemplate) -> impl Iterator<Item = Mesh> + '_ {
        Mesh::ALL.into_iter().filter(move |mesh| match self {
            MeshExclusions::Auto => mesh.injects(pod),
            MeshExclusions::Always => true,
            MeshExclusions::Never => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn pod(annotations: serde_json::Value) -> PodTemplate {
        serde_json::from_value(json!({"metadata": {"annotations": annotations}}))
            .expect("a pod template")
    }

    #[rstest]
    #[case::absent(json!({}), Some("9472"))]
    #[case::empty(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": " "}), Some("9472"))]
    #[case::appended(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "15020, 8080"}), Some("15020, 8080,9472"))]
    #[case::trailing_comma(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "8080,"}), Some("8080,9472"))]
    #[case::there(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "8080, 9472"}), None)]
    #[case::in_a_range(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "9000-9999"}), None)]
    #[case::outside_a_range(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "9000-9471"}), Some("9000-9471,9472"))]
    #[case::not_a_port(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "94720,x"}), Some("94720,x,9472"))]
    fn appends_the_port_once(#[case] annotations: serde_json::Value, #[case] value: Option<&str>) {
        assert_eq!(
            Mesh::Istio.excluding(&pod(annotations), 9472).as_deref(),
            value
        );
    }
}
