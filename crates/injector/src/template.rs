use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::mesh::Mesh;
use crate::network_resources::RESOURCE_PREFIX;
use crate::{HELPER_CONTAINER_NAME, RUN_VOLUME_NAME, annotations, labels};

/// The parts of a pod template the injector reads, as plain data.
///
/// It deserializes from a Pod, or from the `template` of a workload, and keeps only what the
/// decision needs: the annotations of [`annotations::READ`], the labels of [`labels::READ`],
/// `hostNetwork`, of each container, initContainer and volume list its length and which of
/// the names the injector adds or looks for it holds, and the first container's requests and
/// limits of [`RESOURCE_PREFIX`] resources. Everything else is skipped unread,
/// so reading a pod costs memory in proportion to those few values, never to the size or
/// shape of the rest of the pod. `null` is accepted wherever Kubernetes accepts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PodTemplate {
    /// `metadata` of the template.
    #[serde(default)]
    pub metadata: Option<TemplateMetadata>,
    /// `spec` of the template.
    #[serde(default)]
    pub spec: Option<TemplateSpec>,
}

/// `metadata` of a pod template: only the annotations and labels the injector reads matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TemplateMetadata {
    /// `metadata.annotations`, the ones the injector reads.
    #[serde(default)]
    pub annotations: Option<Annotations>,
    /// `metadata.labels`, the ones the injector reads.
    #[serde(default)]
    pub labels: Option<Labels>,
}

/// `spec` of a pod template: what decides the injection and where the patch goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// `spec.hostNetwork`.
    #[serde(default)]
    pub host_network: Option<bool>,
    /// `spec.containers`.
    #[serde(default)]
    pub containers: Option<AppContainers>,
    /// `spec.initContainers`.
    #[serde(default)]
    pub init_containers: Option<NameList>,
    /// `spec.volumes`.
    #[serde(default)]
    pub volumes: Option<NameList>,
}

// The `SET` of a [`Kept`] map or of a [`Matched`] string: the fixed set of names it compares
// strings with as it reads them, never storing the others.

/// [`annotations::READ`].
const ANNOTATION_KEYS: u8 = 0;
/// [`labels::READ`].
const LABEL_KEYS: u8 = 1;
/// [`LOOKED_FOR`].
const CONTAINER_AND_VOLUME_NAMES: u8 = 2;

/// Names of containers and volumes the injector adds or looks for; a [`NameList`] remembers
/// which of them it holds.
const LOOKED_FOR: [&str; 4] = [
    HELPER_CONTAINER_NAME,
    RUN_VOLUME_NAME,
    Mesh::Istio.proxy_container(),
    Mesh::Linkerd.proxy_container(),
];

/// The names of `SET`.
fn names(set: u8) -> &'static [&'static str] {
    match set {
        ANNOTATION_KEYS => &annotations::READ,
        LABEL_KEYS => &labels::READ,
        _ => &LOOKED_FOR,
    }
}

/// Which item of `SET` is `name`, if any.
fn position(set: u8, name: &str) -> Option<usize> {
    names(set).iter().position(|known| *known == name)
}

/// Room for the values of the largest set of keys a [`Kept`] map reads.
const KEPT_ROOM: usize = annotations::READ.len();

/// The values of the keys of one fixed set in a string map (annotations or labels); other
/// keys are skipped unread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept<const SET: u8> {
    values: [Option<String>; KEPT_ROOM],
}

/// The values of the annotations in [`annotations::READ`].
pub type Annotations = Kept<ANNOTATION_KEYS>;
/// The values of the labels in [`labels::READ`].
pub type Labels = Kept<LABEL_KEYS>;

impl<const SET: u8> Default for Kept<SET> {
    fn default() -> Self {
        Kept {
            values: Default::default(),
        }
    }
}

impl<const SET: u8> Kept<SET> {
    /// The value of `key`, if it is one of the keys this map reads and present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values[position(SET, key)?].as_deref()
    }
}

