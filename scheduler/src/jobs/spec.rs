//! Checking a submitted job and filling in its defaults.
//!
//! The scheduler checks what it can without knowing the models: the kind,
//! paths, the cutoff date, the model name, horizons and attempts. The
//! executor checks hyperparameters against the model's settings when it
//! starts the job, and fails the job with the reason if they are invalid.

use chrono::NaiveDate;
use encore_proto::encore::v1::{JobKind, JobSpec};

/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// Largest `config_toml` accepted.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Churn horizons when none are given.
pub const DEFAULT_HORIZONS: [u32; 3] = [7, 15, 30];

/// Scheduler-side defaults for a spec.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Registry used when the spec names none.
    pub registry: Option<String>,
    /// Attempts when the spec says 0.
    pub max_attempts: u32,
}

/// A local folder from a path or `file://` URL; object-store URLs are not
/// read yet, and relative paths would depend on each executor's working
/// directory.
fn local_path(field: &str, uri: &str) -> Result<String, String> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() {
        return Err(format!("spec.{field} is required"));
    }
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(format!(
            "spec.{field} '{uri}': {scheme}:// is not supported yet; use a local path or file:// URL that every executor can read"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "spec.{field} '{uri}' must be an absolute path (executors do not share the client's working directory)"
        ));
    }
    Ok(path.to_owned())
}

