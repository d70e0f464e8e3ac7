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
//! reads on from the wrong place.
//!
//! The crate reads the fields it knows by their schema type, whatever type the wire
//! says, and skips the others by their wire type. The walk therefore carries the schema
//! of every struct the crate reads ([`FILE_METADATA`] and what it holds, from the crate's
//! own definitions) and refuses a known field, or a known list's elements, whose wire
//! type is not the schema's. Once no known field disagrees, reading by schema and
//! skipping by wire type step over the same bytes, so the walk goes where the crate
//! goes. (A fuzzed footer that sent a known string field as a boolean led the crate, and
//! not the walk, into such a list.) Varints are read as the crate reads them (any
//! length, bits past 64 wrapping round), and skipped values nest at most as deep as the
//! crate's skip allows. Where the walk cannot follow the bytes (a type it does not know,
//! the end of the buffer, a size the crate refuses), the crate stops with an error at
//! the same place or earlier, so the walk stops without judging and leaves it to the
//! crate.

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

/// The crate's nesting limit for a skipped value (`DEFAULT_SKIP_DEPTH`).
const SKIP_DEPTH: u32 = 64;

/// A field's type in the crate's schema (enums are `I32`, unions are structs).
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    I8,
    I16,
    I32,
    I64,
    Double,
    Binary,
    List(&'static Ty),
    Struct(&'static Schema),
}

/// A struct the crate reads: its name (for the message) and its known fields.
struct Schema {
    name: &'static str,
    fields: &'static [(i16, Ty)],
}

impl Ty {
    /// Whether a value of wire type `wire` is read over the same bytes as this type.
    fn accepts(self, wire: u8) -> bool {
        match self {
            Ty::Bool => matches!(wire, BOOL_TRUE | BOOL_FALSE),
            Ty::I8 => wire == BYTE,
            Ty::I16 => wire == I16,
            Ty::I32 => wire == I32,
            Ty::I64 => wire == I64,
            Ty::Double => wire == DOUBLE,
            Ty::Binary => wire == BINARY,
            Ty::List(_) => matches!(wire, LIST | SET),
            Ty::Struct(_) => wire == STRUCT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::I8 => "a byte",
            Ty::I16 | Ty::I32 | Ty::I64 => "an integer",
            Ty::Double => "a double",
            Ty::Binary => "a string",
            Ty::List(_) => "a list",
            Ty::Struct(s) => s.name,
        }
    }
}

fn wire_name(wire: u8) -> &'static str {
    match wire {
        BOOL_TRUE | BOOL_FALSE => "a boolean",
        BYTE => "a byte",
        I16 | I32 | I64 => "an integer",
        DOUBLE => "a double",
        BINARY => "a string",
        LIST | SET => "a list",
        MAP => "a map",
        STRUCT => "a struct",
        _ => "a UUID",
    }
}

