//! CEL of the manifests, evaluated with kube-cel (the Kubernetes CEL libraries on the `cel`
//! crate) as the API server evaluates it: objects bound as plain maps, and every
//! expression required to evaluate without error (the policy and the webhook fail closed,
//! so an error would refuse the request).
//!
//! kube-cel has every function the manifests use (`has`, `exists`, `all`, `map`, `filter`,
//! `in`, `size`, `string`, `matches`; the strings extension's `split`, `trim`, `join`,
//! `substring`, `replace`; the IP and CIDR library's `isIP`, `isCIDR`, `cidr`,
//! `containsIP`, `containsCIDR`). Where it differs from the API server:
//! - its `VapEvaluator` knows no policy `variables`, and binds objects with their keys
//!   escaped the way CRD schemas escape property names (`k8s.v1.cni.cncf.io/network-status`
//!   becomes `k8s__dot__v1__dot__cni__dot__cncf__dot__io__slash__network__dash__status`), so
//!   no annotation could be looked up: the tests bind the variables themselves ([`cel`]);
//! - it has no cost accounting: the policy's cost bounds are tested as logic only;
//! - it parses addresses with Rust's std and `ipnet`, the API server with Go's `net/netip`;
//!   they agree on the forms tested (no leading zeros, no zones, no IPv4-mapped IPv6, host
//!   bits allowed in a CIDR);
//! - its `trim` is Rust's and cel-go's is Go's `strings.TrimSpace`: both strip Unicode
//!   White_Space, as the injector's `str::trim` does.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use kube_cel::KubeCelExt as _;
use kube_cel::cel::{Program, to_value};
use serde::Deserialize as _;
use serde_json::Value;

pub use kube_cel::cel::{Context, Value as Cel};

/// A CEL expression of a manifest, compiled.
pub struct Expression {
    /// Where the manifest has it: a name, or a field path.
    pub name: String,
    /// The CEL text.
    pub source: String,
    program: Program,
}

impl Expression {
    /// Compiles `source`; a manifest's CEL must compile.
    pub fn new(name: &str, source: &str) -> Self {
        let program = Program::compile(source)
            .unwrap_or_else(|error| panic!("{name}: {source:?} does not compile: {error}"));
        Expression {
            name: name.to_owned(),
            source: source.to_owned(),
            program,
        }
    }

    /// The expression's value; an error names it (the manifests must never fail).
    pub fn value(&self, context: &Context) -> Cel {
        self.program.execute(context).unwrap_or_else(|error| {
            panic!(
                "{} ({}) fails, which fail-closed admission turns into a refusal: {error}",
                self.name, self.source
            )
        })
    }

    /// The expression's boolean value.
    pub fn holds(&self, context: &Context) -> bool {
        match self.value(context) {
            Cel::Bool(value) => value,
            other => panic!("{} is not a boolean: {other:?}", self.name),
        }
    }
}

/// The string at `key` of a manifest object.
pub fn text<'a>(object: &'a Value, key: &str) -> &'a str {
    object[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} of {object}"))
}

/// The items of the list at `key` (none when absent).
pub fn items<'a>(object: &'a Value, key: &str) -> &'a [Value] {
    object[key].as_array().map_or(&[], Vec::as_slice)
}

/// The object of `kind` in a YAML stream.
pub fn find(yaml: &str, kind: &str) -> Value {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("YAML"))
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// A JSON value as CEL sees an object: maps with their keys as they are (no escaping).
pub fn cel(value: &Value) -> Cel {
    to_value(value).expect("JSON converts to CEL")
}

/// `value` as the API server shows an object to CEL: a typed object read back, so `null`
/// fields (omitted, `omitempty`) are absent.
pub fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key.clone(), without_nulls(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// A context with kube-cel's functions and these variables.
pub fn context(variables: &[(&str, Cel)]) -> Context<'static> {
    let mut context = Context::default().with_all();
    for (name, value) in variables {
        context.add_variable_from_value(*name, value.clone());
    }
    context
}
