//! A task is a one-stage pipeline in its own right: it has the same `run`, `feed` and
//! `consume` methods as a [`Pipeline`](pyper::Pipeline).

mod common;

use common::with_timeout;
use pyper::{task, try_task, Output, Pipeline};

fn total(outputs: Output<u64>) -> Result<u64, pyper::Error> {
    outputs.sum()
}

#[test]
fn a_task_consumes_like_a_pipeline() {
    with_timeout(30, || {
        let numbers = task(|n: u64| 0..n).branch();
        let run = numbers.clone().consume(total);
        assert_eq!(run.run(4).unwrap(), 6);
        assert_eq!(run.run(5).unwrap(), 10); // reusable
        assert_eq!(run.feed([2, 3]).unwrap(), 1 + 3);
        // The same as the one-stage pipeline's consumer.
        let pipeline = Pipeline::from(numbers).consume(total);
        assert_eq!(pipeline.run(4).unwrap(), run.run(4).unwrap());
    });
}

#[test]
fn a_task_consumer_receives_the_run_error() {
    with_timeout(30, || {
        let checked = try_task(|x: u64| if x == 3 { Err("three") } else { Ok(x) })
            .name("checked")
            .consume(total);
        assert_eq!(checked.feed(0..3).unwrap(), 3);
        let error = checked.feed(0..10).unwrap_err();
        assert_eq!((error.stage(), error.item()), (Some("checked"), Some(3)));
    });
}
