//! Crawls a simulated web site and reports on it: the most frequent words, and pages that
//! are near-duplicates of each other.
//!
//! ```text
//! cargo run --release --example crawl_report
//! cargo run --release --example crawl_report -- --broken-link   # see how a failure looks
//! cargo run --release --example crawl_report -- --pages 40       # a smaller site
//! PYPER_PROGRESS=1 cargo run --release --example crawl_report     # live progress bars
//! PYPER_TRACE=crawl.json cargo run --release --example crawl_report  # a Perfetto timeline
//! ```
//!
//! The pipeline has one stage per kind of work:
//!
//! 1. `fetch` is IO-bound: it spends its time waiting for each page, not computing, so it
//!    gets many workers. 32 threads keep 32 requests in flight, and their waits overlap.
//!    No network is used: the site is generated in memory, and a sleep of 2 to 8 ms per
//!    page stands in for the network round trip.
//! 2. `analyse` is CPU-bound: it strips the markup, counts words and computes a SimHash
//!    fingerprint of each page. It gets one worker per core; Rust threads run in parallel.
//! 3. `summarise` is a join: it receives every page's statistics and folds them into one
//!    report.
//!
//! The same functions then run in a plain loop, for comparison, and the two reports must
//! be identical. Last, the pipeline runs once more with its worker counts left to the run
//! (`auto_workers`), which measures each stage as it goes and sets its workers.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pyper::{task, try_task, Pipeline, Upstream};

/// How many pages the simulated site has, unless `--pages N` says otherwise.
const PAGES: usize = 400;
/// How many words each page holds: about 130 KB of HTML.
const WORDS_PER_PAGE: usize = 20_000;
/// Every `MIRROR_EVERY`-th page is a lightly edited copy of the page before it.
const MIRROR_EVERY: usize = 25;
/// Fetches in flight at once. Waiting costs no CPU, so this can be far above the core count.
const FETCH_WORKERS: usize = 32;
/// Fetched pages allowed to wait for analysis. A bound keeps memory flat when fetching
/// outpaces analysis (backpressure): without it, the whole site could end up in memory.
const PAGES_AWAITING_ANALYSIS: usize = 32;
/// Fingerprints this many bits apart or fewer mark near-duplicate pages.
const NEAR_DUPLICATE_BITS: u32 = 3;
/// How many of the most frequent words the report lists.
const TOP_WORDS: usize = 8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let broken_link = args.iter().any(|arg| arg == "--broken-link");
    let pages = match args.iter().position(|arg| arg == "--pages") {
        Some(at) => match args.get(at + 1).and_then(|n| n.parse().ok()) {
            Some(pages) if pages > 1 => pages,
            _ => {
                eprintln!("error: --pages takes a number of pages, at least 2");
                return ExitCode::FAILURE;
            }
        },
        None => PAGES,
    };
    match run(pages, broken_link) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&*error);
            ExitCode::FAILURE
        }
    }
}

/// Crawls the simulated site with the pipeline, prints the report, then does the same work
/// sequentially and compares. With `broken_link`, one URL has no page, and the run fails.
fn run(pages: usize, broken_link: bool) -> Result<(), Box<dyn Error>> {
    let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let site = Arc::new(Site::generate(pages, WORDS_PER_PAGE));
    let mut urls = site.urls();
    if broken_link {
        urls.insert(pages / 2, "/pages/missing".to_owned());
    }
    println!("Crawling {} URLs of a simulated site.", urls.len());
    println!("No network is used: each fetch sleeps 2-8 ms in place of a network round trip.");
    println!(
        "Pipeline: fetch ({FETCH_WORKERS} workers) | analyse ({cores} workers, one per core) \
         | summarise (join)\n"
    );

    let started = Instant::now();
    // The last stage is a single join, so the run has one output: the report, or the
    // error that stopped the run.
    // `progress()` draws a line per stage while it runs, on a terminal only.
    let mut output = crawl(Arc::clone(&site), cores)
        .feed(urls.clone())
        .progress();
    let report = output
        .next()
        .ok_or("the pipeline ended without a report")??;
    // The run ends when its output does: then its figures are final.
    if let Some(extra) = output.next() {
        extra?;
        return Err("the pipeline produced more than one report".into());
    }
    let pipelined = started.elapsed();
    print!("{report}");

    let (sequential_report, sequential) = crawl_sequentially(&site, &urls)?;
    if sequential_report != report {
        return Err("the sequential run produced a different report".into());
    }
    println!("\nPipeline:   {:>6.2} s", pipelined.as_secs_f64());
    println!(
        "Sequential: {:>6.2} s  (waiting on fetches {:.2} s, computing {:.2} s; same report)",
        sequential.total().as_secs_f64(),
        sequential.fetch.as_secs_f64(),
        sequential.compute.as_secs_f64(),
    );
    println!(
        "Speed-up:   {:>6.1}x",
        sequential.total().as_secs_f64() / pipelined.as_secs_f64()
    );
    // Where the pipeline's time went, measured: which stage is CPU-bound, which waits,
    // which is the bottleneck, and what to change.
    println!("\n{}", output.report());

    // The same crawl with the worker counts left to the run: it measures each stage as it
    // goes and sets its workers (see `auto_workers`).
    let started = Instant::now();
    let mut tuned = crawl_tuned(Arc::clone(&site)).feed(urls).progress();
    let tuned_report = tuned
        .next()
        .ok_or("the tuned run ended without a report")??;
    if tuned.next().is_some() || tuned_report != report {
        return Err("the tuned run produced a different report".into());
    }
    println!(
        "Tuned by the run (auto_workers): {:.2} s, against {:.2} s with the counts set by \
         hand; same report\n",
        started.elapsed().as_secs_f64(),
        pipelined.as_secs_f64()
    );
    println!("{}", tuned.report());
    Ok(())
}

