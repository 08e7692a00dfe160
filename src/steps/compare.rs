//! `taft compare`: `finetune` or `evaluate` outputs side by side. Runs that differ only by
//! their seed form one group (their models' names, less the seed, are the same: `taft-status-1`,
//! `taft-status-2` → `taft-status`); each group and task gets, per score, the number of
//! runs, the mean, the standard deviation and a 95 % interval over the runs (Student's t).
//! Between the groups of a task, on the same test items: a paired bootstrap of the macro-F1
//! difference, pooled over the seeds both ran, with its 95 % interval and p-value (from
//! `evaluate` outputs, whose predictions it reads). Written as `comparison.tsv`,
//! `comparison.md`, `comparison.json` and a chart, `comparison.png`, with one row of panels per
//! task. It reads committed outputs only (no model runs), so every build has it.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Step;
use crate::error::{Error, Result};
use crate::eval::charts;
use crate::eval::metrics::figure;
use crate::eval::predictions::{read_labeled, Labeled};
use crate::eval::stats::{paired_bootstrap, spread, Paired, Spread};
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
    #[serde(default)]
    pub significance: SignificanceConfig,
}

/// The paired bootstrap between groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignificanceConfig {
    /// Draws of the test items (0: no significance table).
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Seeds the draws: the same inputs and seed give the same table.
    #[serde(default)]
    pub seed: u64,
}

impl Default for SignificanceConfig {
    fn default() -> Self {
        SignificanceConfig { resamples: default_resamples(), seed: 0 }
    }
}

fn default_resamples() -> usize {
    10_000
}

fn default_title() -> String {
    "methods compared".into()
}

step_io!(CompareConfig);

/// The scores compared, as named in the table.
pub const SCORES: [&str; 5] = ["accuracy", "f1_weighted", "f1_macro", "kappa", "mcc"];

/// One run's scores on one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The output's name (the last part of its URL).
    pub name: String,
    /// The model's name less its seed: what the runs of one group share.
    pub setting: String,
    pub method: String,
    pub task: String,
    pub split: String,
    pub seed: Option<u64>,
    pub scores: Vec<f64>,
    pub baseline_f1_macro: Option<f64>,
    /// Where its predictions are (evaluate outputs): the output's URL and the task's head.
    #[serde(skip)]
    pub predictions: Option<(String, String)>,
    #[serde(skip)]
    pub classes: usize,
}

/// The runs of one setting on one task: each score over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub setting: String,
    pub method: String,
    pub task: String,
    pub split: String,
    pub runs: usize,
    pub seeds: Vec<Option<u64>>,
    /// One per entry of [`SCORES`].
    pub scores: Vec<Spread>,
    pub baseline_f1_macro: Option<f64>,
    /// Indexes of its runs.
    #[serde(skip)]
    members: Vec<usize>,
}

/// Two groups of a task on the same items: macro F1 of `a` − macro F1 of `b`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Significance {
    pub task: String,
    pub split: String,
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub paired: Paired,
}

pub struct Compare;

impl Step for Compare {
    const NAME: &'static str = "compare";
    const ABOUT: &'static str = "Put finetune or evaluate outputs side by side, over seeds with intervals and a paired bootstrap between methods: comparison.tsv, .md, .json, .png";
    type Config = CompareConfig;

    fn validate(config: &CompareConfig) -> Result<()> {
        if config.inputs.is_empty() {
            return Err(Error::config("compare takes one or more inputs (finetune or evaluate outputs)"));
        }
        Ok(())
    }

