//! The parent side of a process stage: one worker thread per worker process, feeding it
//! batches, reading its replies, and killing, reaping and replacing it when it dies or
//! overruns.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::protocol::{self, ADDRESS_ENV, TOKEN_ENV};
use super::{ProcessFn, RemoteError, WorkerDied, WORKER_ARGS};
use crate::engine::batch::{Collect, Emit, Fault, Outlet, MAX_BATCH};
use crate::engine::meter::{ProcessTimes, Recorder, StageMeter};
use crate::engine::queue::{Close, Receiver, Sender};
use crate::engine::run::RunState;
use crate::engine::sequencer::{InOrder, Sequencer};
use crate::engine::sync::{self, Arc};
use crate::error::{BoxError, Error};
use crate::stage::policy::{FaultPolicy, Panicked, RetriesExhausted, TimedOut};

/// How long a new worker process may take to connect and say it is ready. Generous: a
/// worker is a fresh start of the whole program, on a machine that may be busy.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// How long a worker that was told to stop may take to exit before it is killed.
const GRACE: Duration = Duration::from_secs(2);

/// How many times in a row a worker may die between items before the stage gives up:
/// such deaths have no item to blame, so they are not retried as an item's would be.
const IDLE_DEATHS: u32 = 3;

/// How long the items of one batch should take in the worker process. Twenty times a
/// thread worker's 50 µs: a batch costs a round trip between processes (tens of µs), so
/// quick items travel in batches of up to [`MAX_BATCH`], while items slower than this
/// still go one at a time, so they spread over the stage's workers.
const BATCH_TIME: Duration = Duration::from_millis(1);

/// How many ready items a process worker takes at once: a thread worker's `BatchLimit`
/// with [`BATCH_TIME`] as its target.
struct BatchLimit {
    limit: usize,
}

impl BatchLimit {
    fn new() -> Self {
        BatchLimit { limit: 1 }
    }

    fn adapt(&mut self, started: Instant, count: usize) {
        let per_item = started.elapsed() / count.max(1) as u32;
        let fits = (BATCH_TIME.as_nanos() / per_item.as_nanos().max(1)) as usize;
        self.limit = fits.clamp(1, MAX_BATCH).min(self.limit * 2);
    }
}

/// What one process stage's worker threads share.
pub(crate) struct ProcessStage<I, O> {
    pub(crate) name: Arc<str>,
    pub(crate) run: Arc<RunState>,
    pub(crate) body: ProcessFn<I, O>,
    pub(crate) faults: FaultPolicy,
    pub(crate) children: Arc<Children>,
    pub(crate) sequencer: Option<Arc<Sequencer<O>>>,
    /// Whether a batch's outputs must leave in input order although there is no sequencer:
    /// a stage with one worker is in order, and a retried item must not fall behind the
    /// items after it.
    pub(crate) in_order: bool,
    pub(crate) meter: Arc<StageMeter>,
}

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

/// Why a worker thread stops early.
enum Halt {
    /// The run was cancelled or nobody reads any more.
    Stop,
    Fail(Error),
}

impl From<crate::engine::batch::Stop> for Halt {
    fn from(_: crate::engine::batch::Stop) -> Self {
        Halt::Stop
    }
}

/// Runs one worker of a process stage until its input ends, the run stops, or it fails.
pub(crate) fn work<I, O>(stage: Arc<ProcessStage<I, O>>, input: Receiver<I>, output: Sender<O>) {
    let recorder = stage.meter.worker().map(Recorder::begin_elsewhere);
    let meter = recorder.as_ref().map(|recorder| &recorder.meter);
    let (input, output) = (input.metered(meter), output.metered(meter));
    let mut supervisor = Supervisor {
        stage: &stage,
        worker: None,
        current_item: None,
        idle_deaths: 0,
        recorder,
        retired_times: ProcessTimes::default(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| supervisor.work(&input, &output)));
    let finished = matches!(result, Ok(Ok(())));
    // Reported while `output` is still alive: see the module docs of `run`.
    match result {
        Ok(Ok(())) | Ok(Err(Halt::Stop)) => {}
        Ok(Err(Halt::Fail(error))) => stage.run.fail(error),
        Err(payload) => {
            let error = Error::panicked(&stage.name, supervisor.current_item, payload);
            stage.run.fail(error);
        }
    }
    supervisor.record_process_times();
    if let Some(worker) = supervisor.worker.take() {
        worker.retire(finished);
    }
    drop(supervisor.recorder.take());
    drop(output);
}

