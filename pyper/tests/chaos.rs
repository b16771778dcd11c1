//! The chaos suite (issue 14): hundreds of randomized runs that mix what made runs hang,
//! crash or leak, so that none of it comes back.
//!
//! Each run is a random pipeline of thread stages (maps, planned failures, `branch` stages
//! whose iterator may block), async stages (feature `async`: maps, and failures retried
//! without a pause, some of them forever) and process stages (feature `process`: one of
//! whose items may fork a grandchild and abort), fed from an input that may block, with
//! items whose `Drop` panics once the run has stopped (on the engine's threads), and a
//! cancel, a drop of the output or an `Output::cancel` at a random moment. Every run checks:
//!
//! * promptness: the run returns within [`RUN_BOUND`] seconds, whatever blocks (the bound
//!   is a hang detector, never a speed assertion);
//! * accounting: no output is duplicated or unexpected; at most one error, nothing after
//!   it, and only one the run planned (a stage's failure, a worker's death, a bomb's
//!   panic); a run that nothing stopped ends with its planned error, or else with exactly
//!   the outputs of the sequential reference;
//! * cleanup: once the blocked calls are let go, the engine's threads, the file
//!   descriptors, the child processes and the live items are all back to the baseline
//!   (items only where no item's drop panicked: such a panic may leak the items next to
//!   it, which is safe, and is only counted).
//!
//! `PYPER_CHAOS_RUNS` sets the number of runs (default [`DEFAULT_RUNS`]),
//! `PYPER_CHAOS_SEED` the seed (default: the clock), `PYPER_CHAOS_RUN` replays one run of
//! a seed, and `PYPER_CHAOS_WITHOUT` leaves ingredients out (see [`INGREDIENTS`]), to find
//! which one a failure needs. The run count and the seed are printed first, past libtest's capture, so that
//! a CI log always shows them; a failure names the seed, the run and its scenario.

mod common;
mod reliability_common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use common::{
    children, hide_panics_starting_with, jitter, mix, panic_text, pyper_thread_names, with_timeout,
    XorShift,
};
use pyper::{task, try_task, Canceller, Pipeline, Task};
use reliability_common::{eventually, open_fds};
use serde::{Deserialize, Serialize};

#[cfg(feature = "process")]
pyper::process_test_support!();

/// Runs unless `PYPER_CHAOS_RUNS` says otherwise.
const DEFAULT_RUNS: u64 = 300;

/// The watchdog of one run, in seconds: a run that takes longer has hung.
const RUN_BOUND: u64 = 20;

/// How long the leftovers of a run (threads, descriptors, processes, items) may take to go
/// once its blocked calls were let go.
const CLEANUP_BOUND: Duration = Duration::from_secs(20);

/// How every deliberate panic's message starts: the panic hook hides them.
const BOMB: &str = "chaos bomb";

// ---------------------------------------------------------------------------------------
// Items

/// Items alive in this process (made, cloned or decoded, minus dropped).
static LIVE: AtomicI64 = AtomicI64::new(0);

/// Counts one live item for as long as it exists.
struct Live(());