/// [`crawl`] with no worker counts: `auto_workers(max)` lets the run choose them.
fn crawl_tuned(site: Arc<Site>) -> Pipeline<String, Report> {
    let fetch = try_task(move |url: String| site.fetch(&url))
        .name("fetch")
        .auto_workers(128)
        .throttle(PAGES_AWAITING_ANALYSIS);
    fetch | task(analyse).auto_workers(16) | task(summarise::<Upstream<PageStats>>).join()
}

/// The crawl as a pipeline from URLs to one report. A function that returns a pipeline is
/// a reusable sub-pipeline: the caller composes it, feeds it, or runs it many times.
///
/// `analyse` and `summarise` are plain functions, so their stages, and any error from
/// them, carry their names; the closure that fetches is named explicitly.
fn crawl(site: Arc<Site>, cores: usize) -> Pipeline<String, Report> {
    let fetch = try_task(move |url: String| site.fetch(&url))
        .name("fetch")
        .workers(FETCH_WORKERS)
        .throttle(PAGES_AWAITING_ANALYSIS);
    fetch | task(analyse).workers(cores) | task(summarise::<Upstream<PageStats>>).join()
}

/// Time spent in each step of the sequential run.
struct SequentialTimes {
    fetch: Duration,
    compute: Duration,
}

impl SequentialTimes {
    fn total(&self) -> Duration {
        self.fetch + self.compute
    }
}

/// The same work as [`crawl`], one page after another on the calling thread.
fn crawl_sequentially(
    site: &Site,
    urls: &[String],
) -> Result<(Report, SequentialTimes), FetchError> {
    let mut times = SequentialTimes {
        fetch: Duration::ZERO,
        compute: Duration::ZERO,
    };
    let mut stats = Vec::with_capacity(urls.len());
    for url in urls {
        let started = Instant::now();
        let page = site.fetch(url)?;
        times.fetch += started.elapsed();
        let started = Instant::now();
        stats.push(analyse(page));
        times.compute += started.elapsed();
    }
    let started = Instant::now();
    let report = summarise(stats.into_iter());
    times.compute += started.elapsed();
    Ok((report, times))
}

// ---------------------------------------------------------------------------------------
// The simulated site.

/// A web site held in memory: URL → HTML.
struct Site {
    pages: HashMap<String, String>,
}

/// A fetched page.
struct Page {
    url: String,
    html: String,
}

/// A failed fetch: the site has no page at this URL.
#[derive(Debug)]
struct FetchError {
    url: String,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "404 Not Found: {}", self.url)
    }
}

impl Error for FetchError {}

impl Site {
    /// Generates `pages` pages of about `words` words each. The generator is seeded, so
    /// every run crawls the same site.
    fn generate(pages: usize, words: usize) -> Site {
        let mut rng = SplitMix64(0x5EED);
        let vocabulary = Vocabulary::new();
        let mut previous: Vec<&'static str> = Vec::new();
        let mut site = HashMap::with_capacity(pages);
        for number in 0..pages {
            let text = if number % MIRROR_EVERY == MIRROR_EVERY - 1 {
                mirror(&previous, &mut rng, &vocabulary)
            } else {
                (0..words).map(|_| vocabulary.sample(&mut rng)).collect()
            };
            site.insert(page_url(number), render_html(&text, &mut rng));
            previous = text;
        }
        Site { pages: site }
    }