/// How often, at most, a worker thread reads its process's CPU time (a few file reads).
const READ_PROCESS_TIMES_EVERY: Duration = Duration::from_millis(10);

struct Supervisor<'a, I, O> {
    stage: &'a ProcessStage<I, O>,
    worker: Option<Worker>,
    current_item: Option<u64>,
    idle_deaths: u32,
    recorder: Option<Recorder>,
    /// The times of the worker processes this one replaced, as last read.
    retired_times: ProcessTimes,
}

/// One item on its way through the worker processes.
struct Attempt {
    index: u64,
    bytes: Vec<u8>,
    /// Why each earlier attempt failed.
    causes: Vec<Cause>,
    /// When a retry may start.
    not_before: Instant,
}

enum Cause {
    Error(BoxError),
    Panic(String),
}

/// A worker's reply to one item.
enum Answer {
    Done(Vec<u8>),
    Failed(Vec<String>),
    Panicked(String),
}

/// Why a worker gave no answer.
enum Gone {
    TimedOut,
    Died(ExitStatus),
    Cancelled,
    Broken(io::Error),
}

impl<I, O> Supervisor<'_, I, O> {
    fn work(&mut self, input: &Receiver<I>, output: &Sender<O>) -> Result<(), Halt> {
        let stage = self.stage;
        let mut outlet = Outlet::new(output, &stage.run);
        let mut batch = Vec::new();
        let mut limit = BatchLimit::new();
        let mut times_read = Instant::now();
        while let Some(first) = input.pop_batch(&mut batch, limit.limit) {
            let started = Instant::now();
            let batch_began = self.recorder.as_mut().map(Recorder::batch_begins);
            let count = batch.len();
            let mut todo = VecDeque::with_capacity(count);
            for (index, item) in (first..).zip(batch.drain(..)) {
                self.current_item = Some(index);
                let bytes = (stage.body.encode)(&item)
                    .map_err(|error| Halt::Fail(Error::failed(&stage.name, Some(index), error)))?;
                todo.push_back(Attempt {
                    index,
                    bytes,
                    causes: Vec::new(),
                    not_before: started,
                });
            }
            let mut slots = Slots {
                first,
                outputs: Vec::new(),
                run: &stage.run,
            };
            match &stage.sequencer {
                None if !stage.in_order => self.run_batch(todo, &mut outlet)?,
                None => {
                    slots.outputs = (0..count).map(|_| Vec::new()).collect();
                    self.run_batch(todo, &mut slots)?;
                    for item in slots.outputs.into_iter().flatten() {
                        outlet.emit(item)?;
                    }
                }
                Some(sequencer) => {
                    slots.outputs = (0..count).map(|_| Vec::new()).collect();
                    self.run_batch(todo, &mut slots)?;
                    let mut order = InOrder::new(sequencer, Outlet::new(output, &stage.run), None);
                    let released = (first..).zip(slots.outputs).try_for_each(|(at, items)| {
                        order.at(at)?;
                        items.into_iter().try_for_each(|item| order.emit(item))
                    });
                    if let Err(stop) = released.and_then(|()| order.finish().map(drop)) {
                        order.stop();
                        return Err(stop.into());
                    }
                }
            }
            limit.adapt(started, count);
            if let (Some(recorder), Some(began)) = (self.recorder.as_mut(), batch_began) {
                let now = Instant::now();
                recorder.batch(began, now, now.saturating_duration_since(began), count);
            }
            if times_read.elapsed() >= READ_PROCESS_TIMES_EVERY {
                times_read = Instant::now();
                self.record_process_times();
            }
            outlet.flush()?;
        }
        Ok(())
    }

    /// Reads the CPU time of the current worker process into the metrics, adding that of
    /// the processes it replaced. (A process's times are read while it lives: those of a
    /// worker's last moments before a crash are lost.)
    fn record_process_times(&mut self) {
        let (Some(recorder), Some(worker)) = (&self.recorder, &self.worker) else {
            return;
        };
        if let Some(times) = ProcessTimes::of(worker.child.id()) {
            worker.last_times.set(times);
            recorder
                .meter
                .set_process_times(self.retired_times.plus(times));
        }
    }

    /// The current worker process is about to go: keeps its last times.
    fn retire_times(&mut self) {
        if let Some(worker) = &self.worker {
            self.retired_times = self.retired_times.plus(worker.last_times.get());
        }
    }

    /// Runs every item of `todo` to an output or to the run's error.
    fn run_batch(
        &mut self,
        mut todo: VecDeque<Attempt>,
        out: &mut impl Place<O>,
    ) -> Result<(), Halt> {
        let stage = self.stage;
        let mut later: Vec<Attempt> = Vec::new();
        loop {
            if todo.is_empty() {
                let Some(due) = later.iter().map(|attempt| attempt.not_before).min() else {
                    return Ok(());
                };
                self.sleep_until(due)?;
                let now = Instant::now();
                let (mut ready, waiting): (Vec<_>, _) =
                    later.drain(..).partition(|a| a.not_before <= now);
                later = waiting;
                ready.sort_by_key(|attempt| attempt.index);
                todo = ready.into();
                continue;
            }
            if stage.run.is_cancelled() {
                return Err(Halt::Stop);
            }
            let worker = match &mut self.worker {
                Some(worker) => worker,
                None => self.worker.insert(Worker::spawn(stage)?),
            };
            if let Err(error) = worker.send(&todo) {
                // The worker died between items (a kill from outside, say): nobody to
                // blame, so replace it and send the batch again.
                let gone = worker.gone(error, &stage.run);
                self.retire_times();
                self.worker = None;
                self.idle_death(gone)?;
                continue;
            }
            let mut since = Instant::now();
            while let Some(attempt) = todo.front() {
                self.current_item = Some(attempt.index);
                let deadline = stage.faults.timeout.map(|limit| since + limit);
                let worker = self.worker.as_mut().expect("spawned above");
                let answer = worker.answer(deadline, &stage.run);
                let mut attempt = todo.pop_front().expect("checked by the loop");
                since = Instant::now();
                match answer {
                    Ok(Answer::Done(bytes)) => {
                        self.idle_deaths = 0;
                        out.put(attempt.index, bytes, &stage.body, &stage.name)?;
                        continue;
                    }
                    Ok(Answer::Failed(chain)) => {
                        let error = RemoteError::new(chain_or_default(chain));
                        attempt.causes.push(Cause::Error(Box::new(error)));
                    }
                    Ok(Answer::Panicked(message)) => attempt.causes.push(Cause::Panic(message)),
                    Err(gone) => {
                        // The worker is dead or stuck: kill it, and send the rest of the
                        // batch to its replacement.
                        self.retire_times();
                        self.worker = None;
                        let cause: BoxError = match gone {
                            Gone::Cancelled => return Err(Halt::Stop),
                            Gone::TimedOut => Box::new(TimedOut::new(
                                stage.faults.timeout.expect("only a deadline times out"),
                            )),
                            Gone::Died(status) => Box::new(WorkerDied::new(status)),
                            Gone::Broken(error) => Box::new(error),
                        };
                        attempt.causes.push(Cause::Error(cause));
                    }
                }
                self.idle_deaths = 0;
                self.retry_or_fail(attempt, &mut later)?;
                if self.worker.is_none() {
                    break;
                }
            }
        }
    }

    /// Schedules another attempt at `attempt`, or makes its failure the run's error.
    fn retry_or_fail(&self, mut attempt: Attempt, later: &mut Vec<Attempt>) -> Result<(), Halt> {
        let faults = &self.stage.faults;
        let failures = attempt.causes.len() as u32;
        if failures <= faults.retries {
            attempt.not_before = Instant::now() + faults.backoff.delay(failures);
            later.push(attempt);
            return Ok(());
        }
        let name = &self.stage.name;
        let item = Some(attempt.index);
        let error = if faults.retries == 0 {
            match attempt.causes.pop().expect("one failure at least") {
                Cause::Panic(message) => Error::panicked(name, item, Box::new(message)),
                Cause::Error(error) => Error::failed(name, item, error),
            }
        } else {
            let causes = attempt.causes.into_iter().map(|cause| match cause {
                Cause::Panic(message) => Box::new(Panicked::new(message)) as BoxError,
                Cause::Error(error) => error,
            });
            Error::failed(
                name,
                item,
                Box::new(RetriesExhausted::new(causes.collect())),
            )
        };
        Err(Halt::Fail(error))
    }

    fn idle_death(&mut self, gone: Gone) -> Result<(), Halt> {
        let error: BoxError = match gone {
            Gone::Cancelled => return Err(Halt::Stop),
            Gone::Died(status) => Box::new(WorkerDied::new(status)),
            Gone::Broken(error) => Box::new(error),
            Gone::TimedOut => Box::new(io::Error::from(io::ErrorKind::TimedOut)),
        };
        self.idle_deaths += 1;
        if self.idle_deaths >= IDLE_DEATHS {
            return Err(Halt::Fail(Error::failed(&self.stage.name, None, error)));
        }
        Ok(())
    }

    /// Waits until `due`, or until the run is cancelled.
    fn sleep_until(&self, due: Instant) -> Result<(), Halt> {
        loop {
            if self.stage.run.is_cancelled() {
                return Err(Halt::Stop);
            }
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
    }
}

