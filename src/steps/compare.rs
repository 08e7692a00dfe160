//! `taft compare`: several `finetune` or `evaluate` outputs side by side — one row per model
//! and task with accuracy, weighted and macro F1, Cohen's kappa, Matthews correlation and the
//! majority-class baseline's macro F1, as `comparison.tsv`, `comparison.md` and grouped bars
//! in `comparison.png`. It reads the outputs' committed figures only (no model runs), so
//! every build has it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Step;
use crate::error::{Error, Result};
use crate::eval::charts;
use crate::eval::metrics::figure;
use crate::store::commit::Output;
use crate::store::manifest::Committed;

/// Config of `taft compare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// Finetune or evaluate outputs, in the order of the table.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// The chart's title.
    #[serde(default = "default_title")]
    pub title: String,
}

fn default_title() -> String {
    "methods compared".into()
}

step_io!(CompareConfig);

/// The scores compared, as named in the table.
const SCORES: [&str; 5] = ["accuracy", "f1_weighted", "f1_macro", "kappa", "mcc"];

/// One row: a model's scores on one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The output's name (the last part of its URL).
    pub name: String,
    pub method: String,
    pub task: String,
    pub split: String,
    pub scores: Vec<f64>,
    pub baseline_f1_macro: Option<f64>,
}

pub struct Compare;

impl Step for Compare {
    const NAME: &'static str = "compare";
    const ABOUT: &'static str = "Put finetune or evaluate outputs side by side: comparison.tsv, comparison.md, comparison.png (one row per model and task)";
    type Config = CompareConfig;

    fn validate(config: &CompareConfig) -> Result<()> {
        if config.inputs.is_empty() {
            return Err(Error::config("compare takes one or more inputs (finetune or evaluate outputs)"));
        }
        Ok(())
    }

    async fn run(config: &CompareConfig, out: &mut Output) -> Result<serde_json::Value> {
        let mut rows = Vec::new();
        for url in &config.inputs {
            rows.extend(rows_of(url).await?);
        }
        out.put("comparison.tsv", Bytes::from(tsv(&rows))).await?;
        out.put("comparison.md", Bytes::from(markdown(&rows))).await?;
        let groups: Vec<String> = rows.iter().map(|r| format!("{} {}", r.name, r.task)).collect();
        let mut series: Vec<(String, Vec<f64>)> = SCORES
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), rows.iter().map(|r| r.scores[i]).collect()))
            .collect();
        series
            .push(("baseline f1_macro".into(), rows.iter().map(|r| r.baseline_f1_macro.unwrap_or(f64::NAN)).collect()));
        let png = tokio::task::spawn_blocking({
            let title = config.title.clone();
            move || charts::bars_png(&title, &groups, &series)
        })
        .await
        .map_err(|e| Error::Other(format!("compare: {e}")))??;
        out.put("comparison.png", Bytes::from(png)).await?;
        Ok(serde_json::json!({"rows": rows}))
    }
}

