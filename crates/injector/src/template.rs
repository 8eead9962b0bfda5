use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{HELPER_CONTAINER_NAME, RUN_VOLUME_NAME, annotations};

/// The parts of a pod template the injector reads, as plain data.
///
/// It deserializes from a Pod, or from the `template` of a workload, and keeps only what the
/// decision needs: the annotations of [`annotations::READ`], `hostNetwork`, and of each
/// container, initContainer and volume list its length and whether it holds a name the
/// injector adds. Everything else is skipped unread, so reading a pod costs memory in
/// proportion to those few values, never to the size or shape of the rest of the pod.
/// `null` is accepted wherever Kubernetes accepts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PodTemplate {
    /// `metadata` of the template.
    #[serde(default)]
    pub metadata: Option<TemplateMetadata>,
    /// `spec` of the template.
    #[serde(default)]
    pub spec: Option<TemplateSpec>,
}

/// `metadata` of a pod template: only the annotations matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TemplateMetadata {
    /// `metadata.annotations`, the ones the injector reads.
    #[serde(default)]
    pub annotations: Option<Annotations>,
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
    pub containers: Option<NameList>,
    /// `spec.initContainers`.
    #[serde(default)]
    pub init_containers: Option<NameList>,
    /// `spec.volumes`.
    #[serde(default)]
    pub volumes: Option<NameList>,
}

/// The values of the annotations in [`annotations::READ`]; other keys are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    values: [Option<String>; annotations::READ.len()],
}

impl Annotations {
    /// The value of `key`, if it is one of [`annotations::READ`] and present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values[read_index(key)?].as_deref()
    }
}

fn read_index(key: &str) -> Option<usize> {
    annotations::READ.iter().position(|read| *read == key)
}

/// Names the injector adds to a pod; a [`NameList`] remembers which of them it holds.
const ADDED_NAMES: [&str; 2] = [HELPER_CONTAINER_NAME, RUN_VOLUME_NAME];

/// A list of containers or volumes, read as its length and which of the names the injector
/// adds ([`HELPER_CONTAINER_NAME`], [`RUN_VOLUME_NAME`]) it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameList {
    len: usize,
    holds: [bool; ADDED_NAMES.len()],
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

    /// Whether an item is named `name`, one of the names the injector adds (always `false`
    /// for other names, which are not kept).
    pub fn holds(&self, name: &str) -> bool {
        ADDED_NAMES
            .iter()
            .zip(self.holds)
            .any(|(added, held)| held && *added == name)
    }
}

impl NameList {
    fn add(&mut self, added: Option<usize>) {
        self.len += 1;
        if let Some(index) = added {
            self.holds[index] = true;
        }
    }
}

fn added_index(name: &str) -> Option<usize> {
    ADDED_NAMES.iter().position(|added| *added == name)
}

/// A string compared with a fixed set of names as it is read, never stored.
struct Matched<const SET: u8>(Option<usize>);

/// [`Matched`] against [`annotations::READ`].
const READ_KEYS: u8 = 0;
/// [`Matched`] against [`ADDED_NAMES`].
const ADDED: u8 = 1;

impl<'de, const SET: u8> Deserialize<'de> for Matched<SET> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MatchVisitor<const SET: u8>;
        impl<const SET: u8> Visitor<'_> for MatchVisitor<SET> {
            type Value = Matched<SET>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Matched(if SET == READ_KEYS {
                    read_index(value)
                } else {
                    added_index(value)
                }))
            }
        }
        deserializer.deserialize_str(MatchVisitor::<SET>)
    }
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationsVisitor;
        impl<'de> Visitor<'de> for AnnotationsVisitor {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = Annotations::default();
                while let Some(Matched::<READ_KEYS>(key)) = map.next_key()? {
                    match key {
                        Some(index) => {
                            kept.values[index] = Some(
                                map.next_value_seed(AnnotationValue(annotations::READ[index]))?,
                            );
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(kept)
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

/// Longest annotation value read: the API server refuses pods whose annotations, keys and
/// values together, exceed 256 KiB, so a longer value never comes from it, and is not copied.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Reads the value of the annotation it names, refusing one over [`MAX_ANNOTATION_BYTES`].
struct AnnotationValue(&'static str);

impl<'de> DeserializeSeed<'de> for AnnotationValue {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for AnnotationValue {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the value of annotation {} as a string", self.0)
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        if value.len() > MAX_ANNOTATION_BYTES {
            return Err(E::custom(format!(
                "annotation {} is {} bytes long, more than the 256 KiB Kubernetes allows for all annotations together",
                self.0,
                value.len()
            )));
        }
        Ok(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One container or volume: only its `name` is looked at.
        #[derive(Deserialize)]
        struct Item {
            #[serde(default)]
            name: Option<Matched<ADDED>>,
        }
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

impl PodTemplate {
    /// The value of annotation `key`, if it is one the injector reads and it is present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.annotations.as_ref()?.get(key)
    }

    /// Whether the pod shares the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.spec.as_ref().and_then(|spec| spec.host_network) == Some(true)
    }

    /// `spec.containers` (empty when absent).
    pub fn containers(&self) -> &NameList {
        self.list(|spec| &spec.containers)
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
        static EMPTY: NameList = NameList {
            len: 0,
            holds: [false; ADDED_NAMES.len()],
        };
        self.spec
            .as_ref()
            .and_then(|spec| field(spec).as_ref())
            .unwrap_or(&EMPTY)
    }
}
