//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out: a pure function of the
//! request body, the injector settings and, for an injection, the NetworkAttachmentDefinitions
//! the pod's networks name, which the caller reads in between ([`Reviewed::Pending`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_injector::{
    Decision, DenyReason, HelperSettings, Injection, Mode, NamedDefinition, NetworkDefinitions,
    PodTemplate, SkipReason, excerpt, plan,
};
use json_patch::jsonptr::Pointer;
use serde::{Deserialize, Serialize};

use crate::network_definitions::UnreadableDefinition;

/// What happened to one admission request; the label set of the requests metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The helper was injected in this mode.
    Injected(Mode),
    /// The pod was allowed unchanged.
    Skipped(SkipReason),
    /// Allowed unchanged without a decision: not a Pod CREATE, or a Pod it cannot read.
    Ignored(IgnoreReason),
    /// The pod was refused.
    Denied(Denial),
    /// The request could not be read (answered with HTTP 400).
    Error,
}

/// Why a pod was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denial {
    /// Its annotations (or its volumes) ask for something invalid.
    InvalidAnnotation,
    /// Its first container sets a `multus-ipmgr.io/` request or limit that is not a quantity.
    InvalidResources,
    /// One of its networks names a NetworkAttachmentDefinition that does not exist.
    DefinitionMissing,
    /// A NetworkAttachmentDefinition it names could not be read.
    DefinitionUnreadable,
}

impl From<&DenyReason> for Denial {
    fn from(reason: &DenyReason) -> Self {
        match reason {
            DenyReason::MissingNetworkDefinition(_) => Denial::DefinitionMissing,
            DenyReason::InvalidNetworkRequest(_) => Denial::InvalidResources,
            _ => Denial::InvalidAnnotation,
        }
    }
}

/// Why a request was allowed without looking at the pod's annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// The object is not a Pod, or the request is for a subresource.
    NotAPod,
    /// A Pod operation other than CREATE (an UPDATE, a DELETE): injection only happens once,
    /// when the pod is created.
    NotACreate,
    /// A Pod whose fields the decision needs do not have their Kubernetes types.
    UnreadablePod,
}

impl Outcome {
    /// Metric label `outcome`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Injected(_) => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Ignored(_) => "ignored",
            Outcome::Denied(_) => "denied",
            Outcome::Error => "error",
        }
    }

    /// Metric label `reason` (mode for injections, skip reason for skips, cause for denials).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Injected(mode) => mode.as_str(),
            Outcome::Skipped(reason) => reason.label(),
            Outcome::Ignored(IgnoreReason::NotAPod) => "not_a_pod",
            Outcome::Ignored(IgnoreReason::NotACreate) => "not_a_create",
            Outcome::Ignored(IgnoreReason::UnreadablePod) => "unreadable_pod",
            Outcome::Denied(Denial::InvalidAnnotation) => "invalid_annotation",
            Outcome::Denied(Denial::InvalidResources) => "invalid_resources",
            Outcome::Denied(Denial::DefinitionMissing) => "network_definition_missing",
            Outcome::Denied(Denial::DefinitionUnreadable) => "network_definition_unreadable",
            Outcome::Error => "bad_request",
        }
    }
}

/// Longest `uid` accepted; the API server sends UUIDs (36 characters).
pub const MAX_UID_BYTES: usize = 128;

/// A request body that is not an AdmissionReview with a request.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an `admission.k8s.io/v1` AdmissionReview.
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(String),
    /// Another version than `admission.k8s.io/v1` (the webhook configuration asks for v1).
    #[error(
        "AdmissionReview version {0:?} is not supported; set admissionReviewVersions: [\"v1\"]"
    )]
    UnsupportedVersion(String),
    /// The AdmissionReview carries no `request`.
    #[error("AdmissionReview has no request; the API server always sends one")]
    NoRequest,
    /// The `uid` is longer than any the API server sends.
    #[error(
        "AdmissionReview request uid {uid:?} is {len} bytes, longer than the {MAX_UID_BYTES} a Kubernetes uid can be"
    )]
    UidTooLong {
        /// The uid, shortened.
        uid: String,
        /// Its length.
        len: usize,
    },
}

impl From<serde_json::Error> for ReviewError {
    fn from(error: serde_json::Error) -> Self {
        // serde quotes the offending value in full: a megabyte string stays out of the answer.
        ReviewError::Malformed(excerpt(&error.to_string()).into_owned())
    }
}

/// The AdmissionReview sent back to the API server.
///
/// kube's `AdmissionResponse` serializes `patch` as an array of numbers; the API reference
/// specifies a base64 string, which this type sends.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    api_version: &'static str,
    kind: &'static str,
    /// The answer to the request.
    pub response: AdmissionAnswer,
}

