//! Dynamic batching: concurrent requests for one model version are queued,
//! coalesced into one `forward` call (up to `max_batch_size` rows, waiting at
//! most `max_queue_delay` for company), and run by a bounded pool of model
//! instances, each on its own thread with its own TorchScript module (as
//! Triton's instance groups).
//!
//! A full queue refuses new work ([`Error::Overloaded`] → RESOURCE_EXHAUSTED);
//! a request whose deadline passed while queued is answered
//! DEADLINE_EXCEEDED without running; closing the queue (the model version
//! is replaced or the server stops) lets the instances drain what is queued.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use tch::{CModule, Device, IValue, Tensor};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::retrieval::Retrieval;

/// How one model version batches and how many instances run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows in one `forward` call (a single larger request still runs alone).
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Most requests waiting; more are refused with RESOURCE_EXHAUSTED.
    pub max_queue_size: usize,
    /// Model instances (threads, each with its own module) per version.
    pub instances: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 256,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 4096,
            instances: 2,
        }
    }
}

/// Metrics one batcher records, with their labels already applied.
#[derive(Clone)]
pub struct BatchMetrics {
    /// Time from enqueue to the start of the batch.
    pub queue: Histogram,
    /// Time in `forward`.
    pub inference: Histogram,
    /// Rows per `forward`.
    pub batch_size: Histogram,
    /// Successful `forward` calls.
    pub ok: IntCounter,
    /// Failed `forward` calls.
    pub failed: IntCounter,
}

/// Module outputs for one request.
pub type Outputs = Vec<Tensor>;

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    key: u64,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Outputs>>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue and instances of one model version. Dropping it closes the
/// queue; the instances finish what is queued, then exit.
pub struct Batcher {
    queue: Arc<Queue>,
    config: BatchConfig,
    label: String,
    _instances: Vec<JoinHandle<()>>,
}

/// What a model's `forward` looks like to the batcher.
pub struct Signature {
    /// Per input: true if its first dimension is the batch (concatenated),
    /// false if it is shared by the batch (taken from the first request;
    /// requests batch together only when their `key`s are equal).
    pub batched: Vec<bool>,
    /// Number of output tensors.
    pub outputs: usize,
    /// For a recommend module that exports its user tower and items: the
    /// index that scores the items in place of `forward`'s matrix product.
    pub retrieval: Option<Arc<Retrieval>>,
}

