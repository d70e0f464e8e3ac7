//! The check that an id column names every subscriber once, fed batch by batch so that
//! it can run inside the pass that reads the features (one read of the input, not two).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use foldhash::fast::RandomState;

use crate::error::{Error, Result};

/// Ids seen so far, with the input row each was first seen at. Integer ids are kept as
/// integers, others as text; nulls are not ids.
pub struct UniqueIds {
    column: String,
    integer: bool,
    ints: HashMap<i64, u64, RandomState>,
    texts: HashMap<String, u64, RandomState>,
    row: u64,
}

impl UniqueIds {
    /// A checker for `column`, of Arrow type `dt` in the input.
    pub fn new(column: &str, dt: &DataType) -> Self {
        UniqueIds {
            column: column.to_string(),
            integer: dt.is_integer(),
            ints: HashMap::default(),
            texts: HashMap::default(),
            row: 0,
        }
    }

    /// Take the next batch's ids (read from `path`); the first id seen twice is an error
    /// that names both input rows.
    pub fn add(&mut self, ids: &ArrayRef, path: &Path) -> Result<()> {
        let id = &self.column;
        let to = if self.integer { DataType::Int64 } else { DataType::Utf8 };
        let a = arrow::compute::cast(ids, &to)
            .map_err(|e| Error::input(path, format!("column '{id}' cannot be read as ids: {e}")))?;
        for i in 0..a.len() {
            if a.is_null(i) {
                continue;
            }
            let r = self.row + i as u64;
            let (shown, first) = if self.integer {
                let v = a.as_primitive::<Int64Type>().value(i);
                match self.ints.entry(v) {
                    Entry::Occupied(o) => (v.to_string(), *o.get()),
                    Entry::Vacant(e) => {
                        e.insert(r);
                        continue;
                    }
                }
            } else {
                let v = a.as_string::<i32>().value(i);
                match self.texts.entry(v.to_string()) {
                    Entry::Occupied(o) => (format!("'{v}'"), *o.get()),
                    Entry::Vacant(e) => {
                        e.insert(r);
                        continue;
                    }
                }
            };
            return Err(Error::input(
                path,
                format!(
                    "column '{id}' holds the id {shown} twice (rows {first} and {r} of the input): a subscriber \
                     table has one row per subscriber; remove the duplicates upstream, or pass \
                     --allow-duplicate-ids to use every row as given"
                ),
            ));
        }
        self.row += a.len() as u64;
        Ok(())
    }
}