impl Default for Live {
    fn default() -> Self {
        LIVE.fetch_add(1, SeqCst);
        Live(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

/// What the items of one run share: the run, to know whether it has stopped.
#[derive(Default)]
struct RunCtx {
    run: OnceLock<Canceller>,
    explosions: AtomicU64,
}

impl RunCtx {
    fn stopped(&self) -> bool {
        self.run.get().is_some_and(Canceller::is_cancelled)
    }
}

/// The item every stage takes and returns. A "bomb" panics when it is dropped on one of
/// the engine's threads (`pyper:...`, `pyper-async`) after its run stopped: while the
/// engine tears the run down. The stages never drop an item themselves without defusing
/// it first, and the consumer defuses what it receives.
#[derive(Serialize, Deserialize)]
struct Item {
    value: u64,
    /// Aborts the worker process of a process stage, after forking a grandchild.
    #[serde(default)]
    fork: bool,
    /// Weak: the context holds the run's canceller, which holds the run and its queues,
    /// which hold items; a strong reference would make a cycle of what a run left queued.
    #[serde(skip)]
    bomb: Option<Weak<RunCtx>>,
    #[serde(skip)]
    _live: Live,
}

impl Item {
    fn new(value: u64, fork: bool, bomb: Option<Weak<RunCtx>>) -> Self {
        Item {
            value,
            fork,
            bomb,
            _live: Live::default(),
        }
    }

    fn defuse(&mut self) {
        self.bomb = None;
    }
}

impl Clone for Item {
    fn clone(&self) -> Self {
        Item::new(self.value, self.fork, self.bomb.clone())
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Item({})", self.value)
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        let Some(ctx) = self.bomb.take().and_then(|ctx| ctx.upgrade()) else {
            return;
        };
        let on_engine = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("pyper"));
        if on_engine && ctx.stopped() && !std::thread::panicking() {
            ctx.explosions.fetch_add(1, SeqCst);
            panic!("{BOMB}: item {} went off in its drop", self.value);
        }
    }
}

/// Whether the item of `value` is a bomb, in a run whose bombs are one in `rate`.
fn bomb_for(value: u64, rate: Option<u64>, salt: u64, ctx: &Weak<RunCtx>) -> Option<Weak<RunCtx>> {
    let rate = rate?;
    (mix(value ^ salt) % rate == 0).then(|| Weak::clone(ctx))
}

/// How many elements a `branch` stage makes of `value`: 0 to 3.
fn fanout(value: u64) -> u64 {
    mix(value ^ 0x0b5a_11c3) % 4
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Debug)]
enum Kind {
    /// Adds `add` to the value.
    Map { add: u64 },
    /// Fails on the value `at`.
    Fail { at: u64 },
    /// `value` becomes `4 * value + i` for `i` in `0..fanout(value)`; the iterator of the
    /// value `block_at` then blocks until the run's blocked calls are let go.
    Branch { block_at: Option<u64> },
    /// Adds `add`, yielding now and then.
    #[cfg(feature = "async")]
    AsyncMap { add: u64 },
    /// Fails on the value `at` at every attempt, retried at once `retries` times (or
    /// forever: `u32::MAX`), never yielding between attempts.
    #[cfg(feature = "async")]
    AsyncSpin { at: u64, retries: u32 },
    /// Passes values on, but the future of the value `at` waits an hour: only an abort
    /// ends it (a hung request, say).
    #[cfg(feature = "async")]
    AsyncStuck { at: u64 },
    /// Adds 1 in a worker process; an item marked `fork` aborts it.
    #[cfg(feature = "process")]
    Process,
}

#[derive(Clone, Debug)]
struct StageSpec {
    name: String,
    kind: Kind,
    workers: usize,
    throttle: Option<usize>,
    ordered: bool,
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Drops the output.
    Drop,
    /// Calls `Output::cancel`.
    Cancel,
}

#[derive(Clone, Debug)]
struct Scenario {
    inputs: u64,
    /// `Pipeline::run` with the one input rather than `feed`.
    single: bool,
    /// The input blocks after its last item until the blocked calls are let go.
    blocking_input: bool,
    /// The input value whose item forks and aborts in a process stage.
    fork_at: Option<u64>,
    /// One item in this many is a bomb.
    bombs: Option<u64>,
    salt: u64,
    stages: Vec<StageSpec>,
    /// A canceller cancels the run from another thread after this long.
    cancel_after: Option<Duration>,
    /// The consumer stops the run after this many outputs.
    stop_after: Option<(usize, Stop)>,
    /// The outputs of the sequential reference, faults ignored.
    expected: BTreeSet<u64>,
    /// Whether a planned fault is on the way of the items (so that a run nothing stops
    /// must end with an error).
    must_fail: bool,
    /// Whether something blocks or spins for ever (so that only a stop ends the run).
    endless: bool,
}

/// The values entering each stage, and leaving the last, in the sequential reference;
/// each value with its `fork` mark.
fn reference(inputs: &[(u64, bool)], stages: &[StageSpec]) -> Vec<Vec<(u64, bool)>> {
    let mut flows = vec![inputs.to_vec()];
    for stage in stages {
        let entering = flows.last().unwrap();
        let leaving = match &stage.kind {
            Kind::Map { add } => entering.iter().map(|&(v, f)| (v + add, f)).collect(),
            Kind::Branch { .. } => entering
                .iter()
                .flat_map(|&(v, f)| (0..fanout(v)).map(move |i| (4 * v + i, f)))
                .collect(),
            #[cfg(feature = "async")]
            Kind::AsyncMap { add } => entering.iter().map(|&(v, f)| (v + add, f)).collect(),
            #[cfg(feature = "process")]
            Kind::Process => entering.iter().map(|&(v, f)| (v + 1, f)).collect(),
            _ => entering.clone(),
        };
        flows.push(leaving);
    }
    flows
}

fn pick<T: Copy>(rng: &mut XorShift, choices: &[T]) -> T {
    choices[rng.below(choices.len() as u64) as usize]
}

/// The ingredients of the chaos, all on unless `PYPER_CHAOS_WITHOUT` lists some of them
/// (comma-separated): to find which one a failure needs.
const INGREDIENTS: [&str; 7] = [
    "blocking-input",
    "blocking-branch",
    "bombs",
    "spin",
    "endless-spin",
    "stuck",
    "fork",
];

fn without() -> Vec<String> {
    let without = std::env::var("PYPER_CHAOS_WITHOUT").unwrap_or_default();
    let without: Vec<String> = without
        .split(',')
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    for name in &without {
        assert!(
            INGREDIENTS.contains(&name.as_str()),
            "PYPER_CHAOS_WITHOUT: unknown ingredient {name:?}; the ingredients: {INGREDIENTS:?}"
        );
    }
    without
}

fn with(without: &[String], ingredient: &str) -> bool {
    !without.iter().any(|name| name == ingredient)
}

fn scenario(rng: &mut XorShift, without: &[String]) -> Scenario {
    let inputs = pick(rng, &[0, 1, 2, 5, 10, 30, 64]);
    let single = inputs == 1 && rng.one_in(2);
    let blocking_input = !single && rng.one_in(5) && with(without, "blocking-input");
    let bombs = (!rng.one_in(3) && with(without, "bombs")).then(|| 1 + rng.below(6));
    let salt = rng.next_u64();
    let mut stages: Vec<StageSpec> = Vec::new();
    let mut flow: Vec<(u64, bool)> = (0..inputs).map(|v| (v, false)).collect();
    let count = 1 + rng.below(4) as usize;
    #[allow(unused_mut)]
    let mut processes = 0;
    for position in 1..=count {
        let present = |rng: &mut XorShift, flow: &[(u64, bool)]| {
            (!flow.is_empty()).then(|| flow[rng.below(flow.len() as u64) as usize].0)
        };
        let roll = rng.below(100);
        let kind = match roll {
            0..=29 => Kind::Map {
                add: rng.below(1_000),
            },
            30..=44 => match present(rng, &flow) {
                Some(at) => Kind::Fail { at },
                None => Kind::Map { add: 1 },
            },
            45..=62 => Kind::Branch {
                block_at: if rng.one_in(4) && with(without, "blocking-branch") {
                    present(rng, &flow)
                } else {
                    None
                },
            },
            #[cfg(feature = "async")]
            63..=74 => Kind::AsyncMap {
                add: rng.below(1_000),
            },
            #[cfg(feature = "async")]
            75..=82 if with(without, "spin") => match present(rng, &flow) {
                Some(at) => Kind::AsyncSpin {
                    at,
                    retries: if rng.one_in(3) && with(without, "endless-spin") {
                        u32::MAX
                    } else {
                        1 + rng.below(2_000) as u32
                    },
                },
                None => Kind::AsyncMap { add: 2 },
            },
            #[cfg(feature = "async")]
            83..=89 if with(without, "stuck") => match present(rng, &flow) {
                Some(at) => Kind::AsyncStuck { at },
                None => Kind::AsyncMap { add: 3 },
            },
            #[cfg(feature = "process")]
            90..=99 if processes < 2 => {
                processes += 1;
                Kind::Process
            }
            _ => Kind::Map { add: 7 },
        };
        let label = match &kind {
            Kind::Map { .. } => "map",
            Kind::Fail { .. } => "fail",
            Kind::Branch { .. } => "branch",
            #[cfg(feature = "async")]
            Kind::AsyncMap { .. } => "amap",
            #[cfg(feature = "async")]
            Kind::AsyncSpin { .. } => "spin",
            #[cfg(feature = "async")]
            Kind::AsyncStuck { .. } => "stuck",
            #[cfg(feature = "process")]
            Kind::Process => "proc",
        };
        let workers = match &kind {
            #[cfg(feature = "async")]
            Kind::AsyncMap { .. } | Kind::AsyncSpin { .. } | Kind::AsyncStuck { .. } => {
                pick(rng, &[1, 2, 4, 16])
            }
            #[cfg(feature = "process")]
            Kind::Process => pick(rng, &[1, 2]),
            _ => pick(rng, &[1, 1, 2, 3, 4]),
        };
        let spec = StageSpec {
            name: format!("s{position}-{label}"),
            kind,
            workers,
            throttle: pick(rng, &[None, None, Some(1), Some(2), Some(8), Some(0)]),
            ordered: rng.one_in(3),
        };
        flow = reference(&flow, std::slice::from_ref(&spec)).pop().unwrap();
        stages.push(spec);
    }
    let fork_at = (cfg!(feature = "process")
        && processes > 0
        && inputs > 0
        && rng.one_in(3)
        && with(without, "fork"))
    .then(|| rng.below(inputs));
    let inputs_marked: Vec<(u64, bool)> = (0..inputs).map(|v| (v, Some(v) == fork_at)).collect();
    let flows = reference(&inputs_marked, &stages);
    let expected: BTreeSet<u64> = flows.last().unwrap().iter().map(|&(v, _)| v).collect();
    let forks_in_a_process = stages
        .iter()
        .zip(&flows)
        .any(|(stage, entering)| stage_is_process(stage) && entering.iter().any(|&(_, fork)| fork));
    let must_fail = forks_in_a_process
        || stages.iter().any(|stage| match stage.kind {
            Kind::Fail { .. } => true,
            #[cfg(feature = "async")]
            Kind::AsyncSpin { .. } => true,
            _ => false,
        });
    let endless = blocking_input
        || stages.iter().any(|stage| match stage.kind {
            Kind::Branch { block_at } => block_at.is_some(),
            #[cfg(feature = "async")]
            Kind::AsyncSpin { retries, .. } => retries == u32::MAX,
            #[cfg(feature = "async")]
            Kind::AsyncStuck { .. } => true,
            _ => false,
        });
    let cancel_after = (endless || rng.one_in(3)).then(|| Duration::from_micros(rng.below(30_000)));
    let stop_after = rng.one_in(4).then(|| {
        let after = rng.below(expected.len() as u64 + 2) as usize;
        (after, pick(rng, &[Stop::Drop, Stop::Cancel]))
    });
    Scenario {
        inputs,
        single,
        blocking_input,
        fork_at,
        bombs,
        salt,
        stages,
        cancel_after,
        stop_after,
        expected,
        must_fail,
        endless,
    }
}

#[cfg(feature = "process")]
fn stage_is_process(stage: &StageSpec) -> bool {
    matches!(stage.kind, Kind::Process)
}

#[cfg(not(feature = "process"))]
fn stage_is_process(_: &StageSpec) -> bool {
    false
}

// ---------------------------------------------------------------------------------------
// Building a run

/// What blocked calls wait on: a receive that returns once the run's sender is dropped.
type Blocker = Arc<Mutex<mpsc::Receiver<()>>>;

/// The elements a `branch` stage makes of one item, then (for the blocking one) a wait.
struct Children {
    value: u64,
    next: u64,
    fork: bool,
    bombs: Option<u64>,
    salt: u64,
    ctx: Weak<RunCtx>,
    block: Option<Blocker>,
}

impl Iterator for Children {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.next < fanout(self.value) {
            let value = 4 * self.value + self.next;
            self.next += 1;
            let bomb = bomb_for(value, self.bombs, self.salt, &self.ctx);
            return Some(Item::new(value, self.fork, bomb));
        }
        if let Some(block) = self.block.take() {
            let _ = block.lock().unwrap_or_else(|p| p.into_inner()).recv();
        }
        None
    }
}

