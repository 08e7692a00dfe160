//! Fan-out: `foreach`, `each` and `shards` expand one step of a workflow file into parallel
//! copies before the workflow is validated, and references to a fan-out reach its copies.
//!
//! ```yaml
//! - name: taft                  # copies taft-status, taft-pc
//!   kind: finetune
//!   foreach: {status: [status, pc]}   # each key is set into the copy's config
//! - name: dapt-{task}           # `{key}` in the name places the value (dapt-status, …)
//!   kind: finetune
//!   foreach: {task: [status, pc, satis3]}
//! - name: evaluate              # one copy per step named: evaluate-taft-status, …
//!   kind: evaluate
//!   each: [taft, dapt-{task}]   # that step's output is the copy's first input
//!   inputs: [prep]
//! - name: compare
//!   kind: compare
//!   inputs: [evaluate]          # a fan-out's name (or `evaluate-*`) gathers every copy
//! - name: predict
//!   kind: predict
//!   shards: 4                   # predict-0 … predict-3, `shard: i/4` each
//! ```
//!
//! A copy that takes a fan-out as input while both carry the same `foreach` key takes only
//! the copies with its own value of that key (`export` over `status` takes `taft-status`
//! for status and `taft-pc` for pc).

use serde_yaml::{Mapping, Value};

use super::StepSpec;
use crate::config::RawConfig;

/// One concrete step after expansion.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub name: String,
    /// The name of the step as the file writes it (shared by the copies of a fan-out).
    pub group: String,
    pub kind: String,
    /// Names of the concrete steps whose outputs are the inputs, in order.
    pub inputs: Vec<String>,
    pub out: Option<String>,
    pub config: Value,
    pub gpu: bool,
    /// The fan-out values this copy stands for (its own and those of the step it maps over).
    tags: Vec<(String, String)>,
}

/// What a copy adds to the step as written.
#[derive(Debug, Clone, Default)]
struct Combo {
    /// Values set into the config, in `foreach` order.
    sets: Vec<(String, Value)>,
    /// Parts of the name appended after the step's name.
    suffix: Vec<String>,
    /// The step mapped over (`each`).
    each: Option<String>,
    tags: Vec<(String, String)>,
}

/// Expands every fan-out of `steps` (in file order, copies in `foreach` order: the first key
/// varies slowest). Errors name the step and the field.
pub fn expand(steps: &[StepSpec]) -> Result<Vec<Expanded>, String> {
    // Copies of the steps that do not map over other steps; `each` steps follow as soon as
    // every step they name is known.
    let mut done: Vec<Option<Vec<Expanded>>> = vec![None; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        if step.each.is_empty() {
            done[i] = Some(copies(step, &combos(step)?)?);
        }
    }
    loop {
        let mut progress = false;
        let waiting: Vec<usize> = (0..steps.len()).filter(|&i| done[i].is_none()).collect();
        for i in waiting {
            let step = &steps[i];
            let known: Vec<&Expanded> = done.iter().flatten().flatten().collect();
            let pending: Vec<&str> =
                steps.iter().zip(&done).filter(|(_, d)| d.is_none()).map(|(s, _)| s.name.as_str()).collect();
            let mut mapped = Vec::new();
            let mut ready = true;
            for pattern in &step.each {
                if pending.iter().any(|p| *p != step.name && matches(pattern, p)) {
                    ready = false;
                    break;
                }
                let found = resolve(pattern, &known, &[]).map_err(|e| format!("step `{}`: each: {e}", step.name))?;
                mapped.extend(found.into_iter().map(|e| (e.name.clone(), e.tags.clone())));
            }
            if !ready {
                continue;
            }
            let mut all = Vec::new();
            for (name, tags) in mapped {
                for mut combo in combos(step)? {
                    combo.suffix.insert(0, name.clone());
                    combo.each = Some(name.clone());
                    combo.tags.extend(tags.iter().cloned());
                    all.push(combo);
                }
            }
            done[i] = Some(copies(step, &all)?);
            progress = true;
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if !progress {
            let left: Vec<&str> =
                steps.iter().zip(&done).filter(|(_, d)| d.is_none()).map(|(s, _)| s.name.as_str()).collect();
            return Err(format!("the steps {} map over each other (`each`) in a cycle", left.join(", ")));
        }
    }
    let mut all: Vec<Expanded> = done.into_iter().flatten().flatten().collect();
    // Names: unique, and no copy named like another step as written.
    let mut seen = std::collections::HashMap::new();
    for e in &all {
        if let Some(other) = seen.insert(e.name.clone(), e.group.clone()) {
            return Err(if other == e.group {
                format!("step `{}`: two copies are named `{}`", e.group, e.name)
            } else {
                format!("two steps are named `{}` (from `{other}` and `{}`)", e.name, e.group)
            });
        }
    }
    for e in &all {
        if let Some(owner) = seen.get(&e.group).filter(|owner| **owner != e.group) {
            return Err(format!("the fan-out `{}` has the name of a copy of `{owner}`", e.group));
        }
    }
    // Inputs, now that every name is known.
    let snapshot = all.clone();
    let known: Vec<&Expanded> = snapshot.iter().collect();
    for (e, step) in all.iter_mut().zip(steps_of(&snapshot, steps)) {
        let mut inputs = Vec::new();
        if let Some(first) = e.inputs.first().cloned() {
            inputs.push(first);
        }
        for pattern in &step.inputs {
            let found = resolve(pattern, &known, &e.tags).map_err(|err| format!("step `{}`: input {err}", e.name))?;
            inputs.extend(found.into_iter().map(|f| f.name.clone()));
        }
        e.inputs = inputs;
    }
    Ok(all)
}

/// The step as written of each expanded copy.
fn steps_of<'a>(all: &[Expanded], steps: &'a [StepSpec]) -> Vec<&'a StepSpec> {
    all.iter().map(|e| steps.iter().find(|s| s.name == e.group).expect("every copy has its step")).collect()
}