/// Checks `spec` for a job of `kind` and returns it with defaults filled in;
/// the error names the offending field.
pub fn check(kind: i32, spec: Option<JobSpec>, defaults: &Defaults) -> Result<JobSpec, String> {
    let kind = match JobKind::try_from(kind) {
        Ok(JobKind::Churn) => JobKind::Churn,
        Ok(JobKind::Recommend) => JobKind::Recommend,
        Ok(JobKind::Unspecified) => {
            return Err("kind is required (JOB_KIND_CHURN or JOB_KIND_RECOMMEND)".into());
        }
        Err(_) => return Err(format!("kind {kind} is not a known job kind")),
    };
    let mut spec = spec.ok_or("spec is required")?;
    spec.data_uri = local_path("data_uri", &spec.data_uri)?;
    NaiveDate::parse_from_str(&spec.cutoff, "%Y-%m-%d").map_err(|e| {
        format!(
            "spec.cutoff '{}': expected a date YYYY-MM-DD ({e})",
            spec.cutoff
        )
    })?;
    if spec.registry_uri.is_empty() {
        spec.registry_uri = defaults.registry.clone().ok_or(
            "spec.registry_uri is required: this scheduler has no default registry (--registry)",
        )?;
    }
    // Registries may also live in S3 (executors and model servers reach it
    // with their own AWS_* settings); data must be local for now.
    if !spec.registry_uri.starts_with("s3://") {
        spec.registry_uri = local_path("registry_uri", &spec.registry_uri)?;
    }
    if spec.model_name.is_empty() {
        spec.model_name = match kind {
            JobKind::Recommend => "recommend",
            _ => "churn",
        }
        .into();
    }
    encore_common::names::check_model_name(&spec.model_name)
        .map_err(|e| format!("spec.model_name: {e}"))?;
    if kind == JobKind::Churn {
        if spec.horizons_days.is_empty() {
            spec.horizons_days = DEFAULT_HORIZONS.to_vec();
        }
        if let Some(h) = spec.horizons_days.iter().find(|h| !(1..=365).contains(*h)) {
            return Err(format!("spec.horizons_days: {h} is outside 1..=365 days"));
        }
        spec.horizons_days.sort_unstable();
        if spec.horizons_days.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!(
                "spec.horizons_days {:?} has duplicates",
                spec.horizons_days
            ));
        }
    } else if !spec.horizons_days.is_empty() {
        return Err("spec.horizons_days is for churn jobs only".into());
    }
    if let Some(key) = spec.hyperparameters.keys().find(|k| k.trim().is_empty()) {
        return Err(format!("spec.hyperparameters has an empty key ('{key}')"));
    }
    if spec.config_toml.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "spec.config_toml is {} bytes; the limit is {MAX_CONFIG_BYTES}",
            spec.config_toml.len()
        ));
    }
    match spec.promote.as_str() {
        "" => spec.promote = "if-better".into(),
        "never" | "if-better" | "always" => {}
        other => {
            return Err(format!(
                "spec.promote '{other}': expected never, if-better or always"
            ));
        }
    }
    if spec.max_attempts == 0 {
        spec.max_attempts = defaults.max_attempts;
    }
    if spec.max_attempts > MAX_ATTEMPTS {
        return Err(format!(
            "spec.max_attempts {} is above the limit of {MAX_ATTEMPTS}",
            spec.max_attempts
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            registry: Some("/srv/registry".into()),
            max_attempts: 3,
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            data_uri: "file:///data/music".into(),
            cutoff: "2026-03-01".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = check(JobKind::Churn as i32, Some(spec()), &defaults()).unwrap();
        assert_eq!(s.data_uri, "/data/music");
        assert_eq!(s.registry_uri, "/srv/registry");
        // Registries may be in S3; they are kept as given.
        let s3 = JobSpec {
            registry_uri: "s3://bucket/registry".into(),
            ..spec()
        };
        let checked = check(1, Some(s3), &defaults()).unwrap();
        assert_eq!(checked.registry_uri, "s3://bucket/registry");
        assert_eq!(s.model_name, "churn");
        assert_eq!(s.horizons_days, [7, 15, 30]);
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.promote, "if-better");
        let r = check(JobKind::Recommend as i32, Some(spec()), &defaults()).unwrap();
        assert_eq!(r.model_name, "recommend");
        assert!(r.horizons_days.is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(i32, JobSpec, &str)> = vec![
            (0, spec(), "kind is required"),
            (9, spec(), "kind 9"),
            (
                2,
                JobSpec {
                    horizons_days: vec![7],
                    ..spec()
                },
                "horizons_days is for churn jobs only",
            ),
            (
                1,
                JobSpec {
                    cutoff: "2026-13-01".into(),
                    ..spec()
                },
                "spec.cutoff",
            ),
            (
                1,
                JobSpec {
                    data_uri: String::new(),
                    ..spec()
                },
                "spec.data_uri is required",
            ),
            (
                1,
                JobSpec {
                    data_uri: "s3://bucket/data".into(),
                    ..spec()
                },
                "s3:// is not supported",
            ),
            (
                1,
                JobSpec {
                    data_uri: "data".into(),
                    ..spec()
                },
                "absolute path",
            ),
            (
                1,
                JobSpec {
                    registry_uri: "gs://bucket/registry".into(),
                    ..spec()
                },
                "registry_uri 'gs://bucket/registry': gs:// is not supported",
            ),
            (
                1,
                JobSpec {
                    model_name: "Churn!".into(),
                    ..spec()
                },
                "spec.model_name",
            ),
            (
                1,
                JobSpec {
                    horizons_days: vec![7, 400],
                    ..spec()
                },
                "400 is outside",
            ),
            (
                1,
                JobSpec {
                    horizons_days: vec![7, 7],
                    ..spec()
                },
                "duplicates",
            ),
            (
                1,
                JobSpec {
                    max_attempts: 11,
                    ..spec()
                },
                "max_attempts 11",
            ),
            (
                1,
                JobSpec {
                    promote: "sometimes".into(),
                    ..spec()
                },
                "spec.promote 'sometimes'",
            ),
        ];
        for (kind, s, expected) in cases {
            let err = check(kind, Some(s), &defaults()).unwrap_err();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
        let no_registry = Defaults {
            registry: None,
            max_attempts: 1,
        };
        let err = check(1, Some(spec()), &no_registry).unwrap_err();
        assert!(err.contains("registry_uri is required"), "{err}");
        assert!(
            check(1, None, &defaults())
                .unwrap_err()
                .contains("spec is required")
        );
    }
}
