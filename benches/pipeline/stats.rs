//! Percentiles and small formatting helpers.

/// Summary of a sample of values (milliseconds unless said otherwise).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| {
            // Nearest rank.
            let rank = (q * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Summary {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            max: v[v.len() - 1],
            min: v[0],
        }
    }

    /// The summary of `values`, each figure rounded to 3 decimals (as results.json keeps it).
    pub fn rounded(values: &[f64]) -> Summary {
        let s = Summary::of(values);
        Summary {
            n: s.n,
            mean: r3(s.mean),
            p50: r3(s.p50),
            p90: r3(s.p90),
            p95: r3(s.p95),
            p99: r3(s.p99),
            max: r3(s.max),
            min: r3(s.min),
        }
    }
}

/// A number with sensible precision for a table.
pub fn f(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn median(values: &[f64]) -> f64 {
    Summary::of(values).p50
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}