/// A list of containers or volumes, read as its length and where it holds the names the
/// injector adds ([`HELPER_CONTAINER_NAME`], [`RUN_VOLUME_NAME`]) or looks for (the service
/// meshes' proxy containers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameList {
    len: usize,
    /// The position of the first item of each name of [`LOOKED_FOR`].
    at: [Option<usize>; LOOKED_FOR.len()],
}

impl NameList {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list has no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether an item is named `name`, one of the names the injector adds or looks for
    /// (always `false` for other names, which are not kept).
    pub fn holds(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The position of the first item named `name`, one of the names the injector adds or
    /// looks for (always `None` for other names, which are not kept).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.at[position(CONTAINER_AND_VOLUME_NAMES, name)?]
    }
}

impl NameList {
    fn add(&mut self, known: Option<usize>) {
        if let Some(index) = known {
            self.at[index].get_or_insert(self.len);
        }
        self.len += 1;
    }
}

/// `spec.containers`: a [`NameList`], and the resources of the first container, the one that
/// gets the pod's network requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppContainers {
    names: NameList,
    /// `None`: no container; `Some(None)`: the first has no (or a `null`) `resources`.
    first: Option<Option<ContainerResources>>,
}

/// `resources` of a container: its `requests` and `limits` (`None`: absent or `null`), each
/// holding only its [`RESOURCE_PREFIX`] entries, quantities as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerResources {
    /// `requests`.
    #[serde(default)]
    pub requests: Option<OwnResources>,
    /// `limits`.
    #[serde(default)]
    pub limits: Option<OwnResources>,
}

/// The [`RESOURCE_PREFIX`] entries of a resource list, by name; the others are skipped unread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnResources(pub BTreeMap<String, String>);

/// A key of a resource list: kept only when it starts with [`RESOURCE_PREFIX`].
struct OwnKey(Option<String>);

impl<'de> Deserialize<'de> for OwnKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = OwnKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource name")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OwnKey, E> {
                Ok(OwnKey(
                    value.starts_with(RESOURCE_PREFIX).then(|| value.to_owned()),
                ))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A quantity of a resource list, as written: a string, or a number (which the API server
/// reads too).
struct QuantityText(String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(value.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(value.to_string()))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(value.to_string()))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<QuantityText, E> {
                Ok(QuantityText(value.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl<'de> Deserialize<'de> for OwnResources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = OwnResources;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of resource quantities")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut own = BTreeMap::new();
                while let Some(OwnKey(key)) = map.next_key()? {
                    match key {
                        Some(name) => {
                            let QuantityText(quantity) = map.next_value()?;
                            own.insert(name, quantity);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(OwnResources(own))
            }
        }
        deserializer.deserialize_map(ListVisitor)
    }
}

impl AppContainers {
    /// The names of the list.
    pub fn names(&self) -> &NameList {
        &self.names
    }

    /// The first container's resources: `None` when there is no container, `Some(None)`
    /// when it has none.
    pub fn first_resources(&self) -> Option<Option<&ContainerResources>> {
        self.first.as_ref().map(Option::as_ref)
    }
}

/// One container or volume: only its `name` is looked at.
#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    name: Option<Matched<CONTAINER_AND_VOLUME_NAMES>>,
}

/// The first container: its `name` and its `resources`.
#[derive(Deserialize)]
struct FirstContainer {
    #[serde(default)]
    name: Option<Matched<CONTAINER_AND_VOLUME_NAMES>>,
    #[serde(default)]
    resources: Option<ContainerResources>,
}

impl<'de> Deserialize<'de> for AppContainers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = AppContainers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                let mut containers = AppContainers::default();
                if let Some(first) = items.next_element::<FirstContainer>()? {
                    containers
                        .names
                        .add(first.name.and_then(|Matched(index)| index));
                    containers.first = Some(first.resources);
                }
                while let Some(item) = items.next_element::<Item>()? {
                    containers
                        .names
                        .add(item.name.and_then(|Matched(index)| index));
                }
                Ok(containers)
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// A string compared with the names of `SET` as it is read, never stored.
struct Matched<const SET: u8>(Option<usize>);

impl<'de, const SET: u8> Deserialize<'de> for Matched<SET> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MatchVisitor<const SET: u8>;
        impl<const SET: u8> Visitor<'_> for MatchVisitor<SET> {
            type Value = Matched<SET>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Matched(position(SET, value)))
            }
        }
        deserializer.deserialize_str(MatchVisitor::<SET>)
    }
}