// The footer's structs as parquet 60.1 reads them (`file/metadata/thrift/mod.rs`,
// `basic.rs`, `file/metadata/mod.rs`, `file/column_crypto_metadata.rs`, the encryption
// structs), with the fields it skips as well: knowing more fields than the crate only
// refuses more malformed footers.
const fn st(name: &'static str, fields: &'static [(i16, Ty)]) -> Schema {
    Schema { name, fields }
}
const EMPTY: Schema = st("an empty struct", &[]);
const E: Ty = Ty::Struct(&EMPTY);
const TIME_UNIT: Schema = st("TimeUnit", &[(1, E), (2, E), (3, E)]);
const DECIMAL: Schema = st("DecimalType", &[(1, Ty::I32), (2, Ty::I32)]);
const TIME: Schema = st("TimeType", &[(1, Ty::Bool), (2, Ty::Struct(&TIME_UNIT))]);
const INT_TYPE: Schema = st("IntType", &[(1, Ty::I8), (2, Ty::Bool)]);
const VARIANT: Schema = st("VariantType", &[(1, Ty::I8)]);
const GEOMETRY: Schema = st("GeometryType", &[(1, Ty::Binary)]);
const GEOGRAPHY: Schema = st("GeographyType", &[(1, Ty::Binary), (2, Ty::I32)]);
#[rustfmt::skip]
const LOGICAL_TYPE: Schema = st("LogicalType", &[
    (1, E), (2, E), (3, E), (4, E), (5, Ty::Struct(&DECIMAL)), (6, E), (7, Ty::Struct(&TIME)),
    (8, Ty::Struct(&TIME)), (10, Ty::Struct(&INT_TYPE)), (11, E), (12, E), (13, E), (14, E), (15, E),
    (16, Ty::Struct(&VARIANT)), (17, Ty::Struct(&GEOMETRY)), (18, Ty::Struct(&GEOGRAPHY)), (19, E),
]);
#[rustfmt::skip]
const SCHEMA_ELEMENT: Schema = st("SchemaElement", &[
    (1, Ty::I32), (2, Ty::I32), (3, Ty::I32), (4, Ty::Binary), (5, Ty::I32), (6, Ty::I32), (7, Ty::I32),
    (8, Ty::I32), (9, Ty::I32), (10, Ty::Struct(&LOGICAL_TYPE)),
]);
#[rustfmt::skip]
const STATISTICS: Schema = st("Statistics", &[
    (1, Ty::Binary), (2, Ty::Binary), (3, Ty::I64), (4, Ty::I64), (5, Ty::Binary), (6, Ty::Binary),
    (7, Ty::Bool), (8, Ty::Bool), (9, Ty::I64),
]);
#[rustfmt::skip]
const BOUNDING_BOX: Schema = st("BoundingBox", &[
    (1, Ty::Double), (2, Ty::Double), (3, Ty::Double), (4, Ty::Double), (5, Ty::Double), (6, Ty::Double),
    (7, Ty::Double), (8, Ty::Double),
]);
const GEO_STATISTICS: Schema = st("GeospatialStatistics", &[(1, Ty::Struct(&BOUNDING_BOX)), (2, Ty::List(&Ty::I32))]);
const SIZE_STATISTICS: Schema = st("SizeStatistics", &[(1, Ty::I64), (2, Ty::List(&Ty::I64)), (3, Ty::List(&Ty::I64))]);
const KEY_VALUE: Schema = st("KeyValue", &[(1, Ty::Binary), (2, Ty::Binary)]);
const PAGE_ENCODING_STATS: Schema = st("PageEncodingStats", &[(1, Ty::I32), (2, Ty::I32), (3, Ty::I32)]);
const SORTING_COLUMN: Schema = st("SortingColumn", &[(1, Ty::I32), (2, Ty::Bool), (3, Ty::Bool)]);
const COLUMN_KEY: Schema = st("EncryptionWithColumnKey", &[(1, Ty::List(&Ty::Binary)), (2, Ty::Binary)]);
const COLUMN_CRYPTO: Schema = st("ColumnCryptoMetaData", &[(1, E), (2, Ty::Struct(&COLUMN_KEY))]);
const AES: Schema = st("AesGcmV1", &[(1, Ty::Binary), (2, Ty::Binary), (3, Ty::Bool)]);
const ENCRYPTION: Schema = st("EncryptionAlgorithm", &[(1, Ty::Struct(&AES)), (2, Ty::Struct(&AES))]);
#[rustfmt::skip]
const COLUMN_METADATA: Schema = st("ColumnMetaData", &[
    (1, Ty::I32), (2, Ty::List(&Ty::I32)), (3, Ty::List(&Ty::Binary)), (4, Ty::I32), (5, Ty::I64),
    (6, Ty::I64), (7, Ty::I64), (8, Ty::List(&Ty::Struct(&KEY_VALUE))), (9, Ty::I64), (10, Ty::I64),
    (11, Ty::I64), (12, Ty::Struct(&STATISTICS)), (13, Ty::List(&Ty::Struct(&PAGE_ENCODING_STATS))),
    (14, Ty::I64), (15, Ty::I32), (16, Ty::Struct(&SIZE_STATISTICS)), (17, Ty::Struct(&GEO_STATISTICS)),
]);
#[rustfmt::skip]
const COLUMN_CHUNK: Schema = st("ColumnChunk", &[
    (1, Ty::Binary), (2, Ty::I64), (3, Ty::Struct(&COLUMN_METADATA)), (4, Ty::I64), (5, Ty::I32),
    (6, Ty::I64), (7, Ty::I32), (8, Ty::Struct(&COLUMN_CRYPTO)), (9, Ty::Binary),
]);
#[rustfmt::skip]
const ROW_GROUP: Schema = st("RowGroup", &[
    (1, Ty::List(&Ty::Struct(&COLUMN_CHUNK))), (2, Ty::I64), (3, Ty::I64),
    (4, Ty::List(&Ty::Struct(&SORTING_COLUMN))), (5, Ty::I64), (6, Ty::I64), (7, Ty::I16),
]);
const COLUMN_ORDER: Schema = st("ColumnOrder", &[(1, E), (2, E), (3, E)]);
#[rustfmt::skip]
const FILE_METADATA: Schema = st("FileMetaData", &[
    (1, Ty::I32), (2, Ty::List(&Ty::Struct(&SCHEMA_ELEMENT))), (3, Ty::I64),
    (4, Ty::List(&Ty::Struct(&ROW_GROUP))), (5, Ty::List(&Ty::Struct(&KEY_VALUE))), (6, Ty::Binary),
    (7, Ty::List(&Ty::Struct(&COLUMN_ORDER))), (8, Ty::Struct(&ENCRYPTION)), (9, Ty::Binary),
]);