/// The `foreach` × `shards` combinations of a step (one empty combination without either).
fn combos(step: &StepSpec) -> Result<Vec<Combo>, String> {
    let at = |msg: String| format!("step `{}`: {msg}", step.name);
    let mut out = vec![Combo::default()];
    for (key, values) in &step.foreach {
        let key =
            key.as_str().filter(|k| !k.is_empty()).ok_or_else(|| at("foreach: keys must be config keys".into()))?;
        let values = match values {
            Value::Sequence(v) if !v.is_empty() => v,
            _ => return Err(at(format!("foreach.{key}: expected a non-empty list of values"))),
        };
        let mut next = Vec::with_capacity(out.len() * values.len());
        for combo in &out {
            for value in values {
                let text = scalar(value).ok_or_else(|| {
                    at(format!("foreach.{key}: values must be strings, numbers or booleans, found {value:?}"))
                })?;
                let mut c = combo.clone();
                c.sets.push((key.to_string(), value.clone()));
                c.suffix.push(text.clone());
                c.tags.push((key.to_string(), text));
                next.push(c);
            }
        }
        out = next;
    }
    if let Some(n) = step.shards {
        if step.kind != "predict" && step.kind != "encode" {
            return Err(at(format!(
                "shards: only `predict` and `encode` steps split into shards, not `{}`",
                step.kind
            )));
        }
        if n == 0 {
            return Err(at("shards: must be at least 1".into()));
        }
        if step.foreach.contains_key("shard") {
            return Err(at("give `shards` or `foreach: {shard: …}`, not both".into()));
        }
        out = out
            .into_iter()
            .flat_map(|c| {
                (0..n).map(move |i| {
                    let mut c = c.clone();
                    c.sets.push(("shard".into(), Value::String(format!("{i}/{n}"))));
                    c.suffix.push(i.to_string());
                    c.tags.push(("shard".into(), i.to_string()));
                    c
                })
            })
            .collect();
    }
    Ok(out)
}

