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

/// When a failed EC2 call is tried again: throttling and transient errors with full jitter
/// until the budget is spent; persistent errors never.
///
/// Throttling means the account's token bucket for the action is empty, and every node's
/// helpers and VPC CNI share it: a reschedule of hundreds of pods meets it all at once. The
/// delay after a throttle is uniform between 0 and the time this call has waited so far
/// (at least `throttle_min`, at most `max`): the ceiling grows about 1.5x per attempt, like
/// exponential backoff, but from what the call has seen rather than how often, so the first
/// retries of a crowd spread over seconds and the last ones do not oversleep a bucket that
/// has refilled. Transient errors are independent of the crowd: exponential backoff from a
/// short first ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Transient errors (5xx, timeouts, connection failures).
    pub transient: Backoff,
    /// The smallest ceiling after a throttle.
    pub throttle_min: Duration,
    /// Ceiling of any delay.
    pub max: Duration,
    /// How long a call keeps being retried, from its first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt of a call that failed `failures` times in a row,
    /// the last time with `class`, `elapsed` after its first attempt, given `jitter` in
    /// `[0, 1)`; `None`: give up. The last delay is cut so that the final attempt falls
    /// within the budget.
    pub fn next_delay(
        &self,
        class: ErrorClass,
        failures: u32,
        elapsed: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        let ceiling = match class {
            ErrorClass::Persistent => return None,
            ErrorClass::Throttling => elapsed.clamp(self.throttle_min.min(self.max), self.max),
            ErrorClass::Transient => self.transient.ceiling(failures).min(self.max),
        };
        let left = self
            .budget
            .checked_sub(elapsed)
            .filter(|left| !left.is_zero())?;
        Some(ceiling.mul_f64(jitter.clamp(0.0, 1.0)).min(left))
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
        transient: BACKOFF,
        throttle_min: Duration::from_secs(12),
        max: Duration::from_secs(24),
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
    #[case::first_throttle(ErrorClass::Throttling, 1, 0, 0.5, Some(Duration::from_secs(6)))]
    #[case::throttled_for_a_while(
        ErrorClass::Throttling,
        4,
        20,
        0.5,
        Some(Duration::from_secs(10))
    )]
    #[case::throttled_long(ErrorClass::Throttling, 9, 100, 0.5, Some(Duration::from_secs(12)))]
    #[case::budget_nearly_spent(ErrorClass::Throttling, 20, 295, 1.0, Some(Duration::from_secs(5)))]
    #[case::budget_spent(ErrorClass::Throttling, 20, 300, 0.5, None)]
    #[case::transient_doubles(ErrorClass::Transient, 2, 0, 1.0, Some(Duration::from_secs(6)))]
    #[case::transient_capped(ErrorClass::Transient, 9, 10, 1.0, Some(Duration::from_secs(20)))]
    #[case::persistent(ErrorClass::Persistent, 1, 0, 0.5, None)]
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
