//! The recommend item index's scan, in process: microseconds per user for
//! each kernel this CPU runs, against libtorch's `u @ items.T` + `topk` on
//! one thread (what a recommend module's `forward` does).
//!
//!   target/release/item-index [--items 100000] [--dim 64] [--users 2000] [--k 10] [--batch 1,8]
//!                             [--kernels avx2,avx512vnni]
//!
//! Item vectors are L2-normalised Gaussians, as in the serving benchmark's
//! module (benches/peers/export_models.py); users are Gaussians. Every
//! kernel must return the same items as libtorch's product (checked; a
//! mismatch fails the run). One JSON line per (method, batch size).

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use encore_model_server::retrieval::ItemIndex;
use encore_model_server::retrieval::kernel::Kernel;
use tch::{Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Users timed per (method, batch size).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Users per search call.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 7)]
    seed: i64,
    /// Kernels to time (portable, avx2, avx512vnni); default: every one this
    /// CPU runs. libtorch always runs: it gives the expected answers.
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.items == 0 || args.dim == 0 || args.users == 0 || args.k == 0 {
        bail!("--items, --dim, --users and --k must be positive");
    }
    if args.batch.contains(&0) {
        bail!("--batch sizes must be positive");
    }
    let known = Kernel::ALL.map(Kernel::name);
    if let Some(unknown) = args.kernels.iter().find(|k| !known.contains(&k.as_str())) {
        bail!(
            "--kernels: unknown kernel '{unknown}' (known: {})",
            known.join(", ")
        );
    }
    tch::set_num_threads(1);
    tch::manual_seed(args.seed);
    let items_t = Tensor::randn(
        [args.items as i64, args.dim as i64],
        (Kind::Float, tch::Device::Cpu),
    );
    let items_t = &items_t / items_t.norm_scalaropt_dim(2, [1], true);
    let users_t = Tensor::randn(
        [args.users as i64, args.dim as i64],
        (Kind::Float, tch::Device::Cpu),
    );
    let items: Vec<f32> = Vec::try_from(items_t.flatten(0, -1)).context("item vectors")?;
    let users: Vec<f32> = Vec::try_from(users_t.flatten(0, -1)).context("user vectors")?;

    // libtorch: the expected answers and the reference timing.
    let mut expected: Vec<Vec<i64>> = Vec::with_capacity(args.users);
    for &batch in &args.batch {
        let start = Instant::now();
        let mut found = Vec::with_capacity(args.users);
        for first in (0..args.users).step_by(batch) {
            let n = batch.min(args.users - first);
            let u = users_t.narrow(0, first as i64, n as i64);
            let (_, ids) = u.matmul(&items_t.tr()).topk(args.k as i64, 1, true, true);
            let ids: Vec<i64> = Vec::try_from(ids.flatten(0, -1)).context("top-k ids")?;
            found.extend(ids.chunks(args.k).map(<[i64]>::to_vec));
        }
        report("libtorch", batch, start.elapsed().as_secs_f64(), &args);
        expected = found;
    }

    for kernel in Kernel::available() {
        if !args.kernels.is_empty() && !args.kernels.iter().any(|k| k == kernel.name()) {
            continue;
        }
        let index = ItemIndex::new(items.clone(), args.dim)?.with_kernel(kernel)?;
        for &batch in &args.batch {
            let start = Instant::now();
            let mut mismatches = 0;
            for first in (0..args.users).step_by(batch) {
                let n = batch.min(args.users - first);
                let u = &users[first * args.dim..(first + n) * args.dim];
                let hits = index.search(u, args.k).context("finite users")?;
                for (j, hits) in hits.iter().enumerate() {
                    let ids: Vec<i64> = hits.iter().map(|h| h.item as i64).collect();
                    if ids != expected[first + j] {
                        mismatches += 1;
                    }
                }
            }
            report(kernel.name(), batch, start.elapsed().as_secs_f64(), &args);
            // Near-equal scores may swap places between the two float
            // summation orders; anything more is a bug.
            if mismatches * 100 > args.users {
                bail!(
                    "{}: {mismatches} of {} users differ from libtorch's top {}",
                    kernel.name(),
                    args.users,
                    args.k
                );
            }
        }
    }
    Ok(())
}

fn report(method: &str, batch: usize, seconds: f64, args: &Args) {
    println!(
        "{}",
        serde_json::json!({
            "method": method,
            "batch": batch,
            "items": args.items,
            "dim": args.dim,
            "k": args.k,
            "users": args.users,
            "us_per_user": seconds * 1e6 / args.users as f64,
        })
    );
}