/// The `response` member of an AdmissionReview.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionAnswer {
    /// The request's uid, echoed.
    pub uid: String,
    /// Whether the pod is admitted.
    pub allowed: bool,
    /// Present on denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AnswerStatus>,
    /// Base64 of the RFC 6902 JSON Patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Always `JSONPatch` when `patch` is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Shown to the user by kubectl.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `metav1.Status` subset used in denials.
#[derive(Debug, Serialize, PartialEq)]
pub struct AnswerStatus {
    /// HTTP-like code, 403 for denials.
    pub code: u16,
    /// Human-readable reason shown by kubectl.
    pub message: String,
}

impl ReviewResponse {
    fn new(response: AdmissionAnswer) -> Self {
        ReviewResponse {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response,
        }
    }
}

impl AdmissionAnswer {
    fn allow(uid: String) -> Self {
        AdmissionAnswer {
            uid,
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: Vec::new(),
        }
    }
}

/// An `admission.k8s.io/v1` AdmissionReview as the webhook reads it, generic over how the
/// request's `object` is read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<O> {
    api_version: Short,
    kind: Short,
    request: Option<Request<O>>,
}

/// The request of a [`Review`]. With `O` = [`PodTemplate`] the object is read as the decision
/// needs it (the fast path); with `O` = [`Skipped`] it is skipped unread, which is how a body
/// whose pod cannot be read is answered from its envelope alone.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<O> {
    uid: Short,
    kind: GroupKind,
    #[serde(default)]
    namespace: Option<Short>,
    #[serde(default)]
    operation: Option<Short>,
    #[serde(default)]
    sub_resource: Option<Short>,
    #[serde(default = "Option::default")]
    object: Option<O>,
}

/// `request.kind`: the group and kind (the version does not matter here).
#[derive(Debug, Deserialize)]
struct GroupKind {
    group: Short,
    kind: Short,
}

/// Longest envelope string kept whole; the API server's are far shorter.
const SHORT_BYTES: usize = 256;

/// A string of the envelope: kept whole up to [`SHORT_BYTES`], otherwise as an [`excerpt`],
/// so that no envelope field copies a large part of the body.
#[derive(Debug)]
struct Short {
    text: String,
    /// Length of the string as sent.
    len: usize,
}

impl<'de> Deserialize<'de> for Short {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShortVisitor;
        impl serde::de::Visitor<'_> for ShortVisitor {
            type Value = Short;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Short, E> {
                let text = if value.len() <= SHORT_BYTES {
                    value.to_owned()
                } else {
                    excerpt(value).into_owned()
                };
                Ok(Short {
                    text,
                    len: value.len(),
                })
            }
        }
        deserializer.deserialize_str(ShortVisitor)
    }
}

/// An object skipped without being kept ([`serde::de::IgnoredAny`]).
type Skipped = serde::de::IgnoredAny;

/// The answer to one AdmissionReview body, or the injection that waits for the
/// NetworkAttachmentDefinitions its pod's networks name.
#[derive(Debug)]
pub enum Reviewed {
    /// The answer.
    Answered(ReviewResponse, Outcome),
    /// Read [`Pending::definitions`], then [`Pending::finish`].
    Pending(Pending),
}

/// An injection whose `multus-ipmgr.io/` resource requests depend on the
/// NetworkAttachmentDefinitions its pod's networks name.
#[derive(Debug)]
pub struct Pending {
    uid: String,
    namespace: String,
    injection: Injection,
    definitions: Vec<NamedDefinition>,
}

impl Pending {
    /// The definitions to read.
    pub fn definitions(&self) -> &[NamedDefinition] {
        &self.definitions
    }

    /// The answer, given the definitions of [`Pending::definitions`] that exist, or the
    /// first one that could not be read; `None`: the injection without network requests
    /// (`--network-resources=false`).
    pub fn finish(
        self,
        read: Option<Result<NetworkDefinitions, UnreadableDefinition>>,
    ) -> (ReviewResponse, Outcome) {
        let answer = AdmissionAnswer::allow(self.uid);
        let mut injection = self.injection;
        let (answer, outcome) = match read {
            None => inject(answer, &injection),
            Some(Ok(definitions)) => {
                match injection.add_network_requests(&self.namespace, &definitions) {
                    Ok(()) => inject(answer, &injection),
                    Err(reason) => deny(answer, &reason, Denial::from(&reason)),
                }
            }
            Some(Err(unreadable)) => deny(answer, &unreadable, Denial::DefinitionUnreadable),
        };
        (ReviewResponse::new(answer), outcome)
    }
}

/// The namespace of a request without one (the API server always sends it for a Pod).
const DEFAULT_NAMESPACE: &str = "default";

