//! Multi-process tests: the real `encore-scheduler`, `encore-executor` and
//! `encore` binaries on 127.0.0.1 with free ports.

mod cli;
mod eval;
mod executor_loss;
mod jobs;
mod metrics;
mod plans;
mod registry_s3;
mod shuffle;
mod training;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ballista::prelude::SessionContextExt;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use encore_features::datagen::{DataSpec, generate};
use encore_features::tables::{self, TableSource};

/// Generated once per test binary: users, items and 6 days of plays (6 files).
pub fn data_dir() -> &'static Path {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = DataSpec {
            users: 400,
            items: 2_000,
            days: 6,
            seed: 11,
            ..Default::default()
        };
        generate(&spec, dir.path(), |_, _| {}).expect("generating test data");
        dir
    })
    .path()
}

/// The canonical tables of [`data_dir`].
pub fn tables() -> Vec<TableSource> {
    ["users", "items", "plays", "payments", "interactions"]
        .into_iter()
        .map(|name| TableSource {
            name: name.into(),
            path: data_dir().join(name),
        })
        .collect::<Vec<_>>()
}

/// A session on `url` (or in this process when `None`) with [`tables`] registered.
pub async fn session(url: Option<&str>) -> SessionContext {
    let ctx = match url {
        Some(url) => SessionContext::remote(url).await.expect("remote session"),
        None => SessionContext::new(),
    };
    for t in tables() {
        tables::register(&ctx, &t)
            .await
            .expect("registering a table");
    }
    ctx
}

/// Runs `sql` and renders the result as text (queries carry ORDER BY).
pub async fn run(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("planning {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("running {sql}: {e}"));
    pretty_format_batches(&batches)
        .expect("formatting")
        .to_string()
}

/// A path under a fresh temporary folder that lives as long as the returned guard.
pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    (dir, path)
}
