//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out: a pure function of the
//! request body and the injector settings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_injector::{Decision, HelperSettings, Mode, PodTemplate, SkipReason, plan};
use json_patch::jsonptr::Pointer;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::core::{DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};

/// What happened to one admission request; the label set of the requests metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The helper was injected in this mode.
    Injected(Mode),
    /// The pod was allowed unchanged.
    Skipped(SkipReason),
    /// The object was not a Pod CREATE (allowed unchanged).
    Ignored,
    /// The pod was refused.
    Denied,
    /// The request could not be read (answered with HTTP 400).
    Error,
}

impl Outcome {
    /// Metric label `outcome`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Injected(_) => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Ignored => "ignored",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    /// Metric label `reason` (mode for injections, skip reason for skips).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Injected(mode) => mode.as_str(),
            Outcome::Skipped(reason) => reason.label(),
            Outcome::Ignored => "not_a_pod_create",
            Outcome::Denied => "invalid_annotation",
            Outcome::Error => "bad_request",
        }
    }
}

/// A request body that is not an AdmissionReview with a request.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an `admission.k8s.io/v1` AdmissionReview.
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Another version than `admission.k8s.io/v1` (the webhook configuration asks for v1).
    #[error(
        "AdmissionReview version {0:?} is not supported; set admissionReviewVersions: [\"v1\"]"
    )]
    UnsupportedVersion(String),
    /// The AdmissionReview carries no `request`.
    #[error("AdmissionReview has no request; the API server always sends one")]
    NoRequest,
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

/// The fields of an `admission.k8s.io/v1` AdmissionReview the webhook reads; the object is
/// read as a [`PodTemplate`], which skips everything the decision does not need.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodReview {
    api_version: String,
    kind: String,
    request: Option<PodRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    object: Option<PodTemplate>,
}

/// Answers one AdmissionReview body.
///
/// The body is read once into [`PodReview`]; only when that fails is it read again as kube's
/// generic `AdmissionReview<DynamicObject>`, to tell an object that is not a readable Pod
/// (allowed unchanged, with a warning) from a body that is no AdmissionReview at all.
pub fn review(
    body: &[u8],
    settings: &HelperSettings,
) -> Result<(ReviewResponse, Outcome), ReviewError> {
    let (answer, outcome) = match serde_json::from_slice::<PodReview>(body) {
        Ok(review) => {
            check_version(&review.api_version, &review.kind)?;
            let request = review.request.ok_or(ReviewError::NoRequest)?;
            match request.object {
                Some(pod) if is_pod(&request.kind, request.sub_resource.as_deref()) => {
                    answer_pod(request.uid, &pod, settings)
                }
                _ => ignore(request.uid, &request.kind, request.sub_resource),
            }
        }
        Err(pod_error) => {
            let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
            check_version(&review.types.api_version, &review.types.kind)?;
            let request: AdmissionRequest<DynamicObject> =
                review.try_into().map_err(|_| ReviewError::NoRequest)?;
            if is_pod(&request.kind, request.sub_resource.as_deref()) {
                let mut answer = AdmissionAnswer::allow(request.uid);
                answer.warnings.push(format!(
                    "multus-ipmgr webhook could not read the Pod, left it unchanged: {pod_error}"
                ));
                (answer, Outcome::Ignored)
            } else {
                ignore(request.uid, &request.kind, request.sub_resource)
            }
        }
    };
    Ok((ReviewResponse::new(answer), outcome))
}

fn check_version(api_version: &str, kind: &str) -> Result<(), ReviewError> {
    if api_version == "admission.k8s.io/v1" && kind == "AdmissionReview" {
        Ok(())
    } else {
        Err(ReviewError::UnsupportedVersion(format!(
            "{api_version}/{kind}"
        )))
    }
}

fn is_pod(kind: &GroupVersionKind, sub_resource: Option<&str>) -> bool {
    kind.group.is_empty() && kind.kind == "Pod" && sub_resource.is_none()
}

fn ignore(
    uid: String,
    kind: &GroupVersionKind,
    sub_resource: Option<String>,
) -> (AdmissionAnswer, Outcome) {
    let mut answer = AdmissionAnswer::allow(uid);
    answer.warnings.push(format!(
        "multus-ipmgr webhook only handles Pods; {} (subresource {sub_resource:?}) left unchanged",
        kind.kind
    ));
    (answer, Outcome::Ignored)
}

fn answer_pod(
    uid: String,
    pod: &PodTemplate,
    settings: &HelperSettings,
) -> (AdmissionAnswer, Outcome) {
    let mut answer = AdmissionAnswer::allow(uid);
    match plan(Pointer::root(), pod, settings) {
        Decision::Inject(injection) => {
            let patch = serde_json::to_vec(&injection.patch)
                .expect("a JSON Patch always serializes to JSON");
            answer.patch = Some(BASE64.encode(patch));
            answer.patch_type = Some("JSONPatch");
            (answer, Outcome::Injected(injection.mode))
        }
        Decision::Skip(reason) => (answer, Outcome::Skipped(reason)),
        Decision::Deny(reason) => {
            answer.allowed = false;
            answer.status = Some(AnswerStatus {
                code: 403,
                message: format!("multus-ipmgr: {reason}"),
            });
            (answer, Outcome::Denied)
        }
    }
}