/// The rows of one finetune or evaluate output.
async fn rows_of(url: &str) -> Result<Vec<Row>> {
    let input = Committed::open(url).await?;
    let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url).to_string();
    let (tasks, method, split) = match input.manifest.step.as_str() {
        "finetune" => {
            let s = &input.manifest.summary;
            (s["test"].clone(), s["method"].as_str().unwrap_or("").to_string(), "test".to_string())
        }
        "evaluate" => {
            let metrics: serde_json::Value = serde_json::from_slice(&input.read("metrics.json").await?)
                .map_err(|e| Error::input(format!("{}: {e}", input.store.url_of("metrics.json"))))?;
            let method = metrics["model"]["method"].as_str().unwrap_or("").to_string();
            (metrics["tasks"].clone(), method, metrics["split"].as_str().unwrap_or("").to_string())
        }
        other => {
            return Err(Error::input(format!("{url}: a `{other}` output; compare takes finetune or evaluate outputs")))
        }
    };
    let tasks = tasks.as_object().ok_or_else(|| Error::input(format!("{url}: no task figures")))?;
    let mut rows = Vec::new();
    let mut heads: Vec<&String> = tasks.keys().collect();
    heads.sort_by_key(|h| (h.as_str() != "status", h.as_str() != "satisfaction", h.as_str()));
    for t in heads.into_iter().map(|h| &tasks[h]) {
        // An undefined kappa is written as null (NaN): shown as `nan`.
        let scores: Option<Vec<f64>> = SCORES.iter().map(|k| figure(&t[*k])).collect();
        let scores = scores
            .filter(|_| SCORES.iter().all(|k| t.get(*k).is_some()))
            .ok_or_else(|| Error::input(format!("{url}: task figures lack one of {}", SCORES.join(", "))))?;
        let baseline = t["baseline_f1_macro"].as_f64().or_else(|| t["baseline"]["f1_macro"].as_f64());
        rows.push(Row {
            name: name.clone(),
            method: method.clone(),
            task: t["task"].as_str().unwrap_or("").to_string(),
            split: split.clone(),
            scores,
            baseline_f1_macro: baseline,
        });
    }
    Ok(rows)
}

fn cells(row: &Row) -> Vec<String> {
    let mut cells = vec![row.name.clone(), row.method.clone(), row.task.clone(), row.split.clone()];
    cells.extend(row.scores.iter().map(|v| if v.is_nan() { "nan".to_string() } else { format!("{v:.4}") }));
    cells.push(row.baseline_f1_macro.map_or(String::new(), |v| format!("{v:.4}")));
    cells
}

fn header() -> Vec<String> {
    let mut h: Vec<String> = ["name", "method", "task", "split"].iter().map(|s| s.to_string()).collect();
    h.extend(SCORES.iter().map(|s| s.to_string()));
    h.push("baseline_f1_macro".into());
    h
}

fn tsv(rows: &[Row]) -> String {
    std::iter::once(header()).chain(rows.iter().map(cells)).map(|c| c.join("\t") + "\n").collect()
}

fn markdown(rows: &[Row]) -> String {
    let h = header();
    let mut out = format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len()));
    for row in rows {
        out.push_str(&format!("| {} |\n", cells(row).join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_a_row_per_model_and_task() {
        // Distinct figures in every column, so that a column swapped or dropped shows.
        let row = |name: &str, base: f64| Row {
            name: name.into(),
            method: "taft".into(),
            task: "pc".into(),
            split: "test".into(),
            scores: (1..=5).map(|i| base + i as f64 / 100.0).collect(),
            baseline_f1_macro: Some(0.33),
        };
        let mut rows = [row("a", 0.5), row("b", 0.25)];
        rows[1].scores[3] = f64::NAN;
        rows[1].baseline_f1_macro = None;
        let t = tsv(&rows);
        assert_eq!(t.lines().count(), 3);
        assert_eq!(
            t.lines().next().unwrap(),
            "name\tmethod\ttask\tsplit\taccuracy\tf1_weighted\tf1_macro\tkappa\tmcc\tbaseline_f1_macro"
        );
        assert_eq!(t.lines().nth(1).unwrap(), "a\ttaft\tpc\ttest\t0.5100\t0.5200\t0.5300\t0.5400\t0.5500\t0.3300");
        assert_eq!(t.lines().nth(2).unwrap(), "b\ttaft\tpc\ttest\t0.2600\t0.2700\t0.2800\tnan\t0.3000\t");
        let m = markdown(&rows);
        assert!(
            m.starts_with("| name | method | task | split | accuracy | f1_weighted | f1_macro | kappa | mcc |"),
            "{m}"
        );
        assert_eq!(
            m.lines().nth(2).unwrap(),
            "| a | taft | pc | test | 0.5100 | 0.5200 | 0.5300 | 0.5400 | 0.5500 | 0.3300 |"
        );
        assert_eq!(m.lines().count(), 4);
    }
}
