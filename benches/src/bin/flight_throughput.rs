//! `flight-throughput`: batch churn scoring over Arrow Flight DoExchange:
//! streams `--users` user ids in batches of `--batch-rows` to the model
//! server and reads the scores back; prints users/s as one JSON line.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use clap::Parser;
use futures::TryStreamExt;
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(
    name = "flight-throughput",
    after_help = "Example:\n  flight-throughput --addr 127.0.0.1:8001 --users 2000000 --snapshot-users 100000"
)]
struct Args {
    /// Model server address host:port.
    #[arg(long)]
    addr: String,
    /// Model to score with.
    #[arg(long, default_value = "churn")]
    model: String,
    /// Users to score in total.
    #[arg(long, default_value_t = 2_000_000)]
    users: usize,
    /// Ids cycle through 1..=snapshot_users (all known to the snapshot).
    #[arg(long, default_value_t = 100_000)]
    snapshot_users: usize,
    /// Rows per record batch sent.
    #[arg(long, default_value_t = 65_536)]
    batch_rows: usize,
    /// Label written into the JSON line.
    #[arg(long, default_value = "encore")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("http://{}", args.addr))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        let mut client = FlightClient::new(channel);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )]));
        let mut batches = Vec::new();
        let mut sent = 0usize;
        while sent < args.users {
            let n = args.batch_rows.min(args.users - sent);
            let ids = Int64Array::from_iter_values(
                (sent..sent + n).map(|i| (i % args.snapshot_users) as i64 + 1),
            );
            batches.push(Ok(RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids)],
            )?));
            sent += n;
        }
        let started = Instant::now();
        let input = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![args.model.clone()])))
            .build(futures::stream::iter(batches));
        let output = client.do_exchange(input).await?;
        let results: Vec<RecordBatch> = output.try_collect().await?;
        let elapsed = started.elapsed();
        let rows: usize = results.iter().map(RecordBatch::num_rows).sum();
        anyhow::ensure!(
            rows == args.users,
            "sent {} users, got {rows} rows back",
            args.users
        );
        let line = serde_json::json!({
            "label": args.label,
            "model": args.model,
            "users": rows,
            "batch_rows": args.batch_rows,
            "seconds": elapsed.as_secs_f64(),
            "users_per_second": rows as f64 / elapsed.as_secs_f64(),
        });
        println!("{line}");
        Ok(())
    })
}