    /// Every URL on the site, in page order.
    fn urls(&self) -> Vec<String> {
        (0..self.pages.len()).map(page_url).collect()
    }

    /// Fetches one page. It blocks for a few milliseconds, as a request over the network
    /// would.
    fn fetch(&self, url: &str) -> Result<Page, FetchError> {
        thread::sleep(latency(url));
        match self.pages.get(url) {
            Some(html) => Ok(Page {
                url: url.to_owned(),
                html: html.clone(),
            }),
            None => Err(FetchError {
                url: url.to_owned(),
            }),
        }
    }
}

fn page_url(number: usize) -> String {
    format!("/pages/{number:04}")
}

/// The simulated round trip for `url`: 2 to 8 ms, the same on every run.
fn latency(url: &str) -> Duration {
    Duration::from_millis(2 + fnv1a(url.as_bytes()) % 7)
}

/// A copy of `text` with five words replaced: a mirror of a page, with small edits.
fn mirror(
    text: &[&'static str],
    rng: &mut SplitMix64,
    vocabulary: &Vocabulary,
) -> Vec<&'static str> {
    let mut copy = text.to_vec();
    for _ in 0..5 {
        let at = rng.below(copy.len() as u64) as usize;
        copy[at] = vocabulary.sample(rng);
    }
    copy
}

/// Lays `words` out as an HTML page: paragraphs of 3 to 7 sentences of 6 to 19 words.
fn render_html(words: &[&str], rng: &mut SplitMix64) -> String {
    let mut html = String::from("<html><body>\n");
    let mut rest = words;
    while !rest.is_empty() {
        html.push_str("<p>");
        for _ in 0..3 + rng.below(5) {
            let length = rest.len().min(6 + rng.below(14) as usize);
            let (sentence, tail) = rest.split_at(length);
            if let Some((first, others)) = sentence.split_first() {
                html.push_str(&capitalised(first));
                for word in others {
                    html.push(' ');
                    html.push_str(word);
                }
                html.push_str(". ");
            }
            rest = tail;
        }
        html.push_str("</p>\n");
    }
    html.push_str("</body></html>\n");
    html
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// The words the generator draws from, most frequent first.
const WORDS: &str = "
    data pipeline worker queue thread stage task stream batch latency memory error result
    input output network request server cache buffer signal channel process schedule
    throughput parallel concurrent bound limit order merge split filter join branch source
    sink record event message packet socket file disk page index query table column value
    key hash lock atomic clock timer deadline retry backoff timeout cancel drop panic trace
    metric counter gauge sample window shard replica leader follower vote term log snapshot
    compact flush commit rollback version schema field struct enum trait closure iterator
    future runtime executor pool spawn yield await borrow lifetime owner";

/// Draws words with Zipf's law for weights, as in natural text: the k-th word of [`WORDS`]
/// comes up about 1/k as often as the first.
struct Vocabulary {
    words: Vec<&'static str>,
    /// `cumulative[k]` is the total weight of the first `k + 1` words.
    cumulative: Vec<f64>,
}

impl Vocabulary {
    fn new() -> Vocabulary {
        let words: Vec<&'static str> = WORDS.split_whitespace().collect();
        let mut total = 0.0;
        let cumulative = (1..=words.len())
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Vocabulary { words, cumulative }
    }

    fn sample(&self, rng: &mut SplitMix64) -> &'static str {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = rng.unit() * total;
        let rank = self.cumulative.partition_point(|&c| c < target);
        self.words[rank.min(self.words.len() - 1)]
    }
}

/// A small, seedable pseudo-random generator (SplitMix64), so the example needs no crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------
// Analysis: the CPU-bound part.

/// What the report needs from one page.
struct PageStats {
    url: String,
    word_counts: HashMap<String, u64>,
    /// A SimHash of the page's three-word shingles: near-identical pages get fingerprints
    /// that differ in few bits.
    fingerprint: u64,
}

/// Extracts the text of a page, counts its words and fingerprints it.
fn analyse(page: Page) -> PageStats {
    let text = visible_text(&page.html).to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    PageStats {
        url: page.url,
        word_counts: count_words(&words),
        fingerprint: simhash(&words),
    }
}

/// The text of an HTML page outside its tags. (Enough for generated pages; real HTML
/// deserves a real parser.)
fn visible_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

