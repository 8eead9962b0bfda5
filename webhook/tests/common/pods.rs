//! Generators of pods for the property tests: well-typed Pods with hostile annotations
//! (`properties.rs` checks the webhook's answers over them, `policy.rs` the webhook's
//! matchConditions against the injector).

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Quantity suffixes the generator writes, with the nano units of one; longer suffixes
/// first, so that the first one a text ends with is its suffix.
pub const UNITS: [(&str, u128); 10] = [
    ("Ki", 1_024_000_000_000),
    ("Mi", 1_048_576_000_000_000),
    ("Gi", 1_073_741_824_000_000_000),
    ("n", 1),
    ("u", 1_000),
    ("m", 1_000_000),
    ("k", 1_000_000_000_000),
    ("M", 1_000_000_000_000_000),
    ("G", 1_000_000_000_000_000_000),
    ("", 1_000_000_000),
];

/// A resource quantity as text, with its amount in nano units when it is a valid,
/// non-negative quantity.
pub fn quantity() -> impl Strategy<Value = (String, Option<u128>)> {
    let whole = (0u64..5000, 0..UNITS.len(), any::<bool>()).prop_map(|(n, unit, padded)| {
        let (suffix, scale) = UNITS[unit];
        let text = format!("{n}{suffix}");
        let text = if padded { format!(" {text} ") } else { text };
        (text, Some(u128::from(n) * scale))
    });
    let decimal = (0u64..5000, 0u64..10, 0..UNITS.len()).prop_map(|(n, tenth, unit)| {
        let (suffix, scale) = UNITS[unit];
        // Finer than a nano rounds up.
        let nanos = (u128::from(n * 10 + tenth) * scale).div_ceil(10);
        (format!("{n}.{tenth}{suffix}"), Some(nanos))
    });
    let negative =
        (1u64..5000, 0..UNITS.len()).prop_map(|(n, unit)| (format!("-{n}{}", UNITS[unit].0), None));
    let garbage = prop::sample::select(vec![
        "", "ten", "1.2.3", "5 Mi", "10MB", "Mi", "1e", "-", ".", "0x10", "∞",
    ])
    .prop_map(|text| (text.to_owned(), None));
    prop_oneof![4 => whole, 2 => decimal, 1 => negative, 1 => garbage]
}

/// Text an attacker might put anywhere: quotes, escapes, control and non-ASCII characters,
/// sometimes long.
pub fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[\"\\\\\\u{0}\\n\\t {}\\[\\]:,]{0,16}",
        (1usize..20_000).prop_map(|n| "é\"\\".repeat(n)),
    ]
}

/// `Some` with probability `present`: weighted so that many pods reach the later rules.
pub fn optional<T: std::fmt::Debug>(
    present: f64,
    strategy: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(present, strategy)
}

