//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out: a pure function of the
//! request body and the injector settings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_injector::{Decision, HelperSettings, Mode, SkipReason, plan};
use json_patch::jsonptr::Pointer;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde::Serialize;

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

/// Answers one AdmissionReview body.
pub fn review(
    body: &[u8],
    settings: &HelperSettings,
) -> Result<(ReviewResponse, Outcome), ReviewError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(ReviewError::UnsupportedVersion(format!(
            "{}/{}",
            review.types.api_version, review.types.kind
        )));
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let (answer, outcome) = answer(request, settings);
    Ok((ReviewResponse::new(answer), outcome))
}

fn answer(
    request: AdmissionRequest<DynamicObject>,
    settings: &HelperSettings,
) -> (AdmissionAnswer, Outcome) {
    let mut answer = AdmissionAnswer::allow(request.uid);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let Some(object) = request
        .object
        .filter(|_| is_pod && request.sub_resource.is_none())
    else {
        answer.warnings.push(format!(
            "multus-ipmgr webhook only handles Pods; {} (subresource {:?}) left unchanged",
            request.kind.kind, request.sub_resource
        ));
        return (answer, Outcome::Ignored);
    };
    let pod = match pod_from(object) {
        Ok(pod) => pod,
        Err(error) => {
            answer.warnings.push(format!(
                "multus-ipmgr webhook could not read the Pod, left it unchanged: {error}"
            ));
            return (answer, Outcome::Ignored);
        }
    };
    let spec = pod.spec.unwrap_or_default();
    match plan(Pointer::root(), &pod.metadata, &spec, settings) {
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

/// Converts the review's object into a Pod, without its managedFields.
fn pod_from(mut object: DynamicObject) -> Result<Pod, serde_json::Error> {
    object.metadata.managed_fields = None;
    let spec = object.data.get_mut("spec").map(std::mem::take);
    Ok(Pod {
        metadata: object.metadata,
        spec: spec.map(serde_json::from_value).transpose()?,
        status: None,
    })
}
