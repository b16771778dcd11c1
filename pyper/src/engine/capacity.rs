//! How many threads a run may still start, where the system can tell, and the error of a
//! worker that could not be started.
//!
//! Most limits on threads fail cleanly: the thread is not created, and the launcher makes
//! that the run's error. One limit takes the whole process down instead. On Linux every
//! thread takes about four memory mappings (its stack, its signal stack, and their guard
//! pages), and a process may hold `vm.max_map_count` of them. When they run out just after
//! a thread was created, the new thread cannot map its signal stack, and the Rust runtime
//! aborts the process. So a launch that starts many threads first checks that the
//! mappings will last, keeping a margin for everything else the process maps.

use std::error::Error as StdError;
use std::fmt;

use crate::error::BoxError;

/// A launch that starts fewer threads than this, in stages of fewer workers, is not
/// checked: reading the mappings costs more than a small run. So few threads fit in the
/// margin of a process at its limit.
const UNCHECKED: usize = 64;

/// The memory mappings a thread takes (measured: 4.15 per thread on Linux, malloc's
/// per-thread arenas included).
const MAPPINGS_PER_THREAD: usize = 4;

/// The mappings left for everything else the process maps meanwhile.
const MARGIN: usize = 256;

/// What one launch may still start.
#[derive(Default)]
pub(crate) struct ThreadBudget {
    spawned: usize,
    /// Threads that may start before the next check; `None` until the first one.
    left: Option<usize>,
}

impl ThreadBudget {
    /// Takes one thread for a stage of `workers` workers, or says why it would not start.
    pub(crate) fn take(&mut self, workers: usize) -> Result<(), BoxError> {
        self.spawned += 1;
        if self.spawned <= UNCHECKED && workers < UNCHECKED {
            return Ok(());
        }
        if self.left.unwrap_or(0) == 0 {
            self.left = Some(threads_left()?);
        }
        self.left = self.left.map(|left| left - 1);
        Ok(())
    }
}

/// How many threads the process's memory mappings leave room for: unlimited where the
/// system does not say; an error if none.
fn threads_left() -> Result<usize, BoxError> {
    let Some((max, mapped)) = mappings() else {
        return Ok(usize::MAX);
    };
    let left = max.saturating_sub(mapped).saturating_sub(MARGIN) / MAPPINGS_PER_THREAD;
    if left == 0 {
        return Err(format!(
            "the process is near its limit of memory mappings (vm.max_map_count is {}, {} are \
             in use, and a thread takes about {MAPPINGS_PER_THREAD}): starting more threads \
             would abort it",
            grouped(max as u64),
            grouped(mapped as u64)
        )
        .into());
    }
    Ok(left)
}

/// The limit of memory mappings and how many the process has, on Linux.
fn mappings() -> Option<(usize, usize)> {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?;
    let max = max.trim().parse().ok()?;
    let maps = std::fs::read("/proc/self/maps").ok()?;
    let mapped = maps.iter().filter(|&&byte| byte == b'\n').count();
    Some((max, mapped))
}

/// A worker thread of a stage could not be started.
#[derive(Debug)]
pub(crate) struct CouldNotStart {
    /// The 1-based number of the worker that failed, and the stage's count of workers.
    pub(crate) worker: usize,
    pub(crate) workers: usize,
    pub(crate) cause: BoxError,
}

impl fmt::Display for CouldNotStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not start worker {} of {}",
            grouped(self.worker as u64),
            grouped(self.workers as u64)
        )
    }
}

impl StdError for CouldNotStart {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.cause)
    }
}

/// `n` with its digits in groups of three: `16,384`.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(16_384), "16,384");
        assert_eq!(grouped(100_000), "100,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn a_small_launch_is_not_checked_and_a_large_one_is() {
        let mut budget = ThreadBudget::default();
        for _ in 0..UNCHECKED {
            budget.take(1).unwrap();
        }
        assert!(budget.left.is_none(), "no check below the threshold");
        let mut budget = ThreadBudget::default();
        budget.take(10_000).unwrap();
        if mappings().is_some() {
            assert!(
                budget.left.is_some(),
                "a stage of many workers is checked at once"
            );
        }
    }

    #[test]
    fn a_worker_that_could_not_start_says_which_and_why() {
        let error = CouldNotStart {
            worker: 16_384,
            workers: 100_000,
            cause: "Resource temporarily unavailable".into(),
        };
        assert_eq!(
            error.to_string(),
            "could not start worker 16,384 of 100,000"
        );
        assert_eq!(
            error.source().unwrap().to_string(),
            "Resource temporarily unavailable"
        );
    }
}
