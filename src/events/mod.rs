//! Events → one feature row per subscriber: purchases (the Fader–Hardie–Lee summaries),
//! engagement, send time, cadence, fatigue and content affinity, in one streaming pass
//! over an event log of any size, with a fixed-size state per subscriber; then, on
//! request, predictive traits from BG/NBD and Gamma-Gamma ([`btyd`]).
//!
//! The log is read twice: a light pre-pass over the time and type columns (and the
//! category column when asked) checks every row before any work (nulls, unknown event
//! types, timestamps in the future), finds the first day (which sizes the purchase-day
//! bitmaps) and counts categories (which picks the top ones); the main pass reads every
//! column asked for and updates the subscribers' states. Memory is
//! [`bytes_per_subscriber`] × subscribers, whatever the number of events.
//!
//! Days are UTC calendar days of the event time; "the last 30 days" are the 30 days
//! ending on the as-of day, inclusive. Send hours and weekdays are local (per-row time
//! zone column, or one `timezone`).

pub mod btyd;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Array, Float64Builder, Int32Builder, Int64Array, Int64Builder,
    StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit as ArrowTimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::Dataset;

pub use btyd::{BgNbd, GammaGamma};

/// Seconds in a day.
const DAY: i64 = 86_400;
/// 3000-01-01 in epoch seconds: later "seconds" are milliseconds or finer.
const YEAR_3000: i64 = 32_503_680_000;
/// 1900-01-01 in epoch seconds: earlier events are a wrong unit or a corrupt column (and
/// their day numbers would not fit the per-subscriber day bitmaps).
const YEAR_1900: i64 = -2_208_988_800;
/// Days of the cadence window (engagement days are kept for this many days before as-of).
pub const CADENCE_DAYS: i64 = 365;
const CADENCE_WORDS: usize = 6;
/// Weeks of send/open counts kept for the fatigue slope.
pub const FATIGUE_WEEKS: usize = 16;
/// Pseudo-events of the population's direction added to each subscriber's send-time
/// vector for the smoothed hour.
pub const HOUR_PRIOR_EVENTS: f64 = 5.0;
/// Subscribers per output batch.
const OUT_ROWS: usize = 65_536;

/// What an event row is, after its type name is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Purchase,
    Send,
    Open,
    Click,
    Visit,
    Unsubscribe,
    Complaint,
    Bounce,
    Ignored,
    /// A purchase with a negative value, left out on request.
    Negative,
}

/// The names of each kind of event in the type column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypes {
    pub purchase: Vec<String>,
    pub send: Vec<String>,
    pub open: Vec<String>,
    pub click: Vec<String>,
    pub visit: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub complaint: Vec<String>,
    pub bounce: Vec<String>,
    /// Names that are read and skipped (any other unknown name is an error).
    pub ignore: Vec<String>,
}

impl Default for EventTypes {
    fn default() -> Self {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        EventTypes {
            purchase: v(&["purchase", "order"]),
            send: v(&["send"]),
            open: v(&["open"]),
            click: v(&["click"]),
            visit: v(&["visit"]),
            unsubscribe: v(&["unsubscribe"]),
            complaint: v(&["complaint"]),
            bounce: v(&["bounce"]),
            ignore: Vec::new(),
        }
    }
}

impl EventTypes {
    fn table(&self) -> Result<HashMap<String, Kind>> {
        let mut m = HashMap::new();
        let lists = [
            (&self.purchase, Kind::Purchase, "--purchase-types"),
            (&self.send, Kind::Send, "--send-types"),
            (&self.open, Kind::Open, "--open-types"),
            (&self.click, Kind::Click, "--click-types"),
            (&self.visit, Kind::Visit, "--visit-types"),
            (&self.unsubscribe, Kind::Unsubscribe, "--unsubscribe-types"),
            (&self.complaint, Kind::Complaint, "--complaint-types"),
            (&self.bounce, Kind::Bounce, "--bounce-types"),
            (&self.ignore, Kind::Ignored, "--ignore-types"),
        ];
        let mut flag_of: HashMap<String, &str> = HashMap::new();
        for (names, kind, flag) in lists {
            for n in names {
                if let Some(prev) = flag_of.get(n) {
                    return Err(Error::Usage(format!("event type '{n}' is named by both {prev} and {flag}")));
                }
                flag_of.insert(n.clone(), flag);
                m.insert(n.clone(), kind);
            }
        }
        Ok(m)
    }
}

/// The unit of BG/NBD's recency and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    #[default]
    Day,
    Week,
}

impl TimeUnit {
    pub fn days(self) -> f64 {
        match self {
            TimeUnit::Day => 1.0,
            TimeUnit::Week => 7.0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Day => "days",
            TimeUnit::Week => "weeks",
        }
    }
}

/// A time zone for local send hours: a fixed offset or an IANA zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Fixed(i32),
    Iana(chrono_tz::Tz),
}

impl Zone {
    /// `UTC`, `Z`, an IANA name (`Europe/Berlin`) or an offset (`+02:00`, `-0530`).
    pub fn parse(s: &str) -> Option<Zone> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" || t.eq_ignore_ascii_case("gmt") {
            return Some(Zone::Fixed(0));
        }
        if let Some(sign) = t.chars().next().filter(|c| *c == '+' || *c == '-') {
            let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() == 4 && digits.chars().all(|c| c.is_ascii_digit()) {
                let h: i32 = digits[..2].parse().ok()?;
                let m: i32 = digits[2..].parse().ok()?;
                if h <= 14 && m < 60 {
                    let s = (h * 3600 + m * 60) * if sign == '-' { -1 } else { 1 };
                    return Some(Zone::Fixed(s));
                }
            }
            return None;
        }
        chrono_tz::Tz::from_str(t).ok().map(Zone::Iana)
    }

    /// Seconds to add to UTC for local time at the instant `ts`.
    fn offset(&self, ts: i64) -> i64 {
        match self {
            Zone::Fixed(s) => *s as i64,
            Zone::Iana(tz) => {
                use chrono::{Offset, TimeZone};
                match chrono::DateTime::from_timestamp(ts, 0) {
                    Some(dt) => tz.offset_from_utc_datetime(&dt.naive_utc()).fix().local_minus_utc() as i64,
                    None => 0,
                }
            }
        }
    }
}

/// A time given on the command line, as the (first, last) second it covers (epoch
/// seconds, UTC): `2024-06-30` is that whole day; `2024-06-30T12:00:00Z`,
/// `2024-06-30 12:00:00` (UTC), RFC 3339 with an offset, or epoch seconds are one second.
/// `--as-of` includes up to the last; `--holdout-from` starts at the first.
pub fn parse_time(s: &str) -> Option<(i64, i64)> {
    let t = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let start = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
        return Some((start, start + DAY - 1));
    }
    let instant = if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        Some(dt.timestamp())
    } else {
        ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(t, f).ok())
            .map(|dt| dt.and_utc().timestamp())
            .or_else(|| t.parse::<i64>().ok())
    };
    instant.map(|i| (i, i))
}

/// Everything `features` needs to know about the log and the output.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub id_col: String,
    pub time_col: String,
    pub type_col: String,
    /// Every row is an event of this type (a table of orders or order lines): the type
    /// column is not read.
    pub event_type: Option<String>,
    /// Order value: a column, or the product of two (`Quantity*UnitPrice`).
    pub value_col: Option<String>,
    /// Order id: rows of one subscriber with the same order id are one order in `orders`
    /// (their values add up); without it every purchase row is an order.
    pub order_col: Option<String>,
    /// Rows without a subscriber id are counted and left out (otherwise an error).
    pub skip_null_ids: bool,
    /// Purchase rows with a negative value (refunds, cancellations) are counted and left
    /// out (otherwise an error).
    pub skip_negative_values: bool,
    pub category_col: Option<String>,
    pub timezone_col: Option<String>,
    /// The zone of every row when there is no zone column (default UTC).
    pub timezone: Zone,
    pub types: EventTypes,
    /// Events after this second are left out.
    pub as_of: i64,
    /// With a holdout: the first second of the holdout period. Features are computed as of
    /// the second before it; purchases from it to `as_of` are counted as the holdout.
    pub holdout_from: Option<i64>,
    pub time_unit: TimeUnit,
    /// Top categories to report a share for.
    pub categories: usize,
    /// The wall clock (epoch seconds); events more than a day after both it and `as_of` are
    /// an error (a unit mistake, or a broken clock).
    pub now: i64,
}

impl EventSpec {
    /// The defaults of the command line's flags, as of `as_of` (epoch seconds).
    pub fn new(as_of: i64) -> EventSpec {
        EventSpec {
            id_col: "subscriber_id".into(),
            time_col: "timestamp".into(),
            type_col: "event".into(),
            event_type: None,
            value_col: None,
            order_col: None,
            skip_null_ids: false,
            skip_negative_values: false,
            category_col: None,
            timezone_col: None,
            timezone: Zone::Fixed(0),
            types: EventTypes::default(),
            as_of,
            holdout_from: None,
            time_unit: TimeUnit::Day,
            categories: 10,
            now: chrono::Utc::now().timestamp(),
        }
    }

