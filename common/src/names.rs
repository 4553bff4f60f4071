//! Names users choose that end up as folder names (models in the registry).

/// Checks a model name: `[a-z0-9][a-z0-9_-]{0,63}`, so it is safe as a
/// folder name and in URLs. The error says what is allowed.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model name '{name}': use [a-z0-9][a-z0-9_-]{{0,63}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_lowercase_folder_safe() {
        for ok in ["churn", "churn-v2", "a", "rec_2026"] {
            assert!(check_model_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Churn", "../x", "_hidden", "-x", "a b", &"x".repeat(65)] {
            let err = check_model_name(bad).unwrap_err();
            assert!(err.contains("[a-z0-9]"), "{err}");
        }
    }
}
