//! Synthetic event logs with planted truth, for tests and benchmarks of `features`:
//! every subscriber has a time zone, a preferred local hour, a cadence class, perhaps
//! fatigue, a favourite category, and a purchase process that is BG/NBD's own (Poisson
//! purchases at rate λ ~ Gamma(r, α) while alive, dropping out with probability
//! p ~ Beta(a, b) after each repeat purchase) with Gamma-Gamma order values. The log is
//! written in time order, day by day (as platforms export it), with a fixed-size state
//! per subscriber, so 10⁸ events never sit in memory at once.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Exp, Gamma, Normal};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::output::ParquetOutput;

/// Time zones drawn for subscribers (IANA names, written per row).
pub const ZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
];
/// Categories of clicks and purchases.
pub const CATEGORIES: &[&str] = &["books", "music", "garden", "toys", "kitchen", "sports", "beauty", "games"];
/// Cadence classes in the truth table, with the share of subscribers in each and the
/// range of days between engagement days.
pub const CADENCES: &[(&str, f64, u32, u32)] =
    &[("daily", 0.1, 1, 1), ("weekly", 0.3, 5, 9), ("monthly", 0.3, 24, 36), ("sporadic", 0.3, 60, 150)];

#[derive(Debug, Clone)]
pub struct EventSynthSpec {
    pub subscribers: u64,
    pub days: u32,
    /// The last day of the log (days since 1970-01-01).
    pub last_day: i64,
    pub seed: u64,
    /// Background sends per week that nobody opens (on top of one send per engagement).
    pub sends_per_week: f64,
    /// BG/NBD parameters of the purchase process, in days.
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub rows_per_group: usize,
}

impl Default for EventSynthSpec {
    fn default() -> Self {
        EventSynthSpec {
            subscribers: 10_000,
            days: 365,
            last_day: 20_634, // 2026-06-30
            seed: 0,
            sends_per_week: 1.0,
            r: 1.2,
            alpha: 30.0,
            a: 1.0,
            b: 4.0,
            rows_per_group: 1 << 20,
        }
    }
}

pub fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("subscriber_id", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("event", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("timezone", DataType::Utf8, false),
    ]))
}

pub fn truth_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("subscriber_id", DataType::Int64, false),
        Field::new("timezone", DataType::Utf8, false),
        Field::new("true_hour", DataType::Float64, false),
        Field::new("true_cadence", DataType::Utf8, false),
        Field::new("true_fatigued", DataType::Boolean, false),
        Field::new("true_category", DataType::Utf8, false),
        Field::new("buyer", DataType::Boolean, false),
        Field::new("churned", DataType::Boolean, false),
        Field::new("opens", DataType::Int64, false),
    ]))
}

struct SubState {
    rng: ChaCha8Rng,
    zone: usize,
    hour: f64,
    cadence: usize,
    fatigued: bool,
    category: usize,
    signup: u32,
    next_engage: u32,
    lambda: f64,
    p: f64,
    /// Gamma-Gamma: the scale ν of this customer's order values.
    nu: f64,
    /// Day (fractional, from the log's start) of the next purchase; ∞ when none.
    next_buy: f64,
    bought: bool,
    alive: bool,
    unsub_day: u32,
    complaint_day: u32,
    opens: u64,
}

#[derive(Clone, Copy)]
enum Ev {
    Send,
    Open,
    Click,
    Purchase,
    Unsubscribe,
    Complaint,
    Bounce,
}

impl Ev {
    fn name(self) -> &'static str {
        match self {
            Ev::Send => "send",
            Ev::Open => "open",
            Ev::Click => "click",
            Ev::Purchase => "purchase",
            Ev::Unsubscribe => "unsubscribe",
            Ev::Complaint => "complaint",
            Ev::Bounce => "bounce",
        }
    }
}

struct Row {
    id: i64,
    us: i64,
    ev: Ev,
    value: Option<f64>,
    cat: Option<u8>,
    zone: u8,
}

fn zone_offset(zone: usize, ts: i64) -> i64 {
    use chrono::{Offset, TimeZone};
    let tz: chrono_tz::Tz = ZONES[zone].parse().unwrap();
    let dt = chrono::DateTime::from_timestamp(ts, 0).unwrap().naive_utc();
    tz.offset_from_utc_datetime(&dt).fix().local_minus_utc() as i64
}