    async fn run(config: &CompareConfig, out: &mut Output) -> Result<serde_json::Value> {
        let mut runs = Vec::new();
        for url in &config.inputs {
            runs.extend(runs_of(url).await?);
        }
        let groups = groups(&runs);
        let significance = if config.significance.resamples > 0 {
            significance(&runs, &groups, &config.significance).await?
        } else {
            Vec::new()
        };
        out.put("comparison.tsv", Bytes::from(tsv(&groups))).await?;
        out.put("comparison.md", Bytes::from(markdown(&groups, &significance))).await?;
        let json = serde_json::json!({
            "scores": SCORES,
            "groups": groups,
            "significance": significance,
            "resamples": config.significance.resamples,
            "runs": runs,
        });
        out.put("comparison.json", Bytes::from(serde_json::to_vec_pretty(&json)?)).await?;
        let panels = panels(&groups);
        let png = tokio::task::spawn_blocking({
            let title = config.title.clone();
            move || charts::score_panels_png(&title, &panels)
        })
        .await
        .map_err(|e| Error::Other(format!("compare: {e}")))??;
        out.put("comparison.png", Bytes::from(png.png)).await?;
        Ok(serde_json::json!({"runs": runs.len(), "groups": groups.len(), "significance": significance.len()}))
    }
}

/// `name` less the segment that spells `seed` (the last one that does), if any.
fn setting_of(name: &str, seed: Option<u64>) -> String {
    let Some(seed) = seed.map(|s| s.to_string()) else { return name.to_string() };
    let mut parts: Vec<&str> = name.split('-').collect();
    match parts.iter().rposition(|p| *p == seed) {
        Some(i) if parts.len() > 1 => {
            parts.remove(i);
            parts.join("-")
        }
        _ => name.to_string(),
    }
}

/// The runs of one finetune or evaluate output, one per task.
async fn runs_of(url: &str) -> Result<Vec<Run>> {
    let input = Committed::open(url).await?;
    let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url).to_string();
    let (tasks, method, split, model, seed, predictions) = match input.manifest.step.as_str() {
        "finetune" => {
            let s = &input.manifest.summary;
            let method = s["method"].as_str().unwrap_or("").to_string();
            (s["test"].clone(), method, "test".to_string(), name.clone(), s["seed"].as_u64(), false)
        }
        "evaluate" => {
            let metrics: serde_json::Value = serde_json::from_slice(&input.read("metrics.json").await?)
                .map_err(|e| Error::input(format!("{}: {e}", input.store.url_of("metrics.json"))))?;
            let m = &metrics["model"];
            let method = m["method"].as_str().unwrap_or("").to_string();
            let model = m["name"].as_str().unwrap_or(&name).to_string();
            let split = metrics["split"].as_str().unwrap_or("").to_string();
            (metrics["tasks"].clone(), method, split, model, m["seed"].as_u64(), input.has("predictions.parquet"))
        }
        other => {
            return Err(Error::input(format!("{url}: a `{other}` output; compare takes finetune or evaluate outputs")))
        }
    };
    let tasks = tasks.as_object().ok_or_else(|| Error::input(format!("{url}: no task figures")))?;
    let mut runs = Vec::new();
    let mut heads: Vec<&String> = tasks.keys().collect();
    heads.sort_by_key(|h| (h.as_str() != "status", h.as_str() != "satisfaction", h.as_str()));
    for head in heads {
        let t = &tasks[head];
        // An undefined kappa is written as null (NaN): shown as `nan`.
        let scores: Option<Vec<f64>> = SCORES.iter().map(|k| figure(&t[*k])).collect();
        let scores = scores
            .filter(|_| SCORES.iter().all(|k| t.get(*k).is_some()))
            .ok_or_else(|| Error::input(format!("{url}: task figures lack one of {}", SCORES.join(", "))))?;
        let baseline = t["baseline_f1_macro"].as_f64().or_else(|| t["baseline"]["f1_macro"].as_f64());
        let classes = t["classes"].as_array().map_or(0, Vec::len);
        runs.push(Run {
            name: name.clone(),
            setting: setting_of(&model, seed),
            method: method.clone(),
            task: t["task"].as_str().unwrap_or(head).to_string(),
            split: split.clone(),
            seed,
            scores,
            baseline_f1_macro: baseline,
            predictions: (predictions && classes > 0).then(|| (url.to_string(), head.clone())),
            classes,
        });
    }
    Ok(runs)
}

