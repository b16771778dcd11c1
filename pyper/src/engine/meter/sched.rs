//! The scheduler's view of a thread or a process: its CPU time, and how long it waited,
//! ready to run, for a free core (Linux's `schedstat`). File reads, so never per batch.

use std::time::Duration;

/// A process's CPU time and its time ready to run but waiting for a core, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProcessTimes {
    pub(crate) cpu: u64,
    pub(crate) runnable: u64,
}

impl ProcessTimes {
    /// Sums them over the threads of process `pid`, from `/proc/<pid>/task/*/schedstat`
    /// (Linux), while the process lives. (The process's own `schedstat` covers only its
    /// main thread, and the work may run on another: libtest's, in a test binary.)
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn of(pid: u32) -> Option<Self> {
        let mut total = ProcessTimes::default();
        for thread in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Some(sched) = Sched::read(&thread.ok()?.path().join("schedstat")) else {
                continue; // the thread has just ended
            };
            total = total.plus(ProcessTimes {
                cpu: sched.cpu,
                runnable: sched.runnable,
            });
        }
        Some(total)
    }

    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn plus(self, other: Self) -> Self {
        ProcessTimes {
            cpu: self.cpu + other.cpu,
            runnable: self.runnable + other.runnable,
        }
    }

    /// The times since `earlier`, a reading of the same process.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn minus(self, earlier: Self) -> Self {
        ProcessTimes {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            runnable: self.runnable.saturating_sub(earlier.runnable),
        }
    }
}

/// A thread's scheduler statistics since it started: its CPU time, how long it waited,
/// ready to run, for a core (in nanoseconds), and how many times it was put on a core
/// (each after a wait, however short). The three fields of Linux's `schedstat`. A file read, so read when a worker starts and ends, by snapshots, and
/// around an async poll at most once a millisecond: never per batch. The wait for a core
/// tells a CPU-bound stage on a crowded machine (ready, but no core free) from a stage
/// that waits on IO.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sched {
    pub(super) cpu: u64,
    pub(super) runnable: u64,
    pub(super) slices: u64,
}

