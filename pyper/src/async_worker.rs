//! The loop of one async worker: the same contract as a thread worker
//! ([`crate::worker`]), with every wait an `.await`.
//!
//! A stage with `workers(n)` runs `n` of these tasks, so `n` futures are in flight. Each
//! worker catches panics of the user's futures (`catch_unwind` around the whole loop, the
//! queue handles outside it), so a panic becomes the run's error before the worker lets
//! go of its queues, exactly as in a thread.

use std::panic::AssertUnwindSafe;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use crate::async_task::AsyncFn;
use crate::queue::{Receiver, Sender};
use crate::run::RunState;
use crate::sequencer::Sequencer;
use crate::sync::Arc;
use crate::upstream::Upstream;
use crate::worker::{
    hand_over_size, report, should_hand_over, BatchLimit, Fault, Stage, StageBody, Stop,
};

/// Runs one async worker of `stage` until its input ends, the run stops, or it fails.
pub(crate) async fn work<I, O>(stage: Arc<Stage<I, O>>, input: Receiver<I>, output: Sender<O>)
where
    I: Send + 'static,
    O: Send + 'static,
{
    let mut current_item = None;
    let mut input = Some(input);
    let result = AssertUnwindSafe(async {
        match &stage.body {
            StageBody::AsyncEach(body, sequencer) => {
                let receiver = input.as_ref().expect("a worker has its input");
                each(&stage, body, sequencer.as_deref(), receiver, &output, &mut current_item)
                    .await
            }
            StageBody::AsyncJoin(body) => {
                // Owned by the join, as in a thread worker: dropping it releases upstream.
                let receiver = input.take().expect("a worker has its input");
                let upstream = Upstream::new(receiver, Arc::clone(&stage.run));
                let mut outlet = AsyncOutlet::new(&output, &stage.run);
                let mut outputs = body(upstream);
                while let Some(item) = outlet.next_of(&mut outputs).await? {
                    outlet.emit(item.map_err(Fault::Failed)?).await?;
                }
                outlet.flush().await.map_err(Fault::from)
            }
            _ => unreachable!("thread stages run on threads"),
        }
    })
    .catch_unwind()
    .await;
    report(&stage, result, current_item);
    drop(output);
}

async fn each<I, O>(
    stage: &Stage<I, O>,
    body: &AsyncFn<I, O>,
    sequencer: Option<&Sequencer<O>>,
    input: &Receiver<I>,
    output: &Sender<O>,
    current_item: &mut Option<u64>,
) -> Result<(), Fault>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let mut outlet = AsyncOutlet::new(output, &stage.run);
    let mut batch = Vec::new();
    let mut limit = BatchLimit::new();
    loop {
        // Whatever is gathered is handed over before the worker waits for input.
        let first = match input.pop_batch_async(&mut batch, limit.get()).now_or_never() {
            Some(first) => first,
            None => {
                outlet.flush().await?;
                input.pop_batch_async(&mut batch, limit.get()).await
            }
        };
        let Some(first) = first else { break };
        let count = batch.len();
        if let Some(sequencer) = sequencer {
            sequencer.wait_turn_async(first).await?;
        }
        let started = limit.start();
        // An ordered stage gathers a batch's outputs apart, to release them in order.
        let mut in_order = Vec::new();
        for (index, item) in (first..).zip(batch.drain(..)) {
            if stage.run.is_cancelled() {
                return Err(Fault::Stop);
            }
            *current_item = Some(index);
            let mut outputs = body(item);
            while let Some(item) = outlet.next_of(&mut outputs).await? {
                let item = item.map_err(Fault::Failed)?;
                match sequencer {
                    Some(_) => in_order.push(item),
                    None => outlet.emit(item).await?,
                }
            }
        }
        limit.adapt(started, count);
        match sequencer {
            Some(sequencer) => {
                let mut ready = sequencer.complete(first, count as u64, in_order)?;
                while let Some(mut batch) = ready {
                    if output.push_all_async(&mut batch).await.is_err() {
                        sequencer.stop();
                        return Err(Fault::Stop);
                    }
                    ready = sequencer.pushed()?;
                }
            }
            None => outlet.flush().await?,
        }
    }
    Ok(())
}

/// [`crate::worker::Outlet`] for async workers.
struct AsyncOutlet<'a, O> {
    output: &'a Sender<O>,
    run: &'a RunState,
    buffer: Vec<O>,
    max: usize,
}

impl<'a, O> AsyncOutlet<'a, O> {
    fn new(output: &'a Sender<O>, run: &'a RunState) -> Self {
        AsyncOutlet {
            output,
            run,
            buffer: Vec::new(),
            max: hand_over_size(output),
        }
    }

    async fn emit(&mut self, item: O) -> Result<(), Stop> {
        if self.run.is_cancelled() {
            return Err(Stop);
        }
        self.buffer.push(item);
        if should_hand_over(&self.buffer, self.max, self.output) {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// The next output of `outputs`, handing over what is gathered first if it is not
    /// ready, so no output waits behind a pending future.
    async fn next_of<T>(
        &mut self,
        outputs: &mut BoxStream<'_, T>,
    ) -> Result<Option<T>, Stop> {
        if let Some(next) = outputs.next().now_or_never() {
            return Ok(next);
        }
        self.flush().await?;
        Ok(outputs.next().await)
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.output
            .push_all_async(&mut self.buffer)
            .await
            .map_err(|_| Stop)
    }
}
