//! The work that every implementation of a scenario calls.
//!
//! Each function is `#[inline(never)]`, and every impl calls the same one. The same
//! `black_box` loop inlined into two different closures ran 2x apart on this machine, so a
//! comparison is only fair when the work is one function that no impl can specialise.
//!
//! Each function's result is deterministic, so every run ends in a checksum that the
//! harness compares with the value computed here in closed form.

use std::hint::black_box;
use std::ops::Range;
use std::time::Duration;

/// The trivial stage of `overhead` and `memory`: as little work as a call can be.
#[inline(never)]
pub fn step(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// The checksum of `n` integers `0..n` after `stages` calls of [`step`] each.
pub fn stepped_sum(n: u64, stages: u64) -> u64 {
    triangle(n).wrapping_add(n.wrapping_mul(stages))
}

/// Steps of [`long_computation`] in the `cpu` scenario: about 0.5 ms on this machine, in
/// this binary (the same loop compiled elsewhere ran 2x slower). The `cpu` notes print the
/// time per item the sequential baseline measured, so the claim is checked every run.
pub const CPU_STEPS: u64 = 1_600_000;

/// Steps of [`long_computation`] in the seeds' "Considerations" example.
pub const SEED_STEPS: u64 = 1_000_000;

/// The seeds' `long_computation` (`for i in range(steps): data += i`), with `black_box` so
/// the loop is executed rather than folded into a formula.
#[inline(never)]
pub fn long_computation(mut data: u64, steps: u64) -> u64 {
    for i in 0..steps {
        data = black_box(data.wrapping_add(i));
    }
    data
}

/// What [`long_computation`] returns, in closed form.
pub fn long_computation_result(data: u64, steps: u64) -> u64 {
    data.wrapping_add(triangle(steps))
}

/// The seeds' `get_data`: the integers below `limit`.
#[inline(never)]
pub fn get_data(limit: u64) -> Range<u64> {
    0..limit
}

/// How long one `io-threads` item waits.
pub const IO_WAIT: Duration = Duration::from_millis(10);

/// The `io-threads` work: wait as a blocking IO call would, then hand the item on.
#[inline(never)]
pub fn wait_io(x: u64) -> u64 {
    std::thread::sleep(IO_WAIT);
    x
}

/// The `io-async` work: wait on a tokio timer as non-blocking IO would, then hand the
/// item on. One function for both impls, so that only the framework differs.
#[inline(never)]
pub async fn wait_io_async(x: u64) -> u64 {
    tokio::time::sleep(IO_WAIT).await;
    x
}

/// How long a `straggler` item waits, unless it is a straggler.
pub const SHORT_WAIT: Duration = Duration::from_millis(1);

/// How long a `straggler` straggler waits.
pub const STRAGGLER_WAIT: Duration = Duration::from_millis(200);

/// One `straggler` item in this many is a straggler.
pub const STRAGGLER_EVERY: u64 = 100;

/// Whether item `x` of `straggler` is a straggler: items 50, 150, 250, ..., so that `n`
/// items hold exactly `n / 100` of them when `n` is a multiple of 100, spread evenly, and
/// the last is not the very last item (which would make every run end on a 200 ms wait).
pub fn is_straggler(x: u64) -> bool {
    x % STRAGGLER_EVERY == STRAGGLER_EVERY / 2
}

/// The `straggler` work: wait as blocking IO would, [`SHORT_WAIT`] or, for a straggler,
/// [`STRAGGLER_WAIT`], then hand the item on.
#[inline(never)]
pub fn wait_or_straggle(x: u64) -> u64 {
    std::thread::sleep(if is_straggler(x) {
        STRAGGLER_WAIT
    } else {
        SHORT_WAIT
    });
    x
}

/// The total wait of the first `n` items of `straggler`: one thread's worth of work.
pub fn straggler_work(n: u64) -> Duration {
    let stragglers = (0..n).filter(|&x| is_straggler(x)).count() as u32;
    STRAGGLER_WAIT * stragglers + SHORT_WAIT * (n as u32 - stragglers)
}

/// How many elements each `fanout-join` item branches into.
pub const FAN: u64 = 1_000;

/// The `fanout-join` branch: item `x` becomes the [`FAN`] integers `x * FAN ..`.
#[inline(never)]
pub fn fan_out(x: u64) -> Range<u64> {
    x * FAN..(x + 1) * FAN
}

/// The join of `fanout-join` and `considerations`: the wrapping sum of a whole stream.
///
/// Each element goes through `black_box`: without it, the sequential baseline's
/// `flat_map` of ranges is summed in closed form, and measures nothing.
#[inline(never)]
pub fn sum_all(items: impl Iterator<Item = u64>) -> u64 {
    items.fold(0, |total, x| total.wrapping_add(black_box(x)))
}

/// `0 + 1 + ... + (n - 1)`, wrapping.
pub fn triangle(n: u64) -> u64 {
    let (a, b) = if n % 2 == 0 {
        (n / 2, n.wrapping_sub(1))
    } else {
        (n, (n - 1) / 2)
    };
    a.wrapping_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms_match_the_functions() {
        for n in [0, 1, 2, 7, 1000] {
            assert_eq!(triangle(n), (0..n).sum::<u64>());
            let stepped: u64 = (0..n).map(|x| step(step(step(x)))).sum();
            assert_eq!(stepped_sum(n, 3), stepped);
            assert_eq!(
                sum_all((0..n).flat_map(fan_out)),
                triangle(n * FAN),
                "fan-out of {n}"
            );
        }
        assert_eq!(long_computation(5, 1000), long_computation_result(5, 1000));
        assert_eq!(
            straggler_work(10_000),
            Duration::from_millis(9_900 + 100 * 200)
        );
        assert_eq!(
            straggler_work(2_000),
            Duration::from_millis(1_980 + 20 * 200)
        );
    }
}