    /// The columns whose product is the order value: `a*b` names two, unless a column has
    /// that whole name.
    fn value_factors(&self, ds: &Dataset) -> Vec<String> {
        match &self.value_col {
            None => Vec::new(),
            Some(v) if ds.has_column(v) || !v.contains('*') => vec![v.clone()],
            Some(v) => v.split('*').map(|f| f.trim().to_string()).collect(),
        }
    }

    /// The last second whose events feed the features.
    pub fn calibration_end(&self) -> i64 {
        self.holdout_from.map_or(self.as_of, |h| h - 1)
    }
}

/// What one run saw and made, for the log and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub events_read: u64,
    pub events_used: u64,
    /// Rows after the as-of time (left out).
    pub events_after_as_of: u64,
    /// Rows whose type is in `ignore`.
    pub events_ignored: u64,
    /// Rows left out for a null id (`skip_null_ids`).
    pub events_null_id: u64,
    /// Purchase rows left out for a negative value (`skip_negative_values`).
    pub events_negative_value: u64,
    /// Distinct orders, with an order column (else purchase rows).
    pub orders: u64,
    pub holdout_events: u64,
    pub subscribers: u64,
    pub buyers: u64,
    pub bytes_per_subscriber: u64,
    pub first_day: String,
    pub categories: Vec<String>,
}

/// The state memory of one subscriber: the fixed part, the purchase-day bitmap over the
/// log's span, and two counters per reported category plus one.
pub fn bytes_per_subscriber(span_days: i64, categories: usize) -> u64 {
    (std::mem::size_of::<Sub>() + 8 * words_for(span_days) + 4 * (2 * categories + 1)) as u64
}

fn words_for(span_days: i64) -> usize {
    (span_days.max(1) as usize).div_ceil(64)
}

/// Per-subscriber state, updated by events in any order.
#[derive(Debug, Clone)]
struct Sub {
    first_buy: i32,
    last_buy: i32,
    orders: u32,
    revenue: f64,
    /// The value bought on the first purchase day (left out of the repeat value).
    first_day_value: f64,
    /// [send, open, click, visit] × [all time, last 90 days, last 30 days].
    counts: [[u32; 3]; 4],
    /// Sends and opens 31–120 days before as-of.
    prev90: [u32; 2],
    /// Last open, click, visit day.
    last: [i32; 3],
    complaints: u32,
    bounces: u32,
    unsubscribes: u32,
    first_event: i32,
    hour_c: f64,
    hour_s: f64,
    hour_n: u32,
    weekday: [u32; 7],
    week_sends: [u16; FATIGUE_WEEKS],
    week_opens: [u16; FATIGUE_WEEKS],
    /// Bit d: an open, click or visit d days before as-of (d < 365).
    engaged: [u64; CADENCE_WORDS],
}

impl Sub {
    fn new() -> Sub {
        Sub {
            first_buy: i32::MAX,
            last_buy: i32::MIN,
            orders: 0,
            revenue: 0.0,
            first_day_value: 0.0,
            counts: [[0; 3]; 4],
            prev90: [0; 2],
            last: [i32::MIN; 3],
            complaints: 0,
            bounces: 0,
            unsubscribes: 0,
            first_event: i32::MAX,
            hour_c: 0.0,
            hour_s: 0.0,
            hour_n: 0,
            weekday: [0; 7],
            week_sends: [0; FATIGUE_WEEKS],
            week_opens: [0; FATIGUE_WEEKS],
            engaged: [0; CADENCE_WORDS],
        }
    }
}

/// Subscriber ids → dense indices, in order of first appearance.
enum Ids {
    Int(foldhash::HashMap<i64, u32>, Vec<i64>),
    Str(foldhash::HashMap<Box<str>, u32>, Vec<Box<str>>),
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::Int(_, v) => v.len(),
            Ids::Str(_, v) => v.len(),
        }
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(dt, DataType::Dictionary(_, v) if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
}

/// A string column as (dictionary values, per-row key) or plain strings; nulls kept.
enum Strings {
    Dict(Vec<Option<usize>>, StringArray),
    Plain(StringArray),
}

fn strings(col: &ArrayRef, path: &Path, name: &str) -> Result<Strings> {
    let bad = |e: arrow::error::ArrowError| Error::input(path, format!("column '{name}': {e}"));
    if let DataType::Dictionary(_, _) = col.data_type() {
        let d = cast(col, &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))).map_err(bad)?;
        let d = d.as_dictionary::<Int32Type>();
        let values = d.values().as_string::<i32>().clone();
        let keys = d.keys();
        let k = (0..keys.len()).map(|i| (!keys.is_null(i)).then(|| keys.value(i) as usize)).collect();
        return Ok(Strings::Dict(k, values));
    }
    let s = cast(col, &DataType::Utf8).map_err(bad)?;
    Ok(Strings::Plain(s.as_string::<i32>().clone()))
}

impl Strings {
    fn len(&self) -> usize {
        match self {
            Strings::Dict(k, _) => k.len(),
            Strings::Plain(s) => s.len(),
        }
    }
    /// Map every row through `f`, called once per distinct value that occurs (and for a
    /// null only when one occurs).
    fn map<T: Copy>(&self, mut f: impl FnMut(Option<&str>) -> Result<T>) -> Result<Vec<T>> {
        let mut none: Option<T> = None;
        match self {
            Strings::Dict(keys, values) => {
                let mut mapped: Vec<Option<T>> = vec![None; values.len()];
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let v = match k {
                        Some(k) if !values.is_null(*k) => match mapped[*k] {
                            Some(m) => m,
                            None => {
                                let m = f(Some(values.value(*k)))?;
                                mapped[*k] = Some(m);
                                m
                            }
                        },
                        _ => match none {
                            Some(m) => m,
                            None => *none.insert(f(None)?),
                        },
                    };
                    out.push(v);
                }
                Ok(out)
            }
            Strings::Plain(s) => {
                let mut cache: foldhash::HashMap<&str, T> = Default::default();
                let mut out = Vec::with_capacity(s.len());
                for i in 0..s.len() {
                    if s.is_null(i) {
                        let m = match none {
                            Some(m) => m,
                            None => *none.insert(f(None)?),
                        };
                        out.push(m);
                        continue;
                    }
                    let v = s.value(i);
                    let m = match cache.get(v) {
                        Some(m) => *m,
                        None => {
                            let m = f(Some(v))?;
                            if cache.len() < 4096 {
                                cache.insert(v, m);
                            }
                            m
                        }
                    };
                    out.push(m);
                }
                Ok(out)
            }
        }
    }
}

/// A time column as epoch seconds (floored); a null is an error naming the column.
fn seconds(col: &ArrayRef, path: &Path, name: &str) -> Result<Vec<i64>> {
    let nulls = col.null_count();
    if nulls > 0 {
        return Err(Error::input(
            path,
            format!("column '{name}' has {nulls} null timestamps; every event needs a time (filter them out first)"),
        ));
    }
    let bad = |e: arrow::error::ArrowError| Error::input(path, format!("column '{name}': {e}"));
    let ints =
        |a: &ArrayRef| -> Result<Int64Array> { Ok(cast(a, &DataType::Int64).map_err(bad)?.as_primitive().clone()) };
    let per = |v: &Int64Array, div: i64| v.values().iter().map(|x| x.div_euclid(div)).collect();
    Ok(match col.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = ints(&cast(col, &DataType::Int64).map_err(bad)?)?;
            let div = match unit {
                ArrowTimeUnit::Second => 1,
                ArrowTimeUnit::Millisecond => 1_000,
                ArrowTimeUnit::Microsecond => 1_000_000,
                ArrowTimeUnit::Nanosecond => 1_000_000_000,
            };
            per(&v, div)
        }
        DataType::Date32 => {
            let v = col.as_primitive::<arrow::datatypes::Date32Type>();
            v.values().iter().map(|d| *d as i64 * DAY).collect()
        }
        DataType::Date64 => per(&ints(col)?, 1_000),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => ints(col)?.values().to_vec(),
        DataType::UInt64 => {
            let v = col.as_primitive::<arrow::datatypes::UInt64Type>();
            if let Some(x) = v.values().iter().find(|x| **x > i64::MAX as u64) {
                return Err(Error::input(path, format!("column '{name}' holds {x}, not epoch seconds")));
            }
            v.values().iter().map(|x| *x as i64).collect()
        }
        dt if is_string(dt) => {
            let t = cast(col, &DataType::Timestamp(ArrowTimeUnit::Second, None)).map_err(|e| {
                Error::input(
                    path,
                    format!("column '{name}' holds text that is not a timestamp ({e}); write ISO 8601 times"),
                )
            })?;
            if t.null_count() > 0 {
                return Err(Error::input(
                    path,
                    format!("column '{name}': {} values are not ISO 8601 timestamps", t.null_count()),
                ));
            }
            ints(&t)?.values().to_vec()
        }
        dt => {
            return Err(Error::input(
                path,
                format!("column '{name}' is {dt}; the event time must be a timestamp, a date or integer epoch seconds"),
            ));
        }
    })
}

fn day_of(ts: i64) -> i32 {
    ts.div_euclid(DAY) as i32
}

fn date_string(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * DAY, 0).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn time_string(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or(ts.to_string())
}

/// What the pre-pass found.
struct Scan {
    events: u64,
    first_day: i32,
    /// Category name → clicks + purchases (at or before the calibration end).
    category_counts: HashMap<String, u64>,
}

