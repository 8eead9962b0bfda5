//! The definitions `inject` reads from files (`--network-attachment-definitions`):
//! multi-document YAML or JSON, Lists included; objects of other kinds are passed over, so a
//! manifest that holds the definitions among other objects will do.

use std::path::{Path, PathBuf};

use ipmgr_injector::NetworkDefinitions;
use serde::Deserialize as _;
use serde_json::Value;

use super::resource_name;

/// The kind of the objects read.
const KIND: &str = "NetworkAttachmentDefinition";

/// The namespace of a definition that names none, as `kubectl apply` without `-n` gives it.
const DEFAULT_NAMESPACE: &str = "default";

/// The definitions of some files, and the files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DefinitionFiles {
    /// Each definition's resource name, by (namespace, name); a later file's wins.
    pub definitions: NetworkDefinitions,
    /// The files, as given.
    pub files: Vec<PathBuf>,
}

/// A file that cannot give definitions.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{path}: document {index} is not valid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// The parser error.
        source: serde_yaml::Error,
    },
    /// A definition has no name.
    #[error(
        "{path}: document {index} has a NetworkAttachmentDefinition without metadata.name; name it"
    )]
    Unnamed {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
    },
    /// The file holds no definition at all (most likely the wrong file).
    #[error(
        "{path} holds no NetworkAttachmentDefinition (kind NetworkAttachmentDefinition, k8s.cni.cncf.io/v1); give the files that define the pods' networks"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl DefinitionFiles {
    /// Reads `paths`, in order.
    pub fn read(paths: &[PathBuf]) -> Result<Self, FilesError> {
        let mut files = DefinitionFiles::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| FilesError::Read {
                path: path.clone(),
                source,
            })?;
            files.add(path, &text)?;
        }
        Ok(files)
    }

    /// Adds the definitions of `text`, the content of `path`.
    fn add(&mut self, path: &Path, text: &str) -> Result<(), FilesError> {
        let mut count = 0;
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document).map_err(|source| FilesError::Yaml {
                path: path.to_owned(),
                index: index + 1,
                source,
            })?;
            count += self.add_object(&value).map_err(|()| FilesError::Unnamed {
                path: path.to_owned(),
                index: index + 1,
            })?;
        }
        if count == 0 {
            return Err(FilesError::Empty {
                path: path.to_owned(),
            });
        }
        self.files.push(path.to_owned());
        Ok(())
    }

    /// Adds the definition `value` is, or those of its items when it is a List; how many.
    fn add_object(&mut self, value: &Value) -> Result<usize, ()> {
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind.ends_with("List") {
            let mut count = 0;
            for item in value["items"].as_array().into_iter().flatten() {
                count += self.add_object(item)?;
            }
            return Ok(count);
        }
        if kind != KIND {
            return Ok(0);
        }
        let name = value["metadata"]["name"].as_str().ok_or(())?;
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or(DEFAULT_NAMESPACE);
        self.definitions.insert(
            (namespace.to_owned(), name.to_owned()),
            resource_name(value),
        );
        Ok(1)
    }

    /// The files, comma-separated, for messages.
    pub fn names(&self) -> String {
        self.files
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<DefinitionFiles, FilesError> {
        let mut files = DefinitionFiles::default();
        files.add(Path::new("nads.yaml"), text).map(|()| files)
    }

    #[test]
    fn reads_documents_lists_and_json_passing_over_other_kinds() {
        let files = read(
            r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: eth1
  namespace: apps
  annotations:
    k8s.v1.cni.cncf.io/resourceName: multus-ipmgr.io/eth1
---
apiVersion: v1
kind: Service
metadata: {name: web}
---
kind: List
items:
  - {kind: NetworkAttachmentDefinition, metadata: {name: plain}}
  - kind: NetworkAttachmentDefinitionList
    items: [{kind: NetworkAttachmentDefinition, metadata: {name: sriov, namespace: apps, annotations: {k8s.v1.cni.cncf.io/resourceName: intel.com/sriov}}}]
---
{"kind": "NetworkAttachmentDefinition", "metadata": {"name": "json", "namespace": "apps"}}
"#,
        )
        .expect("valid");
        let entries: Vec<String> = files
            .definitions
            .iter()
            .map(|((namespace, name), resource)| format!("{namespace}/{name}={resource:?}"))
            .collect();
        assert_eq!(
            entries,
            [
                "apps/eth1=Some(\"multus-ipmgr.io/eth1\")",
                "apps/json=None",
                "apps/sriov=Some(\"intel.com/sriov\")",
                "default/plain=None",
            ]
        );
        assert_eq!(files.names(), "nads.yaml");
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let message = |text: &str| read(text).expect_err("refused").to_string();
        assert_eq!(
            message("kind: Service\n"),
            "nads.yaml holds no NetworkAttachmentDefinition (kind NetworkAttachmentDefinition, k8s.cni.cncf.io/v1); give the files that define the pods' networks"
        );
        assert_eq!(
            message("kind: Service\n---\nkind: NetworkAttachmentDefinition\nmetadata: {}\n"),
            "nads.yaml: document 2 has a NetworkAttachmentDefinition without metadata.name; name it"
        );
        assert!(message("a: [").starts_with("nads.yaml: document 1 is not valid YAML"));
        let error =
            DefinitionFiles::read(&[PathBuf::from("/nonexistent/nads.yaml")]).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/nads.yaml"),
            "{error}"
        );
    }
}
