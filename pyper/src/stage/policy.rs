//! Fault handling per item: a time limit, and retries with a backoff.
//!
//! The policy is stage-kind neutral: [`Task::timeout`](crate::Task::timeout) and
//! [`Task::retries`](crate::Task::retries) store it, and each kind of stage applies it the
//! way it can. A thread stage abandons a call that overran (a thread cannot be killed), an
//! async stage drops the future, and a process stage kills its worker process.

use std::any::Any;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::error::{panic_message, BoxError};

/// How long to wait between the attempts of a retried item.
///
/// The wait before retry `k` (1-based) is `first * factor^(k-1)`, capped at `max`.
///
/// ```
/// use std::time::Duration;
/// use pyper::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(backoff.delay(1), Duration::from_millis(10));
/// assert_eq!(backoff.delay(3), Duration::from_millis(40));
/// assert_eq!(backoff.delay(20), Duration::from_secs(1));
/// assert_eq!(Backoff::none().delay(5), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// A remote task's workers apply the stage's backoff: it travels in the run's setup.
#[cfg_attr(feature = "remote", derive(serde::Serialize, serde::Deserialize))]
pub struct Backoff {
    first: Duration,
    factor: u32,
    max: Duration,
}

impl Backoff {
    /// Retries at once.
    pub const fn none() -> Self {
        Backoff {
            first: Duration::ZERO,
            factor: 1,
            max: Duration::ZERO,
        }
    }

    /// Waits `delay` before every retry.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff {
            first: delay,
            factor: 1,
            max: delay,
        }
    }

    /// Waits `first`, then twice as long before each further retry, never more than `max`.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            factor: 2,
            max,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(64);
        let scale = self.factor.checked_pow(exponent).unwrap_or(u32::MAX);
        self.first.saturating_mul(scale).min(self.max)
    }
}

impl Default for Backoff {
    /// 10 ms, doubling up to 1 s: enough for a transient fault to pass, short enough not
    /// to stall a pipeline.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The fault-handling policy of a stage.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FaultPolicy {
    /// Per-item time limit, for each attempt.
    pub(crate) timeout: Option<Duration>,
    /// How many times a failed item is re-run (0: never).
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
}

impl FaultPolicy {
    /// Whether the policy changes anything: without it, a stage runs its body bare.
    pub(crate) fn is_active(&self) -> bool {
        self.timeout.is_some() || self.retries > 0
    }
}

/// Why one attempt at an item failed.
pub(crate) enum AttemptFailure {
    Failed(BoxError),
    Panicked(Box<dyn Any + Send>),
    TimedOut(Duration),
}

/// What to do after a failed attempt.
pub(crate) enum Verdict {
    /// Wait this long, then make the next attempt.
    Retry(Duration),
    /// Give up: the item fails with this error.
    Fail(BoxError),
    /// Give up: the item fails with the attempt's own panic, to be resumed so that the
    /// run reports a panic, as it would without a policy.
    Panic(Box<dyn Any + Send>),
}

/// The attempts made at one item, and the rules every kind of stage applies to them.
///
/// * A failed attempt is retried while retries remain, unless it already handed on
///   outputs: they cannot be taken back, so a retry would duplicate them.
/// * An item that is not retried fails with its attempt's own cause, exactly as without a
///   policy (an `Err` as itself, a panic as a panic, an overrun as [`TimedOut`]), when
///   the stage has no retries or the attempt handed on outputs.
/// * An item whose every attempt failed fails with [`RetriesExhausted`], which keeps the
///   causes of the first and the last few attempts and counts the others.
pub(crate) struct Attempts {
    policy: FaultPolicy,
    /// Failed attempts so far, which is also the number of the retry to come.
    failed: u32,
    causes: Causes,
}

impl Attempts {
    pub(crate) fn new(policy: FaultPolicy) -> Self {
        Attempts {
            policy,
            failed: 0,
            causes: Causes::default(),
        }
    }

    /// Whether the attempt about to be made is the last one allowed.
    pub(crate) fn is_last(&self) -> bool {
        self.failed >= self.policy.retries
    }

    /// Records a failed attempt, which had handed on outputs or not, and says what next.
    pub(crate) fn failed(&mut self, failure: AttemptFailure, handed_on: bool) -> Verdict {
        if handed_on || self.policy.retries == 0 {
            return match failure {
                AttemptFailure::Failed(error) => Verdict::Fail(error),
                AttemptFailure::Panicked(payload) => Verdict::Panic(payload),
                AttemptFailure::TimedOut(limit) => Verdict::Fail(Box::new(TimedOut::new(limit))),
            };
        }
        self.causes.push(match failure {
            AttemptFailure::Failed(error) => error,
            AttemptFailure::Panicked(payload) => {
                Box::new(Panicked::new(panic_message(payload.as_ref())))
            }
            AttemptFailure::TimedOut(limit) => Box::new(TimedOut::new(limit)),
        });
        if self.is_last() {
            let causes = std::mem::take(&mut self.causes);
            return Verdict::Fail(Box::new(RetriesExhausted::from_causes(causes)));
        }
        self.failed += 1;
        Verdict::Retry(self.policy.backoff.delay(self.failed))
    }
}