/// Runs of the same setting, task and split, in the order their first run came.
fn groups(runs: &[Run]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        match groups.iter_mut().find(|g| g.setting == r.setting && g.task == r.task && g.split == r.split) {
            Some(g) => g.members.push(i),
            None => groups.push(Group {
                setting: r.setting.clone(),
                method: r.method.clone(),
                task: r.task.clone(),
                split: r.split.clone(),
                runs: 0,
                seeds: Vec::new(),
                scores: Vec::new(),
                baseline_f1_macro: None,
                members: vec![i],
            }),
        }
    }
    for g in &mut groups {
        let members: Vec<&Run> = g.members.iter().map(|&i| &runs[i]).collect();
        g.runs = members.len();
        g.seeds = members.iter().map(|r| r.seed).collect();
        g.scores =
            (0..SCORES.len()).map(|k| spread(&members.iter().map(|r| r.scores[k]).collect::<Vec<_>>())).collect();
        let baselines: Vec<f64> = members.iter().filter_map(|r| r.baseline_f1_macro).collect();
        g.baseline_f1_macro = (!baselines.is_empty()).then(|| baselines.iter().sum::<f64>() / baselines.len() as f64);
    }
    groups
}

/// The runs of two groups paired by seed (by position where a run has no seed).
fn pairs(a: &Group, b: &Group) -> Vec<(usize, usize)> {
    if a.seeds.iter().chain(&b.seeds).all(Option::is_some) {
        let mut out: Vec<(u64, usize, usize)> = Vec::new();
        for (i, s) in a.seeds.iter().enumerate() {
            if let Some(j) = b.seeds.iter().position(|t| t == s) {
                out.push((s.unwrap_or(0), a.members[i], b.members[j]));
            }
        }
        out.sort();
        out.into_iter().map(|(_, i, j)| (i, j)).collect()
    } else {
        a.members.iter().copied().zip(b.members.iter().copied()).collect()
    }
}

/// The paired bootstrap between every two groups of a task and split whose runs have
/// predictions, on the items every run involved scored.
async fn significance(runs: &[Run], groups: &[Group], config: &SignificanceConfig) -> Result<Vec<Significance>> {
    let mut cache: HashMap<usize, Labeled> = HashMap::new();
    let scored = |g: &Group| g.members.iter().all(|&i| runs[i].predictions.is_some());
    let mut jobs = Vec::new();
    for (x, a) in groups.iter().enumerate() {
        for b in groups[x + 1..].iter().filter(|b| b.task == a.task && b.split == a.split) {
            if !scored(a) || !scored(b) {
                continue;
            }
            let pairs = pairs(a, b);
            if pairs.is_empty() {
                continue;
            }
            for &i in pairs.iter().flat_map(|(i, j)| [i, j]) {
                if let (std::collections::hash_map::Entry::Vacant(e), Some((url, head))) =
                    (cache.entry(i), &runs[i].predictions)
                {
                    let input = Committed::open(url).await?;
                    let file = input.store.url_of("predictions.parquet");
                    e.insert(read_labeled(input.read("predictions.parquet").await?, &file, head)?);
                }
            }
            jobs.push((a, b, pairs));
        }
    }
    let mut out = Vec::new();
    for (a, b, pairs) in jobs {
        let involved: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
        let (truth, preds) = aligned(runs, &cache, &involved)?;
        let classes = runs[involved[0]].classes;
        let a_preds: Vec<&[i64]> = (0..pairs.len()).map(|k| preds[2 * k].as_slice()).collect();
        let b_preds: Vec<&[i64]> = (0..pairs.len()).map(|k| preds[2 * k + 1].as_slice()).collect();
        let paired = paired_bootstrap(&truth, &a_preds, &b_preds, classes, config.resamples, config.seed);
        out.push(Significance {
            task: a.task.clone(),
            split: a.split.clone(),
            a: a.setting.clone(),
            b: b.setting.clone(),
            paired,
        });
    }
    // A task's tests together, the tasks in the order of the table.
    let tasks: Vec<(&str, &str)> = groups.iter().map(|g| (g.task.as_str(), g.split.as_str())).collect();
    out.sort_by_key(|s| tasks.iter().position(|&t| t == (s.task.as_str(), s.split.as_str())));
    Ok(out)
}