/// The pre-pass: check time and type of every row, find the first day, count categories.
fn scan(ds: &Dataset, spec: &EventSpec, table: &HashMap<String, Kind>) -> Result<Scan> {
    let mut cols = vec![spec.time_col.clone()];
    let tpos = spec.event_type.is_none().then(|| column_at(&mut cols, &spec.type_col));
    let cpos = spec.category_col.as_ref().map(|c| column_at(&mut cols, c));
    // The rows the main pass leaves out do not count toward the top categories either.
    let ipos = (cpos.is_some() && spec.skip_null_ids).then(|| column_at(&mut cols, &spec.id_col));
    let vpos: Vec<usize> = if cpos.is_some() && spec.skip_negative_values {
        spec.value_factors(ds).iter().map(|f| column_at(&mut cols, f)).collect()
    } else {
        Vec::new()
    };
    let value_name = spec.value_col.clone().unwrap_or_default();
    let fixed = fixed_kind(spec, table)?;
    let limit = spec.now.max(spec.as_of) + DAY;
    let cal_end = spec.calibration_end();
    let mut s = Scan { events: 0, first_day: i32::MAX, category_counts: HashMap::new() };
    for sb in ds.batches(&cols)? {
        let sb = sb?;
        let ts = seconds(sb.batch.column(0), sb.path, &spec.time_col)?;
        let kinds = match (fixed, tpos) {
            (Some(k), _) => vec![k; ts.len()],
            (None, p) => kinds_of(sb.batch.column(p.unwrap()), sb.path, spec, table)?,
        };
        if let Some(i) = ts.iter().position(|t| *t > limit) {
            let hint = if ts[i] > YEAR_3000 {
                " (it looks like milliseconds or finer read as seconds: store a timestamp type)"
            } else {
                ""
            };
            return Err(Error::input(
                sb.path,
                format!(
                    "column '{}': an event at {} is in the future (after both now and --as-of){hint}; fix the clock or the unit",
                    spec.time_col,
                    time_string(ts[i])
                ),
            ));
        }
        if let Some(i) = ts.iter().position(|t| *t < YEAR_1900) {
            return Err(Error::input(
                sb.path,
                format!(
                    "column '{}': an event at {} is before 1900; fix the unit or the column (times are seconds since 1970 \
                     or a timestamp type)",
                    spec.time_col,
                    time_string(ts[i])
                ),
            ));
        }
        for &t in &ts {
            s.first_day = s.first_day.min(day_of(t));
        }
        if let Some(cpos) = cpos {
            let id_valid = ipos.and_then(|p| sb.batch.column(p).logical_nulls());
            let values =
                if vpos.is_empty() { None } else { Some(order_values(&sb.batch, &vpos, &cols, sb.path, &value_name)?) };
            let counts = |i: usize| {
                matches!(kinds[i], Kind::Click | Kind::Purchase)
                    && ts[i] <= cal_end
                    && id_valid.as_ref().is_none_or(|v| v.is_valid(i))
                    && !(kinds[i] == Kind::Purchase
                        && values.as_ref().is_some_and(|v| v.is_valid(i) && v.value(i) < 0.0))
            };
            let cats = strings(sb.batch.column(cpos), sb.path, spec.category_col.as_deref().unwrap())?;
            if let Strings::Plain(a) = &cats {
                for i in 0..a.len() {
                    if !a.is_null(i) && counts(i) {
                        *s.category_counts.entry(a.value(i).to_string()).or_insert(0) += 1;
                    }
                }
            } else if let Strings::Dict(keys, values) = &cats {
                let mut per = vec![0u64; values.len()];
                for (i, k) in keys.iter().enumerate() {
                    if let Some(k) = k
                        && counts(i)
                    {
                        per[*k] += 1;
                    }
                }
                for (k, n) in per.into_iter().enumerate() {
                    if n > 0 && !values.is_null(k) {
                        *s.category_counts.entry(values.value(k).to_string()).or_insert(0) += n;
                    }
                }
            }
        }
        s.events += ts.len() as u64;
    }
    if s.events == 0 {
        return Err(Error::input(ds.display_name(), "the event log holds no rows"));
    }
    Ok(s)
}

/// The position of column `c` in the list read, added if it is not there yet.
fn column_at(cols: &mut Vec<String>, c: &str) -> usize {
    match cols.iter().position(|x| x == c) {
        Some(p) => p,
        None => {
            cols.push(c.to_string());
            cols.len() - 1
        }
    }
}

/// The order values of a batch: the column at `vpos[0]`, times the one at `vpos[1]`.
fn order_values(
    b: &RecordBatch,
    vpos: &[usize],
    cols: &[String],
    path: &Path,
    value_name: &str,
) -> Result<Float64Array> {
    let f64_of = |p: usize| -> Result<Float64Array> {
        let v = cast(b.column(p), &DataType::Float64)
            .map_err(|e| Error::input(path, format!("column '{}': {e}", cols[p])))?;
        Ok(v.as_primitive::<arrow::datatypes::Float64Type>().clone())
    };
    let mut v = f64_of(vpos[0])?;
    if let Some(&q) = vpos.get(1) {
        let w = f64_of(q)?;
        v = arrow::compute::kernels::numeric::mul(&v, &w)
            .map_err(|e| Error::input(path, format!("--value-col '{value_name}': {e}")))?
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
    }
    Ok(v)
}

/// The kind of every row with `event_type` (no type column is read), checked by name.
fn fixed_kind(spec: &EventSpec, table: &HashMap<String, Kind>) -> Result<Option<Kind>> {
    let Some(name) = &spec.event_type else { return Ok(None) };
    match table.get(name) {
        Some(Kind::Ignored) | None => Err(Error::Usage(format!(
            "--event-type '{name}' is not a type name of --purchase-types, --send-types, ... (for a table of orders: \
             --event-type purchase)"
        ))),
        Some(k) => Ok(Some(*k)),
    }
}

fn kinds_of(col: &ArrayRef, path: &Path, spec: &EventSpec, table: &HashMap<String, Kind>) -> Result<Vec<Kind>> {
    let name = &spec.type_col;
    if !is_string(col.data_type()) {
        return Err(Error::input(
            path,
            format!("column '{name}' is {}; the event type must be text (send, open, purchase, ...)", col.data_type()),
        ));
    }
    strings(col, path, name)?.map(|v| match v {
        None => Err(Error::input(path, format!("column '{name}' has null event types; every event needs a type"))),
        Some(v) => table.get(v).copied().ok_or_else(|| {
            let mut known: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
            known.sort();
            Error::input(
                path,
                format!(
                    "column '{name}': unknown event type '{v}' (known: {}); name it with --purchase-types, --send-types, \
                     ... or skip it with --ignore-types {v}",
                    known.join(", ")
                ),
            )
        }),
    })
}

fn check_column(ds: &Dataset, name: &str, what: &str) -> Result<()> {
    if !ds.has_column(name) {
        let names: Vec<&str> = ds.schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(Error::input(
            &ds.files[0],
            format!("no {what} column '{name}'; the columns are: {} (name it with the flag)", names.join(", ")),
        ));
    }
    Ok(())
}

/// The result of the main pass, ready to be finished into feature rows.
pub struct EventState {
    spec: EventSpec,
    ids: Ids,
    id_type: DataType,
    subs: Vec<Sub>,
    /// Purchase days: `words` u64 per subscriber, bit = day − first_day.
    buy_days: Vec<u64>,
    words: usize,
    first_day: i32,
    /// Per subscriber: clicks per top category, purchases per top category, other.
    cat_counts: Vec<u32>,
    pub categories: Vec<String>,
    pub summary: Summary,
}

