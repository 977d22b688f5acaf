//! `fim sql "SELECT ..."`: one statement on a read-only connection.

use std::io::Write;

use anyhow::Result;
use rusqlite::types::Value as Sql;
use serde_json::{Value, json};

use super::Table;
use crate::baseline::display_path;
use crate::store::ReadOnlyStore;

fn text(value: &Sql) -> String {
    match value {
        Sql::Null => String::new(),
        Sql::Integer(i) => i.to_string(),
        Sql::Real(f) => f.to_string(),
        Sql::Text(t) => t.clone(),
        // Paths are BLOBs: shown as text, invalid bytes escaped.
        Sql::Blob(b) => display_path(b),
    }
}

fn json_value(value: &Sql) -> Value {
    match value {
        Sql::Null => Value::Null,
        Sql::Integer(i) => json!(i),
        Sql::Real(f) => json!(f),
        Sql::Text(t) => json!(t),
        Sql::Blob(b) => json!(display_path(b)),
    }
}

pub fn sql(store: &ReadOnlyStore, statement: &str, json_out: bool) -> Result<()> {
    let result = store.query(statement)?;
    let mut out = std::io::stdout().lock();
    if json_out {
        for row in &result.rows {
            let object: serde_json::Map<String, Value> = result
                .columns
                .iter()
                .cloned()
                .zip(row.iter().map(json_value))
                .collect();
            writeln!(out, "{}", Value::Object(object))?;
        }
        return Ok(());
    }
    let headers: Vec<&str> = result.columns.iter().map(String::as_str).collect();
    let mut table = Table::new(&headers);
    for row in &result.rows {
        table.row(row.iter().map(text).collect());
    }
    table.print(&mut out)?;
    Ok(())
}
