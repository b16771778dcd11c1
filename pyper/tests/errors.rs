//! The error surface: stage names, item positions, Display, the source chain, downcasts,
//! panic messages, errors from the input iterator, configuration errors, and the rule that
//! an error never looks like a clean end.

mod common;

use std::error::Error as _;
use std::fmt;

use common::with_timeout;
use pyper::{task, try_task, BoxError, Error, ErrorKind, Pipeline, Upstream};

#[derive(Debug, PartialEq, Eq)]
struct Invalid(u64);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid value {}", self.0)
    }
}

impl std::error::Error for Invalid {}

/// An error with a cause of its own, to check that the chain is kept whole.
#[derive(Debug)]
struct Wrapped(Invalid);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not process")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

fn reject_seven(x: u64) -> Result<u64, Invalid> {
    if x == 7 {
        Err(Invalid(x))
    } else {
        Ok(x)
    }
}

fn first_error<O: Send + 'static>(out: impl Iterator<Item = Result<O, Error>>) -> Error {
    let results: Vec<Result<O, Error>> = out.collect();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(errors, 1, "exactly one error per failed run");
    let last = results
        .into_iter()
        .last()
        .expect("a failed run yields its error");
    last.err().expect("the error is the last item")
}

#[test]
fn default_stage_names_are_the_function_name_or_the_position() {
    let err = first_error(try_task(parse).feed(["1".into(), "x".into()]));
    assert_eq!(err.stage(), Some("parse"));
    let p = task(|x: u64| x) | task(|x: u64| x) | try_task(reject_seven);
    assert_eq!(first_error(p.feed(0..10)).stage(), Some("reject_seven"));
    let p = task(|x: u64| x) | try_task(|x: u64| reject_seven(x));
    assert_eq!(first_error(p.feed(0..10)).stage(), Some("stage 2"));
    // A method path is named after the method.
    let p = task(|x: u64| x.to_string()) | task(String::into_bytes) | try_task(String::from_utf8);
    let out: Vec<String> = p.feed([12u64, 345]).map(Result::unwrap).collect();
    assert_eq!(out, ["12", "345"]);
    let p = task(|x: u64| vec![x as u8, 0xff]) | try_task(String::from_utf8);
    assert_eq!(first_error(p.run(65)).stage(), Some("from_utf8"));
}

#[test]
fn custom_stage_names_win_and_count_positions_across_nesting() {
    let inner: Pipeline<u64, u64> = task(|x: u64| x) | try_task(reject_seven).name("check");
    let p = task(|x: u64| x).name("first") | inner.clone();
    let err = first_error(p.feed(0..10));
    assert_eq!(err.stage(), Some("check"));
    // Unnamed closures are numbered by their position in the whole pipeline.
    let unnamed = task(|x: u64| x) | try_task(|x: u64| reject_seven(x));
    let p = task(|x: u64| x) | (task(|x: u64| x) | unnamed);
    assert_eq!(first_error(p.feed(0..10)).stage(), Some("stage 4"));
}

#[test]
fn item_is_the_position_in_the_failing_stages_input() {
    let err = first_error(try_task(reject_seven).feed(0..100));
    assert_eq!(err.item(), Some(7));
    // With several workers, still the input position.
    let err = first_error(try_task(reject_seven).workers(4).feed(0..100));
    assert_eq!(err.item(), Some(7));
    let err = first_error(try_task(reject_seven).workers(4).ordered().feed(0..100));
    assert_eq!(err.item(), Some(7));
    // Behind a branch, positions count the branch's elements: 10 inputs × 3 elements, and
    // value 7 first appears as element 0 of input 7, at position 21.
    let p = task(|x: u64| [x, 100 + x, 200 + x]).branch() | try_task(reject_seven);
    assert_eq!(first_error(p.feed(0..10)).item(), Some(21));
    // A branch's failure is reported at the branch's input item.
    let branch = task(|x: u64| {
        let element = if x == 5 { Err(Invalid(x)) } else { Ok(x) };
        [Ok(x), element]
    });
    let p = task(|x: u64| x) | branch.try_branch();
    assert_eq!(first_error(p.feed(0..10)).item(), Some(5));
    // A join task receives the whole stream, so no single item is to blame.
    let join = try_task(|xs: Upstream<u64>| -> Result<u64, Invalid> {
        for x in xs {
            reject_seven(x)?;
        }
        Ok(0)
    })
    .join();
    let err = first_error(join.feed(0..10));
    assert_eq!(err.item(), None);
    assert_eq!(err.to_string(), "stage `stage 1` failed");
}