impl Batcher {
    /// Starts `config.instances` threads, each running a module from `load`.
    pub fn start(
        label: String,
        config: BatchConfig,
        signature: Signature,
        metrics: BatchMetrics,
        device: Device,
        mut load: impl FnMut() -> Result<CModule>,
    ) -> Result<Self> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
        });
        let signature = Arc::new(signature);
        let mut instances = Vec::new();
        for i in 0..config.instances.max(1) {
            let module = load()?;
            let worker = Worker {
                queue: queue.clone(),
                config,
                signature: signature.clone(),
                metrics: metrics.clone(),
                device,
                label: label.clone(),
                module,
            };
            let handle = std::thread::Builder::new()
                .name(format!("infer-{label}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::Internal(format!("cannot start an inference thread: {e}")))?;
            instances.push(handle);
        }
        Ok(Self {
            queue,
            config,
            label,
            _instances: instances,
        })
    }

    /// Queues one request: `inputs` in `forward` order, `rows` the size of
    /// their batch dimension, `key` equal for requests whose shared inputs
    /// are equal. The receiver yields the outputs, sliced to this request.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        key: u64,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<Outputs>>> {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.queue.lock();
        if state.closed {
            return Err(Error::Unavailable(format!(
                "model {} is being replaced or stopped; retry",
                self.label
            )));
        }
        if state.jobs.len() >= self.config.max_queue_size {
            return Err(Error::Overloaded(format!(
                "model {}: {} requests already queued (max_queue_size); retry later",
                self.label,
                state.jobs.len()
            )));
        }
        state.jobs.push_back(Job {
            inputs,
            rows,
            key,
            enqueued: Instant::now(),
            deadline,
            reply,
        });
        drop(state);
        // One waiting instance is enough: every waiter runs the same checks
        // (work queued? window over or batch full?), so whichever wakes takes
        // the batch when it is due, and passes the wake-up on if work is left.
        self.queue.ready.notify_one();
        Ok(receiver)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.lock().jobs.len()
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

struct Worker {
    queue: Arc<Queue>,
    config: BatchConfig,
    signature: Arc<Signature>,
    metrics: BatchMetrics,
    device: Device,
    label: String,
    module: CModule,
}

impl Worker {
    fn run(self) {
        while let Some(batch) = self.next_batch() {
            self.execute(batch);
        }
    }

    /// Rows queued that could join a batch led by the first job.
    fn batchable_rows(&self, jobs: &VecDeque<Job>) -> usize {
        let Some(first) = jobs.front() else { return 0 };
        jobs.iter()
            .filter(|j| j.key == first.key)
            .map(|j| j.rows)
            .sum()
    }

    /// Waits for work, lets the batch window pass (or the batch fill), and
    /// takes a batch; None once the queue is closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut state = self.queue.lock();
        loop {
            while state.jobs.is_empty() {
                if state.closed {
                    return None;
                }
                state = self
                    .queue
                    .ready
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            let window_end = state.jobs[0].enqueued + self.config.max_queue_delay;
            loop {
                let now = Instant::now();
                if state.jobs.is_empty()
                    || state.closed
                    || now >= window_end
                    || self.batchable_rows(&state.jobs) >= self.config.max_batch_size
                {
                    break;
                }
                state = self
                    .queue
                    .ready
                    .wait_timeout(state, window_end - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let Some(first) = state.jobs.pop_front() else {
                continue; // another instance took it
            };
            let mut rows = first.rows;
            let key = first.key;
            let mut batch = vec![first];
            let mut i = 0;
            while i < state.jobs.len() {
                let job = &state.jobs[i];
                if job.key == key && rows + job.rows <= self.config.max_batch_size {
                    rows += job.rows;
                    batch.extend(state.jobs.remove(i));
                } else {
                    i += 1;
                }
            }
            if !state.jobs.is_empty() {
                self.queue.ready.notify_one();
            }
            return Some(batch);
        }
    }

    fn execute(&self, batch: Vec<Job>) {
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            self.metrics
                .queue
                .observe(now.duration_since(job.enqueued).as_secs_f64());
            if job.deadline.is_some_and(|d| d <= now) {
                let _ = job.reply.send(Err(Error::DeadlineExceeded(format!(
                    "deadline exceeded while queued for model {}",
                    self.label
                ))));
            } else if !job.reply.is_closed() {
                live.push(job);
            }
        }
        if live.is_empty() {
            return;
        }
        let rows: usize = live.iter().map(|j| j.rows).sum();
        self.metrics.batch_size.observe(rows as f64);
        let started = Instant::now();
        let result = self.forward(&live, rows);
        self.metrics
            .inference
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outputs) => {
                self.metrics.ok.inc();
                let mut offset = 0i64;
                for job in live {
                    let n = job.rows as i64;
                    let sliced = if offset == 0 && n == rows as i64 {
                        outputs.iter().map(Tensor::shallow_clone).collect()
                    } else {
                        outputs.iter().map(|t| t.narrow(0, offset, n)).collect()
                    };
                    offset += n;
                    let _ = job.reply.send(Ok(sliced));
                }
            }
            Err(e) => {
                self.metrics.failed.inc();
                let message = e.to_string();
                for job in live {
                    let _ = job.reply.send(Err(Error::Internal(message.clone())));
                }
            }
        }
    }

    fn forward(&self, jobs: &[Job], rows: usize) -> Result<Outputs> {
        let mut args = Vec::with_capacity(self.signature.batched.len());
        for (i, &batched) in self.signature.batched.iter().enumerate() {
            let tensor = if batched && jobs.len() > 1 {
                let parts: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs[i]).collect();
                Tensor::cat(&parts, 0)
            } else {
                jobs[0].inputs[i].shallow_clone()
            };
            args.push(IValue::Tensor(tensor.to_device(self.device)));
        }
        let torch = |source| Error::Torch {
            model: self.label.clone(),
            source,
        };
        let indexed = match &self.signature.retrieval {
            Some(retrieval) => {
                tch::no_grad(|| retrieval.run(&self.module, &args)).map_err(torch)?
            }
            None => None,
        };
        let tensors = match indexed {
            Some(tensors) => tensors,
            None => self.run_forward(&args)?,
        };
        if tensors.len() != self.signature.outputs {
            return Err(Error::Internal(format!(
                "model {} returned {} tensors, its manifest lists {} outputs",
                self.label,
                tensors.len(),
                self.signature.outputs
            )));
        }
        tensors
            .into_iter()
            .map(|t| {
                if t.dim() == 0 || t.size()[0] != rows as i64 {
                    Err(Error::Internal(format!(
                        "model {} returned an output of shape {:?} for a batch of {rows}",
                        self.label,
                        t.size()
                    )))
                } else {
                    Ok(t.to_device(Device::Cpu))
                }
            })
            .collect()
    }

    /// `forward(args)`, its result as a list of tensors.
    fn run_forward(&self, args: &[IValue]) -> Result<Vec<Tensor>> {
        let torch = |source| Error::Torch {
            model: self.label.clone(),
            source,
        };
        let output = tch::no_grad(|| self.module.forward_is(args)).map_err(torch)?;
        Ok(match output {
            // One [N, outputs] tensor stands for that many [N] outputs (a
            // traced module cannot return a tuple).
            IValue::Tensor(t)
                if self.signature.outputs > 1
                    && t.dim() == 2
                    && t.size()[1] == self.signature.outputs as i64 =>
            {
                t.unbind(1)
            }
            IValue::Tensor(t) => vec![t],
            IValue::Tuple(values) | IValue::GenericList(values) => values
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(Error::Internal(format!(
                        "model {} returned a {other:?} where a tensor was expected",
                        self.label
                    ))),
                })
                .collect::<Result<_>>()?,
            IValue::TensorList(values) => values,
            other => {
                return Err(Error::Internal(format!(
                    "model {} returned {other:?}, expected tensors",
                    self.label
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn metrics() -> BatchMetrics {
        let histogram = |name: &str| Histogram::with_opts(HistogramOpts::new(name, name)).unwrap();
        BatchMetrics {
            queue: histogram("queue"),
            inference: histogram("inference"),
            batch_size: histogram("batch_size"),
            ok: IntCounter::new("ok", "ok").unwrap(),
            failed: IntCounter::new("failed", "failed").unwrap(),
        }
    }

    /// A traced module that doubles its one input.
    fn doubler() -> Result<CModule> {
        CModule::create_by_tracing(
            "doubler",
            "forward",
            &[Tensor::zeros([1, 2], tch::kind::FLOAT_CPU)],
            &mut |x| vec![&x[0] * 2.0],
        )
        .map_err(|e| Error::Internal(e.to_string()))
    }

    fn start(config: BatchConfig, metrics: BatchMetrics) -> Batcher {
        let signature = Signature {
            batched: vec![true],
            outputs: 1,
            retrieval: None,
        };
        Batcher::start(
            "doubler".into(),
            config,
            signature,
            metrics,
            Device::Cpu,
            doubler,
        )
        .unwrap()
    }

    /// Many clients against two instances with no queue delay (a request
    /// wakes one idle instance): every request is answered, within a bound
    /// that a lost wake-up would exceed, with its own rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_answered_with_its_own_rows() {
        let batcher = Arc::new(start(BatchConfig::default(), metrics()));
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let rows = 1 + (client + i) % 3;
                        let value = (client * 1000 + i) as f32;
                        let input =
                            Tensor::full([rows as i64, 2], value as f64, tch::kind::FLOAT_CPU);
                        let reply = batcher.submit(vec![input], rows, 0, None).unwrap();
                        let out = tokio::time::timeout(Duration::from_secs(20), reply)
                            .await
                            .expect("no answer: a lost wake-up?")
                            .unwrap()
                            .unwrap();
                        assert_eq!(out[0].size(), vec![rows as i64, 2]);
                        let values = Vec::<f32>::try_from(out[0].flatten(0, 1)).unwrap();
                        assert!(
                            values.iter().all(|&v| v == 2.0 * value),
                            "{values:?} for {value}"
                        );
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
    }

    /// With a queue delay, requests arriving within the window share one
    /// `forward`, which starts as soon as the batch is full.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_within_the_window_share_one_forward() {
        let m = metrics();
        let config = BatchConfig {
            max_batch_size: 6,
            max_queue_delay: Duration::from_secs(30),
            ..Default::default()
        };
        let batcher = start(config, m.clone());
        let replies: Vec<_> = (0..6)
            .map(|i| {
                let input = Tensor::full([1, 2], i as f64, tch::kind::FLOAT_CPU);
                batcher.submit(vec![input], 1, 0, None).unwrap()
            })
            .collect();
        for (i, reply) in replies.into_iter().enumerate() {
            // Far below the 30 s window: the full batch did not wait it out.
            let out = tokio::time::timeout(Duration::from_secs(10), reply)
                .await
                .expect("a full batch waited for its window")
                .unwrap()
                .unwrap();
            assert_eq!(
                Vec::<f32>::try_from(out[0].flatten(0, 1)).unwrap(),
                vec![2.0 * i as f32; 2]
            );
        }
        assert_eq!(m.batch_size.get_sample_count(), 1);
        assert_eq!(m.batch_size.get_sample_sum(), 6.0);
        assert_eq!(m.ok.get(), 1);
    }
}
