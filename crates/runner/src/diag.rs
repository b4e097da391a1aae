//! Positioned, actionable error messages for user input.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem: where, what, and what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a position.
    pub pos: Option<(usize, usize)>,
    pub message: String,
    pub help: String,
}

impl Diagnostic {
    /// A problem with a whole file.
    pub fn file(path: &Path, message: String, help: &str) -> Self {
        Diagnostic {
            file: path.to_path_buf(),
            pos: None,
            message,
            help: help.to_string(),
        }
    }
}

/// Always one line: a control character anywhere (a newline in a quoted
/// value, in a file name) is written escaped.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.file.display().to_string();
        if let Some((l, c)) = self.pos {
            line.push_str(&format!(":{l}:{c}"));
        }
        line.push_str(&format!(": {}", self.message));
        if !self.help.is_empty() {
            line.push_str(&format!(" (help: {})", self.help));
        }
        f.write_str(&escape_controls(&line))
    }
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A value from the input as a message quotes it: control characters
/// escaped, and cut after 40 characters.
pub fn shown(v: &str) -> String {
    const MAX: usize = 40;
    let cut: String = v.chars().take(MAX).collect();
    let more = v.chars().count() > MAX;
    format!("{}{}", escape_controls(&cut), if more { "…" } else { "" })
}

/// Every problem found in the input, in file order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn one(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn into_result<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0
                .sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "error: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A file's text, for turning byte spans into line:col.
pub struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> SourceFile<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        SourceFile { path, text }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..self.text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, col)
    }

    pub fn at(&self, span: Range<usize>, message: String, help: &str) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            pos: Some(self.line_col(span.start)),
            message,
            help: help.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let s = SourceFile::new(Path::new("f"), "ab\nçd = 1\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        assert_eq!(s.line_col(5), (2, 2));
        assert_eq!(s.line_col(999), (3, 1));
    }

    #[test]
    fn a_diagnostic_is_one_line_and_long_values_are_cut() {
        let d = s_at("name `a\nb`");
        assert_eq!(d.to_string(), "f:1:1: name `a\\nb` (help: h)");
        assert_eq!(shown(&"x".repeat(5000)).chars().count(), 41);
        assert_eq!(shown("a\tb"), "a\\tb");
    }

    fn s_at(msg: &str) -> Diagnostic {
        SourceFile::new(Path::new("f"), "").at(0..0, msg.into(), "h")
    }
}