/// The run's input: its items, then (if blocking) a wait.
struct Input {
    next: u64,
    scenario: Arc<Scenario>,
    ctx: Weak<RunCtx>,
    block: Option<mpsc::Receiver<()>>,
}

impl Iterator for Input {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let scenario = &self.scenario;
        if self.next < scenario.inputs {
            let value = self.next;
            self.next += 1;
            let bomb = bomb_for(value, scenario.bombs, scenario.salt, &self.ctx);
            return Some(Item::new(value, Some(value) == scenario.fork_at, bomb));
        }
        if let Some(block) = self.block.take() {
            let _ = block.recv();
        }
        None
    }
}

#[cfg(feature = "process")]
fn process_step(mut item: Item) -> Item {
    if item.fork {
        fork_then_abort(item.value);
    }
    item.value += 1;
    item
}

/// Where a worker process writes the pid of the grandchild it forked: named after the
/// test process (its parent) and the value.
#[cfg(feature = "process")]
fn grandchild_prefix(test_process: u32) -> String {
    format!("pyper-chaos-grandchild-{test_process}-")
}

#[cfg(feature = "process")]
fn fork_then_abort(value: u64) -> ! {
    // SAFETY: the forked child only sleeps and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Longer than a run's watchdog: a death noticed only once it ends is a hang.
        std::thread::sleep(Duration::from_secs(2 * RUN_BOUND));
        // SAFETY: ends the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
    let file = std::env::temp_dir().join(format!(
        "{}{value}",
        grandchild_prefix(std::os::unix::process::parent_id())
    ));
    let _ = std::fs::write(file, pid.to_string());
    std::process::abort()
}

