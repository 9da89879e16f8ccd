//! Medians and spread over repeats: a shared machine's runs vary, and one number would hide it.

/// The median of a run's repeats and the range they span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The repeats' median and range; `NaN` for none.
    pub fn of(samples: &[f64]) -> Spread {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread::one(f64::NAN);
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// A single measurement (no repeats).
    pub fn one(x: f64) -> Spread {
        Spread {
            median: x,
            min: x,
            max: x,
        }
    }

    /// The range as ± percent of the median, for the table.
    pub fn spread_percent(&self) -> f64 {
        if self.median == 0.0 || self.median.is_nan() {
            return 0.0;
        }
        (self.max - self.min) / 2.0 / self.median.abs() * 100.0
    }
}

/// The `q`-quantile (0..=1) of a Prometheus histogram from its cumulative buckets
/// `(upper bound, count)`, interpolated linearly inside the bucket as Prometheus'
/// `histogram_quantile` does.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return lower;
            }
            let inside = count - below;
            let frac = if inside == 0.0 {
                0.0
            } else {
                (rank - below) / inside
            };
            return lower + (upper - lower) * frac;
        }
        (lower, below) = (upper, count);
    }
    lower
}