#[test]
fn display_strings() {
    let err = first_error(try_task(parse).feed(["1".into(), "2".into(), "3".into(), "x".into()]));
    assert_eq!(err.to_string(), "stage `parse` failed on item 3");
    let boom = task(|x: u64| -> u64 { panic!("bad item {x}") }).name("boom");
    let err = first_error(boom.feed(2..5));
    assert_eq!(
        err.to_string(),
        "stage `boom` panicked on item 0: bad item 2"
    );
    let err = first_error(task(|x: u64| x).workers(0).run(1));
    assert_eq!(
        err.to_string(),
        "invalid pipeline configuration in stage `stage 1`: workers must be at least 1"
    );
    // Display leaves the cause to source(), so a chain printer shows each part once.
    let err = first_error(try_task(|x: u64| Err::<u64, _>(Wrapped(Invalid(x)))).run(3));
    let mut chain = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&err);
    while let Some(c) = cause {
        chain.push(c.to_string());
        cause = c.source();
    }
    assert_eq!(
        chain,
        [
            "stage `stage 1` failed on item 0",
            "could not process",
            "invalid value 3"
        ]
    );
    // Debug is available and mentions the stage.
    assert!(format!("{err:?}").contains("stage 1"));
}

#[test]
fn source_downcast_and_into_source() {
    let err = first_error(try_task(reject_seven).feed(0..10));
    assert_eq!(err.kind(), ErrorKind::Failed);
    assert_eq!(err.downcast_ref::<Invalid>(), Some(&Invalid(7)));
    assert!(err.downcast_ref::<std::num::ParseIntError>().is_none());
    assert!(err.panic_message().is_none());
    let source = err.source().unwrap();
    assert_eq!(source.downcast_ref::<Invalid>(), Some(&Invalid(7)));
    let boxed: BoxError = err.into_source().unwrap();
    assert_eq!(*boxed.downcast::<Invalid>().unwrap(), Invalid(7));
    // Panics and configuration errors have no source.
    let err = first_error(task(|_: u64| -> u64 { panic!("p") }).run(0));
    assert!(err.source().is_none() && err.downcast_ref::<Invalid>().is_none());
    assert!(err.into_source().is_none());
    let err = first_error(task(|x: u64| x).workers(0).run(0));
    assert!(err.source().is_none());
    // The error is Send + Sync + 'static, so `?` into a boxed error works.
    fn uses_question_mark() -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let mut total = 0;
        for x in try_task(reject_seven).feed(0..10) {
            total += x?;
        }
        Ok(total)
    }
    let err = uses_question_mark().unwrap_err();
    let err = err.downcast::<Error>().unwrap();
    assert_eq!(err.item(), Some(7));
}

#[test]
fn string_errors_like_anyhow() {
    let failing = try_task(|_: u32| Err::<u32, String>("bad".into())).name("strings");
    let err = first_error(failing.run(1));
    assert_eq!(err.kind(), ErrorKind::Failed);
    assert_eq!(err.stage(), Some("strings"));
    assert_eq!(err.source().unwrap().to_string(), "bad");
    assert_eq!(err.into_source().unwrap().to_string(), "bad");
    let err = first_error(try_task(|_: u32| Err::<u32, &str>("static")).run(1));
    assert_eq!(err.source().unwrap().to_string(), "static");
    let err = first_error(try_task(|_: u32| Err::<u32, BoxError>("boxed".into())).run(1));
    assert_eq!(err.source().unwrap().to_string(), "boxed");
}

#[test]
fn panic_messages() {
    let err = first_error(task(|_: u64| -> u64 { panic!("static str") }).run(0));
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.panic_message(), Some("static str"));
    let err = first_error(task(|x: u64| -> u64 { panic!("formatted {x}") }).run(9));
    assert_eq!(err.panic_message(), Some("formatted 9"));
    let err = first_error(task(|_: u64| -> u64 { std::panic::panic_any(42u8) }).run(0));
    assert_eq!(err.panic_message(), Some("Box<dyn Any>"));
    // Panics in a lazy branch iterator, in a join and in an ordered stage.
    let lazy = task(|n: u64| (0..n).map(|i| if i == 3 { panic!("element {i}") } else { i }));
    let err = first_error(lazy.branch().run(10));
    assert_eq!(
        (err.panic_message(), err.item()),
        (Some("element 3"), Some(0))
    );
    let join = task(|xs: Upstream<u64>| xs.map(|x| 10 / (x - 5)).sum::<u64>()).join();
    let err = first_error(join.feed(0..10));
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.panic_message().unwrap().contains("overflow"), "{err}");
    let ordered = task(|x: u64| if x == 50 { panic!("fifty") } else { x })
        .workers(3)
        .ordered();
    let err = first_error(ordered.feed(0..100));
    assert_eq!((err.panic_message(), err.item()), (Some("fifty"), Some(50)));
}