/// The `features` job every front end calls: check the options, read the log into
/// states, and fit the traits when asked. Write the rows with [`EventState::finish`].
pub fn features(ds: &Dataset, spec: &EventSpec, predict: Option<PredictSpec>) -> Result<(EventState, Option<Traits>)> {
    if spec.holdout_from.is_some() && predict.is_none() {
        return Err(Error::Usage(
            "a holdout checks the forecast: ask for the predictive traits too (--predict)".into(),
        ));
    }
    if let Some(p) = predict {
        if !(p.horizon_days.is_finite() && p.horizon_days > 0.0) {
            return Err(Error::Usage(format!("the horizon {} must be a positive number of days", p.horizon_days)));
        }
        if !(p.discount_rate.is_finite() && p.discount_rate > -1.0) {
            return Err(Error::Usage(format!("the discount rate {} must be above -1", p.discount_rate)));
        }
    }
    if spec.categories > MAX_CATEGORIES {
        return Err(Error::Usage(format!("at most {MAX_CATEGORIES} categories (one column each)")));
    }
    let state = accumulate(ds, spec)?;
    let t0 = std::time::Instant::now();
    let traits = predict.map(|p| state.fit_traits(p)).transpose()?;
    if let Some(t) = &traits {
        log::info!(
            "fitted the traits of {} buyers ({} distinct (x, t_x, T)) in {:.2}s",
            t.bgnbd.n_customers,
            t.bgnbd.n_groups,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok((state, traits))
}

/// Top categories reported at most (one column each).
pub const MAX_CATEGORIES: usize = 200;

/// One decoded batch, converted: times, kinds, values, categories, local times of opens
/// and clicks.
struct Prepared {
    path: std::path::PathBuf,
    ids: ArrayRef,
    ts: Vec<i64>,
    kinds: Vec<Kind>,
    values: Option<Float64Array>,
    cats: Option<Vec<u8>>,
    local: Vec<i64>,
    /// Hashes of the order ids (with `order_col`).
    orders: Option<Vec<u64>>,
}

/// Read the whole log into per-subscriber states.
pub fn accumulate(ds: &Dataset, spec: &EventSpec) -> Result<EventState> {
    check_column(ds, &spec.id_col, "subscriber id (--id-col)")?;
    check_column(ds, &spec.time_col, "event time (--time-col)")?;
    if spec.event_type.is_none() {
        check_column(ds, &spec.type_col, "event type (--type-col, or --event-type for a table of orders)")?;
    }
    let factors = spec.value_factors(ds);
    if factors.len() > 2 || factors.iter().any(|f| f.is_empty()) {
        return Err(Error::Usage(format!(
            "--value-col '{}': give a column or the product of two (Quantity*UnitPrice)",
            spec.value_col.as_deref().unwrap_or_default()
        )));
    }
    for c in &factors {
        check_column(ds, c, "order value (--value-col)")?;
    }
    for (c, what) in [
        (&spec.category_col, "category (--category-col)"),
        (&spec.timezone_col, "time zone (--timezone-col)"),
        (&spec.order_col, "order id (--order-col)"),
    ] {
        if let Some(c) = c {
            check_column(ds, c, what)?;
        }
    }
    let id_type = ds.column_type(&spec.id_col)?.clone();
    let int_ids = id_type.is_integer() || id_type.is_floating();
    if !int_ids && !is_string(&id_type) {
        return Err(Error::input(
            &ds.files[0],
            format!("column '{}' is {id_type}; subscriber ids must be integers or text", spec.id_col),
        ));
    }
    for v in &factors {
        let dt = ds.column_type(v)?;
        if !(dt.is_numeric()) {
            return Err(Error::input(&ds.files[0], format!("column '{v}' is {dt}; order values must be numbers")));
        }
    }
    if let Some(c) = &spec.order_col {
        let dt = ds.column_type(c)?;
        if !(dt.is_integer() || is_string(dt)) {
            return Err(Error::input(
                &ds.files[0],
                format!("column '{c}' is {dt}; order ids must be integers or text"),
            ));
        }
    }
    for c in [&spec.category_col, &spec.timezone_col].into_iter().flatten() {
        let dt = ds.column_type(c)?;
        if !is_string(dt) {
            return Err(Error::input(&ds.files[0], format!("column '{c}' is {dt}; it must be text")));
        }
    }
    let cal_end = spec.calibration_end();
    if let Some(h) = spec.holdout_from
        && h > spec.as_of
    {
        return Err(Error::Usage("--holdout-from must be at or before --as-of".into()));
    }
    let table = spec.types.table()?;
    let scan = scan(ds, spec, &table)?;
    let cal_day = day_of(cal_end);
    let first_day = scan.first_day.min(cal_day);
    let span = (day_of(spec.as_of) - first_day + 1) as i64;
    let words = words_for(span);
    let mut cat_list: Vec<(String, u64)> = scan.category_counts.into_iter().collect();
    cat_list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let categories: Vec<String> = cat_list.into_iter().take(spec.categories).map(|c| c.0).collect();
    let cat_index: HashMap<&str, u8> = categories.iter().enumerate().map(|(i, c)| (c.as_str(), i as u8)).collect();
    let ncat = categories.len();
    let cat_stride = 2 * ncat + 1;

    let fixed = fixed_kind(spec, &table)?;
    let mut cols = vec![spec.id_col.clone()];
    let tpos = column_at(&mut cols, &spec.time_col);
    let kpos = fixed.is_none().then(|| column_at(&mut cols, &spec.type_col));
    for c in factors.iter().chain([&spec.category_col, &spec.timezone_col, &spec.order_col].into_iter().flatten()) {
        column_at(&mut cols, c);
    }
    let pos = |c: &Option<String>| c.as_ref().map(|c| cols.iter().position(|x| x == c).unwrap());
    let (cpos, zpos, opos) = (pos(&spec.category_col), pos(&spec.timezone_col), pos(&spec.order_col));
    let vpos: Vec<usize> = factors.iter().map(|f| cols.iter().position(|x| x == f).unwrap()).collect();
    let value_name = spec.value_col.clone().unwrap_or_default();
    let mut seen_orders: foldhash::HashSet<(u32, u64)> = Default::default();

    let mut ids =
        if int_ids { Ids::Int(Default::default(), Vec::new()) } else { Ids::Str(Default::default(), Vec::new()) };
    let mut subs: Vec<Sub> = Vec::new();
    let mut buy_days: Vec<u64> = Vec::new();
    let mut cat_counts: Vec<u32> = Vec::new();
    let mut summary = Summary {
        events_read: 0,
        events_used: 0,
        events_after_as_of: 0,
        events_ignored: 0,
        events_null_id: 0,
        events_negative_value: 0,
        orders: 0,
        holdout_events: 0,
        subscribers: 0,
        buyers: 0,
        bytes_per_subscriber: bytes_per_subscriber(span, ncat),
        first_day: date_string(first_day as i64),
        categories: categories.clone(),
    };
    const NO_CAT: u8 = u8::MAX;
    const OTHER_CAT: u8 = u8::MAX - 1;

    // Decoding and per-row conversion run on a second thread, one batch ahead of the
    // updates (which need the id map and the states, and stay on this one).
    let prepare = |sb: crate::io::SourcedBatch<'_>, zones: &mut HashMap<String, Zone>| -> Result<Prepared> {
        let path = sb.path;
        let b = &sb.batch;
        let n = b.num_rows();
        let ts = seconds(b.column(tpos), path, &spec.time_col)?;
        let mut kinds = match (fixed, kpos) {
            (Some(k), _) => vec![k; n],
            (None, p) => kinds_of(b.column(p.unwrap()), path, spec, &table)?,
        };
        // Rows the main pass leaves out (a null id, with --skip-null-ids; after --as-of)
        // are not checked for their value or order id.
        // Null ids are refused before anything else is said about their rows.
        let id_nulls = b.column(0).logical_null_count();
        if id_nulls > 0 && !spec.skip_null_ids {
            return Err(Error::input(
                path,
                format!(
                    "column '{}' has null subscriber ids ({id_nulls} in the first batch that has any); leave those \
                     rows out with --skip-null-ids (skip_null_ids=True in Python)",
                    spec.id_col
                ),
            ));
        }
        let id_valid = if spec.skip_null_ids { b.column(0).logical_nulls() } else { None };
        let checked: Vec<bool> = (0..n)
            .map(|i| {
                kinds[i] == Kind::Purchase && ts[i] <= spec.as_of && id_valid.as_ref().is_none_or(|v| v.is_valid(i))
            })
            .collect();
        let values: Option<Float64Array> = if vpos.is_empty() {
            None
        } else {
            let v = order_values(b, &vpos, &cols, path, &value_name)?;
            for i in 0..n {
                if !checked[i] {
                    continue;
                }
                if spec.skip_negative_values && !v.is_null(i) && v.value(i) < 0.0 {
                    kinds[i] = Kind::Negative;
                    continue;
                }
                let bad = if v.is_null(i) {
                    Some("a null value".to_string())
                } else if !v.value(i).is_finite() {
                    Some(format!("the value {}", v.value(i)))
                } else if v.value(i) < 0.0 {
                    Some(format!("a negative value ({})", v.value(i)))
                } else {
                    None
                };
                if let Some(what) = bad {
                    return Err(Error::input(
                        path,
                        format!(
                            "column '{}': a purchase at {} has {what}; order values must be finite and ≥ 0 \
                             (leave refunds out of the log, or skip them with --skip-negative-values)",
                            value_name,
                            time_string(ts[i])
                        ),
                    ));
                }
            }
            Some(v)
        };
        let orders: Option<Vec<u64>> = match opos {
            Some(p) => {
                let c = b.column(p);
                if let Some(valid) = c.logical_nulls()
                    && let Some(i) = (0..n).find(|&i| !valid.is_valid(i) && checked[i] && kinds[i] == Kind::Purchase)
                {
                    return Err(Error::input(
                        path,
                        format!(
                            "column '{}': a purchase at {} has no order id; every purchase needs one",
                            cols[p],
                            time_string(ts[i])
                        ),
                    ));
                }
                let hash = |x: &[u8]| {
                    use std::hash::BuildHasher;
                    foldhash::quality::FixedState::with_seed(0x6d69_6372_6f73_6567).hash_one(x)
                };
                if c.data_type().is_integer() {
                    let c = cast(c, &DataType::Int64)
                        .map_err(|e| Error::input(path, format!("column '{}': {e}", cols[p])))?;
                    Some(
                        c.as_primitive::<arrow::datatypes::Int64Type>()
                            .values()
                            .iter()
                            .map(|x| hash(&x.to_le_bytes()))
                            .collect(),
                    )
                } else {
                    Some(strings(c, path, &cols[p])?.map(|v| Ok(hash(v.unwrap_or_default().as_bytes())))?)
                }
            }
            None => None,
        };
        let cats: Option<Vec<u8>> = match cpos {
            Some(p) => Some(strings(b.column(p), path, &cols[p])?.map(|v| {
                Ok(match v {
                    None => NO_CAT,
                    Some(v) => cat_index.get(v).copied().unwrap_or(OTHER_CAT),
                })
            })?),
            None => None,
        };
        let zone_of: Option<Vec<Zone>> = match zpos {
            Some(p) => Some(strings(b.column(p), path, &cols[p])?.map(|v| match v {
                None => Ok(spec.timezone),
                Some(v) => match zones.get(v) {
                    Some(z) => Ok(*z),
                    None => {
                        let z = Zone::parse(v).ok_or_else(|| {
                            Error::input(
                                path,
                                format!("column '{}': '{v}' is not a time zone (an IANA name such as Europe/Berlin, or +02:00)", cols[p]),
                            )
                        })?;
                        zones.insert(v.to_string(), z);
                        Ok(z)
                    }
                },
            })?),
            None => None,
        };
        let local: Vec<i64> = (0..n)
            .map(|i| match kinds[i] {
                Kind::Open | Kind::Click => {
                    let zone = zone_of.as_ref().map_or(spec.timezone, |z| z[i]);
                    ts[i] + zone.offset(ts[i])
                }
                _ => 0,
            })
            .collect();
        Ok(Prepared { path: path.to_path_buf(), ids: b.column(0).clone(), ts, kinds, values, cats, local, orders })
    };
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(2);
        let cols = &cols;
        let prepare = &prepare;
        scope.spawn(move || {
            let mut zones = HashMap::new();
            let batches = match ds.batches(cols) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for sb in batches {
                let r = sb.and_then(|sb| prepare(sb, &mut zones));
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    return;
                }
            }
        });
        for p in rx {
            let p = p?;
            let path = p.path.as_path();
            let (ts, kinds, values, cats, local) = (&p.ts, &p.kinds, &p.values, &p.cats, &p.local);
            let n = ts.len();
            summary.events_read += n as u64;
            let idx = resolve_ids(&mut ids, &p.ids, path, &spec.id_col)?;
            if ids.len() > subs.len() {
                let m = ids.len();
                subs.resize(m, Sub::new());
                buy_days.resize(m * words, 0);
                cat_counts.resize(m * cat_stride, 0);
            }
            for i in 0..n {
                let t = ts[i];
                let kind = kinds[i];
                if t > spec.as_of {
                    summary.events_after_as_of += 1;
                    continue;
                }
                if kind == Kind::Ignored {
                    summary.events_ignored += 1;
                    continue;
                }
                if idx[i] == NULL_ID {
                    summary.events_null_id += 1;
                    continue;
                }
                if kind == Kind::Negative {
                    summary.events_negative_value += 1;
                    continue;
                }
                let s = idx[i] as usize;
                let day = day_of(t);
                if day < first_day {
                    // The pre-pass saw every time: only a file that changed between the
                    // passes, or decodes differently, gets here.
                    return Err(Error::input(
                        path,
                        format!(
                            "column '{}': an event at {} was not there on the first pass over the file; \
                             the file changed while it was read, or is corrupt",
                            spec.time_col,
                            time_string(t)
                        ),
                    ));
                }
                if t > cal_end {
                    // The holdout period: only purchase days count.
                    if kind == Kind::Purchase {
                        let bit = (day - first_day) as usize;
                        buy_days[s * words + bit / 64] |= 1 << (bit % 64);
                        summary.holdout_events += 1;
                    }
                    continue;
                }
                summary.events_used += 1;
                let sub = &mut subs[s];
                sub.first_event = sub.first_event.min(day);
                let age = (cal_day - day) as i64;
                let win = |c: &mut [u32; 3]| {
                    c[0] += 1;
                    if age < 90 {
                        c[1] += 1;
                    }
                    if age < 30 {
                        c[2] += 1;
                    }
                };
                let mut engaged = false;
                let mut send_time = false;
                match kind {
                    Kind::Purchase => {
                        let v = values.as_ref().map_or(0.0, |v| v.value(i));
                        if p.orders.as_ref().is_none_or(|o| seen_orders.insert((s as u32, o[i]))) {
                            sub.orders += 1;
                        }
                        sub.revenue += v;
                        if day < sub.first_buy {
                            sub.first_buy = day;
                            sub.first_day_value = v;
                        } else if day == sub.first_buy {
                            sub.first_day_value += v;
                        }
                        sub.last_buy = sub.last_buy.max(day);
                        let bit = (day - first_day) as usize;
                        buy_days[s * words + bit / 64] |= 1 << (bit % 64);
                    }
                    Kind::Send => {
                        win(&mut sub.counts[0]);
                        if (30..120).contains(&age) {
                            sub.prev90[0] += 1;
                        }
                        if let Some(w) = sub.week_sends.get_mut((age / 7) as usize) {
                            *w = w.saturating_add(1);
                        }
                    }
                    Kind::Open => {
                        win(&mut sub.counts[1]);
                        if (30..120).contains(&age) {
                            sub.prev90[1] += 1;
                        }
                        if let Some(w) = sub.week_opens.get_mut((age / 7) as usize) {
                            *w = w.saturating_add(1);
                        }
                        sub.last[0] = sub.last[0].max(day);
                        engaged = true;
                        send_time = true;
                    }
                    Kind::Click => {
                        win(&mut sub.counts[2]);
                        sub.last[1] = sub.last[1].max(day);
                        engaged = true;
                        send_time = true;
                    }
                    Kind::Visit => {
                        win(&mut sub.counts[3]);
                        sub.last[2] = sub.last[2].max(day);
                        engaged = true;
                    }
                    Kind::Unsubscribe => sub.unsubscribes += 1,
                    Kind::Complaint => sub.complaints += 1,
                    Kind::Bounce => sub.bounces += 1,
                    Kind::Ignored | Kind::Negative => unreachable!(),
                }
                if engaged && age < CADENCE_DAYS {
                    sub.engaged[age as usize / 64] |= 1 << (age % 64);
                }
                if send_time {
                    let local = local[i];
                    let sec = local.rem_euclid(DAY) as f64;
                    let angle = sec / DAY as f64 * std::f64::consts::TAU;
                    sub.hour_c += angle.cos();
                    sub.hour_s += angle.sin();
                    sub.hour_n += 1;
                    sub.weekday[(local.div_euclid(DAY) + 3).rem_euclid(7) as usize] += 1;
                }
                if let Some(c) = &cats
                    && matches!(kind, Kind::Click | Kind::Purchase)
                {
                    let c = c[i];
                    let base = s * cat_stride;
                    if c == OTHER_CAT {
                        cat_counts[base + 2 * ncat] += 1;
                    } else if c != NO_CAT {
                        let off = if kind == Kind::Click { 0 } else { ncat };
                        cat_counts[base + off + c as usize] += 1;
                    }
                }
            }
        }
        Ok(())
    })?;
    summary.subscribers = subs.iter().filter(|s| s.first_event != i32::MAX).count() as u64;
    summary.buyers = subs.iter().filter(|s| s.orders > 0).count() as u64;
    summary.orders = subs.iter().map(|s| s.orders as u64).sum();
    if summary.events_used == 0 {
        return Err(Error::input(
            ds.display_name(),
            format!(
                "no events at or before {} (of {} rows, {} are later, {} ignored, {} without an id, {} with a \
                 negative value); check --as-of, --id-col and the type names",
                time_string(cal_end),
                summary.events_read,
                summary.events_after_as_of,
                summary.events_ignored,
                summary.events_null_id,
                summary.events_negative_value
            ),
        ));
    }
    // Subscribers whose only events are later than the calibration end have no features.
    Ok(EventState {
        spec: spec.clone(),
        ids,
        id_type,
        subs,
        buy_days,
        words,
        first_day,
        cat_counts,
        categories,
        summary,
    })
}