/// Kills the grandchildren the worker processes of this test forked.
fn kill_grandchildren() {
    #[cfg(feature = "process")]
    {
        let prefix = grandchild_prefix(std::process::id());
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            if let Some(pid) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|pid| pid.trim().parse::<i32>().ok())
            {
                // SAFETY: sends a signal to the grandchild, which only sleeps.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn build_stage(
    scenario: &Scenario,
    spec: &StageSpec,
    ctx: &Arc<RunCtx>,
    block: &Blocker,
) -> Task<Item, Item> {
    let salt = scenario.salt ^ mix(spec.name.len() as u64);
    let stage = match spec.kind {
        Kind::Map { add } => task(move |mut item: Item| {
            jitter(item.value, salt, 50);
            item.value += add;
            item
        }),
        Kind::Fail { at } => try_task(move |mut item: Item| {
            jitter(item.value, salt, 50);
            if item.value == at {
                item.defuse();
                Err(format!("planned failure at {at}"))
            } else {
                Ok(item)
            }
        }),
        Kind::Branch { block_at } => {
            let (ctx, block) = (Arc::downgrade(ctx), Arc::clone(block));
            let (bombs, salt) = (scenario.bombs, scenario.salt);
            task(move |mut item: Item| {
                item.defuse();
                Children {
                    value: item.value,
                    next: 0,
                    fork: item.fork,
                    bombs,
                    salt,
                    ctx: Weak::clone(&ctx),
                    block: (Some(item.value) == block_at).then(|| Arc::clone(&block)),
                }
            })
            .branch()
        }
        #[cfg(feature = "async")]
        Kind::AsyncMap { add } => pyper::async_task(move |mut item: Item| async move {
            if mix(item.value ^ salt) % 3 == 0 {
                tokio::task::yield_now().await;
            }
            item.value += add;
            item
        }),
        #[cfg(feature = "async")]
        Kind::AsyncSpin { at, retries } => {
            pyper::try_async_task(move |mut item: Item| async move {
                if item.value == at {
                    item.defuse();
                    Err(format!("spinning failure at {at}"))
                } else {
                    Ok(item)
                }
            })
            .retries(retries)
            .backoff(pyper::Backoff::none())
        }
        #[cfg(feature = "async")]
        Kind::AsyncStuck { at } => pyper::async_task(move |item: Item| async move {
            if item.value == at {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            item
        }),
        #[cfg(feature = "process")]
        Kind::Process => pyper::process_task!(process_step),
    };
    let mut stage = stage.name(spec.name.clone()).workers(spec.workers);
    if let Some(throttle) = spec.throttle {
        stage = stage.throttle(throttle);
    }
    if spec.ordered {
        stage = stage.ordered();
    }
    stage
}

fn build(scenario: &Scenario, ctx: &Arc<RunCtx>, block: &Blocker) -> Pipeline<Item, Item> {
    let mut stages = scenario.stages.iter();
    let first = stages.next().expect("at least one stage");
    let mut pipeline: Pipeline<Item, Item> = build_stage(scenario, first, ctx, block).into();
    for spec in stages {
        pipeline = pipeline | build_stage(scenario, spec, ctx, block);
    }
    pipeline
}

// ---------------------------------------------------------------------------------------
// One run

/// What a run gave.
#[derive(Debug, Default)]
struct Outcome {
    outputs: Vec<u64>,
    /// Each error: its stage, whether it is allowed, and its message.
    errors: Vec<(Option<String>, bool, String)>,
    /// Outputs that came after an error.
    after_error: usize,
    stopped_by_consumer: bool,
}

/// Whether `err` is a failure the scenario planned, or a bomb's panic.
fn allowed(scenario: &Scenario, err: &pyper::Error) -> bool {
    if err.panic_message().is_some_and(|m| m.starts_with(BOMB)) {
        return true;
    }
    let Some(stage) = scenario
        .stages
        .iter()
        .find(|s| Some(s.name.as_str()) == err.stage())
    else {
        return false;
    };
    let message = format!("{err:#}");
    match stage.kind {
        Kind::Fail { at } => message.ends_with(&format!("planned failure at {at}")),
        #[cfg(feature = "async")]
        Kind::AsyncSpin { .. } => err.downcast_ref::<pyper::RetriesExhausted>().is_some(),
        #[cfg(feature = "process")]
        Kind::Process => err
            .downcast_ref::<pyper::WorkerDied>()
            .is_some_and(|died| died.signal() == Some(libc::SIGABRT)),
        _ => false,
    }
}

fn run_once(
    scenario: Arc<Scenario>,
    ctx: Arc<RunCtx>,
    input_block: mpsc::Receiver<()>,
    block: Blocker,
) -> Outcome {
    let pipeline = build(&scenario, &ctx, &block);
    let outputs = if scenario.single {
        let bomb = bomb_for(0, scenario.bombs, scenario.salt, &Arc::downgrade(&ctx));
        pipeline.run(Item::new(0, scenario.fork_at == Some(0), bomb))
    } else {
        pipeline.feed(Input {
            next: 0,
            scenario: Arc::clone(&scenario),
            ctx: Arc::downgrade(&ctx),
            block: scenario.blocking_input.then_some(input_block),
        })
    };
    assert!(ctx.run.set(outputs.canceller()).is_ok());
    let canceller = scenario.cancel_after.map(|after| {
        let canceller = outputs.canceller();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            canceller.cancel();
        })
    });
    let mut outcome = Outcome::default();
    let mut outputs = Some(outputs);
    while let Some(current) = outputs.as_mut() {
        if let Some((after, how)) = scenario.stop_after {
            if outcome.outputs.len() == after {
                outcome.stopped_by_consumer = true;
                match how {
                    Stop::Drop => drop(outputs.take()),
                    Stop::Cancel => {
                        current.cancel();
                        assert!(current.next().is_none(), "a cancelled output ends");
                    }
                }
                break;
            }
        }
        match current.next() {
            None => break,
            Some(Ok(mut item)) => {
                item.defuse();
                if !outcome.errors.is_empty() {
                    outcome.after_error += 1;
                }
                outcome.outputs.push(item.value);
            }
            Some(Err(err)) => outcome.errors.push((
                err.stage().map(str::to_owned),
                allowed(&scenario, &err),
                format!("{err:#}"),
            )),
        }
    }
    drop(outputs);
    if let Some(canceller) = canceller {
        canceller.join().unwrap();
    }
    outcome
}

