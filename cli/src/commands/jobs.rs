//! `encore jobs list|show|cancel|watch`: training jobs on a scheduler, and
//! the client helpers `encore train` uses to submit and follow one.

use std::time::Duration;

use anyhow::{Context, bail};
use encore_proto::encore::v1::jobs_client::JobsClient;
use encore_proto::encore::v1::{
    CancelJobRequest, GetJobRequest, Job, JobKind, JobState, ListJobsRequest, WatchJobRequest,
};
use tonic::transport::Channel;

/// Inspect, cancel and follow training jobs on a scheduler.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore jobs list --scheduler df://127.0.0.1:50050\n  \
    encore jobs list --state running\n  \
    encore jobs show job-0123456789abcdef\n  \
    encore jobs watch job-0123456789abcdef\n  \
    encore jobs cancel job-0123456789abcdef --reason 'wrong cutoff'")]
pub struct Args {
    /// The scheduler: df://HOST:PORT (as for `encore sql`), http://HOST:PORT or HOST:PORT.
    #[arg(
        long,
        env = "ENCORE_SCHEDULER_URL",
        default_value = "df://127.0.0.1:50050",
        global = true
    )]
    pub scheduler: String,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs of this kind: churn or recommend.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<JobKind>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Everything about one job.
    Show {
        /// The job id.
        id: String,
    },
    /// Stop a queued or running job.
    Cancel {
        /// The job id.
        id: String,
        /// Why (recorded on the job).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow a job with a progress bar until it ends; exits non-zero
    /// unless it succeeds.
    Watch {
        /// The job id.
        id: String,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
        .filter(|s| *s != JobState::Unspecified)
        .ok_or_else(|| format!("'{s}': expected queued, running, succeeded, failed or cancelled"))
}

fn parse_kind(s: &str) -> Result<JobKind, String> {
    JobKind::from_str_name(&format!("JOB_KIND_{}", s.to_uppercase()))
        .filter(|k| *k != JobKind::Unspecified)
        .ok_or_else(|| format!("'{s}': expected churn or recommend"))
}

/// Lower-case name of a state (`running`).
pub fn state_name(state: JobState) -> String {
    state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

fn kind_name(kind: JobKind) -> String {
    kind.as_str_name()
        .trim_start_matches("JOB_KIND_")
        .to_lowercase()
}

/// A Jobs client for a scheduler given as df://, http:// or HOST:PORT.
pub async fn connect(scheduler: &str) -> anyhow::Result<JobsClient<Channel>> {
    let address = scheduler
        .strip_prefix("df://")
        .or_else(|| scheduler.strip_prefix("http://"))
        .unwrap_or(scheduler)
        .trim_end_matches('/');
    let endpoint = Channel::from_shared(format!("http://{address}"))
        .with_context(|| format!("invalid scheduler address '{scheduler}'"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the scheduler at {scheduler}"))?;
    Ok(JobsClient::new(channel))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

fn time(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = connect(&args.scheduler).await?;
    match args.command {
        Command::List { state, kind, limit } => {
            let mut jobs = Vec::new();
            let mut page_token = String::new();
            while jobs.len() < limit as usize {
                let page = client
                    .list_jobs(ListJobsRequest {
                        state: state.map_or(0, |s| s as i32),
                        kind: kind.map_or(0, |k| k as i32),
                        page_size: limit.min(1000),
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            jobs.truncate(limit as usize);
            println!(
                "{:<21} {:<9} {:<10} {:>7}  {:<19}  {:<16} detail",
                "ID", "KIND", "STATE", "ATTEMPT", "CREATED", "MODEL"
            );
            for job in &jobs {
                let model = match &job.registered_model {
                    Some(m) => format!("{}:v{}", m.name, m.version),
                    None => job
                        .spec
                        .as_ref()
                        .map(|s| s.model_name.clone())
                        .unwrap_or_default(),
                };
                let detail = match (&job.progress, job.state()) {
                    (_, JobState::Failed | JobState::Cancelled) => job.error.clone(),
                    (Some(p), JobState::Running) => {
                        format!("epoch {}/{}, loss {:.4}", p.epoch, p.total_epochs, p.loss)
                    }
                    _ => String::new(),
                };
                println!(
                    "{:<21} {:<9} {:<10} {:>7}  {:<19}  {:<16} {}",
                    job.id,
                    kind_name(job.kind()),
                    state_name(job.state()),
                    job.attempt,
                    time(job.created_at_unix_ms),
                    model,
                    detail.chars().take(80).collect::<String>()
                );
            }
            Ok(())
        }
        Command::Show { id } => {
            let job = get(&mut client, &id).await?;
            print_job(&job);
            Ok(())
        }
        Command::Cancel { id, reason } => {
            let job = client
                .cancel_job(CancelJobRequest { job_id: id, reason })
                .await
                .map_err(status)?
                .into_inner()
                .job
                .context("the scheduler returned no job")?;
            match job.state() {
                JobState::Running => println!(
                    "{}: cancellation requested; the executor stops it at its next step",
                    job.id
                ),
                s => println!("{}: {}", job.id, state_name(s)),
            }
            Ok(())
        }
        Command::Watch { id } => {
            let job = watch(&mut client, &id).await?;
            finish(&job)
        }
    }
}

async fn get(client: &mut JobsClient<Channel>, id: &str) -> anyhow::Result<Job> {
    client
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .map_err(status)?
        .into_inner()
        .job
        .context("the scheduler returned no job")
}

fn print_job(job: &Job) {
    let spec = job.spec.clone().unwrap_or_default();
    println!("id            {}", job.id);
    println!("kind          {}", kind_name(job.kind()));
    println!("state         {}", state_name(job.state()));
    println!("attempt       {} of {}", job.attempt, spec.max_attempts);
    if !job.executor_id.is_empty() {
        println!("executor      {}", job.executor_id);
    }
    println!("created       {}", time(job.created_at_unix_ms));
    println!("started       {}", time(job.started_at_unix_ms));
    println!("finished      {}", time(job.finished_at_unix_ms));
    println!("data          {}", spec.data_uri);
    println!("cutoff        {}", spec.cutoff);
    println!("registry      {}", spec.registry_uri);
    println!("model         {}", spec.model_name);
    if !spec.horizons_days.is_empty() {
        println!("horizons      {:?}", spec.horizons_days);
    }
    println!("promote       {}", spec.promote);
    let mut params: Vec<_> = spec.hyperparameters.iter().collect();
    params.sort();
    for (k, v) in params {
        println!("set           {k}={v}");
    }
    if let Some(p) = &job.progress {
        println!(
            "progress      epoch {}/{}, step {}, loss {:.4}, {:.0} samples/s",
            p.epoch, p.total_epochs, p.step, p.loss, p.samples_per_second
        );
    }
    if let Some(m) = &job.registered_model {
        println!("registered    {} v{}", m.name, m.version);
    }
    let mut metrics: Vec<_> = job.metrics.iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in metrics {
        println!("metric        {k:<20} {v:.4}");
    }
    if !job.error.is_empty() {
        println!("error         {}", job.error);
    }
}

/// Follows job `id` with a progress bar on stderr until it ends; returns
/// the final job.
pub async fn watch(client: &mut JobsClient<Channel>, id: &str) -> anyhow::Result<Job> {
    let mut stream = client
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .map_err(status)?
        .into_inner();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] epoch {pos}/{len} {elapsed}",
    )
    .expect("template");
    let mut stage = String::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                let state = event.state();
                if event.epoch > 0 {
                    if bar.length().is_none() {
                        bar.set_style(style.clone());
                    }
                    bar.set_length(u64::from(event.total_epochs.max(event.epoch)));
                    bar.set_position(u64::from(event.epoch));
                }
                if !event.message.is_empty() {
                    stage = event.message.clone();
                }
                let detail = if event.epoch > 0 {
                    format!(
                        "{}: {stage}, loss {:.4}, {:.0} samples/s",
                        state_name(state),
                        event.loss,
                        event.samples_per_second
                    )
                } else {
                    format!("{}: {stage}", state_name(state))
                };
                bar.set_message(detail);
                if matches!(
                    state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                ) && event.state_changed
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                bar.finish_and_clear();
                bail!("watching {id}: {}", e.message());
            }
        }
    }
    bar.finish_and_clear();
    get(client, id).await
}

/// Prints the outcome of a finished job; an error unless it succeeded.
pub fn finish(job: &Job) -> anyhow::Result<()> {
    match job.state() {
        JobState::Succeeded => {
            match &job.registered_model {
                Some(m) => println!(
                    "{}: registered {}:{}{}",
                    job.id,
                    m.name,
                    m.version,
                    if m.promoted { " (now production)" } else { "" }
                ),
                None => println!("{}: succeeded", job.id),
            }
            let mut metrics: Vec<_> = job.metrics.iter().collect();
            metrics.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in metrics {
                println!("  {name:<20} {value:.4}");
            }
            Ok(())
        }
        JobState::Failed => bail!("job {} failed: {}", job.id, job.error),
        JobState::Cancelled => bail!("job {} was cancelled: {}", job.id, job.error),
        s => bail!("job {} is still {}", job.id, state_name(s)),
    }
}
