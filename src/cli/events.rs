//! `microseg features`: an event log (Parquet) to one feature row per subscriber, with
//! predictive traits (BG/NBD, Gamma-Gamma) on request.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};
use crate::events::{self, EventSpec, EventTypes, PredictSpec, Zone};
use crate::io::Dataset;
use crate::io::output::{AtomicOutput, ParquetOutput, write_json};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum UnitArg {
    Day,
    Week,
}

#[derive(Debug, Args)]
pub(crate) struct FeaturesArgs {
    /// Event log: Parquet files or directories of them (one schema).
    #[arg(long, num_args = 1.., required = true)]
    events: Vec<PathBuf>,
    /// Features as of this time: a date (that whole day is included), an ISO 8601 time
    /// (UTC unless it carries an offset) or epoch seconds. Later events are left out.
    #[arg(long)]
    as_of: String,
    /// Output: one row per subscriber (Parquet).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "subscriber_id")]
    id_col: String,
    /// Event time: a timestamp of any unit, a date, integer epoch seconds or ISO 8601 text.
    #[arg(long, default_value = "timestamp")]
    time_col: String,
    /// Event type (text): each name must be one of the kinds below or --ignore-types.
    #[arg(long, default_value = "event")]
    type_col: String,
    /// Every row is an event of this type, for a table of orders or order lines
    /// (`--event-type purchase`); the log then needs no type column.
    #[arg(long)]
    event_type: Option<String>,
    #[arg(long, value_delimiter = ',', default_value = "purchase,order")]
    purchase_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "send")]
    send_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "open")]
    open_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "click")]
    click_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "visit")]
    visit_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "unsubscribe")]
    unsubscribe_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "complaint")]
    complaint_types: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "bounce")]
    bounce_types: Vec<String>,
    /// Event types read and skipped (any other unknown type is an error).
    #[arg(long, value_delimiter = ',')]
    ignore_types: Vec<String>,
    /// Order value of purchase events (number ≥ 0): a column, or the product of two
    /// (`Quantity*UnitPrice`).
    #[arg(long)]
    value_col: Option<String>,
    /// Order id: purchase rows of a subscriber with the same id are one order (`orders`
    /// counts orders, not rows; their values add up).
    #[arg(long)]
    order_col: Option<String>,
    /// Leave out (and count) rows whose subscriber id is null, instead of refusing the log.
    #[arg(long)]
    skip_null_ids: bool,
    /// Leave out (and count) purchases with a negative value (refunds, cancellations),
    /// instead of refusing the log.
    #[arg(long)]
    skip_negative_values: bool,
    /// Product or content category of clicks and purchases (text).
    #[arg(long)]
    category_col: Option<String>,
    /// Top categories given a share column each.
    #[arg(long, default_value_t = 10)]
    categories: usize,
    /// Each row's time zone (IANA name or offset), for local send hours.
    #[arg(long)]
    timezone_col: Option<String>,
    /// The time zone of every row (without --timezone-col, or where it is null).
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Unit of recency and age (the BG/NBD time unit).
    #[arg(long, value_enum, default_value = "day")]
    time_unit: UnitArg,
    /// Fit BG/NBD (and Gamma-Gamma with --value-col) and add p_alive, churn_probability,
    /// expected purchases, expected order value and lifetime value; needs --traits-out.
    #[arg(long)]
    predict: bool,
    /// The fitted traits model (JSON: parameters, log-likelihood, convergence, holdout check).
    #[arg(long)]
    traits_out: Option<PathBuf>,
    /// Forecast horizon in days.
    #[arg(long, default_value_t = 90.0)]
    horizon: f64,
    /// Yearly discount rate of lifetime value.
    #[arg(long, default_value_t = 0.1)]
    discount_rate: f64,
    /// Calibration ends before this time; purchases from it to --as-of are the holdout,
    /// compared with the forecast (needs --predict).
    #[arg(long)]
    holdout_from: Option<String>,
    #[command(flatten)]
    pub(crate) write: super::WriteArgs,
}

fn parse_time(s: &str, flag: &str) -> Result<(i64, i64)> {
    events::parse_time(s).ok_or_else(|| {
        Error::Usage(format!("{flag} '{s}' is not a time: give a date (2024-06-30), an ISO 8601 time or epoch seconds"))
    })
}