/// The index of a row without an id (left out with `skip_null_ids`).
const NULL_ID: u32 = u32::MAX;

/// Ids to subscriber indices, [`NULL_ID`] for a null id (the preparing thread has
/// already refused those unless `skip_null_ids`).
fn resolve_ids(ids: &mut Ids, col: &ArrayRef, path: &Path, name: &str) -> Result<Vec<u32>> {
    let ids_out = resolve_valid_ids(ids, col, path, name)?;
    Ok(match col.logical_nulls() {
        Some(valid) if valid.null_count() > 0 => {
            ids_out.into_iter().zip(valid.iter()).map(|(i, v)| if v { i } else { NULL_ID }).collect()
        }
        _ => ids_out,
    })
}

/// Ids to subscriber indices; rows with a null id get some index, replaced by the caller.
fn resolve_valid_ids(ids: &mut Ids, col: &ArrayRef, path: &Path, name: &str) -> Result<Vec<u32>> {
    let too_many = || Error::Data("more than 4 294 967 295 distinct subscribers".into());
    match ids {
        Ids::Int(map, order) => {
            let v = if let DataType::UInt64 = col.data_type() {
                let u = col.as_primitive::<arrow::datatypes::UInt64Type>();
                if let Some(x) = u.values().iter().find(|x| **x > i64::MAX as u64) {
                    return Err(Error::input(
                        path,
                        format!("column '{name}': id {x} does not fit a 64-bit signed integer"),
                    ));
                }
                u.values().iter().map(|x| *x as i64).collect::<Vec<_>>()
            } else if col.data_type().is_floating() {
                // Whole numbers stored as floats (a CustomerID column with nulls, say).
                let c =
                    cast(col, &DataType::Float64).map_err(|e| Error::input(path, format!("column '{name}': {e}")))?;
                let f = c.as_primitive::<arrow::datatypes::Float64Type>();
                let mut v = Vec::with_capacity(f.len());
                for i in 0..f.len() {
                    let x = f.value(i);
                    if f.is_null(i) {
                        v.push(0);
                    } else if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
                        v.push(x as i64);
                    } else {
                        return Err(Error::input(
                            path,
                            format!(
                                "column '{name}': id {x} is not a whole number; subscriber ids must be integers or text"
                            ),
                        ));
                    }
                }
                v
            } else {
                let c = cast(col, &DataType::Int64).map_err(|e| Error::input(path, format!("column '{name}': {e}")))?;
                c.as_primitive::<arrow::datatypes::Int64Type>().values().to_vec()
            };
            let mut out = Vec::with_capacity(v.len());
            for id in v {
                let next = order.len();
                let i = *map.entry(id).or_insert_with(|| {
                    order.push(id);
                    next as u32
                });
                out.push(i);
            }
            if order.len() > u32::MAX as usize {
                return Err(too_many());
            }
            Ok(out)
        }
        Ids::Str(map, order) => {
            let s = strings(col, path, name)?;
            let mut out = Vec::with_capacity(s.len());
            let mut push = |v: &str| -> u32 {
                if let Some(i) = map.get(v) {
                    return *i;
                }
                let i = order.len() as u32;
                let k: Box<str> = v.into();
                order.push(k.clone());
                map.insert(k, i);
                i
            };
            match &s {
                Strings::Plain(a) => {
                    for i in 0..a.len() {
                        out.push(push(a.value(i)));
                    }
                }
                Strings::Dict(keys, values) => {
                    let per: Vec<u32> = (0..values.len()).map(|k| push(values.value(k))).collect();
                    // A null key's row is marked by the caller (it holds a null id).
                    out.extend(keys.iter().map(|k| k.map_or(0, |k| per[k])));
                }
            }
            if order.len() > u32::MAX as usize {
                return Err(too_many());
            }
            Ok(out)
        }
    }
}

