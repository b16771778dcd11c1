//! One worker process and its connection: started, handshaken, fed batches, read from,
//! and killed and reaped at the end.
//!
//! A worker thread never waits on the connection alone: a worker process that forked a
//! child before it died leaves the connection open (the child holds it), so a wait for a
//! reply or for room to send wakes every [`WATCH`] to ask whether the process still lives.
//! The socket's own timeouts do the waking, so a reply that is there is read at once, at
//! no extra cost.

use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::protocol::{self, FrameReader, ADDRESS_ENV};
use crate::engine::batch::Halt;
use crate::engine::meter::ProcessTimes;
use crate::engine::run::Close;
use crate::engine::run::RunState;
use crate::engine::sync::{self, Arc};
use crate::error::Error;
use crate::stage::wire::Reply;

/// How long a new worker process may take to connect and say it is ready. Generous: a
/// worker is a fresh start of the whole program, on a machine that may be busy.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// How long a worker that was told to stop may take to exit before it is killed.
const GRACE: Duration = Duration::from_secs(2);

/// How often a worker thread waiting on its worker process checks that the process lives.
/// A death is noticed this long after it at most, even when the connection stays open.
const WATCH: Duration = Duration::from_millis(50);

/// The most item bytes one batch message carries; the items past it go in the next one.
/// Batching is about the round trip per message, which this many bytes make negligible.
const BATCH_BYTES: usize = 16 << 20;

/// The connections to a stage's live worker processes. Cancelling the run shuts them
/// down, which wakes a worker thread blocked on a reply; that thread then kills and
/// reaps its process. (Killing by pid from here could hit a reused pid.)
#[derive(Default)]
pub(crate) struct Children {
    state: Mutex<ChildrenState>,
}

#[derive(Default)]
struct ChildrenState {
    closed: bool,
    streams: Vec<(u64, UnixStream)>,
}

impl Children {
    /// Adds a worker's connection; `false` if the stage is already closed.
    fn add(&self, id: u64, stream: UnixStream) -> bool {
        let mut state = sync::lock(&self.state);
        if state.closed {
            return false;
        }
        state.streams.push((id, stream));
        true
    }

    fn remove(&self, id: u64) {
        sync::lock(&self.state)
            .streams
            .retain(|(other, _)| *other != id);
    }
}