/// The items every run of `involved` scored (in the first run's order): their labels, and
/// each run's predictions. Runs that disagree on an item's label did not score the same
/// data, and labels or predictions outside the task's classes are not its: both are errors.
fn aligned(runs: &[Run], cache: &HashMap<usize, Labeled>, involved: &[usize]) -> Result<(Vec<i64>, Vec<Vec<i64>>)> {
    let first = &cache[&involved[0]];
    let classes = runs[involved[0]].classes;
    let index: Vec<HashMap<&str, usize>> =
        involved.iter().map(|i| cache[i].keys.iter().enumerate().map(|(k, key)| (key.as_str(), k)).collect()).collect();
    let mut truth = Vec::new();
    let mut preds = vec![Vec::new(); involved.len()];
    for (k, key) in first.keys.iter().enumerate() {
        let Some(at) = index.iter().map(|m| m.get(key.as_str()).copied()).collect::<Option<Vec<usize>>>() else {
            continue;
        };
        let label = first.truth[k];
        for (n, (&run, &row)) in involved.iter().zip(&at).enumerate() {
            let l = &cache[&run];
            let name = &runs[run].name;
            if runs[run].classes != classes {
                return Err(Error::input(format!(
                    "compare: {name} has {} classes for `{}`, {} has {classes}",
                    runs[run].classes, runs[run].task, runs[involved[0]].name
                )));
            }
            if l.truth[row] != label {
                return Err(Error::input(format!(
                    "compare: item `{key}` has label {} in {name} but {label} in {}: not the same test data",
                    l.truth[row], runs[involved[0]].name
                )));
            }
            let p = l.pred[row];
            if !(0..classes as i64).contains(&label) || !(0..classes as i64).contains(&p) {
                return Err(Error::input(format!(
                    "compare: {name}: item `{key}`: label {label} or prediction {p} outside the task's {classes} classes"
                )));
            }
            preds[n].push(p);
        }
        truth.push(label);
    }
    if truth.is_empty() {
        return Err(Error::input(format!(
            "compare: {} and {} share no labeled item of `{}`",
            runs[involved[0]].name, runs[involved[1]].name, runs[involved[0]].task
        )));
    }
    Ok((truth, preds))
}

/// The chart's panels: one per task, a bar per group.
fn panels(groups: &[Group]) -> Vec<charts::ScorePanel> {
    let mut out: Vec<charts::ScorePanel> = Vec::new();
    for g in groups {
        let title = format!("{} ({})", g.task, g.split);
        let panel = match out.iter_mut().position(|p| p.title == title) {
            Some(i) => &mut out[i],
            None => {
                out.push(charts::ScorePanel {
                    title,
                    labels: Vec::new(),
                    f1: Vec::new(),
                    kappa: Vec::new(),
                    baseline: None,
                });
                out.last_mut().expect("pushed")
            }
        };
        panel.labels.push(g.setting.clone());
        panel.f1.push(g.scores[2]);
        panel.kappa.push(g.scores[3]);
        panel.baseline = panel.baseline.or(g.baseline_f1_macro);
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:.4}")
    }
}

fn header() -> Vec<String> {
    let mut h: Vec<String> = ["setting", "method", "task", "split", "runs"].iter().map(|s| s.to_string()).collect();
    for s in SCORES {
        h.extend([s.to_string(), format!("{s}_sd"), format!("{s}_lo"), format!("{s}_hi")]);
    }
    h.push("baseline_f1_macro".into());
    h
}

/// One line per group: per score its mean, standard deviation and interval.
fn tsv(groups: &[Group]) -> String {
    let mut out = header().join("\t") + "\n";
    for g in groups {
        let mut cells = vec![g.setting.clone(), g.method.clone(), g.task.clone(), g.split.clone(), g.runs.to_string()];
        for s in &g.scores {
            cells.extend([number(s.mean), number(s.sd), number(s.lo), number(s.hi)]);
        }
        cells.push(g.baseline_f1_macro.map_or(String::new(), number));
        out.push_str(&(cells.join("\t") + "\n"));
    }
    out
}