/// The `format` of a traits model file.
pub const TRAITS_FORMAT: &str = "microseg.traits";

/// What `--predict` adds: the fitted models and the horizon of the forecasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Traits {
    pub format: String,
    pub format_version: u32,
    pub engine_version: String,
    pub time_unit: TimeUnit,
    pub as_of: String,
    pub calibration_end: String,
    pub horizon_days: f64,
    /// Yearly rate at which future value is discounted in `clv`.
    pub discount_rate: f64,
    pub bgnbd: BgNbd,
    pub gamma_gamma: Option<GammaGamma>,
    /// Predicted against actual purchases in the holdout period, by frequency.
    pub holdout: Option<Holdout>,
}

/// The last holdout group: this many repeat purchases or more.
pub const HOLDOUT_TOP_GROUP: u32 = 7;

/// The calibration check: per frequency group, the mean predicted and actual number of
/// repeat purchase days in the holdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holdout {
    pub from: String,
    pub days: f64,
    pub groups: Vec<HoldoutGroup>,
    pub predicted_total: f64,
    pub actual_total: f64,
    /// Mean absolute error of predicted against actual per customer.
    pub mean_absolute_error: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldoutGroup {
    /// Repeat purchases in the calibration period; the last group is this many or more.
    pub frequency: u32,
    pub customers: u64,
    pub predicted_mean: f64,
    pub actual_mean: f64,
}

/// How to forecast.
#[derive(Debug, Clone, Copy)]
pub struct PredictSpec {
    pub horizon_days: f64,
    pub discount_rate: f64,
}

/// The BG/NBD summary of one subscriber in the time unit: (x, t_x, T), for buyers.
fn summary_of(st: &EventState, s: usize) -> Option<(u32, f64, f64)> {
    let sub = &st.subs[s];
    if sub.orders == 0 {
        return None;
    }
    let cal_day = day_of(st.spec.calibration_end());
    let days = count_bits(&st.buy_days[s * st.words..(s + 1) * st.words], 0, (cal_day - st.first_day) as usize);
    let unit = st.spec.time_unit.days();
    Some((
        days.saturating_sub(1) as u32,
        (sub.last_buy - sub.first_buy) as f64 / unit,
        (cal_day - sub.first_buy) as f64 / unit,
    ))
}

/// Set bits from `lo` to `hi` inclusive.
fn count_bits(words: &[u64], lo: usize, hi: usize) -> u64 {
    let mut n = 0u64;
    for (w, &word) in words.iter().enumerate() {
        let start = w * 64;
        if start > hi || start + 64 <= lo {
            continue;
        }
        let mut m = word;
        if lo > start {
            m &= !0u64 << (lo - start);
        }
        if hi < start + 63 {
            m &= (1u64 << (hi - start + 1)) - 1;
        }
        n += m.count_ones() as u64;
    }
    n
}

