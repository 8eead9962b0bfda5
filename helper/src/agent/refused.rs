//! A pod API request refused: its status, the reason it is counted under and the error the
//! pod is told.

use hyper::StatusCode;

/// A request refused: its status, the reason it is counted under
/// (`ipmgr_agent_pod_requests_refused_total{reason}`) and the error the pod is told.
#[derive(Clone, Debug)]
pub(super) struct Refused {
    pub(super) status: StatusCode,
    pub(super) reason: &'static str,
    pub(super) error: String,
}

impl Refused {
    /// 503: the helper asks again.
    pub(super) fn unavailable(reason: &'static str, error: String) -> Refused {
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
            error,
        }
    }

    /// 403: the source is no pod of the node, for good.
    pub(super) fn forbidden(reason: &'static str, error: String) -> Refused {
        Refused {
            status: StatusCode::FORBIDDEN,
            reason,
            error,
        }
    }

    /// Any other status.
    pub(super) fn with(status: StatusCode, reason: &'static str, error: String) -> Refused {
        Refused {
            status,
            reason,
            error,
        }
    }
}