impl<'de, const SET: u8> Deserialize<'de> for Kept<SET> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeptVisitor<const SET: u8>;
        impl<'de, const SET: u8> Visitor<'de> for KeptVisitor<SET> {
            type Value = Kept<SET>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = Kept::default();
                while let Some(Matched::<SET>(key)) = map.next_key()? {
                    match key {
                        Some(index) => {
                            kept.values[index] = Some(map.next_value_seed(KeptValue {
                                set: SET,
                                key: names(SET)[index],
                            })?);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(kept)
            }
        }
        deserializer.deserialize_map(KeptVisitor::<SET>)
    }
}

/// Longest annotation value read: the API server refuses pods whose annotations, keys and
/// values together, exceed 256 KiB, so a longer value never comes from it, and is not copied.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Longest label value read: Kubernetes allows 63 characters.
const MAX_LABEL_BYTES: usize = 63;

/// Reads the value of the annotation or label it names, refusing one longer than Kubernetes
/// allows.
struct KeptValue {
    set: u8,
    key: &'static str,
}

impl KeptValue {
    /// `annotation` or `label`, its longest value, and the rule behind it.
    fn limit(&self) -> (&'static str, usize, &'static str) {
        if self.set == LABEL_KEYS {
            (
                "label",
                MAX_LABEL_BYTES,
                "the 63 characters Kubernetes allows for a label value",
            )
        } else {
            (
                "annotation",
                MAX_ANNOTATION_BYTES,
                "the 256 KiB Kubernetes allows for all annotations together",
            )
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeptValue {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeptValue {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the value of {} {} as a string",
            self.limit().0,
            self.key
        )
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        let (what, max, rule) = self.limit();
        if value.len() > max {
            return Err(E::custom(format!(
                "{what} {} is {} bytes long, more than {rule}",
                self.key,
                value.len()
            )));
        }
        Ok(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = NameList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of named items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                let mut list = NameList::default();
                while let Some(item) = items.next_element::<Item>()? {
                    list.add(item.name.and_then(|Matched(index)| index));
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// The list of an absent field.
static EMPTY: NameList = NameList {
    len: 0,
    at: [None; LOOKED_FOR.len()],
};

impl PodTemplate {
    /// The value of annotation `key`, if it is one the injector reads and it is present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.annotations.as_ref()?.get(key)
    }

    /// The value of label `key`, if it is one the injector reads and it is present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.labels.as_ref()?.get(key)
    }

    /// Whether the pod shares the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.spec.as_ref().and_then(|spec| spec.host_network) == Some(true)
    }

    /// `spec.containers` (empty when absent).
    pub fn containers(&self) -> &NameList {
        self.app_containers().map_or(&EMPTY, AppContainers::names)
    }

    /// `spec.containers` with the first container's resources, when present.
    pub fn app_containers(&self) -> Option<&AppContainers> {
        self.spec.as_ref()?.containers.as_ref()
    }

    /// `spec.initContainers` (empty when absent).
    pub fn init_containers(&self) -> &NameList {
        self.list(|spec| &spec.init_containers)
    }

    /// `spec.volumes` (empty when absent).
    pub fn volumes(&self) -> &NameList {
        self.list(|spec| &spec.volumes)
    }

    fn list(&self, field: impl Fn(&TemplateSpec) -> &Option<NameList>) -> &NameList {
        self.spec
            .as_ref()
            .and_then(|spec| field(spec).as_ref())
            .unwrap_or(&EMPTY)
    }
}