fn chain_or_default(chain: Vec<String>) -> Vec<String> {
    match chain.is_empty() {
        true => vec!["the worker reported an error without a message".into()],
        false => chain,
    }
}

/// Where the outputs of a batch go: straight on, or into the slots of an ordered batch.
trait Place<O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt>;
}

fn decode_into<O>(
    decode: &crate::stage::thread::EachFn<Vec<u8>, O>,
    bytes: Vec<u8>,
    out: &mut dyn Emit<O>,
    stage: &str,
    index: u64,
) -> Result<(), Halt> {
    match decode(bytes, out) {
        Ok(()) => Ok(()),
        Err(Fault::Stop) => Err(Halt::Stop),
        Err(Fault::Failed(error)) => Err(Halt::Fail(Error::failed(stage, Some(index), error))),
    }
}

impl<O> Place<O> for Outlet<'_, O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt> {
        decode_into(&body.decode, bytes, self, stage, index)
    }
}

/// The outputs of an ordered batch, by item.
struct Slots<'a, O> {
    first: u64,
    outputs: Vec<Vec<O>>,
    run: &'a RunState,
}

impl<O> Place<O> for Slots<'_, O> {
    fn put(
        &mut self,
        index: u64,
        bytes: Vec<u8>,
        body: &ProcessFn<impl Sized, O>,
        stage: &str,
    ) -> Result<(), Halt> {
        let slot = (index - self.first) as usize;
        let mut collect = Collect {
            items: std::mem::take(&mut self.outputs[slot]),
            run: self.run,
        };
        let result = decode_into(&body.decode, bytes, &mut collect, stage, index);
        self.outputs[slot] = collect.items;
        result
    }
}

