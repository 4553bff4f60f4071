//! Dynamic batching: concurrent requests for one model version are queued,
//! coalesced into one `forward` call (up to `max_batch_size` rows, waiting at
//! most `max_queue_delay` for company), and run by a bounded pool of model
//! instances, each on its own thread with its own TorchScript module (as
//! Triton's instance groups).
//!
//! A request wakes an idle instance only when no batch is running, or when
//! the model is slow (its `forward` takes [`SPILL_AFTER`] or more, on a
//! moving average):
//! while a fast model's batch runs, arrivals wait for its instance, which
//! takes them as one batch when it finishes (fewer, larger batches and fewer
//! thread wake-ups than waking a second instance per arrival). A second
//! instance is also woken when the queue holds a full batch (bulk work, such
//! as Flight's chunks, runs on all instances) or its oldest request has
//! waited [`SPILL_AFTER`] (an instance thread the kernel has not scheduled).
//!
//! With [`BatchConfig::inline`], a request that finds the model idle
//! (nothing queued, no batch running) and fast (its last `forward` took
//! under [`INLINE_MAX_FORWARD`]) runs at once on the async thread that
//! decoded it, with an idle instance's module: that saves the two thread
//! hand-offs (to an instance and back), which on a small machine cost more
//! than a small `forward`, so latency and CPU per request drop at low load.
//! It is off by default because at moderate load it costs the tail: an
//! async thread descheduled in the middle of a `forward` stalls every
//! connection it serves (measured in benches/RESULTS.md).
//!
//! A model whose one input is a float matrix (churn) can be fed plain rows
//! ([`Batcher::submit_floats`]): the instance copies the batch's rows into
//! one tensor and copies each output back to plain floats once per batch,
//! so the async threads do no tensor work for it and a batch of n requests
//! costs two tensor copies instead of n tensors in, a concatenation and 3n
//! slices and copies out (benches/RESULTS.md: 10-25% less server CPU per
//! churn request from concurrency 8 up).
//!
//! Every thread that runs a module first adopts the process's intra-op
//! thread count ([`adopt_torch_threads`]): OpenMP and MKL keep it per
//! thread, so a fresh thread would otherwise run its matrix products with a
//! team as wide as the machine.
//!
//! A full queue refuses new work ([`Error::Overloaded`] → RESOURCE_EXHAUSTED);
//! a request whose deadline passed while queued is answered
//! DEADLINE_EXCEEDED without running; closing the queue (the model version
//! is replaced or the server stops) lets the instances drain what is queued.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Let a request that finds the model idle run on its own thread (only
    /// with no `max_queue_delay`: a delay asks for batches). Off by default:
    /// it helps at low load and hurts tails at moderate load (module docs).
    pub inline: bool,
    /// Requests of at most this many rows run a model compiled to native
    /// code (`crate::native`) on their own thread, when the model compiles
    /// and matches libtorch at load; 0 runs every request on libtorch.
    pub native_max_rows: usize,
}

/// Longest `forward` (the model's most recent) for which an idle model runs
/// a request on the request's own thread: that thread also serves sockets,
/// so it may only be kept briefly.
pub const INLINE_MAX_FORWARD: Duration = Duration::from_micros(200);

/// How long the oldest queued request may wait behind a running batch
/// before a request arriving wakes a second instance for it; a model whose
/// `forward` typically takes this long wakes one for every arrival.
pub const SPILL_AFTER: Duration = Duration::from_micros(500);

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 256,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 4096,
            instances: 2,
            inline: false,
            native_max_rows: 16,
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
    /// `forward` calls run on the request's own thread (idle model).
    pub inline: IntCounter,
    /// Requests run by the model's native plan (`crate::native`).
    pub native: IntCounter,
}

/// Module outputs for one request.
pub type Outputs = Vec<Tensor>;

/// A float-matrix request's outputs ([`Batcher::submit_floats`]): per
/// module output, the values of the request's rows, row-major.
pub type FloatOutputs = Vec<Vec<f32>>;

/// What one request hands the batcher.
enum Payload {
    /// Module-level tensors in `forward` order.
    Tensors(Vec<Tensor>),
    /// The rows of a module whose one input is a float matrix `[N, width]`.
    Floats { values: Vec<f32>, width: usize },
}

