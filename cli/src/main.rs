//! `encore`: the command line of the Encore cluster.
//!
//! Every command prints one clear `error: ...` line and exits non-zero on
//! bad input; long work shows progress on stderr.

// The doc comments of the command and argument structs are `--help` text,
// written for a terminal (`<out>/plays`, `[scheduler]`), not rustdoc.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod cluster;
mod commands;
mod output;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: hash aggregations and shuffle buffers
/// allocate and free large blocks all the time, which glibc hands back to
/// the kernel (page faults, zeroed pages) and mimalloc reuses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encore: compute and model serving for music-streaming data teams.
#[derive(Parser, Debug)]
#[command(name = "encore", version, propagate_version = true)]
struct Cli {
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Sql(commands::sql::Args),
    Standalone(commands::standalone::Args),
    Demo(commands::demo::Args),
    Datagen(commands::datagen::Args),
    Import(commands::import::Args),
    Ingest(commands::ingest::Args),
    Clean(commands::clean::Args),
    Features(commands::features::Args),
    Segments(commands::segments::Args),
    Train(commands::train::Args),
    Jobs(commands::jobs::Args),
    Models(commands::models::Args),
    Eval(commands::eval::Args),
}

fn main() {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        // The in-process executor's poll loop warns once when the in-process
        // scheduler stops first at exit; in one process that is not news.
        0 => "warn,ballista_executor::execution_loop=error",
        1 => "info",
        _ => "debug",
    };
    encore_common::process::init_logging(default_level);
    let runtime = encore_common::process::runtime();
    let result = match runtime {
        Ok(rt) => rt.block_on(async {
            match cli.command {
                Command::Sql(args) => commands::sql::run(args).await,
                Command::Standalone(args) => commands::standalone::run(args).await,
                Command::Demo(args) => commands::demo::run(args).await,
                Command::Datagen(args) => commands::datagen::run(args).await,
                Command::Import(args) => commands::import::run(args).await,
                Command::Ingest(args) => commands::ingest::run(args).await,
                Command::Clean(args) => commands::clean::run(args).await,
                Command::Features(args) => commands::features::run(args).await,
                Command::Segments(args) => commands::segments::run(args).await,
                Command::Train(args) => commands::train::run(args).await,
                Command::Jobs(args) => commands::jobs::run(args).await,
                Command::Models(args) => commands::models::run(args).await,
                Command::Eval(args) => commands::eval::run(args).await,
            }
        }),
        Err(e) => Err(anyhow::anyhow!("cannot start the tokio runtime: {e}")),
    };
    if let Err(e) = result {
        // One line, whatever the error chain looks like.
        let mut message = format!("{e:#}").replace('\n', " ");
        if message.ends_with("failed: Cancelled") {
            message.push_str(
                " (the scheduler cancels queries that lose an executor mid-way; run it again)",
            );
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