impl Sched {
    pub(super) fn read(path: &std::path::Path) -> Option<Sched> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        Sched::parse(&std::fs::read_to_string(path).ok()?)
    }

    fn parse(stat: &str) -> Option<Sched> {
        let mut fields = stat.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(cpu)), Some(Ok(runnable)), slices) => Some(Sched {
                cpu,
                runnable,
                slices: slices.and_then(Result::ok).unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// The calling thread's.
    pub(super) fn of_this_thread() -> Option<Sched> {
        Sched::read("/proc/thread-self/schedstat".as_ref())
    }

    /// Thread `thread` of this process's.
    pub(super) fn of_thread(thread: u64) -> Option<Sched> {
        Sched::read(format!("/proc/self/task/{thread}/schedstat").as_ref())
    }
}

/// Reads the calling thread's [`Sched`] through a file kept open while the reader stays
/// on one thread: one system call a reading rather than five (open, stat, two reads,
/// close) and a path lookup. An async worker reads it at the start of a burst of work,
/// where every microsecond delays the burst. Dropping the reader closes the file.
#[derive(Default)]
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(super) struct ThreadSchedReader {
    /// The thread the file was opened on (`thread-self` is resolved then), the file, and
    /// the last reading through it.
    #[cfg(target_os = "linux")]
    open: Option<(std::thread::ThreadId, std::fs::File, Option<Sched>)>,
}

#[cfg_attr(not(feature = "async"), allow(dead_code))]
impl ThreadSchedReader {
    /// Reads the calling thread's statistics: the reading before this one if it was of
    /// this thread, and this one. Off the hot path: at most once a millisecond, and
    /// after a stall.
    #[cold]
    #[cfg(target_os = "linux")]
    pub(super) fn read(&mut self) -> (Option<Sched>, Option<Sched>) {
        use std::os::unix::fs::FileExt;
        let thread = std::thread::current().id();
        if self.open.as_ref().map(|(opened_on, ..)| *opened_on) != Some(thread) {
            self.open = None; // closed before the next is opened
            let Ok(file) = std::fs::File::open("/proc/thread-self/schedstat") else {
                return (None, None);
            };
            self.open = Some((thread, file, None));
        }
        let Some((_, file, last)) = self.open.as_mut() else {
            return (None, None);
        };
        let mut buffer = [0u8; 128];
        let now = file
            .read_at(&mut buffer, 0)
            .ok()
            .and_then(|read| Sched::parse(std::str::from_utf8(&buffer[..read]).ok()?));
        (std::mem::replace(last, now), now)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn read(&mut self) -> (Option<Sched>, Option<Sched>) {
        (None, None)
    }
}

/// The calling thread's Linux thread id: `/proc/thread-self` links to `<pid>/task/<tid>`.
pub(super) fn this_thread_id() -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The calling thread's CPU time, where the platform has a per-thread CPU clock.
#[cfg(unix)]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(Duration::from(now))
}

#[cfg(not(unix))]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The calling thread's CPU time, and how many times it gave up its core of its own
/// accord (to sleep, to wait on IO or on a lock): `getrusage(RUSAGE_THREAD)`. A thread
/// that only computes gives up its core only when preempted, which is not counted here.
#[cfg(target_os = "linux")]
pub(crate) fn thread_usage() -> Option<(Duration, u64)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let micros = |time: nix::sys::time::TimeVal| {
        Duration::from_secs(time.tv_sec().max(0) as u64)
            + Duration::from_micros(time.tv_usec().max(0) as u64)
    };
    let cpu = micros(usage.user_time()) + micros(usage.system_time());
    Some((cpu, usage.voluntary_context_switches().max(0) as u64))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_usage() -> Option<(Duration, u64)> {
    None
}

/// The CPU time of the whole process (every thread), where the platform has that clock.
#[cfg(unix)]
pub(crate) fn process_cpu_time() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
    Some(Duration::from(now))
}

#[cfg(not(unix))]
pub(crate) fn process_cpu_time() -> Option<Duration> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use crate::engine::meter::sched::{thread_cpu_time, ThreadSchedReader};

    /// The file a reader keeps open is read again from its start, so a second reading
    /// is new, not the rest (or the end) of the first; and each reading comes with the
    /// one before it.
    #[test]
    fn a_threads_statistics_are_read_afresh_each_time() {
        let mut reader = ThreadSchedReader::default();
        let (none, first) = reader.read();
        assert!(none.is_none());
        let first = first.expect("Linux has schedstat");
        spin_for_cpu(Duration::from_millis(30));
        let (before, after) = reader.read();
        let after = after.expect("read again");
        assert_eq!(before.map(|before| before.cpu), Some(first.cpu));
        assert!(after.cpu > first.cpu, "{} then {}", first.cpu, after.cpu);
        assert!(after.slices >= first.slices);
    }

    /// A reader that moves to another thread (an async worker's future does) opens that
    /// thread's file, and does not pair a reading of one thread with one of another.
    #[test]
    fn a_reader_moved_to_another_thread_reads_that_thread() {
        let mut reader = ThreadSchedReader::default();
        spin_for_cpu(Duration::from_millis(30));
        let (_, here) = reader.read();
        let here = here.expect("Linux has schedstat");
        assert!(here.cpu >= 30_000_000, "{}", here.cpu);
        let (before, there) = std::thread::spawn(move || reader.read()).join().unwrap();
        assert!(before.is_none(), "a reading of another thread came back");
        let there = there.expect("the new thread has schedstat");
        assert!(there.cpu < here.cpu, "{} on a new thread", there.cpu);
    }

    /// Spends `cpu` of this thread's CPU time (the scheduler accounts it on its ticks).
    fn spin_for_cpu(cpu: Duration) {
        let spun = thread_cpu_time().unwrap();
        while thread_cpu_time().unwrap() - spun < cpu {
            std::hint::black_box(0u64);
        }
    }
}
