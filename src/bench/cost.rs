//! Cost per inference: the prices file (instance type → on-demand $/hour, region,
//! date, source) and the arithmetic from a measured throughput to dollars per
//! 1M tokens and per 1,000 requests. No price lives in code: the built-in table is
//! `deploy/instance-prices.toml`, compiled in, and `--prices FILE` replaces it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BenchError;

const BUILTIN_PRICES: &str = include_str!("../../deploy/instance-prices.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancePrice {
    pub usd_per_hour: f64,
    pub region: String,
    pub date: String,
    pub source: String,
    #[serde(default)]
    pub hardware: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PriceTable {
    instances: BTreeMap<String, InstancePrice>,
}

impl PriceTable {
    pub fn builtin() -> Result<PriceTable, BenchError> {
        Self::parse(BUILTIN_PRICES, "built-in deploy/instance-prices.toml")
    }

    /// Parses a prices file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PriceTable, BenchError> {
        let err = |message: String| BenchError::Prices { origin: origin.to_string(), message };
        let table: PriceTable = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if let Some((name, _)) =
            table.instances.iter().find(|(_, p)| !(p.usd_per_hour > 0.0 && p.usd_per_hour.is_finite()))
        {
            return Err(err(format!("`{name}` needs a positive usd_per_hour")));
        }
        Ok(table)
    }

    pub fn get(&self, instance: &str) -> Result<&InstancePrice, BenchError> {
        self.instances.get(instance).ok_or_else(|| BenchError::UnknownInstance {
            name: instance.to_string(),
            known: self.instances.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.instances.keys().map(String::as_str)
    }
}

/// The price a run was costed at, stored in its results so that a report never
/// needs to guess which hardware a cost belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceUsed {
    /// The instance type the benchmark ran on, when priced from the table.
    pub instance_type: Option<String>,
    pub usd_per_hour: f64,
    pub region: Option<String>,
    pub date: Option<String>,
    pub source: String,
}

impl PriceUsed {
    pub fn from_table(instance: &str, p: &InstancePrice) -> PriceUsed {
        PriceUsed {
            instance_type: Some(instance.to_string()),
            usd_per_hour: p.usd_per_hour,
            region: Some(p.region.clone()),
            date: Some(p.date.clone()),
            source: p.source.clone(),
        }
    }

    pub fn manual(usd_per_hour: f64) -> PriceUsed {
        PriceUsed {
            instance_type: None,
            usd_per_hour,
            region: None,
            date: None,
            source: "--price-per-hour".into(),
        }
    }
}

/// Dollars at one load level; `None` where the throughput it divides by is zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub usd_per_1m_output_tokens: Option<f64>,
    pub usd_per_1m_total_tokens: Option<f64>,
    pub usd_per_1k_requests: Option<f64>,
}

/// hourly price ÷ (per-second rate × 3600) × unit.
fn per_unit(usd_per_hour: f64, per_second: f64, unit: f64) -> Option<f64> {
    (per_second > 0.0 && per_second.is_finite()).then(|| usd_per_hour / (per_second * 3600.0) * unit)
}

pub fn cost(usd_per_hour: f64, output_tok_s: f64, total_tok_s: f64, requests_s: f64) -> Cost {
    Cost {
        usd_per_1m_output_tokens: per_unit(usd_per_hour, output_tok_s, 1e6),
        usd_per_1m_total_tokens: per_unit(usd_per_hour, total_tok_s, 1e6),
        usd_per_1k_requests: per_unit(usd_per_hour, requests_s, 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_matches_hand_computed_values() {
        // c7i.xlarge at $0.179/h serving 100 output tok/s, 300 total tok/s, 0.5 req/s:
        // 100 tok/s × 3600 = 360,000 tok/h → 0.179 / 360,000 × 1e6 = $0.497222…
        // 300 tok/s → 1,080,000 tok/h → $0.165740…; 0.5 req/s → 1,800 req/h →
        // 0.179 / 1800 × 1000 = $0.099444…
        let c = cost(0.179, 100.0, 300.0, 0.5);
        assert!((c.usd_per_1m_output_tokens.unwrap() - 0.497_222_222).abs() < 1e-8);
        assert!((c.usd_per_1m_total_tokens.unwrap() - 0.165_740_740).abs() < 1e-8);
        assert!((c.usd_per_1k_requests.unwrap() - 0.099_444_444).abs() < 1e-8);
        // inf2.xlarge at $0.76/h and 1,000 output tok/s: 0.76 / 3.6e6 × 1e6 = $0.2111…
        let c = cost(0.76, 1000.0, 1000.0, 0.0);
        assert!((c.usd_per_1m_output_tokens.unwrap() - 0.211_111_111).abs() < 1e-8);
        assert_eq!(c.usd_per_1k_requests, None, "no requests completed: no cost, not infinity");
    }

    #[test]
    fn builtin_table_covers_the_instances_the_issue_names() {
        let t = PriceTable::builtin().unwrap();
        for name in [
            "inf2.xlarge",
            "inf2.8xlarge",
            "inf2.24xlarge",
            "inf2.48xlarge",
            "g5.xlarge",
            "g6.xlarge",
            "c7i.xlarge",
        ] {
            let p = t.get(name).unwrap();
            assert!(p.usd_per_hour > 0.0 && !p.source.is_empty() && !p.date.is_empty(), "{name}");
        }
        assert_eq!(t.get("c7i.xlarge").unwrap().usd_per_hour, 0.179);
        let err = t.get("p5.48xlarge").unwrap_err().to_string();
        assert!(err.contains("inf2.xlarge"), "lists the known types: {err}");
    }

    #[test]
    fn a_user_file_replaces_the_table_and_bad_prices_are_rejected() {
        let text = "[instances.\"my-box\"]\nusd_per_hour = 2.5\nregion = \"home\"\ndate = \"2026-01-01\"\nsource = \"me\"\n";
        let t = PriceTable::parse(text, "mine.toml").unwrap();
        assert_eq!(t.names().collect::<Vec<_>>(), ["my-box"]);
        let bad = text.replace("2.5", "-1");
        assert!(PriceTable::parse(&bad, "bad.toml").unwrap_err().to_string().contains("my-box"));
        assert!(PriceTable::parse("instances = 3", "x").is_err());
    }
}
