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

/// How a failed call is treated: the AWS SDK's classes (throttling and transient errors are
/// retried, everything else is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The account's token bucket for the action is empty (RequestLimitExceeded...).
    Throttling,
    /// A server-side or transport failure that may pass (5xx, timeouts, connection errors).
    Transient,
    /// An answer that will not change by asking again (UnauthorizedOperation,
    /// InvalidParameterValue, PrivateIpAddressLimitExceeded...).
    Persistent,
}

impl ErrorClass {
    /// Whether a call that failed this way is worth retrying.
    pub fn is_retryable(self) -> bool {
        self != ErrorClass::Persistent
    }
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
}