fn new_state(spec: &EventSynthSpec, s: u64) -> SubState {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(s);
    let zone = rng.random_range(0..ZONES.len());
    let hour = rng.random::<f64>() * 24.0;
    let u: f64 = rng.random();
    let mut acc = 0.0;
    let cadence = CADENCES
        .iter()
        .position(|c| {
            acc += c.1;
            u < acc
        })
        .unwrap_or(CADENCES.len() - 1);
    let fatigued = cadence < 3 && rng.random::<f64>() < 0.2;
    let category = rng.random_range(0..CATEGORIES.len());
    let signup = rng.random_range(0..(spec.days / 3).max(1));
    let gap = |rng: &mut ChaCha8Rng| rng.random_range(CADENCES[cadence].2..=CADENCES[cadence].3);
    let g = gap(&mut rng);
    let first = signup + rng.random_range(0..g);
    let lambda = Gamma::new(spec.r, 1.0 / spec.alpha).unwrap().sample(&mut rng);
    let p = Beta::new(spec.a, spec.b).unwrap().sample(&mut rng);
    let nu = Gamma::new(4.0, 1.0 / 60.0).unwrap().sample(&mut rng);
    let next_buy = signup as f64 + Exp::new(lambda).unwrap().sample(&mut rng);
    let unsub_day = if rng.random::<f64>() < 0.02 { rng.random_range(signup..spec.days) } else { u32::MAX };
    let complaint_day = if rng.random::<f64>() < 0.005 { rng.random_range(signup..spec.days) } else { u32::MAX };
    SubState {
        rng,
        zone,
        hour,
        cadence,
        fatigued,
        category,
        signup,
        next_engage: first,
        lambda,
        p,
        nu,
        next_buy,
        bought: false,
        alive: true,
        unsub_day,
        complaint_day,
        opens: 0,
    }
}

/// The events of one subscriber on one day (appended to `out`).
fn day_events(spec: &EventSynthSpec, id: i64, st: &mut SubState, day: u32, out: &mut Vec<Row>) {
    let day0 = spec.last_day - spec.days as i64 + 1;
    let midnight_us = (day0 + day as i64) * 86_400 * 1_000_000;
    let zone = st.zone as u8;
    let push = |out: &mut Vec<Row>, secs: f64, ev: Ev, value: Option<f64>, cat: Option<u8>| {
        let us = midnight_us + (secs.clamp(0.0, 86_399.0) * 1e6) as i64;
        out.push(Row { id, us, ev, value, cat, zone });
    };
    if day < st.signup {
        return;
    }
    // Purchases (BG/NBD): every purchase due today, dying after repeat ones.
    while st.alive && st.next_buy < (day + 1) as f64 {
        let secs = (st.next_buy - day as f64) * 86_400.0;
        let v = Gamma::new(5.0, 1.0 / st.nu).unwrap().sample(&mut st.rng);
        let cat = if st.rng.random::<f64>() < 0.7 { st.category } else { st.rng.random_range(0..CATEGORIES.len()) };
        push(out, secs, Ev::Purchase, Some((v * 100.0).round() / 100.0), Some(cat as u8));
        let repeat = st.bought;
        st.bought = true;
        if repeat && st.rng.random::<f64>() < st.p {
            st.alive = false;
        }
        st.next_buy += Exp::new(st.lambda).unwrap().sample(&mut st.rng);
    }
    if day > st.unsub_day {
        return;
    }
    if day == st.unsub_day {
        push(out, 12.0 * 3600.0, Ev::Unsubscribe, None, None);
        return;
    }
    if day == st.complaint_day {
        push(out, 13.0 * 3600.0, Ev::Complaint, None, None);
    }
    // A background send on campaign days (about sends_per_week a week), 09:00 UTC.
    if st.rng.random::<f64>() < spec.sends_per_week / 7.0 {
        push(out, 9.0 * 3600.0, Ev::Send, None, None);
        if st.rng.random::<f64>() < 0.002 {
            push(out, 9.0 * 3600.0 + 60.0, Ev::Bounce, None, None);
        }
    }
    if day == st.next_engage {
        let gap = st.rng.random_range(CADENCES[st.cadence].2..=CADENCES[st.cadence].3);
        st.next_engage = day + gap;
        let in_fatigue = st.fatigued && day + 30 >= spec.days;
        // The open at the preferred local hour (± 45 minutes), after a send 1–3 hours before.
        let local_h = (st.hour + Normal::new(0.0, 0.75).unwrap().sample(&mut st.rng)).rem_euclid(24.0);
        let approx = midnight_us / 1_000_000 + (local_h * 3600.0) as i64;
        let utc_secs = (local_h * 3600.0 - zone_offset(st.zone, approx) as f64).rem_euclid(86_400.0);
        let send_secs = (utc_secs - 3600.0 * (1.0 + 2.0 * st.rng.random::<f64>())).max(0.0);
        push(out, send_secs, Ev::Send, None, None);
        if !in_fatigue || st.rng.random::<f64>() < 0.15 {
            push(out, utc_secs, Ev::Open, None, None);
            st.opens += 1;
            if st.rng.random::<f64>() < 0.3 {
                let cat =
                    if st.rng.random::<f64>() < 0.7 { st.category } else { st.rng.random_range(0..CATEGORIES.len()) };
                push(out, (utc_secs + 120.0).min(86_399.0), Ev::Click, None, Some(cat as u8));
            }
        }
    }
}