// Page headers, read from the column chunks (`PageHeader` and what it holds).
#[rustfmt::skip]
const DATA_PAGE: Schema = st("DataPageHeader", &[
    (1, Ty::I32), (2, Ty::I32), (3, Ty::I32), (4, Ty::I32), (5, Ty::Struct(&STATISTICS)),
]);
const INDEX_PAGE: Schema = st("IndexPageHeader", &[]);
const DICTIONARY_PAGE: Schema = st("DictionaryPageHeader", &[(1, Ty::I32), (2, Ty::I32), (3, Ty::Bool)]);
#[rustfmt::skip]
const DATA_PAGE_V2: Schema = st("DataPageHeaderV2", &[
    (1, Ty::I32), (2, Ty::I32), (3, Ty::I32), (4, Ty::I32), (5, Ty::I32), (6, Ty::I32), (7, Ty::Bool),
    (8, Ty::Struct(&STATISTICS)),
]);
#[rustfmt::skip]
const PAGE_HEADER: Schema = st("PageHeader", &[
    (1, Ty::I32), (2, Ty::I32), (3, Ty::I32), (4, Ty::I32), (5, Ty::Struct(&DATA_PAGE)),
    (6, Ty::Struct(&INDEX_PAGE)), (7, Ty::Struct(&DICTIONARY_PAGE)), (8, Ty::Struct(&DATA_PAGE_V2)),
]);
/// PageHeader's `compressed_page_size`: the bytes of the page after its header.
const COMPRESSED_PAGE_SIZE: i16 = 3;

enum Stop {
    /// The footer is refused, for this reason.
    Refused(String),
    /// The walk cannot go on; the crate stops with an error here or earlier.
    Unsure,
    /// The bytes ended. The crate's slice reader (the footer) stops there with an error;
    /// its stream reader (page headers) does not: a skip past the end of the file reads
    /// nothing and goes on, once per element of a list of up to 2³¹ (a fuzz timeout).
    End,
}

struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Walk<'_> {
    fn byte(&mut self) -> Result<u8, Stop> {
        let v = *self.b.get(self.pos).ok_or(Stop::End)?;
        self.pos += 1;
        Ok(v)
    }

    /// A ULEB128 varint as the crate reads it: any number of bytes, each shifted by a
    /// further 7 bits modulo 64.
    fn varint(&mut self) -> Result<u64, Stop> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64).wrapping_shl(shift);
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift = shift.wrapping_add(7);
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), Stop> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.b.len() as u64).ok_or(Stop::End)?;
        self.pos = end as usize;
        Ok(())
    }

    fn refuse_booleans(&self, n: u64, what: &str) -> Result<(), Stop> {
        Err(Stop::Refused(format!(
            "declares a {what} of {n} booleans at byte {} (no Parquet writer writes one)",
            self.pos
        )))
    }

    /// A collection's size as the crate takes it: above `i32::MAX` it stops.
    fn size(&mut self) -> Result<u64, Stop> {
        let n = self.varint()?;
        if n > i32::MAX as u64 { Err(Stop::Unsure) } else { Ok(n) }
    }

    /// A list or set header: (element type, size). The crate reads one zero byte as an
    /// empty list and stops at an element type it does not know.
    fn list_header(&mut self) -> Result<(u8, u64), Stop> {
        let h = self.byte()?;
        if h == 0 {
            return Ok((BYTE, 0));
        }
        let et = h & 0x0f;
        if !(BOOL_TRUE..=UUID).contains(&et) {
            return Err(Stop::Unsure);
        }
        let n = match h >> 4 {
            15 => self.size()?,
            n => n as u64,
        };
        Ok((et, n))
    }

    /// A scalar value of wire type `t` (the same bytes whether read or skipped).
    fn scalar(&mut self, t: u8) -> Result<(), Stop> {
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
            UUID => self.skip(16),
            _ => Err(Stop::Unsure),
        }
    }

    /// A value the crate skips, by its wire type, with `left` levels of nesting allowed.
    fn skipped(&mut self, t: u8, left: u32) -> Result<(), Stop> {
        if left == 0 {
            return Err(Stop::Unsure);
        }
        match t {
            LIST | SET => {
                let (et, n) = self.list_header()?;
                if n > 0 && matches!(et, BOOL_TRUE | BOOL_FALSE) {
                    return self.refuse_booleans(n, "list");
                }
                // Each element consumes at least a byte: the loop ends at the buffer's
                // end at the latest.
                for _ in 0..n {
                    self.skipped(et, left - 1)?;
                }
                Ok(())
            }
            MAP => {
                let n = self.size()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                let (kt, vt) = (kv >> 4, kv & 0x0f);
                if ![kt, vt].iter().all(|t| (BOOL_TRUE..=UUID).contains(t)) {
                    return Err(Stop::Unsure);
                }
                if matches!(kt, BOOL_TRUE | BOOL_FALSE) || matches!(vt, BOOL_TRUE | BOOL_FALSE) {
                    return self.refuse_booleans(n, "map");
                }
                for _ in 0..n {
                    self.skipped(kt, left - 1)?;
                    self.skipped(vt, left - 1)?;
                }
                Ok(())
            }
            STRUCT => loop {
                let h = self.byte()?;
                if h & 0x0f == 0 {
                    return Ok(());
                }
                if h & 0x0f > UUID {
                    return Err(Stop::Unsure);
                }
                if h >> 4 == 0 {
                    self.varint()?; // the field id, in full
                }
                self.skipped(h & 0x0f, left - 1)?;
            },
            t => self.scalar(t),
        }
    }

    /// A value the crate reads as `ty`, sent with wire type `t`.
    fn known(&mut self, t: u8, ty: Ty, field: i16, parent: &Schema) -> Result<(), Stop> {
        if !ty.accepts(t) {
            return Err(Stop::Refused(format!(
                "sends field {field} of {} as {} at byte {}, where Parquet has {}",
                parent.name,
                wire_name(t),
                self.pos,
                ty.name()
            )));
        }
        match ty {
            Ty::List(et) => {
                let (t, n) = self.list_header()?;
                if n > 0 && !et.accepts(t) {
                    return Err(Stop::Refused(format!(
                        "sends the elements of field {field} of {} as {} at byte {}, where Parquet has {}",
                        parent.name,
                        wire_name(t),
                        self.pos,
                        et.name()
                    )));
                }
                for _ in 0..n {
                    self.known(t, *et, field, parent)?;
                }
                Ok(())
            }
            Ty::Struct(s) => self.fields(s),
            _ => self.scalar(t),
        }
    }

    /// The fields of a struct the crate reads as `schema`, to its end.
    fn fields(&mut self, schema: &Schema) -> Result<(), Stop> {
        self.fields_capturing(schema, None).map(|_| ())
    }

    /// [`Self::fields`], returning the value of the integer field `capture` of this
    /// struct (not of the structs it holds) where it has one.
    fn fields_capturing(&mut self, schema: &Schema, capture: Option<i16>) -> Result<Option<i64>, Stop> {
        let mut captured = None;
        let mut last = 0i16;
        loop {
            let h = self.byte()?;
            // As the crate reads it: a zero type ends the struct, whatever the delta.
            let t = h & 0x0f;
            if t == 0 {
                return Ok(captured);
            }
            if t > UUID {
                return Err(Stop::Unsure);
            }
            let id = match h >> 4 {
                0 => {
                    // The full id, zigzag, taken as an i16.
                    let v = self.varint()?;
                    ((v >> 1) as i64 ^ -((v & 1) as i64)) as i16
                }
                d => last.checked_add(d as i16).ok_or(Stop::Unsure)?,
            };
            match schema.fields.iter().find(|f| f.0 == id) {
                Some(&(_, Ty::I32)) if capture == Some(id) && t == I32 => {
                    let v = self.varint()?;
                    captured = Some((v >> 1) as i64 ^ -((v & 1) as i64));
                }
                Some(&(_, ty)) => self.known(t, ty, id, schema)?,
                None => self.skipped(t, SKIP_DEPTH)?,
            }
            last = id;
        }
    }
}