/// How many of the first attempts' causes a [`RetriesExhausted`] keeps.
const FIRST_KEPT: usize = 4;

/// How many of the last attempts' causes a [`RetriesExhausted`] keeps.
const LAST_KEPT: usize = 4;

/// The causes of an item's failed attempts, as [`RetriesExhausted`] keeps them: the
/// first [`FIRST_KEPT`] and the last [`LAST_KEPT`], and the count of all. Memory stays
/// flat however often an item is retried.
#[derive(Default)]
pub(crate) struct Causes {
    first: Vec<BoxError>,
    last: VecDeque<BoxError>,
    count: u64,
}

impl Causes {
    /// Adds the cause of the next attempt; drops the oldest of the last ones kept if
    /// there are enough.
    pub(crate) fn push(&mut self, cause: BoxError) {
        self.count += 1;
        if self.first.len() < FIRST_KEPT {
            self.first.push(cause);
            return;
        }
        if self.last.len() == LAST_KEPT {
            self.last.pop_front();
        }
        self.last.push_back(cause);
    }
}

/// An attempt at an item took longer than the stage's [`timeout`](crate::Task::timeout).
///
/// It is the [`source`](std::error::Error::source) of the run's error, or one of the causes
/// in [`RetriesExhausted`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOut {
    limit: Duration,
}

impl TimedOut {
    pub(crate) fn new(limit: Duration) -> Self {
        TimedOut { limit }
    }

    /// The time limit the attempt overran.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.limit)
    }
}

impl StdError for TimedOut {}

/// A panic in one attempt of a retried item, kept as a cause in [`RetriesExhausted`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(crate) fn new(message: String) -> Self {
        Panicked { message }
    }

    /// The panic's message (`Box<dyn Any>` when it carried no string).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.message)
    }
}

impl StdError for Panicked {}

/// Every attempt at an item failed.
///
/// It keeps the causes of the first few and the last few attempts, oldest first, and
/// counts every attempt: an item retried a million times does not keep a million errors.
/// [`attempts`](RetriesExhausted::attempts) gives the causes kept,
/// [`count`](RetriesExhausted::count) the number of attempts, and
/// [`omitted`](RetriesExhausted::omitted) how many causes in between were dropped. Its
/// [`source`](std::error::Error::source) is the last attempt's cause.
///
/// Its message gives the count, then each cause kept with the number of its attempt:
/// `all 3 attempts failed: #1 reset; #2 reset; #3 timed out after 1s`, or, with causes
/// omitted, `all 1000 attempts failed: #1 …; #4 …; (992 more); #997 …; #1000 …`.
#[derive(Debug)]
pub struct RetriesExhausted {
    /// The first causes, then the last ones.
    attempts: Vec<BoxError>,
    /// How many of `attempts` are first ones: the omitted causes come after them.
    first: usize,
    count: u64,
}

impl RetriesExhausted {
    /// From every attempt's cause, oldest first (keeping the first and last few).
    #[cfg(test)]
    pub(crate) fn new(attempts: Vec<BoxError>) -> Self {
        debug_assert!(!attempts.is_empty());
        let mut causes = Causes::default();
        for cause in attempts {
            causes.push(cause);
        }
        RetriesExhausted::from_causes(causes)
    }

    pub(crate) fn from_causes(causes: Causes) -> Self {
        let first = causes.first.len();
        let mut attempts = causes.first;
        attempts.extend(causes.last);
        RetriesExhausted {
            attempts,
            first,
            count: causes.count,
        }
    }

    /// The causes kept, in the order the attempts were made: every attempt's when there
    /// were few, else the first few and the last few (see
    /// [`omitted`](RetriesExhausted::omitted)).
    pub fn attempts(&self) -> &[BoxError] {
        &self.attempts
    }

    /// How many attempts were made, all of which failed: the stage's retries plus one.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many attempts' causes were dropped, between the first and the last ones kept.
    pub fn omitted(&self) -> u64 {
        self.count - self.attempts.len() as u64
    }

    /// The number (1-based) of the attempt whose cause is `attempts()[index]`.
    fn number(&self, index: usize) -> u64 {
        match index < self.first {
            true => index as u64 + 1,
            false => self.count - (self.attempts.len() - index) as u64 + 1,
        }
    }
}

impl fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} attempts failed", self.count)?;
        for (index, cause) in self.attempts.iter().enumerate() {
            let separator = if index == 0 { ": " } else { "; " };
            if index == self.first && self.omitted() > 0 {
                write!(f, "; ({} more)", self.omitted())?;
            }
            write!(f, "{separator}#{} {cause}", self.number(index))?;
        }
        Ok(())
    }
}