pub(crate) fn run_features(a: FeaturesArgs) -> Result<()> {
    let t0 = Instant::now();
    let as_of = parse_time(&a.as_of, "--as-of")?.1;
    let holdout_from = a.holdout_from.as_deref().map(|h| parse_time(h, "--holdout-from")).transpose()?.map(|t| t.0);
    if a.predict != a.traits_out.is_some() {
        return Err(Error::Usage(
            "--predict and --traits-out go together: the fitted traits model is written there".into(),
        ));
    }
    let timezone = Zone::parse(&a.timezone).ok_or_else(|| {
        Error::Usage(format!(
            "--timezone '{}' is not a time zone (an IANA name such as Europe/Berlin, or +02:00)",
            a.timezone
        ))
    })?;
    let mut outs: Vec<&std::path::Path> = vec![&a.out];
    if let Some(t) = &a.traits_out {
        outs.push(t);
    }
    let ins: Vec<&std::path::Path> = a.events.iter().map(|p| p.as_path()).collect();
    crate::io::output::check_paths(&ins, &outs, a.write.json)?;
    let spec = EventSpec {
        id_col: a.id_col.clone(),
        time_col: a.time_col.clone(),
        type_col: a.type_col.clone(),
        event_type: a.event_type.clone(),
        value_col: a.value_col.clone(),
        order_col: a.order_col.clone(),
        skip_null_ids: a.skip_null_ids,
        skip_negative_values: a.skip_negative_values,
        category_col: a.category_col.clone(),
        timezone_col: a.timezone_col.clone(),
        timezone,
        types: EventTypes {
            purchase: a.purchase_types.clone(),
            send: a.send_types.clone(),
            open: a.open_types.clone(),
            click: a.click_types.clone(),
            visit: a.visit_types.clone(),
            unsubscribe: a.unsubscribe_types.clone(),
            complaint: a.complaint_types.clone(),
            bounce: a.bounce_types.clone(),
            ignore: a.ignore_types.clone(),
        },
        holdout_from,
        time_unit: match a.time_unit {
            UnitArg::Day => events::TimeUnit::Day,
            UnitArg::Week => events::TimeUnit::Week,
        },
        categories: if a.category_col.is_some() { a.categories } else { 0 },
        ..EventSpec::new(as_of)
    };
    let predict = a.predict.then_some(PredictSpec { horizon_days: a.horizon, discount_rate: a.discount_rate });
    // Outputs are claimed before the work, so an existing file fails fast.
    let out = AtomicOutput::create(&a.out, a.write.force)?;
    let traits_out = match &a.traits_out {
        Some(p) => Some(AtomicOutput::create(p, a.write.force)?),
        None => None,
    };
    let ds = Dataset::open(&a.events)?;
    let (state, traits) = events::features(&ds, &spec, predict)?;
    let meta = super::provenance("features", None, false);
    let mut pq = ParquetOutput::with_metadata(out, state.schema(traits.as_ref()), 131_072, meta)?;
    state.finish(traits.as_ref(), &mut |b| pq.write(&b))?;
    pq.commit()?;
    if let (Some(t), Some(out)) = (&traits, traits_out) {
        write_json(out, t)?;
    }
    let s = &state.summary;
    let secs = t0.elapsed().as_secs_f64();
    let mut left_out = format!("{} after --as-of, {} ignored", s.events_after_as_of, s.events_ignored);
    if spec.skip_null_ids {
        left_out += &format!(", {} without an id", s.events_null_id);
    }
    if spec.skip_negative_values {
        left_out += &format!(", {} with a negative value", s.events_negative_value);
    }
    let orders = if spec.order_col.is_some() { format!(", {} orders", s.orders) } else { String::new() };
    super::log(format!(
        "{} events ({left_out}) → {} subscribers ({} buyers{orders}) in {secs:.1}s; {} bytes of state per subscriber",
        s.events_read, s.subscribers, s.buyers, s.bytes_per_subscriber
    ));
    if let Some(t) = &traits {
        let b = &t.bgnbd;
        super::log(format!(
            "BG/NBD r={:.4} alpha={:.4} a={:.4} b={:.4} (LL {:.2}, {}converged)",
            b.r,
            b.alpha,
            b.a,
            b.b,
            b.log_likelihood,
            if b.convergence.converged { "" } else { "not " }
        ));
        if !b.convergence.converged {
            log::warn!("the BG/NBD fit did not converge ({}); treat its forecasts with care", b.convergence.reason);
        }
        if !b.weakly_identified.is_empty() {
            log::warn!(
                "the BG/NBD fit sits on a flat ridge of its likelihood: {}. The data do not pin these down \
                 (typically too little dropout, or too short a history, for a and b): treat churn probabilities \
                 and forecasts with care, or fit on a longer history",
                b.weakly_identified.join("; ")
            );
        }
        if let Some(g) = &t.gamma_gamma {
            super::log(format!(
                "Gamma-Gamma p={:.4} q={:.4} gamma={:.4} (LL {:.2}, {}converged)",
                g.p,
                g.q,
                g.gamma,
                g.log_likelihood,
                if g.convergence.converged { "" } else { "not " }
            ));
            if !g.convergence.converged {
                log::warn!(
                    "the Gamma-Gamma fit did not converge ({}); treat its order values and lifetime values with care",
                    g.convergence.reason
                );
            }
        }
    }
    if a.write.json {
        super::print_json(&serde_json::json!({
            "command": "features", "seconds": secs, "out": a.out, "summary": s,
            "traits": traits,
        }))?;
    }
    Ok(())
}