/// Check a Parquet footer (the Thrift `FileMetaData` bytes, without the length and the
/// magic). `Err` says why the footer is refused.
pub(crate) fn check(footer: &[u8]) -> Result<(), String> {
    match (Walk { b: footer, pos: 0 }).fields(&FILE_METADATA) {
        Ok(()) | Err(Stop::Unsure | Stop::End) => Ok(()),
        Err(Stop::Refused(why)) => Err(why),
    }
}

/// What [`page_header`] found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Page {
    /// A header of `header` bytes, followed by a page of `body` bytes.
    Header { header: u64, body: u64 },
    /// The header is refused, for this reason.
    Refused(String),
    /// The walk cannot follow the bytes: the crate stops with an error.
    Unsure,
    /// The header goes on past the buffer.
    Truncated,
}

/// Check the page header at the start of `b` as [`check`] checks a footer: page headers
/// are Thrift too, and the crate decodes them the same way, loop included.
pub(crate) fn page_header(b: &[u8]) -> Page {
    let mut w = Walk { b, pos: 0 };
    match w.fields_capturing(&PAGE_HEADER, Some(COMPRESSED_PAGE_SIZE)) {
        Ok(size) => match size {
            Some(body) if body >= 0 => Page::Header { header: w.pos as u64, body: body as u64 },
            Some(body) => Page::Refused(format!("declares a page of {body} bytes")),
            // No size: the crate refuses the header itself.
            _ => Page::Unsure,
        },
        Err(Stop::Unsure) => Page::Unsure,
        Err(Stop::End) => Page::Truncated,
        Err(Stop::Refused(why)) => Page::Refused(why),
    }
}

