//! The YAML library's error as one cause: its message without the library's own location
//! (" at line L, column C") and snippet, which every caller prints in front in its own
//! `file:line:column` form (sidecar configuration, policy files, Kubernetes manifests).

/// The message of `e`, once, without location or snippet.
pub fn error_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let trimmed = match text.rfind(" at line ") {
        Some(i) if text[i..].contains(", column ") => &text[..i],
        _ => text.as_str(),
    };
    trimmed
        .strip_suffix(", set DuplicateKeyPolicy in Options if acceptable")
        .unwrap_or(trimmed)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::error_message;

    #[test]
    fn the_message_is_said_once_without_location_or_snippet() -> Result<(), String> {
        let mut options = serde_saphyr::Options::default();
        options.with_snippet = false;
        let Err(e) = serde_saphyr::from_str_with_options::<BTreeMap<String, Vec<String>>>(
            "a: b\nkind: [x\n",
            options,
        ) else {
            return Err("an unclosed bracket parsed".into());
        };
        let message = error_message(&e);
        assert!(!message.is_empty());
        assert!(
            !message.contains(" at line ") && !message.contains("-->") && !message.contains('\n'),
            "{message}"
        );
        Ok(())
    }
}
