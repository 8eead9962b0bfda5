//! Service meshes whose proxies capture a pod's outbound traffic, and how the helper's own
//! traffic stays out of them: it runs as the UID whose traffic the mesh's redirect lets
//! through (its proxy's), and with the agent backend the agent port joins the mesh's
//! outbound exclusions.

use crate::{Choice, PodTemplate, annotations, labels};

/// A service mesh whose proxy would capture the helper's traffic (EC2 and instance metadata,
/// or its node's agent).
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

    /// The UID of the mesh's proxy, whose outbound traffic the mesh's redirect returns
    /// before any other rule: the helper runs as it, so its own traffic is never
    /// redirected, while the app's containers keep theirs. Istio documents it for init
    /// containers under the Istio CNI (istio.io, "Install Istio with the Istio CNI plugin",
    /// "Compatibility with application init containers": `runAsUser: 1337`); Linkerd's
    /// redirect, from linkerd-init or linkerd-cni alike, starts its output chain with
    /// `-m owner --uid-owner <proxy UID> -j RETURN` ("ignore-proxy-user-id";
    /// linkerd2-proxy-init, iptables.go `addOutgoingTrafficRules`), the proxy UID being 2102
    /// unless the mesh is installed with another `proxy.uid`.
    pub const fn proxy_uid(self) -> i64 {
        match self {
            Mesh::Istio => 1337,
            Mesh::Linkerd => 2102,
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

/// Which service meshes an injected pod is taken to be in: its helper runs as the first
/// one's proxy UID ([`Mesh::proxy_uid`]) and, with the agent backend, the agent port joins
/// each one's outbound exclusions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshExclusions {
    /// The meshes the pod shows ([`Mesh::injects`]).
    Auto,
    /// Istio, and the meshes the pod shows: for namespaces where Istio injects every pod
    /// (label `istio-injection=enabled`), which the pod does not show.
    Istio,
    /// Linkerd, and the meshes the pod shows: for namespaces Linkerd injects.
    Linkerd,
    /// None: the helper keeps its UID and no exclusion is written.
    Never,
}

impl Choice for MeshExclusions {
    const SETTING: &'static str = "mesh exclusions";
    const ALL: &'static [Self] = &[
        MeshExclusions::Auto,
        MeshExclusions::Istio,
        MeshExclusions::Linkerd,
        MeshExclusions::Never,
    ];

    fn name(self) -> &'static str {
        match self {
            MeshExclusions::Auto => "auto",
            MeshExclusions::Istio => "istio",
            MeshExclusions::Linkerd => "linkerd",
            MeshExclusions::Never => "never",
        }
    }
}

impl MeshExclusions {
    /// The meshes `pod` is taken to be in, Istio first.
    pub fn meshes(self, pod: &PodTemplate) -> impl Iterator<Item = Mesh> + '_ {
        Mesh::ALL.into_iter().filter(move |mesh| match self {
            MeshExclusions::Never => false,
            MeshExclusions::Istio if *mesh == Mesh::Istio => true,
            MeshExclusions::Linkerd if *mesh == Mesh::Linkerd => true,
            _ => mesh.injects(pod),
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

    #[rstest]
    #[case::auto_nothing_shown(MeshExclusions::Auto, json!({}), &[])]
    #[case::auto_istio_shown(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true"}), &[Mesh::Istio])]
    #[case::auto_both_shown(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true", "linkerd.io/inject": "enabled"}), &[Mesh::Istio, Mesh::Linkerd])]
    #[case::istio_named(MeshExclusions::Istio, json!({}), &[Mesh::Istio])]
    #[case::istio_named_linkerd_shown(MeshExclusions::Istio, json!({"linkerd.io/inject": "enabled"}), &[Mesh::Istio, Mesh::Linkerd])]
    #[case::linkerd_named(MeshExclusions::Linkerd, json!({}), &[Mesh::Linkerd])]
    #[case::never(MeshExclusions::Never, json!({"sidecar.istio.io/inject": "true"}), &[])]
    fn takes_the_pod_to_be_in_the_meshes_it_shows_or_the_one_named(
        #[case] setting: MeshExclusions,
        #[case] annotations: serde_json::Value,
        #[case] meshes: &[Mesh],
    ) {
        let pod = pod(annotations);
        assert_eq!(setting.meshes(&pod).collect::<Vec<_>>(), meshes);
    }
}
