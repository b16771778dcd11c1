//! The timeline: what each worker did when, as a Chrome trace (the Trace Event Format
//! that Perfetto and `chrome://tracing` read), one track per worker.
//!
//! Each track shows the worker's batches of work (`work`, with the batch's item count) and
//! the times it waited for input (`starved`) or for room downstream (`blocked`). A worker
//! keeps at most [`MAX_SPANS_PER_WORKER`](crate::engine::meter::MAX_SPANS_PER_WORKER) spans, so a
//! trace of a long run of tiny items stays a manageable size.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::engine::meter::{RunMeter, SpanKind};

/// The environment variable that makes every run write its trace to the file it names,
/// when the run ends: `PYPER_TRACE=trace.json`.
pub const TRACE_ENV: &str = "PYPER_TRACE";

pub(crate) fn path_from_env() -> Option<PathBuf> {
    std::env::var_os(TRACE_ENV)
        .filter(|path| !path.is_empty())
        .map(Into::into)
}

/// Writes the run's spans so far as a Chrome trace JSON document.
pub(crate) fn write(run: &RunMeter, out: &mut dyn Write) -> io::Result<()> {
    let mut json = String::from("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n");
    json.push_str(
        r#"{"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"pyper run"}}"#,
    );
    for (position, stage) in run.stages().iter().enumerate() {
        let meters = stage.meters();
        for meter in meters {
            let tid = position * 1000 + meter.index + 1;
            let track = format!("{} #{}", stage.name, meter.index + 1);
            let _ = write!(
                json,
                ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":{}}}}}",
                quoted(&track)
            );
            let _ = write!(
                json,
                ",\n{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"sort_index\":{tid}}}}}"
            );
            let category = quoted(&stage.name);
            for span in meter.spans() {
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
        }
    }
    json.push_str("\n]}\n");
    out.write_all(json.as_bytes())
}

/// Writes the trace to the file `PYPER_TRACE` names, if it names one. A debugging aid
/// run as the run ends, so a failure is reported on stderr rather than failing the run.
pub(crate) fn write_to_env_path(run: &RunMeter) {
    let Some(path) = path_from_env() else {
        return;
    };
    let written = std::fs::File::create(&path).and_then(|mut file| write(run, &mut file));
    if let Err(error) = written {
        eprintln!(
            "pyper: could not write the trace to {}: {error}",
            path.display()
        );
    }
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