/// A mean with the half-width of its 95 % interval (over two runs or more).
fn mean_pm(s: &Spread) -> String {
    if s.lo.is_nan() {
        number(s.mean)
    } else {
        format!("{} ± {:.4}", number(s.mean), (s.hi - s.lo) / 2.0)
    }
}

/// The groups (mean ± half the 95 % interval over runs) and the significance table.
fn markdown(groups: &[Group], significance: &[Significance]) -> String {
    let mut h = vec!["setting", "method", "task", "split", "runs"];
    h.extend(SCORES);
    h.push("baseline f1_macro");
    let mut out = format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len()));
    for g in groups {
        let mut cells = vec![g.setting.clone(), g.method.clone(), g.task.clone(), g.split.clone(), g.runs.to_string()];
        cells.extend(g.scores.iter().map(mean_pm));
        cells.push(g.baseline_f1_macro.map_or(String::new(), number));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    if !significance.is_empty() {
        out.push_str(
            "\nPaired bootstrap over test items, pooled over seeds: macro F1 of a − macro F1 of b, its 95 % interval and two-sided p-value.\n\n",
        );
        out.push_str("| task | split | a | b | seeds | items | Δ f1_macro | 95 % interval | p |\n|---|---|---|---|---|---|---|---|---|\n");
        for s in significance {
            let p = &s.paired;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:+.4} | [{:+.4}, {:+.4}] | {:.4} |\n",
                s.task, s.split, s.a, s.b, p.seeds, p.items, p.diff, p.lo, p.hi, p.p
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(setting: &str, seed: u64, task: &str, f1: f64) -> Run {
        Run {
            name: format!("evaluate-{setting}-{seed}"),
            setting: setting.into(),
            method: setting.split('-').next().unwrap().into(),
            task: task.into(),
            split: "test".into(),
            seed: Some(seed),
            scores: vec![f1 + 0.1, f1 + 0.05, f1, f1 - 0.2, f1 - 0.19],
            baseline_f1_macro: Some(0.25),
            predictions: None,
            classes: 4,
        }
    }

    #[test]
    fn runs_that_differ_by_their_seed_form_a_group() {
        assert_eq!(setting_of("taft-status-2", Some(2)), "taft-status");
        assert_eq!(setting_of("dapt-2-pc", Some(2)), "dapt-pc");
        assert_eq!(setting_of("taft-status", Some(2)), "taft-status");
        assert_eq!(setting_of("2", Some(2)), "2");
        assert_eq!(setting_of("taft-status-2", None), "taft-status-2");
        let runs = [
            run("taft-status", 1, "status", 0.5),
            run("tapt-status", 1, "status", 0.8),
            run("taft-status", 2, "status", 0.7),
        ];
        let g = groups(&runs);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].setting.as_str(), g[0].runs, g[0].members.clone()), ("taft-status", 2, vec![0, 2]));
        assert!((g[0].scores[2].mean - 0.6).abs() < 1e-12);
        assert_eq!(pairs(&g[0], &g[1]), vec![(0, 1)], "seed 1 is the only one both ran");
        let t = tsv(&g);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(
            lines[0][..9],
            ["setting", "method", "task", "split", "runs", "accuracy", "accuracy_sd", "accuracy_lo", "accuracy_hi"]
        );
        assert_eq!(lines[0].len(), 5 + 4 * 5 + 1);
        // f1_macro: mean 0.6, sd 0.1414, ± t(0.975, 1) · 0.1414 / √2 = 12.706 · 0.1.
        assert_eq!(lines[1][13..17], ["0.6000", "0.1414", "-0.6706", "1.8706"]);
        assert_eq!(lines[2][4], "1");
        assert_eq!(lines[2][14..17], ["nan", "nan", "nan"], "one run: no interval");
        let m = markdown(&g, &[]);
        assert!(m.contains("| taft-status | taft | status | test | 2 | 0.7000 ± 1.2706 |"), "{m}");
        assert!(m.contains("| tapt-status | tapt | status | test | 1 | 0.9000 |"), "{m}");
    }
}
