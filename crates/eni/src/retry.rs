use std::time::Duration;

/// Exponential backoff: the ceiling of the delay grows by `factor` with every consecutive
/// failure, from `initial` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling after the first failure.
    pub initial: Duration,
    /// Growth of the ceiling per failure.
    pub factor: u32,
    /// Ceiling of any delay.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of the delay after `failures` (at least 1) consecutive failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let growth = self
            .factor
            .max(1)
            .checked_pow(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(growth).min(self.max)
    }

    /// A delay with full jitter (AWS's recommendation: uniform between 0 and the ceiling),
    /// `jitter` in `[0, 1)`.
    pub fn jittered(&self, failures: u32, jitter: f64) -> Duration {
        self.ceiling(failures).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// When a failed EC2 call is tried again: throttling and transient errors with full-jitter
/// exponential backoff until the budget is spent; persistent errors never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delays between attempts.
    pub backoff: Backoff,
    /// How long a call keeps being retried, from its first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt of a call that failed `failures` times in a row,
    /// the last time with `class`, `elapsed` after its first attempt; `None`: give up. The
    /// last delay is cut so that the final attempt falls within the budget.
    pub fn next_delay(
        &self,
        class: ErrorClass,
        failures: u32,
        elapsed: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        if !class.is_retryable() {
            return None;
        }
        let left = self
            .budget
            .checked_sub(elapsed)
            .filter(|left| !left.is_zero())?;
        Some(self.backoff.jittered(failures, jitter).min(left))
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

    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Throttling => "throttling",
            ErrorClass::Transient => "transient",
            ErrorClass::Persistent => "persistent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_secs(2),
        factor: 3,
        max: Duration::from_secs(20),
    };

    const POLICY: RetryPolicy = RetryPolicy {
        backoff: BACKOFF,
        budget: Duration::from_secs(300),
    };

    #[rstest]
    #[case(1, Duration::from_secs(2))]
    #[case(2, Duration::from_secs(6))]
    #[case(3, Duration::from_secs(18))]
    #[case(4, Duration::from_secs(20))]
    #[case(0, Duration::from_secs(2))]
    #[case(500, Duration::from_secs(20))]
    fn the_ceiling_grows_by_the_factor_up_to_the_cap(
        #[case] failures: u32,
        #[case] ceiling: Duration,
    ) {
        assert_eq!(BACKOFF.ceiling(failures), ceiling);
    }

    #[rstest]
    #[case(ErrorClass::Throttling, 2, 0, 0.5, Some(Duration::from_secs(3)))]
    #[case(ErrorClass::Transient, 1, 10, 1.0, Some(Duration::from_secs(2)))]
    #[case(ErrorClass::Throttling, 9, 295, 1.0, Some(Duration::from_secs(5)))]
    #[case(ErrorClass::Throttling, 9, 300, 0.5, None)]
    #[case(ErrorClass::Persistent, 1, 0, 0.5, None)]
    fn retries_what_may_pass_within_the_budget(
        #[case] class: ErrorClass,
        #[case] failures: u32,
        #[case] elapsed_seconds: u64,
        #[case] jitter: f64,
        #[case] expected: Option<Duration>,
    ) {
        assert_eq!(
            POLICY.next_delay(
                class,
                failures,
                Duration::from_secs(elapsed_seconds),
                jitter
            ),
            expected
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        assert_eq!(BACKOFF.jittered(2, 0.0), Duration::ZERO);
        assert_eq!(BACKOFF.jittered(2, 0.25), Duration::from_millis(1500));
        assert_eq!(BACKOFF.jittered(2, 7.0), Duration::from_secs(6), "clamped");
    }
}