fn count_words(words: &[&str]) -> HashMap<String, u64> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for &word in words {
        match counts.get_mut(word) {
            Some(count) => *count += 1,
            None => {
                counts.insert(word.to_owned(), 1);
            }
        }
    }
    counts
}

/// Charikar's SimHash over the page's distinct three-word shingles: each shingle's hash
/// votes on each of the 64 bits, and the fingerprint keeps the majority. Counting each
/// shingle once stops the commonest phrases, present on every page, from outvoting the
/// rest.
fn simhash(words: &[&str]) -> u64 {
    let mut shingles: Vec<u64> = words
        .windows(3)
        .map(|shingle| {
            shingle.iter().fold(FNV_OFFSET, |hash, word| {
                fnv1a_continue(fnv1a_continue(hash, word.as_bytes()), b" ")
            })
        })
        .collect();
    shingles.sort_unstable();
    shingles.dedup();

    let mut votes = [0i64; 64];
    for hash in shingles {
        for (bit, vote) in votes.iter_mut().enumerate() {
            *vote += if (hash >> bit) & 1 == 1 { 1 } else { -1 };
        }
    }
    votes
        .iter()
        .enumerate()
        .filter(|(_, &vote)| vote > 0)
        .fold(0, |fingerprint, (bit, _)| fingerprint | 1 << bit)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(FNV_OFFSET, bytes)
}

fn fnv1a_continue(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

// ---------------------------------------------------------------------------------------
// The report.

/// What the crawl found. Independent of the order pages arrive in, so the pipeline and
/// the sequential loop must produce equal reports.
#[derive(Debug, PartialEq)]
struct Report {
    pages: usize,
    words: u64,
    distinct_words: usize,
    /// The most frequent words, most frequent first.
    top_words: Vec<(String, u64)>,
    /// Pairs of near-duplicate pages and how many fingerprint bits they differ in.
    near_duplicates: Vec<(String, String, u32)>,
}

/// Folds every page's statistics into one report. Generic over the iterator, so the
/// pipeline's join stage (an `Upstream`) and the sequential loop (a `Vec`) share it.
fn summarise<I: Iterator<Item = PageStats>>(pages: I) -> Report {
    let mut totals: HashMap<String, u64> = HashMap::new();
    let mut fingerprints = Vec::new();
    for page in pages {
        for (word, count) in page.word_counts {
            *totals.entry(word).or_default() += count;
        }
        fingerprints.push((page.url, page.fingerprint));
    }
    fingerprints.sort();

    let mut top_words: Vec<(String, u64)> = totals.iter().map(|(w, &c)| (w.clone(), c)).collect();
    top_words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_words.truncate(TOP_WORDS);

    Report {
        pages: fingerprints.len(),
        words: totals.values().sum(),
        distinct_words: totals.len(),
        top_words,
        near_duplicates: near_duplicates(&fingerprints),
    }
}

/// Every pair of pages whose fingerprints differ in at most [`NEAR_DUPLICATE_BITS`] bits.
fn near_duplicates(fingerprints: &[(String, u64)]) -> Vec<(String, String, u32)> {
    let mut pairs = Vec::new();
    for (i, (url_a, a)) in fingerprints.iter().enumerate() {
        for (url_b, b) in &fingerprints[i + 1..] {
            let distance = (a ^ b).count_ones();
            if distance <= NEAR_DUPLICATE_BITS {
                pairs.push((url_a.clone(), url_b.clone(), distance));
            }
        }
    }
    pairs
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Pages: {}   words: {}   distinct words: {}",
            self.pages, self.words, self.distinct_words
        )?;
        writeln!(f, "Most frequent words:")?;
        for (word, count) in &self.top_words {
            let share = 100.0 * *count as f64 / self.words.max(1) as f64;
            writeln!(f, "  {word:<12} {count:>9}  ({share:.1}%)")?;
        }
        writeln!(
            f,
            "Near-duplicate pages (fingerprints at most {NEAR_DUPLICATE_BITS} bits apart): {}",
            self.near_duplicates.len()
        )?;
        for (a, b, distance) in self.near_duplicates.iter().take(5) {
            writeln!(f, "  {a} ~ {b}  (distance {distance})")?;
        }
        if self.near_duplicates.len() > 5 {
            writeln!(f, "  ...")?;
        }
        Ok(())
    }
}

/// Prints an error and every cause under it. `pyper::Error` names the stage and the item;
/// the task's own error is its `source()`.
fn print_error(error: &dyn Error) {
    eprintln!("error: {error}");
    let mut cause = error.source();
    while let Some(error) = cause {
        eprintln!("  caused by: {error}");
        cause = error.source();
    }
}
