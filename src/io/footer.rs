//! A guard in front of the parquet crate's footer decoder.
//!
//! parquet 60.1 skips the elements of a boolean list or set, or of a map of booleans, in
//! a field it does not know as zero bytes each. The Thrift compact protocol writes one
//! byte each. So a footer of a few hundred bytes can declare lists of up to 2³¹ booleans,
//! and the decoder loops that often over nothing: 4.7 s for one such list in a 556-byte
//! file, and about that again for every further list (found by fuzzing).
//!
//! [`check`] walks the footer as the compact protocol specifies, in time linear in its
//! bytes: every element it steps over consumes at least one byte. It refuses a footer that
//! holds a non-empty collection of booleans. No Parquet writer puts one in `FileMetaData`,
//! and the crate would misread one anyway, since it takes the elements as zero bytes and
//! reads on from the wrong place. Where the walk cannot follow the bytes (a type it does
//! not know, the end of the buffer, nesting deeper than the crate allows), it stops
//! without judging and leaves the file to the crate's own checks.
//!
//! The crate reads known fields by their schema type, not their wire type. A footer that
//! gives a known field the wrong wire type can therefore still lead the crate somewhere
//! this walk did not go. That case is left to the crate.

/// The compact protocol's value types (field headers and collection elements).
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

/// The crate's own nesting limit for skipped fields.
const MAX_DEPTH: u32 = 64;

enum Stop {
    /// The footer is refused, for this reason.
    Refused(String),
    /// The walk cannot go on; the crate decides.
    Unsure,
}

struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Walk<'_> {
    fn byte(&mut self) -> Result<u8, Stop> {
        let v = *self.b.get(self.pos).ok_or(Stop::Unsure)?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, Stop> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Stop::Unsure)
    }

    fn skip(&mut self, n: u64) -> Result<(), Stop> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.b.len() as u64).ok_or(Stop::Unsure)?;
        self.pos = end as usize;
        Ok(())
    }

    fn refuse_booleans(&self, n: u64, what: &str) -> Result<(), Stop> {
        Err(Stop::Refused(format!(
            "declares a {what} of {n} booleans at byte {} (no Parquet writer writes one)",
            self.pos
        )))
    }

    fn value(&mut self, t: u8, depth: u32) -> Result<(), Stop> {
        match t {
            // A boolean field's value is in its header.
            BOOL_TRUE | BOOL_FALSE => Ok(()),
            BYTE => self.skip(1),
            I16 | I32 | I64 => self.varint().map(|_| ()),
            DOUBLE => self.skip(8),
            BINARY => {
                let n = self.varint()?;
                self.skip(n)
            }
            LIST | SET => {
                let h = self.byte()?;
                if h == 0 {
                    // Some writers write an empty list as one zero byte.
                    return Ok(());
                }
                let et = h & 0x0f;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => n as u64,
                };
                if n > 0 && matches!(et, BOOL_TRUE | BOOL_FALSE) {
                    return self.refuse_booleans(n, "list");
                }
                self.elements(n, &[et], depth)
            }
            MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                let (kt, vt) = (kv >> 4, kv & 0x0f);
                if matches!(kt, BOOL_TRUE | BOOL_FALSE) || matches!(vt, BOOL_TRUE | BOOL_FALSE) {
                    return self.refuse_booleans(n, "map");
                }
                self.elements(n, &[kt, vt], depth)
            }
            STRUCT => self.fields(depth + 1),
            UUID => self.skip(16),
            _ => Err(Stop::Unsure),
        }
    }

    /// `n` elements of the given types: each consumes at least a byte (booleans are
    /// refused before), so the loop ends at the buffer's end at the latest.
    fn elements(&mut self, n: u64, types: &[u8], depth: u32) -> Result<(), Stop> {
        if depth + 1 > MAX_DEPTH {
            return Err(Stop::Unsure);
        }
        for _ in 0..n {
            for &t in types {
                self.value(t, depth + 1)?;
            }
        }
        Ok(())
    }

    fn fields(&mut self, depth: u32) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Unsure);
        }
        loop {
            let h = self.byte()?;
            // As the crate reads it: a zero type ends the struct, whatever the delta.
            if h & 0x0f == 0 {
                return Ok(());
            }
            if h >> 4 == 0 {
                self.varint()?; // the field id, in full
            }
            self.value(h & 0x0f, depth)?;
        }
    }
}

/// Check a Parquet footer (the Thrift `FileMetaData` bytes, without the length and the
/// magic). `Err` says why the footer is refused.
pub(crate) fn check(footer: &[u8]) -> Result<(), String> {
    match (Walk { b: footer, pos: 0 }).fields(0) {
        Ok(()) | Err(Stop::Unsure) => Ok(()),
        Err(Stop::Refused(why)) => Err(why),
    }
}

/// The footer's byte range in a file of `len` bytes, from its last 8 bytes (the
/// footer's length and the magic `PAR1`); `None` where they are not a plain footer (an
/// encrypted one, a truncated file): the crate reports those itself.
pub(crate) fn range(len: u64, tail: &[u8]) -> Option<std::ops::Range<u64>> {
    if tail.len() != 8 || &tail[4..] != b"PAR1" {
        return None;
    }
    let n = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
    let start = len.checked_sub(8 + n)?;
    Some(start..len - 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_booleans_is_refused_and_other_values_pass() {
        // Field 1 (delta 1), a list of 2^31 - 1 booleans: header 0xF1, then the size.
        let mut bad = vec![0x19, 0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00];
        assert!(check(&bad).unwrap_err().contains("2147483647 booleans"));
        // The same inside a nested struct, and as a map of booleans.
        bad = vec![0x1C, 0x19, 0xF2, 0x80, 0x01, 0x00, 0x00];
        assert!(check(&bad).is_err());
        assert!(check(&[0x1B, 0x05, 0x11, 0x00]).is_err());
        // A footer-like struct: i32, a list of two structs with a string, a bool field,
        // an empty list written as 0, a double; then the end.
        let ok = [
            0x15, 0x04, 0x19, 0x2C, 0x18, 0x01, b'a', 0x00, 0x18, 0x01, b'b', 0x00, 0x11, 0x19, 0x00, 0x17, 0, 0, 0, 0,
            0, 0, 0xF0, 0x3F, 0x00,
        ];
        assert_eq!(check(&ok), Ok(()));
        // A list of a huge size of bytes ends at the buffer's end: not judged.
        assert_eq!(check(&[0x19, 0xF3, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 1, 2, 3]), Ok(()));
    }

    #[test]
    fn the_footer_range_comes_from_the_tail() {
        let mut tail = 100u32.to_le_bytes().to_vec();
        tail.extend_from_slice(b"PAR1");
        assert_eq!(range(1000, &tail), Some(892..992));
        assert_eq!(range(50, &tail), None);
        tail[4] = b'X';
        assert_eq!(range(1000, &tail), None);
    }
}