/// Gaps in days between consecutive set bits (in increasing bit order), up to `hi`.
fn gaps(words: &[u64], hi: usize, out: &mut Vec<f64>) {
    out.clear();
    let mut prev: Option<usize> = None;
    for (w, &word) in words.iter().enumerate() {
        let mut m = word;
        while m != 0 {
            let bit = w * 64 + m.trailing_zeros() as usize;
            if bit > hi {
                return;
            }
            if let Some(p) = prev {
                out.push((bit - p) as f64);
            }
            prev = Some(bit);
            m &= m - 1;
        }
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

impl EventState {
    /// Fit BG/NBD (and Gamma-Gamma when order values were given) on the buyers.
    pub fn fit_traits(&self, p: PredictSpec) -> Result<Traits> {
        let triples = btyd::group_triples((0..self.subs.len()).filter_map(|s| summary_of(self, s)));
        let bgnbd = btyd::fit_bgnbd(&triples)?;
        let gamma_gamma = if self.spec.value_col.is_some() {
            let data: Vec<(u32, f64)> = (0..self.subs.len())
                .filter_map(|s| {
                    let (x, _, _) = summary_of(self, s)?;
                    let m = self.repeat_value(s, x)?;
                    // A mean beyond f64 (order values summing past 1.8e308) says nothing.
                    (m > 0.0 && m.is_finite()).then_some((x, m))
                })
                .collect();
            Some(btyd::fit_gamma_gamma(&data)?)
        } else {
            None
        };
        let cal_end = self.spec.calibration_end();
        let mut traits = Traits {
            format: TRAITS_FORMAT.into(),
            format_version: 1,
            engine_version: crate::ENGINE_VERSION.into(),
            time_unit: self.spec.time_unit,
            as_of: time_string(self.spec.as_of),
            calibration_end: time_string(cal_end),
            horizon_days: p.horizon_days,
            discount_rate: p.discount_rate,
            bgnbd,
            gamma_gamma,
            holdout: None,
        };
        if let Some(h) = self.spec.holdout_from {
            traits.holdout = Some(self.holdout(&traits.bgnbd, h));
        }
        Ok(traits)
    }

    fn repeat_value(&self, s: usize, x: u32) -> Option<f64> {
        (x > 0 && self.spec.value_col.is_some())
            .then(|| (self.subs[s].revenue - self.subs[s].first_day_value) / x as f64)
    }

    fn holdout_days(&self, s: usize) -> u64 {
        let cal_day = day_of(self.spec.calibration_end());
        let last = day_of(self.spec.as_of);
        if last <= cal_day {
            return 0;
        }
        count_bits(
            &self.buy_days[s * self.words..(s + 1) * self.words],
            (cal_day - self.first_day + 1) as usize,
            (last - self.first_day) as usize,
        )
    }

    fn holdout(&self, m: &BgNbd, from: i64) -> Holdout {
        const TOP: u32 = HOLDOUT_TOP_GROUP;
        let days = (day_of(self.spec.as_of) - day_of(from - 1)) as f64;
        let h = days / self.spec.time_unit.days();
        let mut g = vec![(0u64, 0.0f64, 0.0f64); TOP as usize + 1];
        let (mut pt, mut at, mut mae, mut n) = (0.0, 0.0, 0.0, 0u64);
        for s in 0..self.subs.len() {
            let Some((x, tx, t)) = summary_of(self, s) else { continue };
            let pred = m.expected_purchases(h, x as f64, tx, t);
            let act = self.holdout_days(s) as f64;
            let e = &mut g[x.min(TOP) as usize];
            e.0 += 1;
            e.1 += pred;
            e.2 += act;
            pt += pred;
            at += act;
            mae += (pred - act).abs();
            n += 1;
        }
        Holdout {
            from: time_string(from),
            days,
            groups: g
                .into_iter()
                .enumerate()
                .filter(|(_, e)| e.0 > 0)
                .map(|(x, e)| HoldoutGroup {
                    frequency: x as u32,
                    customers: e.0,
                    predicted_mean: e.1 / e.0 as f64,
                    actual_mean: e.2 / e.0 as f64,
                })
                .collect(),
            predicted_total: pt,
            actual_total: at,
            mean_absolute_error: if n > 0 { mae / n as f64 } else { 0.0 },
        }
    }

    /// The output schema (see the README for every column).
    pub fn schema(&self, traits: Option<&Traits>) -> SchemaRef {
        let u = self.spec.time_unit.name();
        let mut f: Vec<Field> = vec![Field::new(&self.spec.id_col, self.id_out_type(), false)];
        let i = |n: &str| Field::new(n, DataType::Int64, false);
        let io = |n: &str| Field::new(n, DataType::Int64, true);
        let fo = |n: &str| Field::new(n, DataType::Float64, true);
        f.extend([
            i("orders"),
            i("purchase_days"),
            i("frequency"),
            fo(&format!("recency_{u}")),
            fo(&format!("tenure_{u}")),
            fo("revenue"),
            fo("mean_repeat_value"),
            io("days_since_last_purchase"),
            fo("median_purchase_gap_days"),
        ]);
        for kind in ["sends", "opens", "clicks", "visits"] {
            f.extend([i(kind), i(&format!("{kind}_90d")), i(&format!("{kind}_30d"))]);
        }
        f.extend([
            fo("open_rate"),
            fo("click_rate"),
            io("days_since_last_open"),
            io("days_since_last_click"),
            io("days_since_last_visit"),
            io("days_since_first_event"),
            i("complaints"),
            i("bounces"),
            Field::new("unsubscribed", DataType::Boolean, false),
            i("send_time_events"),
            fo("preferred_hour"),
            fo("hour_concentration"),
            Field::new("preferred_weekday", DataType::Int32, true),
            Field::new("smoothed_hour", DataType::Float64, false),
            i("engaged_days_365d"),
            fo("median_engagement_gap_days"),
            Field::new("cadence", DataType::Utf8, false),
            Field::new("max_sends_per_week", DataType::Int32, false),
            fo("open_rate_30d"),
            fo("open_rate_prev_90d"),
            fo("open_rate_trend"),
            fo("open_rate_slope_per_week"),
            Field::new("fatigued", DataType::Boolean, false),
        ]);
        for c in &self.categories {
            f.push(fo(&affinity_column(c)));
        }
        if !self.categories.is_empty() {
            f.push(Field::new("next_purchase_category", DataType::Utf8, false));
        }
        if self.spec.holdout_from.is_some() {
            f.push(i("holdout_purchase_days"));
        }
        if let Some(t) = traits {
            let h = t.horizon_days;
            f.extend([fo("p_alive"), fo("churn_probability"), fo(&format!("expected_purchases_{h}d"))]);
            if t.gamma_gamma.is_some() {
                f.extend([fo("expected_order_value"), fo(&format!("clv_{h}d"))]);
            }
        }
        Arc::new(Schema::new(f))
    }

    fn id_out_type(&self) -> DataType {
        if self.id_type.is_integer() || self.id_type.is_floating() { DataType::Int64 } else { DataType::Utf8 }
    }

    /// Subscribers in id order (numeric, or byte-wise for text ids).
    fn order(&self) -> Vec<u32> {
        // Subscribers seen only after the calibration end have no features.
        let mut v: Vec<u32> =
            (0..self.subs.len() as u32).filter(|&s| self.subs[s as usize].first_event != i32::MAX).collect();
        match &self.ids {
            Ids::Int(_, ids) => v.sort_unstable_by_key(|&i| ids[i as usize]),
            Ids::Str(_, ids) => v.sort_unstable_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize])),
        }
        v
    }

    /// Write the feature rows (in id order) to `sink`, a batch at a time.
    pub fn finish(&self, traits: Option<&Traits>, sink: &mut dyn FnMut(RecordBatch) -> Result<()>) -> Result<()> {
        let schema = self.schema(traits);
        let order = self.order();
        let pop = self.population_direction();
        let pop_share = self.category_population_share();
        // (x, t_x, T) once per subscriber: half a dozen columns read it.
        let summaries: Vec<Option<(u32, f64, f64)>> = (0..self.subs.len()).map(|s| summary_of(self, s)).collect();
        for chunk in order.chunks(OUT_ROWS) {
            let batch = self.rows(chunk, &schema, traits, pop, &pop_share, &summaries)?;
            sink(batch)?;
        }
        Ok(())
    }

    fn population_direction(&self) -> (f64, f64) {
        let (mut c, mut s, mut n) = (0.0, 0.0, 0.0);
        for sub in &self.subs {
            c += sub.hour_c;
            s += sub.hour_s;
            n += sub.hour_n as f64;
        }
        if n > 0.0 { (c / n, s / n) } else { (0.0, 0.0) }
    }

    fn category_population_share(&self) -> Vec<f64> {
        let k = self.categories.len();
        let stride = 2 * k + 1;
        let mut tot = vec![0.0; k];
        for s in 0..self.subs.len() {
            for (c, t) in tot.iter_mut().enumerate() {
                *t += self.cat_counts[s * stride + k + c] as f64;
            }
        }
        let sum: f64 = tot.iter().sum();
        tot.iter().map(|t| if sum > 0.0 { t / sum } else { 1.0 / k.max(1) as f64 }).collect()
    }

    fn rows(
        &self,
        chunk: &[u32],
        schema: &SchemaRef,
        traits: Option<&Traits>,
        pop: (f64, f64),
        pop_share: &[f64],
        summaries: &[Option<(u32, f64, f64)>],
    ) -> Result<RecordBatch> {
        let n = chunk.len();
        let spec = &self.spec;
        let cal_day = day_of(spec.calibration_end());
        let cal_bit = (cal_day - self.first_day) as usize;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        cols.push(match &self.ids {
            Ids::Int(_, ids) => Arc::new(Int64Array::from_iter_values(chunk.iter().map(|&s| ids[s as usize]))),
            Ids::Str(_, ids) => Arc::new(StringArray::from_iter_values(chunk.iter().map(|&s| &*ids[s as usize]))),
        });
        let ints = |f: &dyn Fn(&Sub, usize) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|&s| f(&self.subs[s as usize], s as usize))))
        };
        let opt_ints = |f: &dyn Fn(&Sub, usize) -> Option<i64>| -> ArrayRef {
            let mut b = Int64Builder::with_capacity(n);
            for &s in chunk {
                b.append_option(f(&self.subs[s as usize], s as usize));
            }
            Arc::new(b.finish())
        };
        let floats = |f: &dyn Fn(&Sub, usize) -> Option<f64>| -> ArrayRef {
            let mut b = Float64Builder::with_capacity(n);
            for &s in chunk {
                b.append_option(f(&self.subs[s as usize], s as usize).filter(|v| v.is_finite()));
            }
            Arc::new(b.finish())
        };
        let days_since = |d: i32| (d != i32::MIN).then(|| (cal_day - d) as i64);
        let has_value = spec.value_col.is_some();
        let summ = |s: usize| summaries[s];
        // Purchases.
        cols.push(ints(&|u, _| u.orders as i64));
        cols.push(ints(&|_, s| count_bits(&self.buy_days[s * self.words..(s + 1) * self.words], 0, cal_bit) as i64));
        cols.push(ints(&|_, s| summ(s).map_or(0, |t| t.0 as i64)));
        cols.push(floats(&|_, s| summ(s).map(|t| t.1)));
        cols.push(floats(&|_, s| summ(s).map(|t| t.2)));
        cols.push(floats(&|u, _| has_value.then_some(u.revenue)));
        cols.push(floats(&|_, s| summ(s).and_then(|t| self.repeat_value(s, t.0))));
        cols.push(opt_ints(&|u, _| days_since(if u.orders > 0 { u.last_buy } else { i32::MIN })));
        let mut scratch = Vec::new();
        {
            let mut b = Float64Builder::with_capacity(n);
            for &s in chunk {
                let s = s as usize;
                gaps(&self.buy_days[s * self.words..(s + 1) * self.words], cal_bit, &mut scratch);
                b.append_option(median(&mut scratch));
            }
            cols.push(Arc::new(b.finish()));
        }
        // Engagement counts.
        for k in 0..4 {
            for w in 0..3 {
                cols.push(ints(&|u, _| u.counts[k][w] as i64));
            }
        }
        let rate = |a: u32, b: u32| (b > 0).then(|| a as f64 / b as f64);
        cols.push(floats(&|u, _| rate(u.counts[1][0], u.counts[0][0])));
        cols.push(floats(&|u, _| rate(u.counts[2][0], u.counts[0][0])));
        for k in 0..3 {
            cols.push(opt_ints(&|u, _| days_since(u.last[k])));
        }
        cols.push(opt_ints(&|u, _| days_since(if u.first_event == i32::MAX { i32::MIN } else { u.first_event })));
        cols.push(ints(&|u, _| u.complaints as i64));
        cols.push(ints(&|u, _| u.bounces as i64));
        cols.push(Arc::new(arrow::array::BooleanArray::from_iter(
            chunk.iter().map(|&s| Some(self.subs[s as usize].unsubscribes > 0)),
        )));
        // Send time.
        let hour_of = |c: f64, s: f64| {
            let h = s.atan2(c) / std::f64::consts::TAU * 24.0;
            if h < 0.0 { h + 24.0 } else { h }
        };
        cols.push(ints(&|u, _| u.hour_n as i64));
        cols.push(floats(&|u, _| (u.hour_n > 0).then(|| hour_of(u.hour_c, u.hour_s))));
        cols.push(floats(&|u, _| (u.hour_n > 0).then(|| (u.hour_c.hypot(u.hour_s) / u.hour_n as f64).min(1.0))));
        {
            let mut b = Int32Builder::with_capacity(n);
            for &s in chunk {
                let u = &self.subs[s as usize];
                let best = (0..7).max_by_key(|&d| (u.weekday[d], std::cmp::Reverse(d))).unwrap();
                b.append_option((u.hour_n > 0).then_some(best as i32 + 1));
            }
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(Float64Array::from_iter_values(chunk.iter().map(|&s| {
            let u = &self.subs[s as usize];
            hour_of(u.hour_c + HOUR_PRIOR_EVENTS * pop.0, u.hour_s + HOUR_PRIOR_EVENTS * pop.1)
        }))));
        // Cadence and fatigue.
        let mut cad = StringBuilder::with_capacity(n, n * 7);
        let mut max_sends = Int32Builder::with_capacity(n);
        let mut eng_days = Int64Builder::with_capacity(n);
        let mut eng_gap = Float64Builder::with_capacity(n);
        let mut r30 = Float64Builder::with_capacity(n);
        let mut rprev = Float64Builder::with_capacity(n);
        let mut trend = Float64Builder::with_capacity(n);
        let mut slope_b = Float64Builder::with_capacity(n);
        let mut fatigued_b = BooleanBuilder::with_capacity(n);
        for &s in chunk {
            let u = &self.subs[s as usize];
            // Engagement bits are ages (bit d = d days before as-of); gaps are the same.
            let days = u.engaged.iter().map(|w| w.count_ones() as i64).sum::<i64>();
            gaps(&u.engaged, CADENCE_DAYS as usize, &mut scratch);
            let med = median(&mut scratch);
            let class = cadence_class(days, med);
            let rate30 = rate(u.counts[1][2], u.counts[0][2]);
            let ratep = rate(u.prev90[1], u.prev90[0]);
            let slope = weekly_slope(&u.week_sends, &u.week_opens);
            let fatigued = u.counts[0][2] >= 4
                && u.prev90[0] >= 4
                && matches!((rate30, ratep, slope), (Some(a), Some(b), Some(sl)) if b >= 0.1 && a <= 0.5 * b && sl < 0.0);
            eng_days.append_value(days);
            eng_gap.append_option(med);
            cad.append_value(class.name());
            max_sends.append_value(class.max_sends(med, fatigued));
            r30.append_option(rate30);
            rprev.append_option(ratep);
            trend.append_option(rate30.zip(ratep).map(|(a, b)| a - b));
            slope_b.append_option(slope);
            fatigued_b.append_value(fatigued);
        }
        cols.push(Arc::new(eng_days.finish()));
        cols.push(Arc::new(eng_gap.finish()));
        cols.push(Arc::new(cad.finish()));
        cols.push(Arc::new(max_sends.finish()));
        cols.push(Arc::new(r30.finish()));
        cols.push(Arc::new(rprev.finish()));
        cols.push(Arc::new(trend.finish()));
        cols.push(Arc::new(slope_b.finish()));
        cols.push(Arc::new(fatigued_b.finish()));
        // Content affinity.
        let k = self.categories.len();
        if k > 0 {
            let stride = 2 * k + 1;
            let row = |s: u32| &self.cat_counts[s as usize * stride..(s as usize + 1) * stride];
            for c in 0..k {
                cols.push(floats(&|_, s| {
                    let r = row(s as u32);
                    let total: u64 = r.iter().map(|v| *v as u64).sum();
                    (total > 0).then(|| (r[c] + r[k + c]) as f64 / total as f64)
                }));
            }
            let mut b = StringBuilder::with_capacity(n, n * 8);
            for &s in chunk {
                let r = row(s);
                let score = |c: usize| r[k + c] as f64 + 0.5 * r[c] as f64 + pop_share[c];
                let best = (0..k).fold(0, |best, c| if score(c) > score(best) { c } else { best });
                b.append_value(&self.categories[best]);
            }
            cols.push(Arc::new(b.finish()));
        }
        if spec.holdout_from.is_some() {
            cols.push(ints(&|_, s| self.holdout_days(s) as i64));
        }
        if let Some(t) = traits {
            let m = &t.bgnbd;
            let unit = spec.time_unit.days();
            let h = t.horizon_days / unit;
            let p_alive = floats(&|_, s| summ(s).map(|(x, tx, tt)| m.p_alive(x as f64, tx, tt)));
            let churn: Float64Array = p_alive.as_primitive::<arrow::datatypes::Float64Type>().unary(|p| 1.0 - p);
            cols.push(p_alive);
            cols.push(Arc::new(churn));
            cols.push(floats(&|_, s| summ(s).map(|(x, tx, tt)| m.expected_purchases(h, x as f64, tx, tt))));
            if let Some(gg) = &t.gamma_gamma {
                let value = |s: usize| {
                    summ(s).map(|(x, _, _)| gg.expected_value(x as f64, self.repeat_value(s, x).unwrap_or(0.0)))
                };
                cols.push(floats(&|_, s| value(s)));
                cols.push(floats(&|_, s| {
                    let (x, tx, tt) = summ(s)?;
                    Some(clv(m, value(s)?, t.horizon_days, unit, t.discount_rate, x as f64, tx, tt))
                }));
            }
        }
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Runtime(format!("feature batch: {e}")))
    }
}