/// The copies of `step` for `combos`.
fn copies(step: &StepSpec, combos: &[Combo]) -> Result<Vec<Expanded>, String> {
    let fanned = !step.foreach.is_empty() || step.shards.is_some() || !step.each.is_empty();
    combos
        .iter()
        .map(|combo| {
            let at = |msg: String| format!("step `{}`: {msg}", step.name);
            let name = if fanned { placed(&step.name, combo).map_err(at)? } else { step.name.clone() };
            let out = match &step.out {
                Some(out) if fanned => Some(placed(out, combo).map_err(|e| at(format!("out: {e}")))?),
                other => other.clone(),
            };
            let mut config = RawConfig { source: String::new(), value: step.config.clone() };
            for (key, value) in &combo.sets {
                config.set(key, value.clone()).map_err(|e| at(format!("foreach.{key}: {e}")))?;
            }
            Ok(Expanded {
                name,
                group: step.name.clone(),
                kind: step.kind.clone(),
                inputs: combo.each.iter().cloned().collect(),
                out,
                config: config.value,
                gpu: step.gpu,
                tags: combo.tags.clone(),
            })
        })
        .collect()
}

/// `text` with `{key}` replaced by the combination's values, or, without placeholders, its
/// values appended with `-`.
fn placed(text: &str, combo: &Combo) -> Result<String, String> {
    if !text.contains('{') {
        let mut parts = vec![text.to_string()];
        parts.extend(combo.suffix.iter().map(|s| name_safe(s)));
        return Ok(parts.join("-"));
    }
    let mut out = text.to_string();
    for (key, value) in &combo.tags {
        out = out.replace(&format!("{{{key}}}"), &name_safe(value));
    }
    if let Some(each) = &combo.each {
        out = format!("{out}-{each}");
    }
    if out.contains('{') || out.contains('}') {
        return Err(format!("`{text}` has a placeholder that is not a foreach key"));
    }
    Ok(out)
}

/// A value as it appears in names: letters, digits, `-` and `_` (others become `_`).
fn name_safe(value: &str) -> String {
    value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The concrete steps a reference names: a step, a fan-out as written (its copies that share
/// the consumer's values of common keys), or a `*` pattern over concrete names.
fn resolve<'a>(pattern: &str, known: &[&'a Expanded], tags: &[(String, String)]) -> Result<Vec<&'a Expanded>, String> {
    if let Some(one) = known.iter().find(|e| e.name == pattern) {
        return Ok(vec![one]);
    }
    let group: Vec<&Expanded> = known.iter().copied().filter(|e| e.group == pattern).collect();
    if !group.is_empty() {
        let paired: Vec<&Expanded> = group
            .iter()
            .copied()
            .filter(|e| e.tags.iter().all(|(k, v)| tags.iter().all(|(k2, v2)| k != k2 || v == v2)))
            .collect();
        if paired.is_empty() {
            let mine: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(format!("`{pattern}`: no copy has {}", mine.join(", ")));
        }
        return Ok(paired);
    }
    if pattern.contains('*') {
        let found: Vec<&Expanded> = known.iter().copied().filter(|e| matches(pattern, &e.name)).collect();
        if !found.is_empty() {
            return Ok(found);
        }
        return Err(format!("`{pattern}` matches no step of this workflow"));
    }
    Err(format!("`{pattern}` names no step of this workflow"))
}