#[test]
fn a_panicking_input_iterator_is_the_input_stages_error() {
    let input = (0..10u64).map(|x| {
        if x == 3 {
            panic!("input broke at {x}")
        } else {
            x
        }
    });
    let p = task(|x: u64| x) | task(|x: u64| x);
    let mut out = p.feed(input);
    let mut ok = Vec::new();
    let err = loop {
        match out.next().expect("the run ends with the error") {
            Ok(x) => ok.push(x),
            Err(err) => break err,
        }
    };
    assert!(out.next().is_none());
    assert!(ok.iter().all(|&x| x < 3), "{ok:?}");
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.stage(), Some("input"));
    assert_eq!(err.panic_message(), Some("input broke at 3"));
    // The engine reports the position of the item the iterator failed to produce. (The
    // docs of `Error::item` say it is unknown for the input iterator.)
    assert_eq!(err.item(), Some(3));
    assert_eq!(
        err.to_string(),
        "stage `input` panicked on item 3: input broke at 3"
    );
}

#[test]
fn an_error_never_looks_like_a_clean_end() {
    // An error in the first stage of a long pipeline must always come out as an Err, never
    // as a shorter stream: every run, whatever the interleaving.
    with_timeout(60, || {
        for round in 0..200u64 {
            let fail_at = round % 7;
            let mut p: Pipeline<u64, u64> =
                try_task(
                    move |x: u64| {
                        if x == fail_at {
                            Err(Invalid(x))
                        } else {
                            Ok(x)
                        }
                    },
                )
                .into();
            for stage in 0..8 {
                p = p | task(|x: u64| x).workers(1 + stage % 3);
            }
            let results: Vec<Result<u64, Error>> = p.feed(0..10).collect();
            let last = results.last().expect("never an empty, 'clean' output");
            let err = last.as_ref().expect_err("the last item is the error");
            assert_eq!(err.stage(), Some("stage 1"), "round {round}");
            assert_eq!(err.item(), Some(fail_at));
            assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
            assert!(
                results.len() as u64 <= fail_at + 1,
                "nothing after item {fail_at}"
            );
        }
    });
}

#[test]
fn an_err_element_of_try_branch_fails_the_run() {
    let lines = task(|n: u64| (0..n).map(move |i| if i == 4 { Err(Invalid(i)) } else { Ok(i) }))
        .try_branch()
        .name("lines");
    let mut out = lines.feed([3, 3, 10, 3]);
    let ok: Vec<u64> = out.by_ref().map_while(Result::ok).collect();
    // Inputs 0 and 1 give 0..3 each; input 2 gives 0..4 and then fails.
    assert!(ok.len() <= 10, "{ok:?}");
    assert!(out.next().is_none(), "the error was the last item");
    let err = first_error(lines.feed([3, 3, 10, 3]));
    assert_eq!(err.stage(), Some("lines"));
    assert_eq!(err.item(), Some(2));
    assert_eq!(err.downcast_ref::<Invalid>(), Some(&Invalid(4)));
    assert_eq!(err.to_string(), "stage `lines` failed on item 2");
}

#[test]
fn configuration_errors_start_nothing() {
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let input = {
        let pulled = std::sync::Arc::clone(&pulled);
        (0..10u64).inspect(move |_| {
            pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let p = task(|x: u64| x) | task(|x: u64| x).workers(0).name("zero") | task(|x: u64| x);
    let results: Vec<_> = p.feed(input).collect();
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert_eq!(
        (err.kind(), err.stage(), err.item()),
        (ErrorKind::Config, Some("zero"), None)
    );
    assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The first invalid stage is the one reported.
    let p = task(|x: u64| x).workers(0).name("a") | task(|x: u64| x).workers(0).name("b");
    assert_eq!(first_error(p.run(0)).stage(), Some("a"));
    // join().join() on a join stage deep in a pipeline.
    let twice = task(|xs: Upstream<Upstream<u64>>| xs.count()).join().join();
    let p = task(|x: u64| x) | twice;
    let err = first_error(p.feed(0..3));
    assert_eq!(
        (err.kind(), err.stage()),
        (ErrorKind::Config, Some("stage 2"))
    );
    assert_eq!(
        err.to_string(),
        "invalid pipeline configuration in stage `stage 2`: join() was applied twice"
    );
    // A zero-worker join stage is invalid too.
    let join = task(|xs: Upstream<u64>| xs.count()).join().workers(0);
    assert_eq!(first_error(join.feed(0..3)).kind(), ErrorKind::Config);
}

#[test]
fn errors_reach_a_consumer() {
    let run = (task(|x: u64| x) | try_task(reject_seven))
        .consume(|out| out.collect::<Result<Vec<u64>, Error>>());
    assert_eq!(run.feed(0..5).unwrap(), [0, 1, 2, 3, 4]);
    let err = run.feed(0..10).unwrap_err();
    assert_eq!(err.downcast_ref::<Invalid>(), Some(&Invalid(7)));
}

#[test]
fn a_stage_name_the_os_cannot_take_is_an_error_not_a_panic() {
    let p = task(|x: u64| x) | task(|x: u64| x).name("bad\0name");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.run(1)
            .map(|r| r.map_err(|e| e.kind()))
            .collect::<Vec<_>>()
    }));
    let results = outcome.expect("errors come back as values, never as panics");
    assert!(
        matches!(results.last(), Some(Err(_))),
        "a failed launch yields an error: {results:?}"
    );
}
