//! The worker side: what `init` does in a process worker, and the loop that serves one
//! parent.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use super::protocol::{self, FrameReader, Setup};
use crate::stage::wire::registry::{self, Registered};

/// Set once `init` has taken over this process as a worker.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Makes this process serve as a process-task worker if it was started as one (see
/// [`init`](crate::init)); returns at once otherwise.
pub(crate) fn serve_if_worker() {
    let Some(address) = std::env::var_os(protocol::ADDRESS_ENV) else {
        return;
    };
    SERVING.store(true, Ordering::SeqCst);
    // A worker whose parent dies dies at once, even in the middle of an item. (If the
    // parent is already gone, connecting fails below.)
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // Programs that the task's function starts must not take themselves for workers.
    // `init` runs first thing in `main`, before the program has threads of its own.
    std::env::remove_var(protocol::ADDRESS_ENV);
    let code = match serve_parent(&address) {
        // The parent is done with this worker, or gone: nobody to tell.
        Ok(()) | Err(Quit::ParentGone) => 0,
        Err(Quit::Failed(why)) => {
            eprintln!("pyper process worker {}: {why}", std::process::id());
            101
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Whether this process may start process stages: not if it is a worker whose `main` went
/// past the missing `init` line, which would otherwise start workers of its own, forever.
pub(crate) fn may_spawn() -> Result<(), &'static str> {
    if !SERVING.load(Ordering::SeqCst) && std::env::var_os(protocol::ADDRESS_ENV).is_some() {
        return Err(
            "this process was started as a process-task worker, but `pyper::init()` \
                    did not run: make it the first line of `main` (in integration tests, put \
                    `pyper::process_test_support!();` at the root of the test crate)",
        );
    }
    Ok(())
}

/// A worker's connection to its parent.
struct Serve {
    input: BufReader<UnixStream>,
    output: UnixStream,
    reader: FrameReader,
    scratch: Vec<u8>,
}

/// Why a worker stops serving before its parent ends the connection.
enum Quit {
    /// The parent hung up mid-exchange: it stopped the run (a cancel, a dropped output)
    /// or died. Not worth a word.
    ParentGone,
    /// Something is wrong, and the worker says what on its stderr.
    Failed(String),
}

impl From<String> for Quit {
    fn from(why: String) -> Self {
        Quit::Failed(why)
    }
}

impl Quit {
    /// The quit for a failed connect, read or write: `doing` says which.
    fn io(doing: &str, error: io::Error) -> Quit {
        match error.kind() {
            // Nobody listens any more (the parent gave up on this worker before it
            // connected), or the parent hung up.
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => Quit::ParentGone,
            _ => Quit::Failed(format!("cannot {doing} the parent: {error}")),
        }
    }
}

fn serve_parent(address: &std::ffi::OsStr) -> Result<(), Quit> {
    let stream = super::socket::connect(address).map_err(|error| Quit::io("connect to", error))?;
    let output = stream.try_clone().map_err(|error| error.to_string())?;
    let mut serve = Serve {
        input: BufReader::new(stream),
        output,
        reader: FrameReader::default(),
        scratch: Vec::new(),
    };
    let pid = std::process::id().to_le_bytes();
    serve.send(protocol::HELLO, &[&pid])?;
    let setup: Setup = match serve.reader.read(&mut serve.input) {
        Ok(Some(protocol::SETUP)) => postcard::from_bytes(&serve.reader.payload)
            .map_err(|error| format!("bad setup: {error}"))?,
        Ok(None) => return Ok(()),
        Ok(Some(tag)) => return Err(format!("unexpected message {tag} before setup").into()),
        Err(error) => return Err(Quit::io("read the setup from", error)),
    };
    match registry::lookup(&setup.function) {
        Ok(function) => serve.run(function),
        Err(why) => {
            serve.send(protocol::REFUSED, &[why.as_bytes()])?;
            Err(why.into())
        }
    }
}

impl Serve {
    fn send(&mut self, tag: u8, parts: &[&[u8]]) -> Result<(), Quit> {
        protocol::write_frame(&mut self.output, &mut self.scratch, tag, parts)
            .map_err(|error| Quit::io("write to", error))
    }

    /// Says it is ready, then calls `function` on every item the parent sends, replying to
    /// each as it completes.
    fn run(mut self, function: &Registered) -> Result<(), Quit> {
        self.send(protocol::READY, &[])?;
        let mut batch = FrameReader::default();
        loop {
            match batch.read(&mut self.input) {
                // The parent is done with us, or gone.
                Ok(None) => return Ok(()),
                Ok(Some(protocol::BATCH)) => {}
                Ok(Some(tag)) => return Err(format!("unexpected message {tag}").into()),
                Err(error) => return Err(Quit::io("read from", error)),
            }
            for item in protocol::items(&batch.payload) {
                let reply = match item {
                    Ok(item) => function.call(item),
                    Err(error) => return Err(error.to_string().into()),
                };
                reply
                    .write(&mut self.output, &mut self.scratch)
                    .map_err(|error| Quit::io("write to", error))?;
            }
        }
    }
}
