//! The crawl of `crawl_report`, smaller, with its CPU stage on remote workers: this
//! program is the coordinator, and it starts two workers of itself on this machine, as
//! you would start them on other hosts.
//!
//! ```text
//! scripts/nats-server.sh start /tmp/nats          # prints the server's URL
//! PYPER_NATS_URL=nats://127.0.0.1:PORT \
//!     cargo run --release --features remote --example remote_crawl [-- --pages N]
//! ```
//!
//! 1. `fetch` (32 threads) waits 2 to 8 ms per page, in place of the network.
//! 2. `analyse` counts words and fingerprints each page: a `remote_task`, so its items go
//!    through the NATS server to whichever worker process takes them.
//! 3. `summarise` folds the statistics into one report, here.
//!
//! The same work is then done in a plain loop, and the two reports must be the same.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pyper::{remote_task, task, Cluster, Upstream};
use serde::{Deserialize, Serialize};

const WORDS: [&str; 16] = [
    "the", "pipeline", "stage", "worker", "item", "queue", "host", "server", "stream", "batch",
    "error", "output", "crawl", "page", "word", "report",
];

/// A fetched page.
#[derive(Serialize, Deserialize)]
struct Page {
    url: String,
    text: String,
}

/// What `analyse` makes of a page.
#[derive(Serialize, Deserialize)]
struct PageStats {
    url: String,
    words: BTreeMap<String, u64>,
    fingerprint: u64,
}

#[derive(Debug, PartialEq)]
struct Report {
    pages: usize,
    top: Vec<(String, u64)>,
    fingerprints: u64,
}

fn main() -> ExitCode {
    pyper::init(); // the two workers started below serve here, and never return
    let args: Vec<String> = std::env::args().collect();
    let pages = match args.iter().position(|arg| arg == "--pages") {
        Some(at) => args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(200),
        None => 200,
    };
    let Ok(url) = std::env::var("PYPER_NATS_URL") else {
        eprintln!(
            "set PYPER_NATS_URL to a nats-server with JetStream: `scripts/nats-server.sh \
             start /tmp/nats` starts one and prints its URL"
        );
        return ExitCode::from(2);
    };
    match run(&url, pages) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(url: &str, pages: u64) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::connect(url)?;
    let mut workers = Workers::start(url, 2)?;
    println!("Crawling {pages} pages; `analyse` runs on 2 worker processes through {url}.");
    let started = Instant::now();
    let pipeline = task(fetch).workers(32).name("fetch")
        | remote_task!(&cluster, analyse).name("analyse")
        | task(summarise::<Upstream<PageStats>>).join();
    let mut output = pipeline.feed(0..pages);
    let report = output.next().ok_or("no report")??;
    if let Some(extra) = output.next() {
        return Err(format!("a join of everything gave a second output: {extra:?}").into());
    }
    let took = started.elapsed();
    // Taken now, so that it covers the pipeline's run alone, not the loop below.
    let run_report = output.report();
    workers.stop();
    let sequential = summarise((0..pages).map(|n| analyse(fetch(n))));
    if sequential != report {
        return Err("the sequential run produced a different report".into());
    }
    println!("{report:?}");
    println!(
        "Pipeline: {:.2} s (the same report as a plain loop)\n",
        took.as_secs_f64()
    );
    println!("{run_report}");
    Ok(())
}

/// Fetches page `n` of a made-up site: a sleep in place of the network.
fn fetch(n: u64) -> Page {
    std::thread::sleep(Duration::from_millis(2 + n % 7));
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text = (0..5_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ");
    Page {
        url: format!("/pages/{n:04}"),
        text,
    }
}

/// Counts the words of a page and fingerprints it: the CPU-bound stage.
fn analyse(page: Page) -> PageStats {
    let mut words = BTreeMap::new();
    let mut fingerprint = 0xcbf2_9ce4_8422_2325u64;
    for word in page.text.split(' ') {
        *words.entry(word.to_owned()).or_default() += 1;
        for byte in word.bytes() {
            fingerprint = (fingerprint ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    PageStats {
        url: page.url,
        words,
        fingerprint,
    }
}

fn summarise<P: Iterator<Item = PageStats>>(pages: P) -> Report {
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    let (mut count, mut fingerprints) = (0, 0u64);
    for page in pages {
        count += 1;
        fingerprints ^= page.fingerprint;
        for (word, n) in page.words {
            *words.entry(word).or_default() += n;
        }
    }
    let mut top: Vec<(String, u64)> = words.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(3);
    Report {
        pages: count,
        top,
        fingerprints,
    }
}

/// Worker processes of this program, as `--pyper-worker URL` starts them on any host.
struct Workers(Vec<Child>);

impl Workers {
    fn start(url: &str, count: usize) -> std::io::Result<Workers> {
        let exe = std::env::current_exe()?;
        let children = (0..count)
            .map(|_| {
                Command::new(&exe)
                    .args(["--pyper-worker", url])
                    .stdin(Stdio::null())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Workers(children))
    }

    fn stop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