/// Where a request's answer goes, in the form it asked for.
enum Reply {
    Tensors(oneshot::Sender<Result<Outputs>>),
    Floats(oneshot::Sender<Result<FloatOutputs>>),
}

impl Reply {
    fn is_closed(&self) -> bool {
        match self {
            Reply::Tensors(r) => r.is_closed(),
            Reply::Floats(r) => r.is_closed(),
        }
    }

    fn fail(self, error: Error) {
        let _ = match self {
            Reply::Tensors(r) => r.send(Err(error)).map_err(drop),
            Reply::Floats(r) => r.send(Err(error)).map_err(drop),
        };
    }
}

struct Job {
    payload: Payload,
    rows: usize,
    key: u64,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
}

impl Job {
    /// Whether `other` may share a `forward` with this job: the same key
    /// (equal shared inputs) and the same form of input.
    fn joins(&self, other: &Job) -> bool {
        self.key == other.key
            && match (&self.payload, &other.payload) {
                (Payload::Tensors(_), Payload::Tensors(_)) => true,
                (Payload::Floats { width: a, .. }, Payload::Floats { width: b, .. }) => a == b,
                _ => false,
            }
    }
}

/// The inputs of one `forward`, borrowed from its requests.
enum Batch<'a> {
    Tensors(Vec<&'a [Tensor]>),
    Floats { parts: Vec<&'a [f32]>, width: usize },
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Batches running now: on instances, or inline (at most one).
    running: usize,
    /// Rows in `jobs`.
    queued_rows: usize,
    /// Instances blocked on `Queue::ready` (for work, or for a batch window).
    waiting: usize,
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
    exec: Arc<Exec>,
    modules: Arc<[Mutex<CModule>]>,
    _instances: Vec<JoinHandle<()>>,
}

/// Makes the intra-op thread count set for the process (`tch::set_num_threads`
/// at start-up) hold on the calling thread; once per thread, cheap after.
///
/// OpenMP's and MKL's thread counts are per thread, and libtorch copies its
/// setting to a new thread only when an operator is large enough to consider
/// splitting. Until then MKL runs a small model's matrix products on that
/// thread with a team as wide as the machine: one helper thread per core
/// started beside each instance, spinning between products. On the 2-core
/// bench machine that cost ~20% of the server's CPU per churn request at 8
/// concurrent clients (benches/RESULTS.md).
pub fn adopt_torch_threads() {
    thread_local!(static ADOPTED: Cell<bool> = const { Cell::new(false) });
    ADOPTED.with(|adopted| {
        if !adopted.replace(true) {
            // `get` reads the process's setting (libtorch applies it to this
            // thread's OpenMP on the way); `set` also applies it to MKL.
            tch::set_num_threads(tch::get_num_threads());
        }
    });
}

/// `tensor` on `device`, without a dispatched no-op `to` when it is there
/// already (the common case on a CPU server, twice per batch).
fn on(tensor: Tensor, device: Device) -> Tensor {
    if tensor.device() == device {
        tensor
    } else {
        tensor.to_device(device)
    }
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
        let exec = Arc::new(Exec {
            signature,
            metrics,
            device,
            label: label.clone(),
            last_forward_ns: AtomicU64::new(u64::MAX),
            typical_forward_ns: AtomicU64::new(u64::MAX),
        });
        let modules: Arc<[Mutex<CModule>]> = (0..config.instances.max(1))
            .map(|_| load().map(Mutex::new))
            .collect::<Result<Vec<_>>>()?
            .into();
        let mut instances = Vec::new();
        for index in 0..modules.len() {
            let worker = Worker {
                queue: queue.clone(),
                config,
                exec: exec.clone(),
                modules: modules.clone(),
                index,
            };
            let handle = std::thread::Builder::new()
                .name(format!("infer-{label}-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::Internal(format!("cannot start an inference thread: {e}")))?;
            instances.push(handle);
        }
        Ok(Self {
            queue,
            config,
            label,
            exec,
            modules,
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
        let payload = Payload::Tensors(inputs);
        self.enqueue(payload, rows, key, deadline, Reply::Tensors(reply))?;
        Ok(receiver)
    }

    /// Queues one request for a module whose one input is a float matrix
    /// `[N, width]`: `values` holds its rows, row-major. The instance builds
    /// one tensor for the whole batch and answers with plain floats, so the
    /// caller's (async) thread does no tensor work.
    pub fn submit_floats(
        &self,
        values: Vec<f32>,
        width: usize,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<FloatOutputs>>> {
        let rows = self.float_rows(values.len(), width)?;
        let (reply, receiver) = oneshot::channel();
        let payload = Payload::Floats { values, width };
        self.enqueue(payload, rows, 0, deadline, Reply::Floats(reply))?;
        Ok(receiver)
    }

    /// Rows in `len` floats of rows `width` wide, for a module that takes
    /// one batched input.
    fn float_rows(&self, len: usize, width: usize) -> Result<usize> {
        if self.exec.signature.batched != [true] || width == 0 || !len.is_multiple_of(width) {
            return Err(Error::Internal(format!(
                "model {}: {len} floats are not rows {width} wide for its one input",
                self.label
            )));
        }
        Ok(len / width)
    }

    fn enqueue(
        &self,
        payload: Payload,
        rows: usize,
        key: u64,
        deadline: Option<Instant>,
        reply: Reply,
    ) -> Result<()> {
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
            payload,
            rows,
            key,
            enqueued: Instant::now(),
            deadline,
            reply,
        });
        state.queued_rows += rows;
        // While a fast model's batch runs, its instance takes what queued
        // meanwhile when it finishes, as one batch: waking another instance
        // for each arrival would run many small batches (more wake-ups, more
        // CPU per request). Another instance is woken when none runs, when
        // the model is slow (waiting for the batch would cost more than a
        // wake-up), when the queue holds a full batch (bulk work: instances
        // run side by side), or when its oldest request has waited
        // SPILL_AFTER (the running instance is off its core). An instance
        // not waiting looks at the queue before it waits.
        let spill = SPILL_AFTER.as_nanos() as u64;
        let wake = state.waiting > 0
            && (state.running == 0
                || self.exec.typical_forward_ns.load(Ordering::Relaxed) >= spill
                || state.queued_rows >= self.config.max_batch_size
                || state.jobs[0].enqueued.elapsed() >= SPILL_AFTER);
        drop(state);
        // One waiting instance is enough: every waiter runs the same checks
        // (work queued? window over or batch full?), so whichever wakes takes
        // the batch when it is due, and passes the wake-up on if work is left.
        if wake {
            self.queue.ready.notify_one();
        }
        Ok(())
    }

    /// Runs one request on the caller's thread if the model is idle and
    /// fast (see the module docs); None when it must be queued instead.
    pub fn run_inline(
        &self,
        inputs: &[Tensor],
        rows: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<Outputs>> {
        self.inline(rows, deadline, |exec, module| {
            exec.run(module, Batch::Tensors(vec![inputs]), rows)
        })
    }

    /// [`Batcher::run_inline`] for a float-matrix request
    /// ([`Batcher::submit_floats`]).
    pub fn run_inline_floats(
        &self,
        values: &[f32],
        width: usize,
        deadline: Option<Instant>,
    ) -> Option<Result<FloatOutputs>> {
        let rows = match self.float_rows(values.len(), width) {
            Ok(rows) => rows,
            Err(e) => return Some(Err(e)),
        };
        self.inline(rows, deadline, |exec, module| {
            let parts = vec![values];
            let outputs = exec.run(module, Batch::Floats { parts, width }, rows)?;
            exec.host_floats(&outputs)
        })
    }

    /// Runs `run` with an idle instance's module on this thread, when the
    /// model is idle and fast; None when the request must be queued.
    fn inline<T>(
        &self,
        rows: usize,
        deadline: Option<Instant>,
        run: impl FnOnce(&Exec, &CModule) -> Result<T>,
    ) -> Option<Result<T>> {
        if !self.config.inline
            || !self.config.max_queue_delay.is_zero()
            || rows > self.config.max_batch_size
            || self.exec.last_forward_ns.load(Ordering::Relaxed)
                > INLINE_MAX_FORWARD.as_nanos() as u64
        {
            return None;
        }
        let _running = {
            let mut state = self.queue.lock();
            if state.closed || state.running > 0 || !state.jobs.is_empty() {
                return None;
            }
            // Counted as a running batch: a second request meanwhile queues
            // for an instance rather than holding another async thread.
            state.running += 1;
            Running {
                queue: &self.queue,
                inline: true,
            }
        };
        self.modules
            .iter()
            .find_map(|m| m.try_lock().ok())
            .map(|module| {
                self.before(deadline)?;
                adopt_torch_threads();
                let m = &self.exec.metrics;
                m.inline.inc();
                m.queue.observe(0.0);
                run(&self.exec, &module)
            })
    }

    /// Runs `plan`, this model compiled to native code, on `values` (rows
    /// of `width` floats) at once on this thread, outside the queue; the
    /// model's metrics count it as a batch of its rows.
    pub fn run_native(
        &self,
        plan: &crate::native::Plan,
        values: Vec<f32>,
        width: usize,
        deadline: Option<Instant>,
    ) -> Result<FloatOutputs> {
        self.before(deadline)?;
        let rows = values.len().checked_div(width).unwrap_or(0);
        let started = Instant::now();
        let result = plan.run(values, width);
        let m = &self.exec.metrics;
        m.native.inc();
        m.queue.observe(0.0);
        m.batch_size.observe(rows as f64);
        m.inference.observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            m.ok.inc()
        } else {
            m.failed.inc()
        }
        result.map_err(|e| Error::Internal(format!("model {} (native plan): {e}", self.label)))
    }

    /// DEADLINE_EXCEEDED when `deadline` passed before the model could run
    /// a request outside the queue.
    fn before(&self, deadline: Option<Instant>) -> Result<()> {
        match deadline {
            Some(d) if d <= Instant::now() => Err(Error::DeadlineExceeded(format!(
                "deadline exceeded before model {} ran",
                self.label
            ))),
            _ => Ok(()),
        }
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queue.lock().jobs.len()
    }
}

/// Counts one running batch down when dropped (also if a batch panics).
/// An instance then looks at the queue itself; an inline run wakes an
/// instance for what queued behind it (`submit` did not while it ran).
struct Running<'a> {
    queue: &'a Queue,
    inline: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.running -= 1;
        let wake = self.inline && !state.jobs.is_empty();
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

/// What running a batch needs besides a module: shared by the instance
/// threads and the inline path.
struct Exec {
    signature: Signature,
    metrics: BatchMetrics,
    device: Device,
    label: String,
    /// How long the latest `forward` took (u64::MAX before the first).
    last_forward_ns: AtomicU64,
    /// A moving average of `forward`'s time (weight 1/8 on the latest), so
    /// that one call stretched by the kernel taking its thread off a core
    /// does not make a fast model look slow (u64::MAX before the first).
    typical_forward_ns: AtomicU64,
}

struct Worker {
    queue: Arc<Queue>,
    config: BatchConfig,
    exec: Arc<Exec>,
    /// Every instance's module; this worker's is `modules[index]`.
    modules: Arc<[Mutex<CModule>]>,
    index: usize,
}

impl Worker {
    fn run(self) {
        adopt_torch_threads();
        while let Some(batch) = self.next_batch() {
            let _running = Running {
                queue: &self.queue,
                inline: false,
            };
            self.execute(batch);
        }
    }

    /// A free module: this instance's own unless a request running inline
    /// holds it, then another free one, else this one when it comes free.
    fn module(&self) -> MutexGuard<'_, CModule> {
        let own = &self.modules[self.index];
        own.try_lock()
            .ok()
            .or_else(|| self.modules.iter().find_map(|m| m.try_lock().ok()))
            .unwrap_or_else(|| own.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rows queued that could join a batch led by the first job.
    fn batchable_rows(&self, jobs: &VecDeque<Job>) -> usize {
        let Some(first) = jobs.front() else { return 0 };
        jobs.iter().filter(|j| first.joins(j)).map(|j| j.rows).sum()
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
                state.waiting += 1;
                state = self
                    .queue
                    .ready
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                state.waiting -= 1;
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
                state.waiting += 1;
                state = self
                    .queue
                    .ready
                    .wait_timeout(state, window_end - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                state.waiting -= 1;
            }
            let Some(first) = state.jobs.pop_front() else {
                continue; // another instance took it
            };
            state.queued_rows -= first.rows;
            let mut rows = first.rows;
            let mut batch = vec![first];
            let mut i = 0;
            while i < state.jobs.len() {
                let job = &state.jobs[i];
                if batch[0].joins(job) && rows + job.rows <= self.config.max_batch_size {
                    rows += job.rows;
                    state.queued_rows -= job.rows;
                    batch.extend(state.jobs.remove(i));
                } else {
                    i += 1;
                }
            }
            if !state.jobs.is_empty() {
                self.queue.ready.notify_one();
            }
            state.running += 1;
            return Some(batch);
        }
    }

    fn execute(&self, batch: Vec<Job>) {
        let now = Instant::now();
        let exec = &*self.exec;
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            exec.metrics
                .queue
                .observe(now.duration_since(job.enqueued).as_secs_f64());
            if job.deadline.is_some_and(|d| d <= now) {
                job.reply.fail(Error::DeadlineExceeded(format!(
                    "deadline exceeded while queued for model {}",
                    exec.label
                )));
            } else if !job.reply.is_closed() {
                live.push(job);
            }
        }
        if live.is_empty() {
            return;
        }
        let rows: usize = live.iter().map(|j| j.rows).sum();
        let batch = match &live[0].payload {
            Payload::Tensors(_) => Batch::Tensors(
                live.iter()
                    .filter_map(|j| match &j.payload {
                        Payload::Tensors(t) => Some(t.as_slice()),
                        Payload::Floats { .. } => None,
                    })
                    .collect(),
            ),
            Payload::Floats { width, .. } => Batch::Floats {
                parts: live
                    .iter()
                    .filter_map(|j| match &j.payload {
                        Payload::Floats { values, .. } => Some(values.as_slice()),
                        Payload::Tensors(_) => None,
                    })
                    .collect(),
                width: *width,
            },
        };
        let floats = matches!(batch, Batch::Floats { .. });
        let result = exec.run(&self.module(), batch, rows).and_then(|outputs| {
            Ok(if floats {
                Answers::Floats(exec.host_floats(&outputs)?)
            } else {
                Answers::Tensors(outputs)
            })
        });
        let answers = match result {
            Ok(answers) => answers,
            Err(e) => {
                let message = e.to_string();
                for job in live {
                    job.reply.fail(Error::Internal(message.clone()));
                }
                return;
            }
        };
        let single = live.len() == 1;
        let mut offset = 0;
        for job in live {
            let n = job.rows;
            match (job.reply, &answers) {
                (Reply::Tensors(reply), Answers::Tensors(outputs)) => {
                    let sliced = if single {
                        outputs.iter().map(Tensor::shallow_clone).collect()
                    } else {
                        outputs
                            .iter()
                            .map(|t| t.narrow(0, offset as i64, n as i64))
                            .collect()
                    };
                    let _ = reply.send(Ok(sliced));
                }
                (Reply::Floats(reply), Answers::Floats(values)) => {
                    // Every output has `rows` rows of equal length.
                    let sliced = values
                        .iter()
                        .map(|v| {
                            let per_row = v.len() / rows;
                            v[offset * per_row..(offset + n) * per_row].to_vec()
                        })
                        .collect();
                    let _ = reply.send(Ok(sliced));
                }
                (reply, _) => reply.fail(Error::Internal(format!(
                    "model {}: a batch mixed tensor and float requests",
                    exec.label
                ))),
            }
            offset += n;
        }
    }
}

/// A batch's outputs before they are split between its requests.
enum Answers {
    Tensors(Vec<Tensor>),
    Floats(FloatOutputs),
}

impl Exec {
    /// [`Exec::forward`] with its metrics: batch size, time, outcome; the
    /// time is kept for the inline and wake-up decisions.
    fn run(&self, module: &CModule, batch: Batch<'_>, rows: usize) -> Result<Outputs> {
        self.metrics.batch_size.observe(rows as f64);
        let started = Instant::now();
        let result = self.forward(module, batch, rows);
        let took = started.elapsed();
        self.metrics.inference.observe(took.as_secs_f64());
        let took_ns = took.as_nanos() as u64;
        self.last_forward_ns.store(took_ns, Ordering::Relaxed);
        // Two instances may race here; either update is a fair average.
        let typical = match self.typical_forward_ns.load(Ordering::Relaxed) {
            u64::MAX => took_ns,
            old => old - old / 8 + took_ns / 8,
        };
        self.typical_forward_ns.store(typical, Ordering::Relaxed);
        match &result {
            Ok(_) => self.metrics.ok.inc(),
            Err(_) => self.metrics.failed.inc(),
        }
        result
    }

    /// One `forward` over the requests' inputs, `rows` in all; outputs on
    /// the CPU, batch-first.
    fn forward(&self, module: &CModule, batch: Batch<'_>, rows: usize) -> Result<Outputs> {
        let mut args = Vec::with_capacity(self.signature.batched.len());
        match batch {
            Batch::Tensors(inputs) => {
                for (i, &batched) in self.signature.batched.iter().enumerate() {
                    let tensor = if batched && inputs.len() > 1 {
                        let parts: Vec<&Tensor> = inputs.iter().map(|j| &j[i]).collect();
                        Tensor::cat(&parts, 0)
                    } else {
                        inputs[0][i].shallow_clone()
                    };
                    args.push(IValue::Tensor(on(tensor, self.device)));
                }
            }
            Batch::Floats { parts, width } => {
                let tensor = match parts.as_slice() {
                    [one] => Tensor::from_slice(one),
                    _ => Tensor::from_slice(&parts.concat()),
                };
                let matrix = tensor.view([rows as i64, width as i64]);
                args.push(IValue::Tensor(on(matrix, self.device)));
            }
        }
        let torch = |source| Error::Torch {
            model: self.label.clone(),
            source,
        };
        let indexed = match &self.signature.retrieval {
            Some(retrieval) => tch::no_grad(|| retrieval.run(module, &args)).map_err(torch)?,
            None => None,
        };
        let tensors = match indexed {
            Some(tensors) => tensors,
            None => self.run_forward(module, &args)?,
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
                    Ok(on(t, Device::Cpu))
                }
            })
            .collect()
    }

    /// Each output's values as host floats, row-major: one conversion (when
    /// not f32 already) and one copy per output for the whole batch.
    fn host_floats(&self, outputs: &[Tensor]) -> Result<FloatOutputs> {
        let torch = |source| Error::Torch {
            model: self.label.clone(),
            source,
        };
        outputs
            .iter()
            .map(|t| {
                let n = t.numel();
                let mut values = vec![0f32; n];
                if t.kind() == tch::Kind::Float {
                    t.f_copy_data(&mut values, n).map_err(torch)?;
                } else {
                    t.f_to_kind(tch::Kind::Float)
                        .and_then(|f| f.f_copy_data(&mut values, n))
                        .map_err(torch)?;
                }
                Ok(values)
            })
            .collect()
    }

    /// `forward(args)`, its result as a list of tensors.
    fn run_forward(&self, module: &CModule, args: &[IValue]) -> Result<Vec<Tensor>> {
        let torch = |source| Error::Torch {
            model: self.label.clone(),
            source,
        };
        let output = tch::no_grad(|| module.forward_is(args)).map_err(torch)?;
        output_tensors(output, self.signature.outputs)
            .map_err(|e| Error::Internal(format!("model {} returned {e}", self.label)))
    }
}