fn batch_of(rows: &[Row]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.us)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.ev.name()))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.value))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.cat.map(|c| CATEGORIES[c as usize])))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| ZONES[r.zone as usize]))),
    ];
    RecordBatch::try_new(event_schema(), cols).map_err(|e| Error::Runtime(e.to_string()))
}

/// Write the log (time order) to `events` and one truth row per subscriber to `truth`;
/// returns the number of events.
pub fn generate_events(spec: &EventSynthSpec, mut events: ParquetOutput, truth: Option<ParquetOutput>) -> Result<u64> {
    if spec.subscribers == 0 || spec.days == 0 {
        return Err(Error::Usage("--subscribers and --days must be at least 1".into()));
    }
    let mut states: Vec<SubState> = (0..spec.subscribers).into_par_iter().map(|s| new_state(spec, s)).collect();
    const CHUNK: usize = 4096;
    let mut pending: Vec<Row> = Vec::new();
    let mut total = 0u64;
    for day in 0..spec.days {
        let mut rows: Vec<Row> = states
            .par_chunks_mut(CHUNK)
            .enumerate()
            .flat_map_iter(|(c, chunk)| {
                let mut out = Vec::new();
                for (j, st) in chunk.iter_mut().enumerate() {
                    day_events(spec, (c * CHUNK + j) as i64 + 1, st, day, &mut out);
                }
                out
            })
            .collect();
        rows.sort_by_key(|r| r.us);
        pending.append(&mut rows);
        if pending.len() >= spec.rows_per_group {
            total += pending.len() as u64;
            events.write(&batch_of(&pending)?)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        total += pending.len() as u64;
        events.write(&batch_of(&pending)?)?;
    }
    events.commit()?;
    if let Some(mut t) = truth {
        for (c, chunk) in states.chunks(1 << 16).enumerate() {
            let ids = (0..chunk.len()).map(|j| (c * (1 << 16) + j) as i64 + 1);
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| ZONES[s.zone]))),
                Arc::new(Float64Array::from_iter_values(chunk.iter().map(|s| s.hour))),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| CADENCES[s.cadence].0))),
                Arc::new(BooleanArray::from_iter(chunk.iter().map(|s| Some(s.fatigued)))),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| CATEGORIES[s.category]))),
                Arc::new(BooleanArray::from_iter(chunk.iter().map(|s| Some(s.bought)))),
                Arc::new(BooleanArray::from_iter(chunk.iter().map(|s| Some(!s.alive)))),
                Arc::new(Int64Array::from_iter_values(chunk.iter().map(|s| s.opens as i64))),
            ];
            t.write(&RecordBatch::try_new(truth_schema(), cols).map_err(|e| Error::Runtime(e.to_string()))?)?;
        }
        t.commit()?;
    }
    Ok(total)
}
