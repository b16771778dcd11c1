//! Fetches 500 records from an HTTP server with async tasks, parses them on threads, and
//! aggregates them: IO-bound, CPU-bound and a join in one pipeline.
//!
//! The server is real, not simulated: the example starts it on loopback (an ephemeral port)
//! and every record is a TCP connection and an HTTP/1.1 exchange, so it runs offline. The
//! server waits 20 ms before each answer, as a slow backend would.
//!
//! Run with `cargo run --release --example async_fetch --features async`.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use pyper::{task, try_async_task, OutputStream, Upstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const RECORDS: u32 = 500;
const SERVER_DELAY: Duration = Duration::from_millis(20);
const IN_FLIGHT: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(serve(listener));
    println!("Serving {RECORDS} records on http://{address}, {SERVER_DELAY:?} per answer.");

    let fetch = try_async_task(move |id: u32| fetch(address, id))
        .workers(IN_FLIGHT)
        .name("fetch");
    let parse = try_async_task(|body: String| async move { parse(&body) }).name("parse");
    let checksum = task(checksum).workers(2);
    let summary = task(summarise).join();
    let pipeline = fetch | parse | checksum | summary;

    let started = Instant::now();
    let run = pipeline.consume_async(first_summary);
    let summary = run.feed(0..RECORDS).await?;
    let elapsed = started.elapsed();

    println!(
        "Fetched and parsed {} records in {elapsed:.2?}",
        summary.records
    );
    println!("  total value: {}", summary.total);
    println!(
        "  largest:     record {} ({})",
        summary.largest.0, summary.largest.1
    );
    println!("  checksum:    {:016x}", summary.checksum);
    let one_by_one = SERVER_DELAY * RECORDS;
    println!(
        "One request at a time would wait {one_by_one:.2?} on the server alone; \
         {IN_FLIGHT} in flight: {:.1}x faster.",
        one_by_one.as_secs_f64() / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The one output of the pipeline, or its error.
async fn first_summary(outputs: OutputStream<Summary>) -> Result<Summary, pyper::Error> {
    let summaries: Vec<Summary> = outputs.try_collect().await?;
    Ok(summaries
        .into_iter()
        .next()
        .expect("a join stage yields one summary"))
}

/// A record as the server sends it.
#[derive(Debug)]
struct Record {
    id: u32,
    value: u64,
    payload: String,
}

#[derive(Debug)]
struct Summary {
    records: u32,
    total: u64,
    largest: (u32, u64),
    checksum: u64,
}

/// Async IO: one HTTP GET over a fresh connection.
async fn fetch(address: std::net::SocketAddr, id: u32) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    let request =
        format!("GET /records/{id} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("a response without a body"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("record {id}: {head}")));
    }
    Ok(body.to_owned())
}

/// Parses `id,value,payload`.
fn parse(body: &str) -> Result<Record, String> {
    let mut fields = body.splitn(3, ',');
    let mut next = |name: &str| {
        fields
            .next()
            .ok_or_else(|| format!("no {name} in {body:?}"))
    };
    let id = next("id")?.parse().map_err(|e| format!("bad id: {e}"))?;
    let value = next("value")?
        .parse()
        .map_err(|e| format!("bad value: {e}"))?;
    let payload = next("payload")?.to_owned();
    Ok(Record { id, value, payload })
}

/// CPU-bound: an FNV-1a hash of the payload, iterated to give it some weight.
fn checksum(record: Record) -> (Record, u64) {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for _ in 0..200 {
        for byte in record.payload.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (record, hash)
}

fn summarise(records: Upstream<(Record, u64)>) -> Summary {
    let mut summary = Summary {
        records: 0,
        total: 0,
        largest: (0, 0),
        checksum: 0,
    };
    for (record, hash) in records {
        summary.records += 1;
        summary.total += record.value;
        if record.value > summary.largest.1 {
            summary.largest = (record.id, record.value);
        }
        summary.checksum = summary.checksum.wrapping_add(hash);
    }
    summary
}

/// The server: `GET /records/{id}` answers `id,value,payload` after `SERVER_DELAY`.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(error) = answer(stream).await {
                eprintln!("server: {error}");
            }
        });
    }
}

async fn answer(stream: TcpStream) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut request_line = String::new();
    stream.read_line(&mut request_line).await?;
    // Skip the headers.
    let mut line = String::new();
    while stream.read_line(&mut line).await? > 2 {
        line.clear();
    }
    tokio::time::sleep(SERVER_DELAY).await;
    let id: Option<u32> = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/records/"))
        .and_then(|id| id.parse().ok());
    let response = match id {
        Some(id) => {
            let value = u64::from(id) * 7 % 1000;
            let body = format!(
                "{id},{value},{}",
                format!("payload of record {id} ").repeat(20)
            );
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
    };
    stream.get_mut().write_all(response.as_bytes()).await
}
