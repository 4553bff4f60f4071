//! Training throughput: samples per second of Encore's trainers (libtorch
//! through tch) on synthetic data, for the side-by-side with the same
//! networks in Python PyTorch (benches/peers/churn_train.py and
//! benches/peers/recommend_train.py, run by benches/training.sh).
//!
//!   train-throughput --rows 200000 --epochs 4 --batch-size 512 --threads 2
//!   train-throughput --model recommend --rows 200000 --users 4000 --items 2000 --batch-size 1024
//!
//! Prints one JSON line: the median samples/s over the epochs after the
//! first (warm-up), and every epoch's figure.

use clap::Parser;
use encore_models::churn::{self, ChurnConfig, ChurnData, ChurnSchema, TrainControl};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// churn (wide & deep) or recommend (two-tower).
    #[arg(long, default_value = "churn", value_parser = ["churn", "recommend"])]
    model: String,
    /// recommend: users.
    #[arg(long, default_value_t = 4_000)]
    users: i64,
    /// recommend: items.
    #[arg(long, default_value_t = 2_000)]
    items: i64,
    /// Training rows or (user, item) pairs (churn validation adds a tenth more).
    #[arg(long, default_value_t = 200_000)]
    rows: i64,
    /// Numeric features.
    #[arg(long, default_value_t = 40)]
    numeric: i64,
    /// Cardinalities of the categorical fields.
    #[arg(long, value_delimiter = ',', default_value = "8,5,4,12")]
    categories: Vec<i64>,
    /// Epochs (the first is warm-up).
    #[arg(long, default_value_t = 4)]
    epochs: u32,
    /// Rows per optimiser step.
    #[arg(long, default_value_t = 512)]
    batch_size: i64,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn rows(n: i64, numeric: i64, categories: &[i64]) -> ChurnData {
    let x = Tensor::randn([n, numeric], (Kind::Float, Device::Cpu));
    let codes: Vec<Tensor> = categories
        .iter()
        .map(|&c| Tensor::randint(c, [n, 1], (Kind::Int64, Device::Cpu)))
        .collect();
    let categorical = Tensor::cat(&codes, 1);
    let logit = x.select(1, 0) * 1.5 - 1.0;
    let u = Tensor::rand([n], (Kind::Float, Device::Cpu));
    let labels: Vec<Tensor> = [-1.0, 0.0, 1.0]
        .iter()
        .map(|shift| {
            u.lt_tensor(&(&logit + *shift).sigmoid())
                .to_kind(Kind::Float)
        })
        .collect();
    ChurnData {
        numeric: x,
        categorical,
        labels: Tensor::stack(&labels, 1),
    }
}

/// Median of the epochs after the first (warm-up).
fn median_after_warmup(per_epoch: &[f64]) -> f64 {
    let mut timed: Vec<f64> = per_epoch.iter().skip(1).copied().collect();
    timed.sort_by(f64::total_cmp);
    timed.get(timed.len() / 2).copied().unwrap_or(per_epoch[0])
}

/// Two-tower training on pairs drawn with a popularity skew (item ~ u^2).
fn recommend(args: &Args) -> anyhow::Result<()> {
    use encore_models::recommend::{self, RecData, RecommendConfig};
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let train: Vec<(i64, i64)> = (0..args.rows)
        .map(|_| {
            let u = (next() * args.users as f64) as i64;
            let i = (next() * next() * args.items as f64) as i64;
            (u, i)
        })
        .collect();
    let data = RecData {
        users: args.users,
        items: args.items,
        item_genre: (0..args.items).map(|i| 1 + i % 20).collect(),
        genres: 21,
        train,
        ..Default::default()
    };
    let config = RecommendConfig {
        epochs: args.epochs,
        patience: args.epochs + 1,
        batch_size: args.batch_size,
        ..RecommendConfig::default()
    };
    let mut per_epoch = Vec::new();
    recommend::train(&data, &config, Device::Cpu, &Default::default(), |r| {
        per_epoch.push(r.samples_per_second);
        true
    })?;
    println!(
        "{}",
        serde_json::json!({
            "engine": "encore (tch)",
            "model": "recommend",
            "rows": args.rows,
            "users": args.users,
            "items": args.items,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "samples_per_second": median_after_warmup(&per_epoch),
            "per_epoch": per_epoch,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(7);
    if args.model == "recommend" {
        return recommend(&args);
    }
    let train = rows(args.rows, args.numeric, &args.categories);
    let validation = rows(args.rows / 10, args.numeric, &args.categories);
    let schema = ChurnSchema {
        numeric: (0..args.numeric).map(|i| format!("f{i}")).collect(),
        categorical: args
            .categories
            .iter()
            .enumerate()
            .map(|(i, &c)| (format!("c{i}"), c))
            .collect(),
        horizons: vec![7, 15, 30],
    };
    let config = ChurnConfig {
        epochs: args.epochs,
        patience: args.epochs + 1,
        batch_size: args.batch_size,
        ..ChurnConfig::default()
    };
    let mut per_epoch = Vec::new();
    churn::train(
        schema,
        &train,
        &validation,
        &config,
        Device::Cpu,
        &TrainControl::default(),
        |r| {
            per_epoch.push(r.samples_per_second);
            true
        },
    )?;
    let median = median_after_warmup(&per_epoch);
    println!(
        "{}",
        serde_json::json!({
            "engine": "encore (tch)",
            "model": "churn",
            "rows": args.rows,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "hidden": config.hidden,
            "samples_per_second": median,
            "per_epoch": per_epoch,
        })
    );
    Ok(())
}