/// A Pod with well-typed fields and hostile annotations.
pub fn pod() -> impl Strategy<Value = Value> {
    let networks = optional(
        0.9,
        prop_oneof![
            1 => Just(String::new()),
            1 => Just("  ".to_owned()),
            // JSON lists that select nothing, and one Multus cannot read (NBSP is not JSON
            // whitespace).
            1 => prop::sample::select(vec!["[]", " [ ]\n", "\t[\r\n]", "\u{a0}[]"])
                .prop_map(str::to_owned),
            4 => Just("ipvlan-multus".to_owned()),
            4 => hostile(),
        ],
    );
    let mode = optional(
        0.6,
        prop_oneof![
            prop::sample::select(vec![
                "init",
                "sidecar",
                "native-sidecar",
                "disabled",
                " native-sidecar ",
                "Init",
            ])
            .prop_map(str::to_owned),
            hostile(),
        ],
    );
    let image = optional(
        0.3,
        prop_oneof![
            Just("mirror.example.com/ipmgr-helper:2".to_owned()),
            Just(" mirror.example.com/ipmgr-helper:3 ".to_owned()),
            Just("mirror.example.com.attacker.io/x:1".to_owned()),
            Just("attacker.example/x:1".to_owned()),
            Just("two words".to_owned()),
            hostile(),
        ],
    );
    let status = optional(0.1, hostile());
    let meshes = (
        optional(
            0.3,
            prop::sample::select(vec!["true", "TRUE", "on", "false", ""]).prop_map(str::to_owned),
        ),
        optional(
            0.3,
            prop::sample::select(vec!["enabled", "ingress", "disabled"]).prop_map(str::to_owned),
        ),
        prop::array::uniform2(optional(
            0.3,
            prop_oneof![
                prop::sample::select(vec!["8080", "9472", "15020, 9472", "9000-9999", "1-9471,"])
                    .prop_map(str::to_owned),
                hostile(),
            ],
        )),
    );
    let resources = prop::array::uniform4(optional(0.5, quantity()));
    let others = prop::collection::btree_map(hostile(), hostile(), 0..4);
    let names = || {
        prop::collection::vec(
            prop_oneof![
                8 => Just("app".to_owned()),
                1 => Just("aws-ip-mgmt".to_owned()),
                1 => Just("istio-proxy".to_owned()),
                1 => Just("linkerd-proxy".to_owned()),
                2 => Just("aws-ip-mgmt-run".to_owned()),
                4 => hostile(),
            ],
            0..4,
        )
    };
    let lists = (
        names(),
        prop_oneof![
            Just(None),
            Just(Some(None)),
            names().prop_map(|n| Some(Some(n)))
        ],
        optional(0.5, names()),
    );
    let host_network = optional(0.3, any::<bool>());
    (
        (networks, mode, image, status, resources, others),
        lists,
        host_network,
        meshes,
    )
        .prop_map(
            |(
                (networks, mode, image, status, resources, others),
                (containers, init_containers, volumes),
                host_network,
                (istio, linkerd, [istio_ports, linkerd_ports]),
            )| {
                let mut annotations: Map<String, Value> = others
                    .into_iter()
                    .map(|(key, value)| (key, Value::String(value)))
                    .collect();
                let mut set = |key: &str, value: Option<String>| {
                    if let Some(value) = value {
                        annotations.insert(key.to_owned(), Value::String(value));
                    }
                };
                set("k8s.v1.cni.cncf.io/networks", networks);
                set("multus-ipmgr.io/mode", mode);
                set("multus-ipmgr.io/image", image);
                set("multus-ipmgr.io/status", status);
                for (key, quantity) in RESOURCE_KEYS.iter().zip(resources) {
                    set(key, quantity.map(|(text, _)| text));
                }
                set(ISTIO_INJECT, istio);
                set("linkerd.io/inject", linkerd);
                set(ISTIO_PORTS, istio_ports);
                set(LINKERD_PORTS, linkerd_ports);
                let named = |names: Vec<String>| {
                    Value::Array(
                        names
                            .into_iter()
                            .map(|name| json!({"name": name, "image": "busybox"}))
                            .collect(),
                    )
                };
                let mut spec = json!({ "containers": named(containers) });
                match init_containers {
                    None => {}
                    Some(None) => spec["initContainers"] = Value::Null,
                    Some(Some(names)) => spec["initContainers"] = named(names),
                }
                if let Some(volumes) = volumes {
                    spec["volumes"] = Value::Array(
                        volumes
                            .into_iter()
                            .map(|name| json!({"name": name, "emptyDir": {}}))
                            .collect(),
                    );
                }
                if let Some(host_network) = host_network {
                    spec["hostNetwork"] = json!(host_network);
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"generateName": "web-", "namespace": "multus", "annotations": annotations},
                    "spec": spec,
                })
            },
        )
}

/// Istio's opt-in annotation (also a label).
pub const ISTIO_INJECT: &str = "sidecar.istio.io/inject";
/// Istio's outbound ports its proxy leaves alone.
pub const ISTIO_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Linkerd's outbound ports its proxy leaves alone.
pub const LINKERD_PORTS: &str = "config.linkerd.io/skip-outbound-ports";

/// The helper's resource annotations: CPU request and limit, memory request and limit.
pub const RESOURCE_KEYS: [&str; 4] = [
    "multus-ipmgr.io/cpu-request",
    "multus-ipmgr.io/cpu-limit",
    "multus-ipmgr.io/memory-request",
    "multus-ipmgr.io/memory-limit",
];
