//! Privacy: ids replaced by a keyed hash in every output (the key comes from the
//! environment and is never stored), so assignments can leave the building without
//! the raw subscriber ids; the same key gives the same pseudonym, so files still join.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Environment variable holding the pseudonymisation key (at least 16 bytes).
pub const KEY_ENV: &str = "MICROSEG_ID_KEY";

pub struct Pseudonymizer {
    key: Vec<u8>,
}

impl Pseudonymizer {
    pub fn from_env() -> Result<Self> {
        let key = std::env::var(KEY_ENV).map_err(|_| {
            Error::Usage(format!(
                "--pseudonymize-ids needs a secret key in {KEY_ENV} (16 bytes or more); it is never written anywhere"
            ))
        })?;
        if key.len() < 16 {
            return Err(Error::Usage(format!("{KEY_ENV} is shorter than 16 bytes; use a longer secret")));
        }
        Ok(Pseudonymizer { key: key.into_bytes() })
    }

    /// HMAC-SHA-256 of the id's text, first 16 bytes as hex.
    pub fn pseudonym(&self, id: &str) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(id.as_bytes());
        m.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Replace an id column (any type, read as text); nulls stay null.
    pub fn apply(&self, ids: &ArrayRef) -> Result<ArrayRef> {
        let s = cast(ids, &DataType::Utf8).map_err(|e| Error::Data(format!("id column: {e}")))?;
        let s = s.as_string::<i32>();
        Ok(Arc::new((0..s.len()).map(|i| (!s.is_null(i)).then(|| self.pseudonym(s.value(i)))).collect::<StringArray>()))
    }
}
