//! `refit demo`: generated bike-rental data for a few stations (users), flowing at a steady rate
//! through the real service, with one line printed per retrain as its event arrives on the topic.
//!
//! Each prediction request carries the features a rental model would see — hour, weekday,
//! holiday, temperature, humidity, wind speed — and its actual is the number of rentals that
//! really happened: a daily and weekly pattern, weather effects, a per-station scale, and noise.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::outbox::events::EventReader;
use crate::store;

/// One generated prediction request with the rentals that actually happened.
#[derive(Debug, Clone)]
pub(crate) struct Rental {
    pub(crate) user_id: String,
    pub(crate) features: serde_json::Value,
    pub(crate) actual: f64,
}

/// A deterministic rental-data generator.
pub(crate) struct RentalGenerator {
    rng: StdRng,
    stations: Vec<String>,
    /// Simulated clock, in hours since the start.
    hour: f64,
}

impl RentalGenerator {
    pub(crate) fn new(stations: usize, seed: u64) -> Self {
        RentalGenerator {
            rng: StdRng::seed_from_u64(seed),
            stations: (1..=stations).map(|i| format!("station-{i:02}")).collect(),
            hour: 0.0,
        }
    }

    /// The next request of a random station.
    pub(crate) fn next_rental(&mut self) -> Rental {
        self.hour += 0.05;
        let station = self.rng.gen_range(0..self.stations.len());
        let hour = (self.hour % 24.0).floor();
        let weekday = ((self.hour / 24.0).floor() % 7.0) as i64;
        let holiday = i64::from(self.rng.gen_bool(0.04));
        let season = (self.hour / (24.0 * 90.0)).sin();
        let temperature = 14.0
            + 10.0 * season
            + 4.0 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos()
            + self.rng.gen_range(-2.0..2.0);
        let humidity = self.rng.gen_range(30.0..95.0_f64);
        let windspeed = self.rng.gen_range(0.0..30.0_f64);
        let commute = if weekday < 5 && holiday == 0 {
            80.0 * (-((hour - 8.0).powi(2)) / 3.0).exp()
                + 100.0 * (-((hour - 17.5).powi(2)) / 4.0).exp()
        } else {
            60.0 * (-((hour - 14.0).powi(2)) / 12.0).exp()
        };
        let weather = (temperature.clamp(0.0, 30.0) / 30.0)
            * (1.2 - humidity / 150.0)
            * (1.0 - windspeed / 80.0);
        let scale = 0.6 + 0.2 * station as f64;
        let actual = ((10.0 + commute) * weather * scale + self.rng.gen_range(-5.0..5.0))
            .max(0.0)
            .round();
        Rental {
            user_id: self.stations[station].clone(),
            features: json!({
                "hour": hour,
                "weekday": weekday,
                "holiday": holiday,
                "temperature": (temperature * 10.0).round() / 10.0,
                "humidity": humidity.round(),
                "windspeed": (windspeed * 10.0).round() / 10.0,
            }),
            actual,
        }
    }
}

/// Inserts a prediction request and its actual (each in its own transaction, as upstream does).
pub(crate) async fn insert_rental(pool: &PgPool, rental: &Rental) -> sqlx::Result<i64> {
    store::demo::insert_rental(pool, &rental.user_id, &rental.features, rental.actual).await
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres` to do so).
pub(crate) async fn create_database(url: &str) -> anyhow::Result<()> {
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    store::demo::create_database(&mut admin, &name).await?;
    admin.close().await?;
    Ok(())
}

/// Feeds generated rentals into the database at `per_second` until `stop`.
pub(crate) async fn generate(
    pool: PgPool,
    stations: usize,
    per_second: u32,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let mut generator = RentalGenerator::new(stations, rand::random());
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(1) as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inserted = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(inserted),
            _ = ticker.tick() => {}
        }
        insert_rental(&pool, &generator.next_rental()).await?;
        inserted += 1;
    }
}

/// Cancels `stop` after `seconds` (never when 0), or on SIGTERM or SIGINT.
pub(crate) async fn stop_after(seconds: u64, stop: CancellationToken) {
    let timer = async {
        if seconds == 0 {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(Duration::from_secs(seconds)).await
        }
    };
    tokio::select! { _ = crate::scheduler::shutdown_signal() => {}, _ = timer => {} }
    stop.cancel();
}

/// Prints every retrain event until `stop`, then those published during shutdown; returns how
/// many it printed. Blocks.
pub(crate) fn print_events(reader: &EventReader, stop: &CancellationToken) -> u64 {
    let mut seen = 0u64;
    while !stop.is_cancelled() {
        match reader.next(Duration::from_millis(200)) {
            Ok(Some(e)) => {
                seen += 1;
                println!("{}", describe_event(&e));
            }
            Ok(None) => {}
            Err(err) => eprintln!("reading events: {err:#}"),
        }
    }
    // Events published during shutdown.
    while let Ok(Some(e)) = reader.next(Duration::from_millis(1500)) {
        seen += 1;
        println!("{}", describe_event(&e));
    }
    seen
}

/// One printed line for a retrain event.
pub(crate) fn describe_event(e: &crate::outbox::events::ReadEvent) -> String {
    let ev = &e.event;
    let timings = ["read", "train", "commit", "invalidate"]
        .iter()
        .filter_map(|k| {
            ev.timings_ms
                .get(*k)
                .and_then(|v| v.as_f64())
                .map(|v| format!("{k}={v:.1}"))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let version = match (ev.previous_version, ev.model_version) {
        (Some(p), Some(v)) => format!("v{v} (from v{p})"),
        (None, Some(v)) => format!("v{v} (new)"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{:<11} {:<8} {:<15} rows={:<3} set_aside={:<2} trees={:<4} ms: {}  [p{}@{}]",
        ev.user_id,
        ev.status,
        version,
        ev.rows_used,
        ev.rows_rejected,
        ev.trees.map_or("-".into(), |t| t.to_string()),
        timings,
        e.partition,
        e.offset
    );
    if let Some(reason) = &ev.reason {
        line.push_str(&format!(" reason: {reason}"));
    }
    line
}