/// The column of a category's share: `affinity_` and the name, lower case, with every
/// character other than a letter or digit written `_`.
pub fn affinity_column(cat: &str) -> String {
    let clean: String = cat.chars().map(|c| if c.is_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("affinity_{clean}")
}

/// Lifetime value over the horizon: expected purchases in 30-day steps, each valued at
/// the expected order value and discounted at the yearly rate to the step's end.
#[allow(clippy::too_many_arguments)]
fn clv(m: &BgNbd, value: f64, horizon_days: f64, unit: f64, rate: f64, x: f64, tx: f64, t: f64) -> f64 {
    let mut total = 0.0;
    let mut prev = 0.0;
    let mut d = 0.0;
    while d < horizon_days {
        let end = (d + 30.0).min(horizon_days);
        let e = m.expected_purchases(end / unit, x, tx, t);
        total += (e - prev) * value / (1.0 + rate).powf(end / 365.0);
        prev = e;
        d = end;
    }
    total
}

/// The weighted least-squares slope of weekly open rates (opens per send) on time, per
/// week, over the weeks with a send; `None` with fewer than two such weeks.
fn weekly_slope(sends: &[u16; FATIGUE_WEEKS], opens: &[u16; FATIGUE_WEEKS]) -> Option<f64> {
    let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
    let mut weeks = 0;
    for w in 0..FATIGUE_WEEKS {
        if sends[w] == 0 {
            continue;
        }
        let wt = sends[w] as f64;
        let x = -(w as f64);
        sw += wt;
        sx += wt * x;
        sy += wt * opens[w] as f64 / sends[w] as f64;
        weeks += 1;
    }
    if weeks < 2 {
        return None;
    }
    let (mx, my) = (sx / sw, sy / sw);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for w in 0..FATIGUE_WEEKS {
        if sends[w] == 0 {
            continue;
        }
        let wt = sends[w] as f64;
        let x = -(w as f64) - mx;
        sxy += wt * x * (opens[w] as f64 / sends[w] as f64 - my);
        sxx += wt * x * x;
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The cadence classes and their rule (median days between engagement days in the last
/// 365 days): daily ≤ 2, weekly ≤ 10, monthly ≤ 45, else (or fewer than 3 engagement
/// days) sporadic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    Daily,
    Weekly,
    Monthly,
    Sporadic,
}

pub fn cadence_class(engaged_days: i64, median_gap: Option<f64>) -> Cadence {
    match median_gap {
        Some(g) if engaged_days >= 3 => {
            if g <= 2.0 {
                Cadence::Daily
            } else if g <= 10.0 {
                Cadence::Weekly
            } else if g <= 45.0 {
                Cadence::Monthly
            } else {
                Cadence::Sporadic
            }
        }
        _ => Cadence::Sporadic,
    }
}

impl Cadence {
    pub fn name(self) -> &'static str {
        match self {
            Cadence::Daily => "daily",
            Cadence::Weekly => "weekly",
            Cadence::Monthly => "monthly",
            Cadence::Sporadic => "sporadic",
        }
    }
    /// Twice the subscriber's own rhythm (⌈14 / median gap⌉, 1 to 7 a week; 7 for daily,
    /// 1 for sporadic), halved (rounded up) when fatigued.
    pub fn max_sends(self, median_gap: Option<f64>, fatigued: bool) -> i32 {
        let base = match (self, median_gap) {
            (Cadence::Daily, _) => 7,
            (Cadence::Sporadic, _) | (_, None) => 1,
            (_, Some(g)) => ((14.0 / g).ceil() as i32).clamp(1, 7),
        };
        if fatigued { (base + 1) / 2 } else { base }
    }
}
