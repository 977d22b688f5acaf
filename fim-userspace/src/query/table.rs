//! Aligned text tables whose cells never carry raw control characters.

use std::io::Write;

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A cell's text with control characters escaped (`\n`, `\t`, `\x1b`, ...).
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
            let last = cells.len().saturating_sub(1);
            for (i, c) in cells.iter().enumerate() {
                if i == last {
                    writeln!(out, "{c}")?;
                } else {
                    let pad = widths[i] - c.chars().count();
                    write!(out, "{c}{}  ", " ".repeat(pad))?;
                }
            }
            Ok(())
        };
        line(out, &self.headers)?;
        for row in &self.rows {
            line(out, row)?;
        }
        Ok(())
    }
}
