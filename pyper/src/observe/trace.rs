//! The timeline: what each worker did when, as a Chrome trace (the Trace Event Format
//! that Perfetto and `chrome://tracing` read), one track per worker.
//!
//! Each track shows the worker's batches of work (`work`, with the batch's item count) and
//! the times it waited for input (`starved`) or for room downstream (`blocked`).
//!
//! The trace streams to a file as the run goes, so its memory stays flat: each worker holds
//! at most [`SPAN_CHUNK`](crate::engine::meter::SPAN_CHUNK) spans before it hands them to
//! the file. The file is the one `PYPER_TRACE` names, or else an anonymous temporary file
//! that [`write`] copies out. After every chunk the file is a whole JSON document (the
//! closing `]}` is rewritten after the last event), so it stays valid however the run ends,
//! even if the process is killed between chunks. A worker records at most
//! [`MAX_SPANS_PER_WORKER`](crate::engine::meter::MAX_SPANS_PER_WORKER) spans, so the file
//! of a long run of tiny items stays a size a viewer can open.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::engine::meter::{RunMeter, Span, SpanKind, SpanSink, Track};
use crate::engine::sync::lock_std as lock;

/// The environment variable that makes every run stream its trace to the file it names:
/// `PYPER_TRACE=trace.json`.
pub const TRACE_ENV: &str = "PYPER_TRACE";

const HEADER: &str = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n\
    {\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,\"args\":{\"name\":\"pyper run\"}}";
const FOOTER: &str = "\n]}\n";

/// The paths runs of this process are streaming a trace to: a second run at the same time
/// would write over the first's file, so it records to a temporary file instead.
static CLAIMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn path_from_env() -> Option<PathBuf> {
    std::env::var_os(TRACE_ENV)
        .filter(|path| !path.is_empty())
        .map(Into::into)
}

/// The trace of a run about to start: streaming to `path` (`PYPER_TRACE`), or else to a
/// temporary file.
/// `None` (with the reason on stderr) if no file could be made: the run then goes
/// untraced rather than failing, as the trace is a debugging aid.
pub(crate) fn start(path: Option<PathBuf>) -> Option<Arc<dyn SpanSink>> {
    let named = path.and_then(|path| {
        let mut claimed = lock(&CLAIMED);
        if claimed.contains(&path) {
            eprintln!(
                "pyper: another run of this process is writing its trace to {}; \
                 this run's trace is kept for `write_trace` only",
                path.display()
            );
            return None;
        }
        match File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
        {
            Ok(file) => {
                claimed.push(path.clone());
                Some((file, path))
            }
            Err(error) => {
                eprintln!(
                    "pyper: could not write the trace to {}: {error}",
                    path.display()
                );
                None
            }
        }
    });
    let (file, claim) = match named {
        Some((file, path)) => (file, Some(path)),
        None => match tempfile::tempfile() {
            Ok(file) => (file, None),
            Err(error) => {
                eprintln!("pyper: could not make a temporary file for the trace: {error}");
                return None;
            }
        },
    };
    let trace = TraceFile {
        spool: Mutex::new(Spool {
            file,
            end: 0,
            failed: false,
        }),
        claim,
        ended: AtomicBool::new(false),
    };
    trace.append(HEADER);
    Some(Arc::new(trace))
}

/// Writes the run's trace so far as a Chrome trace JSON document: the spans recorded, or
/// the tracks alone if the run records no trace.
pub(crate) fn write(run: &RunMeter, out: &mut dyn Write) -> io::Result<()> {
    if let Some(trace) = run.span_sink() {
        run.flush_spans();
        return trace.write_to(out);
    }
    let mut json = String::from(HEADER);
    for stage in run.stages() {
        for meter in stage.meters() {
            push_track(
                &mut json,
                &Track {
                    stage: stage.position,
                    name: Arc::clone(&stage.name),
                    worker: meter.index,
                },
            );
        }
    }
    json.push_str(FOOTER);
    out.write_all(json.as_bytes())
}

/// The run's workers are gone: their last spans go to the file, which is then final.
pub(crate) fn run_ended(run: &RunMeter) {
    if let Some(trace) = run.span_sink() {
        run.flush_spans();
        trace.end();
    }
}

/// A trace streaming to a file.
struct TraceFile {
    spool: Mutex<Spool>,
    /// The `PYPER_TRACE` path this trace holds, released when the run ends.
    claim: Option<PathBuf>,
    ended: AtomicBool,
}

struct Spool {
    file: File,
    /// Where the footer starts: the next events are written here.
    end: u64,
    /// A write failed (reported once on stderr): nothing more is written.
    failed: bool,
}

impl TraceFile {
    /// Writes `events` after the last ones, and the footer after them, in one write.
    fn append(&self, events: &str) {
        if self.ended.load(Relaxed) {
            return;
        }
        let mut bytes = String::with_capacity(events.len() + FOOTER.len());
        bytes.push_str(events);
        bytes.push_str(FOOTER);
        let mut spool = lock(&self.spool);
        if spool.failed {
            return;
        }
        let end = spool.end;
        let written = spool
            .file
            .seek(SeekFrom::Start(end))
            .and_then(|_| spool.file.write_all(bytes.as_bytes()));
        match written {
            Ok(()) => spool.end += events.len() as u64,
            Err(error) => {
                spool.failed = true;
                let place = match &self.claim {
                    Some(path) => path.display().to_string(),
                    None => "a temporary file".to_owned(),
                };
                eprintln!("pyper: could not write the trace to {place}: {error}");
            }
        }
    }

    fn release_claim(&self) {
        if let Some(path) = &self.claim {
            lock(&CLAIMED).retain(|claimed| claimed != path);
        }
    }
}

impl SpanSink for TraceFile {
    fn track(&self, track: &Track) {
        let mut json = String::new();
        push_track(&mut json, track);
        self.append(&json);
    }

    fn spans(&self, track: &Track, spans: &[Span]) {
        let tid = tid(track);
        let category = quoted(&track.name);
        let mut json = String::with_capacity(spans.len() * 128);
        for span in spans {
            let name = match span.what {
                SpanKind::Work => "work",
                SpanKind::Starved => "starved",
                SpanKind::Blocked => "blocked",
            };
            let _ = write!(
                json,
                ",\n{{\"name\":\"{name}\",\"cat\":{category},\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"items\":{}}}}}",
                span.start.as_secs_f64() * 1e6,
                span.length.as_secs_f64() * 1e6,
                span.items
            );
        }
        self.append(&json);
    }

    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut spool = lock(&self.spool);
        let length = spool.end + FOOTER.len() as u64;
        spool.file.seek(SeekFrom::Start(0))?;
        let copied = io::copy(&mut (&mut spool.file).take(length), out)?;
        if copied < length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the trace file was cut short",
            ));
        }
        Ok(())
    }

    fn end(&self) {
        self.ended.store(true, Relaxed);
        self.release_claim();
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        self.release_claim();
    }
}

fn tid(track: &Track) -> usize {
    track.stage * 1000 + track.worker + 1
}

/// A track's name and its place among the tracks, as metadata events.
fn push_track(json: &mut String, track: &Track) {
    let tid = tid(track);
    let name = quoted(&format!("{} #{}", track.name, track.worker + 1));
    let _ = write!(
        json,
        ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":{name}}}}}\
         ,\n{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"sort_index\":{tid}}}}}"
    );
}

/// `text` as a JSON string literal.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn names_are_escaped_as_json_strings() {
        assert_eq!(quoted("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
