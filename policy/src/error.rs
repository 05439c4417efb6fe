//! Load errors: every one carries the file, line and column it is about, and the text of that
//! line so it can be shown with a caret under the offending value.

use std::fmt;

use serde::Serialize;

/// One problem found while loading policy sources.
///
/// `Display` prints `file:line:column: message`, then the offending line and a caret under the
/// column. Lines and columns start at 1 and count characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadError {
    /// The source name given to `load`, usually the file path.
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column, in characters.
    pub column: u64,
    /// What is wrong, naming the field or value.
    pub message: String,
    /// The text of the offending line, without its line ending.
    #[serde(skip)]
    pub snippet: String,
}

impl LoadError {
    /// Builds an error at `line:column` of `text`, copying the offending line as the snippet.
    pub(crate) fn at(file: &str, text: &str, line: u64, column: u64, message: String) -> Self {
        let line = line.max(1);
        let snippet = line_text(text, line).to_owned();
        LoadError {
            file: file.to_owned(),
            line,
            column: column.max(1),
            message,
            snippet,
        }
    }
}

/// The text of 1-based line `line`, without `\r\n` or `\n`; empty when out of range.
fn line_text(text: &str, line: u64) -> &str {
    let index = usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX);
    text.split('\n')
        .nth(index)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or("")
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        writeln!(f, "  {}", self.snippet)?;
        // The caret sits under the column; tabs are copied so it lines up in a terminal.
        let mut pad = String::new();
        let before = usize::try_from(self.column.saturating_sub(1)).unwrap_or(usize::MAX);
        for c in self.snippet.chars().take(before) {
            pad.push(if c == '\t' { '\t' } else { ' ' });
        }
        let missing = before.saturating_sub(self.snippet.chars().count());
        pad.extend(std::iter::repeat_n(' ', missing));
        writeln!(f, "  {pad}^")
    }
}

impl std::error::Error for LoadError {}

/// Every problem found in one `load` call, in source order.
///
/// `Display` prints one [`LoadError`] block per problem; `Serialize` gives a JSON array of
/// `{file, line, column, message}` objects for `--format json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LoadErrors {
    errors: Vec<LoadError>,
}

impl LoadErrors {
    pub(crate) fn new(mut errors: Vec<LoadError>) -> Self {
        errors.dedup();
        LoadErrors { errors }
    }

    /// The errors, in source order.
    pub fn errors(&self) -> &[LoadError] {
        &self.errors
    }

    /// How many errors there are (never zero).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: a `LoadErrors` holds at least one error.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, LoadError> {
        self.errors.iter()
    }
}

impl<'a> IntoIterator for &'a LoadErrors {
    type Item = &'a LoadError;
    type IntoIter = std::slice::Iter<'a, LoadError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

#[cfg(test)]
mod tests;