/// Answers one AdmissionReview body; an injection waits for the definitions its pod's
/// networks name ([`Reviewed::Pending`]).
///
/// The body is read once as a [`Review`] with the pod read into a [`PodTemplate`]. Only when
/// that fails is it read a second time, as its envelope alone (uid, kind, operation,
/// subresource; the object skipped unread): a pod that cannot be read is allowed unchanged
/// with a warning, anything else that is not an AdmissionReview gets an error. Neither read
/// keeps more than the few values the decision needs, so the memory a request costs is a
/// small multiple of its body, whatever the body holds. Only a Pod CREATE is mutated.
pub fn review(body: &[u8], settings: &HelperSettings) -> Result<Reviewed, ReviewError> {
    let (answer, outcome) = match serde_json::from_slice::<Review<PodTemplate>>(body) {
        Ok(review) => {
            let request = checked(review)?;
            let target = target(&request);
            let namespace = request
                .namespace
                .map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |short| short.text);
            match (target, request.object) {
                (Ok(()), Some(pod)) => {
                    return Ok(answer_pod(request.uid.text, namespace, &pod, settings));
                }
                (Ok(()), None) => ignore(request.uid.text, IgnoreReason::NotAPod, "got no object"),
                (Err((reason, why)), _) => ignore(request.uid.text, reason, &why),
            }
        }
        Err(pod_error) => {
            let request = checked(serde_json::from_slice::<Review<Skipped>>(body)?)?;
            match target(&request) {
                Ok(()) => ignore(
                    request.uid.text,
                    IgnoreReason::UnreadablePod,
                    &format!(
                        "could not read the Pod, left it unchanged: {}",
                        excerpt(&pod_error.to_string())
                    ),
                ),
                Err((reason, why)) => ignore(request.uid.text, reason, &why),
            }
        }
    };
    Ok(Reviewed::Answered(ReviewResponse::new(answer), outcome))
}

/// The request of a v1 AdmissionReview, with a uid of sane length.
fn checked<O>(review: Review<O>) -> Result<Request<O>, ReviewError> {
    if review.api_version.text != "admission.k8s.io/v1" || review.kind.text != "AdmissionReview" {
        return Err(ReviewError::UnsupportedVersion(format!(
            "{}/{}",
            review.api_version.text, review.kind.text
        )));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.len > MAX_UID_BYTES {
        return Err(ReviewError::UidTooLong {
            uid: excerpt(&request.uid.text).into_owned(),
            len: request.uid.len,
        });
    }
    Ok(request)
}

/// `Ok` for the creation of a Pod (not a subresource), otherwise why the request is ignored.
fn target<O>(request: &Request<O>) -> Result<(), (IgnoreReason, String)> {
    let GroupKind { group, kind } = &request.kind;
    let sub_resource = request
        .sub_resource
        .as_ref()
        .map(|short| short.text.as_str());
    if !group.text.is_empty() || kind.text != "Pod" || sub_resource.is_some() {
        return Err((
            IgnoreReason::NotAPod,
            format!(
                "only handles Pods; {} (subresource {sub_resource:?}) left unchanged",
                excerpt(&kind.text)
            ),
        ));
    }
    match request.operation.as_ref().map(|short| short.text.as_str()) {
        Some("CREATE") => Ok(()),
        operation => Err((
            IgnoreReason::NotACreate,
            format!("only injects at creation; operation {operation:?} left unchanged"),
        )),
    }
}

fn ignore(uid: String, reason: IgnoreReason, why: &str) -> (AdmissionAnswer, Outcome) {
    let mut answer = AdmissionAnswer::allow(uid);
    answer.warnings.push(format!("multus-ipmgr webhook {why}"));
    (answer, Outcome::Ignored(reason))
}

fn answer_pod(
    uid: String,
    namespace: String,
    pod: &PodTemplate,
    settings: &HelperSettings,
) -> Reviewed {
    let answer = AdmissionAnswer::allow(uid);
    let (answer, outcome) = match plan(Pointer::root(), pod, settings) {
        Decision::Inject(injection) => {
            let definitions = injection.network_definitions(&namespace);
            return Reviewed::Pending(Pending {
                uid: answer.uid,
                namespace,
                injection,
                definitions,
            });
        }
        Decision::Skip(reason) => (answer, Outcome::Skipped(reason)),
        Decision::Deny(reason) => deny(answer, &reason, Denial::from(&reason)),
    };
    Reviewed::Answered(ReviewResponse::new(answer), outcome)
}

fn inject(mut answer: AdmissionAnswer, injection: &Injection) -> (AdmissionAnswer, Outcome) {
    let patch =
        serde_json::to_vec(&injection.patch).expect("a JSON Patch always serializes to JSON");
    answer.patch = Some(BASE64.encode(patch));
    answer.patch_type = Some("JSONPatch");
    (answer, Outcome::Injected(injection.mode))
}

fn deny(
    mut answer: AdmissionAnswer,
    reason: &dyn std::fmt::Display,
    denial: Denial,
) -> (AdmissionAnswer, Outcome) {
    answer.allowed = false;
    answer.status = Some(AnswerStatus {
        code: 403,
        message: format!("multus-ipmgr: {reason}"),
    });
    (answer, Outcome::Denied(denial))
}