/// The accounting of one run; `Err` says what is wrong.
fn check(scenario: &Scenario, outcome: &Outcome) -> Result<(), String> {
    let distinct: BTreeSet<u64> = outcome.outputs.iter().copied().collect();
    if distinct.len() != outcome.outputs.len() {
        return Err(format!("duplicated outputs: {:?}", outcome.outputs));
    }
    if let Some(stray) = distinct.difference(&scenario.expected).next() {
        return Err(format!("an output no input leads to: {stray}"));
    }
    if outcome.errors.len() > 1 {
        return Err(format!("more than one error: {:?}", outcome.errors));
    }
    if outcome.after_error > 0 {
        return Err(format!("{} outputs after the error", outcome.after_error));
    }
    if let Some((_, false, message)) = outcome.errors.first() {
        return Err(format!("an error the run did not plan: {message}"));
    }
    let stopped = scenario.cancel_after.is_some() || outcome.stopped_by_consumer;
    if scenario.endless && !stopped {
        return Err("an endless run ended without a stop".to_owned());
    }
    if !stopped {
        if scenario.must_fail {
            if outcome.errors.is_empty() {
                return Err("a planned failure was lost: the run ended without an error".into());
            }
        } else if let Some((_, _, message)) = outcome.errors.first() {
            return Err(format!("a run without faults failed: {message}"));
        } else if distinct != scenario.expected {
            return Err(format!(
                "a complete run lost outputs: {} of {}, missing {:?}",
                distinct.len(),
                scenario.expected.len(),
                scenario
                    .expected
                    .difference(&distinct)
                    .take(10)
                    .collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// What a run may leave behind, to compare with the baseline.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    engine_threads: Vec<String>,
    /// Threads other than pyper's runtime (`pyper-async`, whose threads live on).
    threads: usize,
    fds: usize,
    children: usize,
    live_items: i64,
}

fn leftovers() -> Leftovers {
    let names = thread_names();
    Leftovers {
        engine_threads: pyper_thread_names(),
        threads: names
            .iter()
            .filter(|name| !name.starts_with("pyper-async"))
            .count(),
        fds: open_fds(),
        children: children().len(),
        live_items: LIVE.load(SeqCst),
    }
}

fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.ok()?.path().join("comm")).ok()?;
            Some(comm.trim_end().to_owned())
        })
        .collect()
}

