//! Fault handling for async stages: [`Task::timeout`](crate::Task::timeout) and
//! [`Task::retries`](crate::Task::retries) around an async body.
//!
//! The guarded body returns, for each item, one stream that makes the attempts in turn:
//! each attempt is the user's stream for a copy of the item, polled under its own
//! `catch_unwind` and raced against the attempt's deadline. An attempt that overruns is
//! dropped, which cancels its future at the `.await` it is parked on. Outputs go on as they
//! come, so [`Attempts`] does not retry an attempt that already yielded one. Backoff waits
//! are `tokio::time::sleep`s (a zero backoff yields to the runtime instead): a cancel of the
//! run aborts the driver task, which drops them with everything else it is polling.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};

use futures_util::future::{select, Either};
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;

use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::AsyncFn;
use crate::stage::policy::{AttemptFailure, Attempts, FaultPolicy, Verdict};

/// `body` under `policy`; `body` itself when the policy changes nothing.
pub(crate) fn guard<I, O>(
    body: &AsyncFn<I, O>,
    policy: FaultPolicy,
    clone_input: Option<fn(&I) -> I>,
) -> AsyncFn<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    if !policy.is_active() {
        return Arc::clone(body);
    }
    let mut policy = policy;
    if clone_input.is_none() {
        policy.retries = 0; // `Task::retries` sets `clone_input`: never the case
    }
    let body = Arc::clone(body);
    Arc::new(move |item| {
        let item = Item {
            body: Arc::clone(&body),
            clone_input,
            input: Some(item),
            attempts: Attempts::new(policy),
            policy,
            current: None,
            handed_on: false,
            done: false,
        };
        stream::unfold(item, |mut item| async move {
            let next = item.next().await?;
            Some((next, item))
        })
        .boxed()
    })
}

/// The attempts at one item.
struct Item<I, O> {
    body: AsyncFn<I, O>,
    clone_input: Option<fn(&I) -> I>,
    /// The item, kept for the attempts to come until the last one takes it.
    input: Option<I>,
    attempts: Attempts,
    policy: FaultPolicy,
    /// The attempt under way, and its deadline.
    current: Option<Attempt<O>>,
    /// Whether the attempt under way has yielded an output.
    handed_on: bool,
    done: bool,
}

struct Attempt<O> {
    outputs: BoxStream<'static, Result<O, BoxError>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I, O> Item<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// The item's next output, its error, or `None` at its end.
    async fn next(&mut self) -> Option<Result<O, BoxError>> {
        loop {
            if self.done {
                return None;
            }
            let failure = match &mut self.current {
                None => match self.start() {
                    Ok(attempt) => {
                        self.current = Some(attempt);
                        continue;
                    }
                    Err(payload) => AttemptFailure::Panicked(payload),
                },
                Some(attempt) => match poll_attempt(attempt, &self.policy).await {
                    Ok(Some(value)) => {
                        self.handed_on = true;
                        return Some(Ok(value));
                    }
                    Ok(None) => {
                        self.done = true;
                        return None;
                    }
                    Err(failure) => failure,
                },
            };
            // Dropping the attempt cancels whatever it was still awaiting.
            self.current = None;
            match self
                .attempts
                .failed(failure, std::mem::take(&mut self.handed_on))
            {
                Verdict::Retry(delay) => match delay.is_zero() {
                    // Back to the runtime between attempts, even without a backoff: an
                    // attempt that fails without awaiting would otherwise retry in a
                    // loop that never yields, where the abort of a cancel cannot take
                    // effect, and the driver's other futures and the runtime's other
                    // tasks would never be polled.
                    true => tokio::task::yield_now().await,
                    false => tokio::time::sleep(delay).await,
                },
                Verdict::Fail(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
                Verdict::Panic(payload) => {
                    // Caught again by the driver, which reports it as this item's panic.
                    self.done = true;
                    resume_unwind(payload);
                }
            }
        }
    }

    /// Starts an attempt on the item, or a copy of it while more attempts may follow.
    fn start(&mut self) -> std::thread::Result<Attempt<O>> {
        let input = match (self.attempts.is_last(), self.clone_input) {
            (false, Some(clone)) => clone(self.input.as_ref().expect("kept until the last")),
            _ => self
                .input
                .take()
                .expect("only the last attempt takes the item"),
        };
        let body = &self.body;
        // The body calls the user's function at once: a panic there fails the attempt.
        let outputs = catch_unwind(AssertUnwindSafe(|| body(input)))?;
        let deadline = self
            .policy
            .timeout
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        Ok(Attempt { outputs, deadline })
    }
}

/// The attempt's next output, `None` at its end, or why it failed.
async fn poll_attempt<O>(
    attempt: &mut Attempt<O>,
    policy: &FaultPolicy,
) -> Result<Option<O>, AttemptFailure> {
    let next = AssertUnwindSafe(attempt.outputs.next()).catch_unwind();
    let polled = match &mut attempt.deadline {
        None => next.await,
        Some(deadline) => match select(pin!(next), deadline.as_mut()).await {
            Either::Left((polled, _)) => polled,
            Either::Right(((), _)) => {
                let limit = policy.timeout.expect("a deadline comes from a timeout");
                return Err(AttemptFailure::TimedOut(limit));
            }
        },
    };
    match polled {
        Ok(Some(Ok(value))) => Ok(Some(value)),
        Ok(None) => Ok(None),
        Ok(Some(Err(error))) => Err(AttemptFailure::Failed(error)),
        Err(payload) => Err(AttemptFailure::Panicked(payload)),
    }
}