/// What `forward` returned as a list of tensors, for a manifest with
/// `outputs` outputs; an error describes what came back instead.
pub(crate) fn output_tensors(
    output: IValue,
    outputs: usize,
) -> std::result::Result<Vec<Tensor>, String> {
    Ok(match output {
        // One [N, outputs] tensor stands for that many [N] outputs (a
        // traced module cannot return a tuple).
        IValue::Tensor(t) if outputs > 1 && t.dim() == 2 && t.size()[1] == outputs as i64 => {
            t.unbind(1)
        }
        IValue::Tensor(t) => vec![t],
        IValue::Tuple(values) | IValue::GenericList(values) => values
            .into_iter()
            .map(|v| match v {
                IValue::Tensor(t) => Ok(t),
                other => Err(format!("a {other:?} where a tensor was expected")),
            })
            .collect::<std::result::Result<_, _>>()?,
        IValue::TensorList(values) => values,
        other => return Err(format!("{other:?}, expected tensors")),
    })
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
            inline: IntCounter::new("inline", "inline").unwrap(),
            native: IntCounter::new("native", "native").unwrap(),
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

    fn one(value: f64) -> Vec<Tensor> {
        vec![Tensor::full([1, 2], value, tch::kind::FLOAT_CPU)]
    }

    /// Marks the model's `forward` as fast (a test machine's own timing
    /// may not be).
    fn fast(batcher: &Batcher) {
        batcher.exec.last_forward_ns.store(1_000, Ordering::Relaxed);
        batcher
            .exec
            .typical_forward_ns
            .store(1_000, Ordering::Relaxed);
    }

    /// An idle model runs a request inline once it has been timed under
    /// the bound; queued or running work, a queue delay, a slow last
    /// `forward` or `inline: false` send it to the queue instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_fast_model_runs_a_request_inline_and_a_busy_one_queues_it() {
        let m = metrics();
        let inline = BatchConfig {
            inline: true,
            ..Default::default()
        };
        let batcher = start(inline, m.clone());
        assert!(
            batcher.run_inline(&one(1.0), 1, None).is_none(),
            "no forward timed yet"
        );
        let queued = batcher.submit(one(1.0), 1, 0, None).unwrap();
        queued.await.unwrap().unwrap();
        // The instance marks itself idle just after replying.
        let idle = Instant::now() + Duration::from_secs(10);
        while batcher.queue.lock().running > 0 {
            assert!(Instant::now() < idle, "the instance never went idle");
            std::thread::sleep(Duration::from_millis(1));
        }
        fast(&batcher);
        let out = batcher.run_inline(&one(3.0), 1, None).unwrap().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(out[0].flatten(0, 1)).unwrap(),
            vec![6.0, 6.0]
        );
        assert_eq!((m.inline.get(), m.ok.get()), (1, 2));
        let past = Instant::now() - Duration::from_millis(1);
        fast(&batcher);
        assert!(matches!(
            batcher.run_inline(&one(1.0), 1, Some(past)),
            Some(Err(Error::DeadlineExceeded(_)))
        ));

        batcher.queue.lock().running += 1;
        assert!(
            batcher.run_inline(&one(1.0), 1, None).is_none(),
            "a batch runs"
        );
        batcher.queue.lock().running -= 1;
        let slow = INLINE_MAX_FORWARD.as_nanos() as u64 + 1;
        batcher.exec.last_forward_ns.store(slow, Ordering::Relaxed);
        assert!(
            batcher.run_inline(&one(1.0), 1, None).is_none(),
            "slow model"
        );
        fast(&batcher);
        assert!(
            batcher.run_inline(&one(1.0), 300, None).is_none(),
            "too many rows"
        );
        assert!(batcher.run_inline(&one(1.0), 1, None).is_some());

        for config in [
            BatchConfig::default(),
            BatchConfig {
                max_queue_delay: Duration::from_micros(100),
                ..inline
            },
        ] {
            let b = start(config, metrics());
            fast(&b);
            assert!(b.run_inline(&one(1.0), 1, None).is_none(), "{config:?}");
        }
    }

    /// While a fast model's batch runs, arrivals wait for its instance
    /// instead of waking another; a request that has waited SPILL_AFTER, a
    /// full batch's worth of rows, or a slow model wakes an idle instance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_batch_keeps_arrivals_until_they_spill() {
        let config = BatchConfig {
            max_batch_size: 4,
            instances: 2,
            ..BatchConfig::default()
        };
        let batcher = start(config, metrics());
        let started = Instant::now() + Duration::from_secs(20);
        while batcher.queue.lock().waiting < 2 {
            assert!(
                Instant::now() < started,
                "the instances never started waiting"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let answered = |reply: oneshot::Receiver<Result<Outputs>>| async move {
            tokio::time::timeout(Duration::from_secs(20), reply)
                .await
                .expect("never answered")
                .unwrap()
                .unwrap()
        };
        // A batch that never finishes is "running"; both instances are idle.
        fast(&batcher);
        batcher.queue.lock().running += 1;
        let first = batcher.submit(one(1.0), 1, 0, None).unwrap();
        let second = batcher.submit(one(2.0), 1, 0, None).unwrap();
        std::thread::sleep(SPILL_AFTER * 20);
        assert_eq!(
            batcher.queued(),
            2,
            "an instance was woken while a batch ran"
        );
        // The oldest has now waited past SPILL_AFTER: the next arrival wakes
        // an instance, which takes all three in one batch.
        let third = batcher.submit(one(3.0), 1, 0, None).unwrap();
        for (reply, value) in [(first, 2.0), (second, 4.0), (third, 6.0)] {
            let out = answered(reply).await;
            assert_eq!(
                Vec::<f32>::try_from(out[0].flatten(0, 1)).unwrap(),
                vec![value; 2]
            );
        }
        // A full batch's worth of rows wakes one at once.
        let rows = Tensor::full([4, 2], 1.0, tch::kind::FLOAT_CPU);
        let full = batcher.submit(vec![rows], 4, 0, None).unwrap();
        assert_eq!(answered(full).await[0].size(), [4, 2]);
        // So does any arrival for a model whose forward is slow.
        batcher
            .exec
            .typical_forward_ns
            .store(SPILL_AFTER.as_nanos() as u64, Ordering::Relaxed);
        let slow = batcher.submit(one(1.0), 1, 0, None).unwrap();
        answered(slow).await;
        batcher.queue.lock().running -= 1;
    }

    /// Float-matrix requests share a `forward` with each other, never with
    /// tensor requests, and each gets its own rows back as plain floats;
    /// floats that are not whole rows are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn float_rows_batch_together_and_come_back_as_floats() {
        let m = metrics();
        let config = BatchConfig {
            max_batch_size: 4,
            max_queue_delay: Duration::from_millis(50),
            instances: 1,
            ..Default::default()
        };
        let batcher = start(config, m.clone());
        let floats: Vec<_> = [(1.0f32, 1usize), (2.0, 2), (3.0, 1)]
            .into_iter()
            .map(|(value, rows)| {
                let values: Vec<f32> = (0..rows * 2).map(|i| value + i as f32).collect();
                let reply = batcher.submit_floats(values.clone(), 2, None).unwrap();
                (values, reply)
            })
            .collect();
        let tensor = batcher.submit(one(5.0), 1, 0, None).unwrap();
        for (values, reply) in floats {
            let out = reply.await.unwrap().unwrap();
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            assert_eq!(out, vec![doubled]);
        }
        let out = tensor.await.unwrap().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(out[0].flatten(0, 1)).unwrap(),
            vec![10.0, 10.0]
        );
        assert_eq!(
            (
                m.batch_size.get_sample_count(),
                m.batch_size.get_sample_sum()
            ),
            (2, 5.0),
            "one forward for the four float rows, one for the tensor request"
        );
        assert!(matches!(
            batcher.submit_floats(vec![1.0; 5], 2, None),
            Err(Error::Internal(_))
        ));
        assert!(matches!(
            batcher.run_inline_floats(&[1.0; 3], 0, None),
            Some(Err(Error::Internal(_)))
        ));
    }

    /// Threads of this process whose name is `name` (helper threads that
    /// OpenMP or MKL start inherit the name of the thread that started them).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// With one intra-op thread set for the process (as the server does at
    /// start-up), an instance runs a small MLP's matrix products itself: no
    /// helper thread appears beside it, whatever the machine's core count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_runs_matrix_products_on_its_own_thread() {
        tch::set_num_threads(1);
        let w1 = Tensor::randn([32, 64], tch::kind::FLOAT_CPU);
        let w2 = Tensor::randn([64, 3], tch::kind::FLOAT_CPU);
        let mlp = move || {
            CModule::create_by_tracing(
                "mlp",
                "forward",
                &[Tensor::zeros([1, 32], tch::kind::FLOAT_CPU)],
                &mut |x| vec![x[0].matmul(&w1).relu().matmul(&w2)],
            )
            .map_err(|e| Error::Internal(e.to_string()))
        };
        let signature = Signature {
            batched: vec![true],
            outputs: 1,
            retrieval: None,
        };
        let config = BatchConfig {
            instances: 1,
            ..BatchConfig::default()
        };
        let batcher =
            Batcher::start("mlp".into(), config, signature, metrics(), Device::Cpu, mlp).unwrap();
        for rows in [1, 3, 8, 16, 64, 256] {
            let x = Tensor::randn([rows, 32], tch::kind::FLOAT_CPU);
            let out = batcher.submit(vec![x], rows as usize, 0, None).unwrap();
            let out = out.await.unwrap().unwrap();
            assert_eq!(out[0].size(), [rows, 3]);
        }
        assert_eq!(
            threads_named("infer-mlp-0"),
            1,
            "threads named after the instance (it and any helpers it started)"
        );
    }
}
