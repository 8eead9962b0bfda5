//! A failed EC2 call ([`Ec2Failure`]), and how the SDK's errors are classed.

use std::fmt;

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use ipmgr_eni::ErrorClass;

/// A failed EC2 call: what, on which ENI and addresses, and EC2's error code.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Ec2Failure {
    /// The EC2 action.
    pub action: &'static str,
    /// The ENI (or VPC for lookups).
    pub target: String,
    /// The addresses of the call.
    pub addresses: Vec<String>,
    /// EC2's error code, or a transport error kind.
    pub code: String,
    /// EC2's message or the transport error.
    pub message: String,
    /// How the SDK classes the error.
    pub class: ErrorClass,
    /// Attempts made.
    pub attempts: u32,
}

impl Ec2Failure {
    /// What to do about it, for the codes a helper meets.
    pub fn hint(&self) -> &'static str {
        match self.code.as_str() {
            "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => {
                "give the caller the EC2 permissions it needs: the node agent's role manifests/samples/iam-policy-agent.json (agent backend), or the helper's manifests/samples/iam-policy.json (direct backend: node role, IRSA or Pod Identity)"
            }
            "AuthFailure"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "MissingAuthenticationToken" => {
                "no valid AWS credentials: check the node agent's IRSA or Pod Identity (agent backend), or the helper's IRSA, Pod Identity, or the node role with HttpPutResponseHopLimit 2 (direct backend)"
            }
            "PrivateIpAddressLimitExceeded" | "Ipv6AddressLimitExceeded" => {
                "the ENI holds as many addresses as its instance type allows: run the node agent to release dead pods' addresses, or use another ENI"
            }
            "InvalidNetworkInterfaceID.NotFound" => {
                "the ENI was detached or deleted; the sidecar re-reads the node's ENIs on its next check"
            }
            _ if self.class != ErrorClass::Persistent => {
                "EC2 kept refusing within the retry budget (--ec2-retry-seconds); the account's request rate is shared with the VPC CNI and every node"
            }
            _ => "see EC2's message",
        }
    }
}

impl fmt::Display for Ec2Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} on {} failed after {} attempt(s): {}: {} ({})",
            self.action,
            self.addresses.join(", "),
            self.target,
            self.attempts,
            self.code,
            self.message,
            self.hint()
        )
    }
}

/// EC2's error code and message, and the class the AWS SDK's retry classifiers give it:
/// throttling and transient codes from aws-runtime's lists, HTTP 500/502/503/504 (the
/// default of aws-smithy-runtime's `HttpStatusCodeClassifier`), and timeouts and transport
/// failures (its `TransientErrorClassifier`); everything else is persistent.
pub(super) fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    error: &SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> (String, String, ErrorClass) {
    const TRANSIENT_STATUS: [u16; 4] = [500, 502, 503, 504];
    let context = || aws_sdk_ec2::error::DisplayErrorContext(error).to_string();
    match error {
        SdkError::ServiceError(service) => {
            let code = error.code().unwrap_or("Unknown").to_owned();
            let status = service.raw().status().as_u16();
            let class = if THROTTLING_ERRORS.contains(&code.as_str()) {
                ErrorClass::Throttling
            } else if TRANSIENT_ERRORS.contains(&code.as_str())
                || TRANSIENT_STATUS.contains(&status)
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Persistent
            };
            (code, error.message().unwrap_or_default().to_owned(), class)
        }
        SdkError::TimeoutError(_) => (
            "Timeout".to_owned(),
            "no answer in time".to_owned(),
            ErrorClass::Transient,
        ),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => (
            "TransportError".to_owned(),
            context(),
            ErrorClass::Transient,
        ),
        _ => ("RequestError".to_owned(), context(), ErrorClass::Persistent),
    }
}