impl StdError for RetriesExhausted {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.attempts
            .last()
            .map(|cause| &**cause as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_retries_list_every_cause_and_chain_to_the_last() {
        let exhausted = RetriesExhausted::new(vec![
            Box::new(TimedOut::new(Duration::from_millis(5))),
            "bad input".into(),
        ]);
        assert_eq!(
            exhausted.to_string(),
            "all 2 attempts failed: #1 timed out after 5ms; #2 bad input"
        );
        assert_eq!(exhausted.source().unwrap().to_string(), "bad input");
    }

    fn policy(retries: u32) -> FaultPolicy {
        FaultPolicy {
            timeout: None,
            retries,
            backoff: Backoff::fixed(Duration::from_millis(3)),
        }
    }

    #[test]
    fn attempts_retry_until_the_last_then_list_every_cause() {
        let mut attempts = Attempts::new(policy(2));
        assert!(!attempts.is_last());
        let verdict = attempts.failed(AttemptFailure::Failed("first".into()), false);
        assert!(matches!(verdict, Verdict::Retry(delay) if delay == Duration::from_millis(3)));
        let verdict = attempts.failed(AttemptFailure::Panicked(Box::new("second")), false);
        assert!(matches!(verdict, Verdict::Retry(_)));
        assert!(attempts.is_last());
        let limit = Duration::from_secs(1);
        let Verdict::Fail(error) = attempts.failed(AttemptFailure::TimedOut(limit), false) else {
            panic!("the last attempt gives up");
        };
        assert_eq!(
            error.to_string(),
            "all 3 attempts failed: #1 first; #2 panicked: second; #3 timed out after 1s"
        );
    }

    #[test]
    fn an_attempt_that_handed_on_outputs_or_had_no_retries_fails_with_its_own_cause() {
        let mut attempts = Attempts::new(policy(5));
        let verdict = attempts.failed(AttemptFailure::Failed("early".into()), false);
        assert!(matches!(verdict, Verdict::Retry(_)));
        let Verdict::Fail(error) = attempts.failed(AttemptFailure::Failed("late".into()), true)
        else {
            panic!("not retried after outputs");
        };
        assert_eq!(error.to_string(), "late");

        let mut attempts = Attempts::new(policy(0));
        assert!(attempts.is_last());
        let verdict = attempts.failed(AttemptFailure::Panicked(Box::new("boom")), false);
        assert!(matches!(verdict, Verdict::Panic(_)));
        let verdict = Attempts::new(policy(0))
            .failed(AttemptFailure::TimedOut(Duration::from_millis(5)), false);
        let Verdict::Fail(error) = verdict else {
            panic!("no retries");
        };
        assert!(error.is::<TimedOut>());
    }

    #[test]
    fn endless_retries_keep_the_first_and_last_causes_and_count_the_rest() {
        let mut attempts = Attempts::new(FaultPolicy {
            timeout: None,
            retries: 999,
            backoff: Backoff::none(),
        });
        let mut verdict = None;
        for attempt in 1..=1000 {
            let cause = AttemptFailure::Failed(format!("cause {attempt}").into());
            verdict = Some(attempts.failed(cause, false));
        }
        let Some(Verdict::Fail(error)) = verdict else {
            panic!("the last attempt gives up");
        };
        let exhausted = error.downcast_ref::<RetriesExhausted>().unwrap();
        assert_eq!(exhausted.count(), 1000);
        assert_eq!(exhausted.attempts().len(), FIRST_KEPT + LAST_KEPT);
        assert_eq!(exhausted.omitted(), 1000 - (FIRST_KEPT + LAST_KEPT) as u64);
        assert_eq!(exhausted.source().unwrap().to_string(), "cause 1000");
        assert_eq!(
            exhausted.to_string(),
            "all 1000 attempts failed: #1 cause 1; #2 cause 2; #3 cause 3; #4 cause 4; \
             (992 more); #997 cause 997; #998 cause 998; #999 cause 999; #1000 cause 1000"
        );
    }

    #[test]
    fn a_few_more_causes_than_the_first_ones_are_all_kept() {
        let causes = (1..=6).map(|n| format!("c{n}").into()).collect();
        let exhausted = RetriesExhausted::new(causes);
        assert_eq!((exhausted.count(), exhausted.omitted()), (6, 0));
        assert_eq!(
            exhausted.to_string(),
            "all 6 attempts failed: #1 c1; #2 c2; #3 c3; #4 c4; #5 c5; #6 c6"
        );
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let backoff = Backoff::exponential(Duration::from_secs(1), Duration::MAX);
        assert!(backoff.delay(200) >= Duration::from_secs(1 << 31));
    }
}
