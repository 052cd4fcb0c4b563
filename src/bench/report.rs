//! Results: a readable table, or JSON.

use serde_json::{Map, Value};

/// What a scenario measured, in the order it should be read.
#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    rows: Vec<(String, Value, String)>,
    /// Set when the run was interrupted.
    pub partial: bool,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            ..Report::default()
        }
    }

    /// Adds a figure: a key (for JSON), its value, and a unit or note.
    pub fn add(&mut self, key: &str, value: impl Into<Value>, unit: &str) {
        self.rows
            .push((key.to_owned(), value.into(), unit.to_owned()));
    }

    /// Adds p50, p90, p99, p99.9 and max of `samples` (microseconds), in ms.
    pub fn add_latency(&mut self, key: &str, samples: &mut [u64]) {
        samples.sort_unstable();
        for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999)] {
            self.add(
                &format!("{key}_{label}_ms"),
                round(percentile(samples, quantile) as f64 / 1000.0),
                "ms",
            );
        }
        self.add(
            &format!("{key}_max_ms"),
            round(samples.last().copied().unwrap_or(0) as f64 / 1000.0),
            "ms",
        );
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("scenario".into(), self.title.clone().into());
        map.insert("partial".into(), self.partial.into());
        for (key, value, _) in &self.rows {
            map.insert(key.clone(), value.clone());
        }
        Value::Object(map)
    }

    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let mut out = format!(
            "{}{}\n",
            self.title,
            if self.partial {
                " (interrupted: partial results)"
            } else {
                ""
            }
        );
        for (key, value, unit) in &self.rows {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {key:<width$}  {value:>14} {unit}\n"));
        }
        out
    }
}

/// The `quantile` (0..1) of sorted samples.
pub fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * quantile).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 0.5), 500);
        assert_eq!(percentile(&samples, 0.99), 990);
        assert_eq!(percentile(&samples, 1.0), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