/// Applies `STEP.KEY=VALUE` to the copies named STEP, or to every copy of the fan-out STEP.
pub fn apply_set(steps: &mut [Expanded], set: &str) -> Result<(), String> {
    let (step, rest) = set.split_once('.').ok_or("expected STEP.KEY=VALUE")?;
    let exact = steps.iter().any(|s| s.name == step);
    let mut hit = false;
    for s in steps.iter_mut().filter(|s| if exact { s.name == step } else { s.group == step }) {
        let mut raw = RawConfig { source: String::new(), value: std::mem::take(&mut s.config) };
        if raw.value.is_null() {
            raw.value = Value::Mapping(Mapping::new());
        }
        let result = raw.apply_sets(&[rest.to_string()]).map_err(|e| e.to_string());
        s.config = raw.value;
        result?;
        hit = true;
    }
    if hit {
        Ok(())
    } else {
        Err(format!("the workflow has no step named `{step}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(yaml: &str) -> Vec<StepSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn names(e: &[Expanded]) -> Vec<String> {
        e.iter().map(|e| format!("{} <- {}", e.name, e.inputs.join(","))).collect()
    }

    #[test]
    fn foreach_each_and_shards_expand_and_wire() {
        let e = expand(&steps(
            "- {name: prep, kind: prep}
- {name: taft, kind: finetune, inputs: [prep], foreach: {status: [status, pc], train.seed: [1, 2]}}
- {name: 'dapt-{task}', kind: finetune, inputs: [prep], foreach: {task: [status, satis3]}}
- {name: evaluate, kind: evaluate, each: [taft, 'dapt-*'], inputs: [prep]}
- {name: export, kind: export, foreach: {status: [pc]}, inputs: [taft]}
- {name: compare, kind: compare, inputs: [evaluate]}
- {name: predict, kind: predict, shards: 2, inputs: ['export-*', prep]}
",
        ))
        .unwrap();
        assert_eq!(
            names(&e),
            [
                "prep <- ",
                "taft-status-1 <- prep",
                "taft-status-2 <- prep",
                "taft-pc-1 <- prep",
                "taft-pc-2 <- prep",
                "dapt-status <- prep",
                "dapt-satis3 <- prep",
                "evaluate-taft-status-1 <- taft-status-1,prep",
                "evaluate-taft-status-2 <- taft-status-2,prep",
                "evaluate-taft-pc-1 <- taft-pc-1,prep",
                "evaluate-taft-pc-2 <- taft-pc-2,prep",
                "evaluate-dapt-status <- dapt-status,prep",
                "evaluate-dapt-satis3 <- dapt-satis3,prep",
                "export-pc <- taft-pc-1,taft-pc-2",
                "compare <- evaluate-taft-status-1,evaluate-taft-status-2,evaluate-taft-pc-1,evaluate-taft-pc-2,evaluate-dapt-status,evaluate-dapt-satis3",
                "predict-0 <- export-pc,prep",
                "predict-1 <- export-pc,prep",
            ]
        );
        assert_eq!(e[3].config["status"], "pc");
        assert_eq!(e[3].config["train"]["seed"], 1);
        assert_eq!(e[6].config["task"], "satis3");
        assert_eq!(e[16].config["shard"], "1/2");
        assert!(e[7].config.is_null(), "each sets nothing into the config");
        assert_eq!(e[7].group, "evaluate");
    }

    #[test]
    fn sets_reach_a_copy_or_every_copy() {
        let mut e =
            expand(&steps("- {name: t, kind: finetune, foreach: {status: [status, pc]}, config: {dropout: 0.1}}\n"))
                .unwrap();
        apply_set(&mut e, "t.dropout=0.2").unwrap();
        apply_set(&mut e, "t-pc.dropout=0.3").unwrap();
        assert_eq!((e[0].config["dropout"].as_f64(), e[1].config["dropout"].as_f64()), (Some(0.2), Some(0.3)));
        assert!(apply_set(&mut e, "u.x=1").unwrap_err().contains("no step named `u`"));
    }

    #[test]
    fn bad_fan_outs_are_named() {
        for (yaml, want) in [
            ("- {name: a, kind: prep, foreach: {seed: []}}", "step `a`: foreach.seed: expected a non-empty list"),
            ("- {name: a, kind: prep, foreach: {seed: [[1]]}}", "values must be strings, numbers or booleans"),
            ("- {name: a, kind: prep, shards: 2}", "only `predict` and `encode` steps split into shards"),
            ("- {name: a, kind: predict, shards: 0}", "at least 1"),
            ("- {name: 'a-{x}', kind: prep, foreach: {seed: [1]}}", "placeholder that is not a foreach key"),
            ("- {name: a, kind: prep, foreach: {seed: [1, '1']}}", "two copies are named `a-1`"),
            ("- {name: a, kind: prep, foreach: {seed: [1]}}\n- {name: a-1, kind: prep}", "two steps are named `a-1`"),
            ("- {name: a, kind: prep, inputs: ['z*']}", "`z*` matches no step"),
            ("- {name: a, kind: prep, each: [b]}\n- {name: b, kind: prep, each: [a]}", "in a cycle"),
            (
                "- {name: a, kind: prep, foreach: {seed: [1]}}\n- {name: b, kind: prep, foreach: {seed: [2]}, inputs: [a]}",
                "input `a`: no copy has seed=2",
            ),
        ] {
            let err = expand(&steps(yaml)).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        assert!(matches("eval*-pc", "evaluate-taft-pc") && !matches("eval*-pc", "evaluate-pc-x"));
        assert!(matches("*", "x") && matches("a*b*c", "abc") && !matches("a*b*c", "acb"));
    }
}