/// One live worker process and its connection.
struct Worker {
    child: Child,
    input: BufReader<UnixStream>,
    output: UnixStream,
    id: u64,
    children: Arc<Children>,
    scratch: Vec<u8>,
    batch: Vec<u8>,
    buffer: Vec<u8>,
    read_timeout: Option<Duration>,
    /// Whether the process was told to stop rather than killed.
    graceful: bool,
    reaped: bool,
    /// Its CPU times when last read, for the metrics.
    last_times: std::cell::Cell<ProcessTimes>,
}

static NEXT_WORKER: AtomicU64 = AtomicU64::new(0);

impl Worker {
    /// Starts a worker process for `stage` and waits until it is ready to serve.
    fn spawn<I, O>(stage: &ProcessStage<I, O>) -> Result<Worker, Halt> {
        let setup_error = |why: String| Halt::Fail(Error::config(Some(&stage.name), why));
        let io_error =
            |error: io::Error| Halt::Fail(Error::failed(&stage.name, None, error.into()));
        let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let token = random_token(id);
        let (listener, address) = super::listen(&format!("{id}-{token:016x}")).map_err(io_error)?;
        let mut command = Command::new(executable());
        if let Some(name) = std::env::args_os().next() {
            // Shown by `ps` (whose short name for the worker is `exe`, from the path).
            std::os::unix::process::CommandExt::arg0(&mut command, name);
        }
        let spawned = command
            .args(WORKER_ARGS)
            .env(ADDRESS_ENV, &address)
            .env(TOKEN_ENV, token.to_string())
            .stdin(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) => {
                super::unlisten(&address);
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
            children: Arc::clone(&stage.children),
            scratch: Vec::new(),
            batch: Vec::new(),
            buffer: Vec::new(),
            read_timeout: None,
            graceful: false,
            reaped: false,
            last_times: std::cell::Cell::new(ProcessTimes::default()),
        };
        let accepted = worker.accept(&listener, &stage.run);
        super::unlisten(&address);
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
            .map(|stream| stage.children.add(id, stream))
            .map_err(io_error)?;
        worker.input = BufReader::new(stream);
        if !registered {
            return Err(Halt::Stop);
        }
        // The handshake: the token, then the setup, then the worker's answer.
        let handshake = (|| -> io::Result<Result<(), String>> {
            worker.set_read_timeout(Some(HANDSHAKE))?;
            let token_ok = match protocol::read_frame(&mut worker.input, &mut worker.buffer)? {
                Some(protocol::HELLO) => worker.buffer.starts_with(token.to_string().as_bytes()),
                _ => false,
            };
            if !token_ok {
                return Ok(Err("a process other than the worker connected".into()));
            }
            let setup = postcard::to_stdvec(&*stage.body.setup)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            let (output, scratch) = (&mut worker.output, &mut worker.scratch);
            protocol::write_frame(output, scratch, protocol::SETUP, &[&setup])?;
            let answer = protocol::read_frame(&mut worker.input, &mut worker.buffer)?;
            worker.set_read_timeout(None)?;
            Ok(match answer {
                Some(protocol::READY) => Ok(()),
                Some(protocol::REFUSED) => Err(format!(
                    "the worker process refused to serve: {}",
                    String::from_utf8_lossy(&worker.buffer)
                )),
                _ => Err("the worker process broke off the handshake".into()),
            })
        })();
        match handshake {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(setup_error(why)),
            Err(error) if stage.run.is_cancelled() => {
                drop(error);
                return Err(Halt::Stop);
            }
            Err(error) => return Err(setup_error(format!("worker handshake failed: {error}"))),
        }
        Ok(worker)
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
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(Gone::Broken)?;
                    return Ok(stream);
                }
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

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout != self.read_timeout {
            self.input.get_ref().set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Sends the items of `todo` as one batch.
    fn send(&mut self, todo: &VecDeque<Attempt>) -> io::Result<()> {
        self.batch.clear();
        for attempt in todo {
            protocol::put_item(&mut self.batch, &attempt.bytes);
        }
        protocol::write_frame(
            &mut self.output,
            &mut self.scratch,
            protocol::BATCH,
            &[&self.batch],
        )
    }

    /// Reads the reply to the oldest item in flight, waiting until `deadline` at most.
    fn answer(&mut self, deadline: Option<Instant>, run: &RunState) -> Result<Answer, Gone> {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // A zero timeout means "none" to the socket; the reply may be buffered already.
            let left = left.max(Duration::from_millis(1));
            if let Err(error) = self.set_read_timeout(Some(left)) {
                return Err(self.gone(error, run));
            }
        }
        match protocol::read_frame(&mut self.input, &mut self.buffer) {
            Ok(Some(protocol::DONE)) => Ok(Answer::Done(std::mem::take(&mut self.buffer))),
            Ok(Some(protocol::FAILED)) => match postcard::from_bytes(&self.buffer) {
                Ok(chain) => Ok(Answer::Failed(chain)),
                Err(error) => Err(Gone::Broken(io::Error::new(
                    io::ErrorKind::InvalidData,
                    error,
                ))),
            },
            Ok(Some(protocol::PANICKED)) => Ok(Answer::Panicked(
                String::from_utf8_lossy(&self.buffer).into_owned(),
            )),
            Ok(Some(tag)) => Err(Gone::Broken(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected message {tag} from the worker process"),
            ))),
            Ok(None) => Err(self.gone(io::ErrorKind::UnexpectedEof.into(), run)),
            Err(error) => Err(self.gone(error, run)),
        }
    }

    /// Why the connection failed with `error`: a cancel, a timeout, or the process's death.
    fn gone(&mut self, error: io::Error, run: &RunState) -> Gone {
        if run.is_cancelled() {
            return Gone::Cancelled;
        }
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return Gone::TimedOut;
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
    fn retire(mut self, graceful: bool) {
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

/// The executable to start workers from: the one this process runs.
fn executable() -> std::path::PathBuf {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::current_exe().unwrap_or_else(|_| proc_exe.to_path_buf())
}

/// A token no other process can guess: std's hash keys are random per process.
fn random_token(id: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(id);
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}