impl Close for Children {
    fn close(&self) {
        let mut state = sync::lock(&self.state);
        state.closed = true;
        for (_, stream) in state.streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Why a worker gave no reply.
pub(super) enum Gone {
    TimedOut,
    Died(ExitStatus),
    Cancelled,
    Broken(io::Error),
}

/// One live worker process and its connection.
pub(super) struct Worker {
    child: Child,
    input: BufReader<UnixStream>,
    output: UnixStream,
    reader: FrameReader,
    id: u64,
    children: Arc<Children>,
    scratch: Vec<u8>,
    batch: Vec<u8>,
    read_timeout: Option<Duration>,
    /// Whether the process was told to stop rather than killed.
    graceful: bool,
    reaped: bool,
    /// Its CPU times when last read, for the metrics.
    pub(super) last_times: std::cell::Cell<ProcessTimes>,
}

/// The arguments every worker process is started with. A program that calls [`init`](crate::init) at
/// the top of `main` never sees them; a libtest binary runs only the test
/// [`process_test_support!`](crate::process_test_support!) defines.
const WORKER_ARGS: [&str; 5] = [
    "__pyper_process_worker",
    "--exact",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

static NEXT_WORKER: AtomicU64 = AtomicU64::new(0);

impl Worker {
    /// Starts a worker process for the stage `name` of `run`, one of its `children`, and
    /// waits until it is ready to serve the function `setup` names.
    pub(super) fn spawn(
        name: &str,
        run: &RunState,
        children: &Arc<Children>,
        setup: &protocol::Setup,
    ) -> Result<Worker, Halt> {
        let setup_error = |why: String| Halt::Failed(Error::config(Some(name), why));
        let io_error = |error: io::Error| Halt::Failed(Error::failed(name, None, error.into()));
        let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        // Unpredictable, so that no other process can bind the address first; not a secret:
        // who connects is checked by the socket's peer credentials, not by what it knows.
        let (listener, address) =
            super::socket::listen(&format!("{id}-{:016x}", unpredictable(id))).map_err(io_error)?;
        let mut command = Command::new(executable());
        if let Some(name) = std::env::args_os().next() {
            // Shown by `ps` (whose short name for the worker is `exe`, from the path).
            std::os::unix::process::CommandExt::arg0(&mut command, name);
        }
        let spawned = command
            .args(WORKER_ARGS)
            .env(ADDRESS_ENV, &address)
            .stdin(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) => {
                super::socket::unlisten(&address);
                return Err(io_error(error));
            }
        };
        let mut worker = Worker {
            child,
            // Replaced once the worker connects; a worker that never does is killed with
            // this placeholder in place.
            input: BufReader::new(UnixStream::pair().map_err(io_error)?.0),
            output: UnixStream::pair().map_err(io_error)?.0,
            id,
            children: Arc::clone(children),
            reader: FrameReader::default(),
            scratch: Vec::new(),
            batch: Vec::new(),
            read_timeout: None,
            graceful: false,
            reaped: false,
            last_times: std::cell::Cell::new(ProcessTimes::default()),
        };
        let accepted = worker.accept(&listener, run);
        super::socket::unlisten(&address);
        let stream = match accepted {
            Ok(stream) => stream,
            Err(Gone::Cancelled) => return Err(Halt::Stop),
            Err(Gone::Died(status)) => {
                return Err(setup_error(format!(
                    "the worker process exited ({status}) before it connected: is \
                     `pyper::init()` the first line of `main`? (In an integration test, put \
                     `pyper::process_test_support!();` at the root of the test crate.)"
                )))
            }
            Err(Gone::TimedOut) => {
                return Err(setup_error(format!(
                    "the worker process did not connect within {HANDSHAKE:?}: is \
                     `pyper::init()` the first line of `main`? (In an integration test, put \
                     `pyper::process_test_support!();` at the root of the test crate.)"
                )))
            }
            Err(Gone::Broken(error)) => return Err(io_error(error)),
        };
        worker.output = stream.try_clone().map_err(io_error)?;
        // From here on, a cancel wakes this thread if it waits for the worker.
        let registered = stream
            .try_clone()
            .map(|stream| children.add(id, stream))
            .map_err(io_error)?;
        worker.input = BufReader::new(stream);
        if !registered {
            return Err(Halt::Stop);
        }
        // The handshake: the worker's hello, then the setup, then the worker's answer.
        let handshake = (|| -> io::Result<Result<(), String>> {
            worker.set_read_timeout(Some(HANDSHAKE))?;
            if worker.reader.read(&mut worker.input)? != Some(protocol::HELLO) {
                return Ok(Err("the worker process broke off the handshake".into()));
            }
            let setup = postcard::to_stdvec(setup)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            let (output, scratch) = (&mut worker.output, &mut worker.scratch);
            protocol::write_frame(output, scratch, protocol::SETUP, &[&setup])?;
            let answer = worker.reader.read(&mut worker.input)?;
            // From here on, a wait for a reply or for room to send wakes up now and then to
            // check that the process lives.
            worker.set_read_timeout(Some(WATCH))?;
            worker.output.set_write_timeout(Some(WATCH))?;
            Ok(match answer {
                Some(protocol::READY) => Ok(()),
                Some(protocol::REFUSED) => Err(format!(
                    "the worker process refused to serve: {}",
                    String::from_utf8_lossy(&worker.reader.payload)
                )),
                _ => Err("the worker process broke off the handshake".into()),
            })
        })();
        match handshake {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(setup_error(why)),
            Err(error) if run.is_cancelled() => {
                drop(error);
                return Err(Halt::Stop);
            }
            Err(error) => return Err(setup_error(format!("worker handshake failed: {error}"))),
        }
        Ok(worker)
    }

    /// The process's id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the new process to connect to `listener`.
    fn accept(
        &mut self,
        listener: &std::os::unix::net::UnixListener,
        run: &RunState,
    ) -> Result<UnixStream, Gone> {
        listener.set_nonblocking(true).map_err(Gone::Broken)?;
        let started = Instant::now();
        loop {
            match listener.accept() {
                Ok((stream, _)) if self.is_peer(&stream) => {
                    stream.set_nonblocking(false).map_err(Gone::Broken)?;
                    return Ok(stream);
                }
                // Another process found the address: it is hung up on, unanswered, and
                // the wait for the worker goes on.
                Ok((stream, _)) => drop(stream),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Gone::Broken(error)),
            }
            if run.is_cancelled() {
                return Err(Gone::Cancelled);
            }
            if let Some(status) = self.child.try_wait().map_err(Gone::Broken)? {
                self.reaped = true;
                return Err(Gone::Died(status));
            }
            if started.elapsed() > HANDSHAKE {
                return Err(Gone::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the process at the other end of `stream` is this worker's own process: the
    /// kernel's record of who connected (`SO_PEERCRED`), which the peer cannot forge.
    #[cfg(target_os = "linux")]
    fn is_peer(&self, stream: &UnixStream) -> bool {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        getsockopt(stream, PeerCredentials)
            .is_ok_and(|peer| u32::try_from(peer.pid()) == Ok(self.child.id()))
    }

    /// Elsewhere the socket is a file in a directory only this user can enter (see
    /// `listen`), so the peer is a process of the same user, which could read this
    /// process's memory anyway.
    #[cfg(not(target_os = "linux"))]
    fn is_peer(&self, _stream: &UnixStream) -> bool {
        true
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout != self.read_timeout {
            self.input.get_ref().set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Sends the first of `items` (encoded) as one batch: as many as [`BATCH_BYTES`]
    /// allow, one at least. Returns how many.
    pub(super) fn send<'a>(
        &mut self,
        items: impl Iterator<Item = &'a [u8]>,
        run: &RunState,
    ) -> Result<usize, Gone> {
        self.batch.clear();
        let mut sent = 0;
        for item in items {
            if sent > 0 && self.batch.len() + 4 + item.len() > BATCH_BYTES {
                break;
            }
            protocol::put_item(&mut self.batch, item);
            sent += 1;
        }
        protocol::frame(&mut self.scratch, protocol::BATCH, &[&self.batch])
            .map_err(Gone::Broken)?;
        let mut written = 0;
        while written < self.scratch.len() {
            match self.output.write(&self.scratch[written..]) {
                Ok(0) => return Err(self.gone(io::ErrorKind::WriteZero.into(), run)),
                Ok(count) => written += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_timeout(&error) => self.check_alive(run)?,
                Err(error) => return Err(self.gone(error, run)),
            }
        }
        Ok(sent)
    }

    /// Reads the reply to the oldest item in flight, waiting until `deadline` at most.
    pub(super) fn answer(
        &mut self,
        deadline: Option<Instant>,
        run: &RunState,
    ) -> Result<Reply, Gone> {
        loop {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                // The socket's own timeout counts in scheduler ticks (1 to 10 ms): too
                // coarse for a close deadline, which a poll keeps to the microsecond.
                if left < WATCH && self.input.buffer().is_empty() {
                    match readable_within(self.input.get_ref(), left) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.check_alive(run)?;
                            if Instant::now() >= deadline {
                                return Err(Gone::TimedOut);
                            }
                            continue;
                        }
                        Err(error) => return Err(self.gone(error, run)),
                    }
                }
            }
            match self.reader.read(&mut self.input) {
                // A reply read after the deadline is an overrun, however it raced the wait:
                // the outcome then depends on the call's time, not on the scheduler.
                Ok(Some(_)) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                    return Err(Gone::TimedOut)
                }
                Ok(Some(tag)) => {
                    return Reply::read(tag, &mut self.reader.payload).map_err(Gone::Broken)
                }
                Ok(None) => return Err(self.gone(io::ErrorKind::UnexpectedEof.into(), run)),
                // Nothing yet: the reader keeps what part of a reply came.
                Err(error) if is_timeout(&error) => {
                    self.check_alive(run)?;
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        return Err(Gone::TimedOut);
                    }
                }
                Err(error) => return Err(self.gone(error, run)),
            }
        }
    }

    /// Fails if the run was cancelled or the process has exited (reaping it).
    fn check_alive(&mut self, run: &RunState) -> Result<(), Gone> {
        if run.is_cancelled() {
            return Err(Gone::Cancelled);
        }
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.reaped = true;
                Err(Gone::Died(status))
            }
            Err(error) => Err(Gone::Broken(error)),
        }
    }

    /// Why the connection failed with `error`: a cancel, or the process's death.
    fn gone(&mut self, error: io::Error, run: &RunState) -> Gone {
        if run.is_cancelled() {
            return Gone::Cancelled;
        }
        // The process closed the connection by dying (or is about to): wait for it.
        match self.wait_for_exit(GRACE) {
            Some(status) => Gone::Died(status),
            None => Gone::Broken(error),
        }
    }

    /// Waits up to `grace` for the process to exit by itself, then kills it; reaps it.
    fn wait_for_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < grace {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Some(status);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
        }
        None
    }

    /// Ends the worker: told to stop and given time to exit if `graceful`, killed otherwise.
    pub(super) fn retire(mut self, graceful: bool) {
        self.graceful = graceful;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.children.remove(self.id);
        if self.reaped {
            return;
        }
        if self.graceful {
            // The end of the stream tells the worker to exit.
            let _ = self.output.shutdown(Shutdown::Write);
            if self.wait_for_exit(GRACE).is_some() {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

/// Whether `stream` has something to read (or has ended) within `wait`: to the microsecond
/// where `ppoll` exists, to the millisecond elsewhere. `false` may also mean that a signal
/// cut the wait short.
fn readable_within(stream: &UnixStream, wait: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let ready = nix::poll::ppoll(
        &mut fds,
        Some(nix::sys::time::TimeSpec::from_duration(wait)),
        None,
    );
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let ready = {
        let millis = wait.as_micros().div_ceil(1000);
        let timeout =
            nix::poll::PollTimeout::try_from(millis).unwrap_or(nix::poll::PollTimeout::MAX);
        nix::poll::poll(&mut fds, timeout)
    };
    match ready {
        Ok(ready) => Ok(ready > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Whether `error` is a socket timeout: nothing came, or no room was made, in time.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The executable to start workers from: the one this process runs.
fn executable() -> std::path::PathBuf {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::current_exe().unwrap_or_else(|_| proc_exe.to_path_buf())
}

/// A number no other process can predict: std's hash keys are random per process.
fn unpredictable(id: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(id);
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}