/// Runs a tiny pipeline of every kind, so that what lives as long as the process (pyper's
/// runtime and its descriptors) exists before the baseline is taken.
fn warm_up() {
    let out: Vec<u64> = task(|x: u64| x).feed(0..3).map(Result::unwrap).collect();
    assert_eq!(out, [0, 1, 2]);
    #[cfg(feature = "async")]
    {
        let out: Vec<u64> = pyper::async_task(|x: u64| async move { x })
            .feed(0..3)
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 3);
    }
    #[cfg(feature = "process")]
    {
        let out: Vec<Item> = pyper::process_task!(process_step)
            .feed((0..3).map(|v| Item::new(v, false, None)))
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 3);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn chaos() {
    hide_panics_starting_with(BOMB);
    let runs = env_u64("PYPER_CHAOS_RUNS").unwrap_or(DEFAULT_RUNS);
    let seed = env_u64("PYPER_CHAOS_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        mix(now.as_nanos() as u64)
    });
    let only = env_u64("PYPER_CHAOS_RUN");
    let without = without();
    let replay = format!(
        "PYPER_CHAOS_SEED={seed} PYPER_CHAOS_RUNS={runs} PYPER_CHAOS_WITHOUT={}",
        without.join(",")
    );
    // Past libtest's capture, so that the log of a passing run shows them too.
    let _ = writeln!(
        std::io::stderr(),
        "chaos: {runs} runs, seed {seed} (replay: {replay}; one run: PYPER_CHAOS_RUN=<n>)"
    );

    warm_up();
    let baseline_wait = eventually(CLEANUP_BOUND, || pyper_thread_names().is_empty());
    assert!(
        baseline_wait,
        "threads of earlier runs: {:?}",
        pyper_thread_names()
    );
    let baseline = leftovers();
    let started = Instant::now();
    let (mut errors, mut stops, mut explosions) = (0, 0, 0);
    let (mut live_items, mut leaked) = (LIVE.load(SeqCst), 0);
    for run in 0..runs {
        if only.is_some_and(|only| only != run) {
            continue;
        }
        let mut rng = XorShift::new(seed ^ mix(run));
        let scenario = Arc::new(scenario(&mut rng, &without));
        let fail = |what: String| -> ! {
            kill_grandchildren();
            panic!("chaos run {run} of seed {seed} ({replay} PYPER_CHAOS_RUN={run}): {what}\nscenario: {scenario:#?}")
        };
        let ctx = Arc::new(RunCtx::default());
        let (release_input, input_block) = mpsc::channel::<()>();
        let (release_branch, branch_block) = mpsc::channel::<()>();
        let branch_block: Blocker = Arc::new(Mutex::new(branch_block));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (scenario, ctx) = (Arc::clone(&scenario), Arc::clone(&ctx));
            let branch_block = Arc::clone(&branch_block);
            with_timeout(RUN_BOUND, move || {
                run_once(scenario, ctx, input_block, branch_block)
            })
        }));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(payload) => fail(panic_text(payload.as_ref())),
        };
        if let Err(what) = check(&scenario, &outcome) {
            fail(format!("{what}\noutcome: {outcome:?}"));
        }
        errors += outcome.errors.len();
        stops += usize::from(outcome.stopped_by_consumer || scenario.cancel_after.is_some());
        explosions += ctx.explosions.load(SeqCst);

        // Let the blocked calls go, and wait for everything to be back to the baseline.
        // Items are counted too, except after an item's drop panicked: a panicking drop
        // may leak the items next to it (futures-util's `FuturesUnordered` does, for one),
        // and leaking is safe. Such leaks are counted, and the count goes on from there.
        let went_off = ctx.explosions.load(SeqCst) > 0;
        drop((release_input, release_branch, branch_block, ctx));
        kill_grandchildren();
        let clean = eventually(CLEANUP_BOUND, || {
            let now = leftovers();
            now.engine_threads.is_empty()
                && now.threads <= baseline.threads
                && now.fds <= baseline.fds
                && now.children == 0
                && (went_off || now.live_items <= live_items)
        });
        if !clean {
            fail(format!(
                "left behind after {CLEANUP_BOUND:?}: {:?} (baseline {baseline:?}, live items \
                 {live_items})",
                leftovers()
            ));
        }
        if went_off {
            let now = LIVE.load(SeqCst);
            leaked += (now - live_items).max(0);
            live_items = now;
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "chaos: {runs} runs of seed {seed} passed in {:.1?} ({errors} errors, {stops} stopped \
         early, {explosions} items went off in their drop, {leaked} items leaked next to them)",
        started.elapsed()
    );
}
