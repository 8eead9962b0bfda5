use std::time::Duration;

/// Exponential backoff with full jitter, bounded in attempts (AWS's recommendation for
/// throttled and failed calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Ceiling of any delay.
    pub max: Duration,
    /// Retries after the first try; 0 never retries.
    pub retries: u32,
}

impl Backoff {
    /// The delay before retry number `retry` (0-based), given `jitter` in `[0, 1)`; `None`
    /// once the retries are used up.
    pub fn delay(&self, retry: u32, jitter: f64) -> Option<Duration> {
        if retry >= self.retries {
            return None;
        }
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.max);
        Some(ceiling.mul_f64(jitter.clamp(0.0, 1.0)))
    }
}

/// Whether an EC2 error is worth retrying: throttling, and server-side failures (5xx).
pub fn is_retryable(code: Option<&str>, http_status: Option<u16>) -> bool {
    const RETRYABLE: [&str; 7] = [
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
    ];
    code.is_some_and(|code| RETRYABLE.contains(&code))
        || http_status.is_some_and(|status| status >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        retries: 6,
    };

    #[rstest]
    #[case(0, 1.0, Some(Duration::from_millis(100)))]
    #[case(1, 1.0, Some(Duration::from_millis(200)))]
    #[case(3, 0.5, Some(Duration::from_millis(400)))]
    #[case(5, 1.0, Some(Duration::from_secs(2)))]
    #[case(2, 0.0, Some(Duration::ZERO))]
    #[case(6, 1.0, None)]
    #[case(40, 1.0, None)]
    fn bounded_exponential_with_jitter(
        #[case] retry: u32,
        #[case] jitter: f64,
        #[case] expected: Option<Duration>,
    ) {
        assert_eq!(BACKOFF.delay(retry, jitter), expected);
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let backoff = Backoff {
            retries: u32::MAX,
            ..BACKOFF
        };
        assert_eq!(backoff.delay(63, 1.0), Some(Duration::from_secs(2)));
    }

    #[rstest]
    #[case(Some("RequestLimitExceeded"), Some(503), true)]
    #[case(Some("InternalError"), Some(500), true)]
    #[case(None, Some(502), true)]
    #[case(Some("InvalidParameterValue"), Some(400), false)]
    #[case(Some("PrivateIpAddressLimitExceeded"), Some(400), false)]
    #[case(Some("UnauthorizedOperation"), Some(403), false)]
    #[case(None, None, false)]
    fn classifies_errors(
        #[case] code: Option<&str>,
        #[case] status: Option<u16>,
        #[case] retryable: bool,
    ) {
        assert_eq!(is_retryable(code, status), retryable);
    }
}
