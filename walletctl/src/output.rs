//! Human tables by default, JSON for scripts (`--output json`).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Rows under a header, printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .take(cols)
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let mut out = vec![line(&self.header)];
        out.extend(self.rows.iter().map(line));
        out.join("\n")
    }
}

impl Output {
    /// Prints `value` as JSON, or the table (and any lines after it) that
    /// `human` makes of it.
    pub fn emit<T: Serialize>(self, value: &T, human: impl FnOnce(&T) -> String) {
        match self {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable")
            ),
            Output::Table => println!("{}", human(value)),
        }
    }

    /// Progress and notes go to stderr, so stdout stays clean for scripts.
    pub fn note(self, line: impl AsRef<str>) {
        if self == Output::Table {
            eprintln!("{}", line.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let mut t = Table::new(&["id", "url"]);
        t.row(vec!["node-1".into(), "http://a".into()]);
        t.row(vec!["n2".into(), "http://bb".into()]);
        assert_eq!(
            t.render(),
            "id      url\nnode-1  http://a\nn2      http://bb"
        );
    }
}