/// Walk the page headers of a column chunk (`start..end` of `source`) with
/// [`page_header`], before the crate's page reader decodes them. `Err` names the
/// refused header's offset and why.
pub(crate) fn check_pages<R: parquet::file::reader::ChunkReader>(
    source: &R,
    start: u64,
    end: u64,
) -> Result<(), String> {
    // No writer writes a page header near this size (statistics are small).
    const MAX_HEADER: u64 = 64 << 20;
    let mut pos = start;
    while pos < end {
        // Headers are small: a window that grows until the header fits in it.
        let mut want = 256u64;
        loop {
            let n = want.min(end - pos);
            let Ok(bytes) = source.get_bytes(pos, n as usize) else { return Ok(()) };
            let refuse = |why: &str| Err(format!("the page header at byte {pos} {why}"));
            match page_header(&bytes) {
                Page::Header { header, body } => {
                    let next = pos.saturating_add(header).saturating_add(body);
                    if next > end {
                        return refuse(&format!(
                            "declares a page of {body} bytes, past the end of its column chunk at byte {end}"
                        ));
                    }
                    pos = next;
                    break;
                }
                Page::Refused(why) => return refuse(&why),
                Page::Truncated if n < end - pos && n < MAX_HEADER => want *= 4,
                // The crate's stream reader would read on past the chunk, and past the
                // end of the file without stopping.
                Page::Truncated if n < MAX_HEADER => {
                    return refuse(&format!("runs past the end of its column chunk at byte {end}"));
                }
                Page::Truncated => return refuse("is larger than 64 MiB"),
                Page::Unsure => return Ok(()),
            }
        }
    }
    Ok(())
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
        // Field 10 (unknown, delta 10), a list of 2^31 - 1 booleans: header 0xF1, then
        // the size.
        let mut bad = vec![0xA9, 0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00];
        assert!(check(&bad).unwrap_err().contains("2147483647 booleans"));
        // The same inside an unknown struct, and as a map of booleans.
        bad = vec![0xAC, 0x19, 0xF2, 0x80, 0x01, 0x00, 0x00];
        assert!(check(&bad).unwrap_err().contains("128 booleans"));
        assert!(check(&[0xAB, 0x05, 0x11, 0x00]).unwrap_err().contains("map of 5 booleans"));
        // Inside a known struct: the second SchemaElement's unknown field 20.
        bad = vec![0x29, 0x2C, 0x00, 0x09, 0x28, 0x11, 0x01, 0x00, 0x00];
        assert!(check(&bad).unwrap_err().contains("list of 1 booleans"), "{:?}", check(&bad));
        // A footer-like struct: version, a schema of two elements named by field 4, the
        // row count, an empty list of row groups, an unknown boolean field 10 and an
        // unknown double field 11; then the end.
        let ok = [
            0x15, 0x04, 0x19, 0x2C, 0x48, 0x01, b'a', 0x00, 0x48, 0x01, b'b', 0x00, 0x16, 0x02, 0x19, 0x0C, 0x61, 0x17,
            0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0x00,
        ];
        assert_eq!(check(&ok), Ok(()));
        // A list of a huge size of bytes ends at the buffer's end: not judged.
        assert_eq!(check(&[0xA9, 0xF3, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 1, 2, 3]), Ok(()));
    }

    #[test]
    fn a_known_field_sent_as_another_type_is_refused() {
        // created_by (field 6, a string) sent as a boolean: the crate reads a string
        // from the bytes after the header, where this walk would read the next field
        // (found by fuzzing: the crate went on into a list of booleans).
        let e = check(&[0x61, 0xA9, 0xF1, 0x10, 0x00]).unwrap_err();
        assert!(e.contains("sends field 6 of FileMetaData as a boolean") && e.contains("a string"), "{e}");
        // The schema (field 2) as a list of integers.
        let e = check(&[0x29, 0x15, 0x02, 0x00]).unwrap_err();
        assert!(e.contains("elements of field 2 of FileMetaData as an integer"), "{e}");
        // Deep: RowGroup's columns → ColumnChunk → ColumnMetaData's codec (field 4) as a
        // string. Field ids by delta and in full (zigzag 8 = field 4) both count.
        let e = check(&[0x49, 0x1C, 0x19, 0x1C, 0x3C, 0x08, 0x08, 0x01, b'x', 0x00, 0x00, 0x00, 0x00]).unwrap_err();
        assert!(e.contains("field 4 of ColumnMetaData as a string"), "{e}");
        // Integers of another width are refused too (the crate reads them alike, but no
        // writer sends them so).
        assert!(check(&[0x16, 0x02, 0x00]).unwrap_err().contains("field 1 of FileMetaData"));
    }

    #[test]
    fn varints_and_depth_are_read_as_the_crate_reads_them() {
        // A binary length of 2 written in 12 bytes (the crate reads any length): the two
        // bytes are skipped, then field 11 (delta 1 from the unknown field 10).
        let mut b = vec![0xA8];
        b.extend([0x82]);
        b.extend([0x80; 10]);
        b.extend([0x00, b'x', b'y', 0x19, 0xF1, 0x05, 0x00]);
        assert!(check(&b).unwrap_err().contains("list of 5 booleans"), "{:?}", check(&b));
        // Unknown structs nested past the crate's skip depth: the crate stops there, and
        // so does the walk, without judging what follows.
        let mut deep = vec![0xAC];
        deep.extend([0x1C; 70]);
        deep.extend([0x19, 0xF1, 0x05]);
        assert_eq!(check(&deep), Ok(()));
    }

    #[test]
    fn page_headers_give_their_sizes_or_are_refused() {
        // type 0, sizes 10 and 9 (zigzag 20, 18), a DataPageHeader of four integers.
        let mut h =
            vec![0x15, 0x00, 0x15, 0x14, 0x15, 0x12, 0x2C, 0x15, 0x02, 0x15, 0x00, 0x15, 0x06, 0x15, 0x06, 0x00];
        h.push(0x00);
        let len = h.len() as u64;
        h.extend([0xAA; 9]); // the page
        assert_eq!(page_header(&h), Page::Header { header: len, body: 9 });
        // Cut short: the caller reads more, or refuses a header past its chunk.
        assert_eq!(page_header(&h[..5]), Page::Truncated);
        // An unknown field 9 with a list of booleans, after the DataPageHeader.
        let mut bad = h[..len as usize - 1].to_vec();
        bad.extend([0x49, 0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00]);
        assert!(matches!(page_header(&bad), Page::Refused(w) if w.contains("2147483647 booleans")));
        // A negative page size.
        assert!(
            matches!(page_header(&[0x15, 0x00, 0x15, 0x14, 0x15, 0x13, 0x00]), Page::Refused(w) if w.contains("-10"))
        );
        // An unknown field holding a list of 2³¹ - 1 strings, each longer than the file:
        // the crate's stream reader skips each to the end of the file, reads nothing and
        // goes on (a fuzz timeout). The walk runs out of bytes.
        let long = [0x15, 0x00, 0x15, 0x14, 0x15, 0x12, 0x79, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0xFF, 0x7F];
        assert_eq!(page_header(&long), Page::Truncated);
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
