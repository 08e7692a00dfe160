//! Workflows: a YAML file of steps wired by their outputs, validated as a whole before
//! anything runs, and executed locally as a DAG (see [`runner`]).
//!
//! ```yaml
//! name: demo
//! store: runs/demo            # root of every step's output (a path or a URL)
//! steps:
//!   - name: prep
//!     kind: prep
//!     config: {synthetic: {seed: 42}}
//!   - name: init
//!     kind: init
//!     inputs: [prep]          # other steps whose outputs this one reads
//!     out: models/init        # key under the store root (default: the step name)
//!     config: {}
//! ```
//!
//! A step may fan out into parallel copies (`foreach`, `each`, `shards`: see [`expand`]);
//! `gpu: true` asks the schedulers for a GPU node (see [`render`]).

pub mod expand;
pub mod render;
pub mod runner;

use std::collections::HashMap;

use serde::Deserialize;

use crate::config::RawConfig;
use crate::error::{Error, Result};
use crate::steps::{self, Overrides, StepKind};
use crate::store::check_key;

/// A workflow file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub name: String,
    /// Root URL (or path) under which each step writes its output.
    pub store: String,
    /// Container image for rendered workflows (Argo, Airflow).
    #[serde(default)]
    pub image: Option<String>,
    /// Values named once and used by steps: a list as a `foreach`'s values
    /// (`foreach: {train.seed: '${seeds}'}` with `vars: {seeds: [1, 2, 3]}`), a single value
    /// inside an input's name (`inputs: ['taft-status-${export_seed}']`).
    /// `--set vars.seeds=[4,5]` replaces one.
    #[serde(default)]
    pub vars: serde_yaml::Mapping,
    pub steps: Vec<StepSpec>,
}

/// `text` with each `${name}` replaced by the scalar `vars[name]`.
fn placed_vars(text: &str, vars: &serde_yaml::Mapping) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').ok_or("`${` without `}`")? + start;
        let name = &rest[start + 2..end];
        let value = match vars.get(name) {
            Some(serde_yaml::Value::String(s)) => s.clone(),
            Some(serde_yaml::Value::Number(n)) => n.to_string(),
            Some(serde_yaml::Value::Bool(b)) => b.to_string(),
            Some(_) => return Err(format!("`${{{name}}}` is not a single value")),
            None => return Err(format!("`${{{name}}}` names no entry of `vars`")),
        };
        out.push_str(&rest[..start]);
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One step of a workflow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    pub kind: String,
    /// Names of the steps whose outputs are this step's inputs, in order.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Output key under the store root; defaults to the step name.
    #[serde(default)]
    pub out: Option<String>,
    #[serde(default)]
    pub config: serde_yaml::Value,
    /// Config keys and their values: one copy of the step per combination.
    #[serde(default)]
    pub foreach: serde_yaml::Mapping,
    /// Steps (names, fan-outs or `*` patterns) to map over: one copy per step, whose output
    /// is the copy's first input.
    #[serde(default)]
    pub each: Vec<String>,
    /// `predict` only: split the conversations into this many parallel shards.
    #[serde(default)]
    pub shards: Option<usize>,
    /// Run on a GPU node when rendered for a scheduler.
    #[serde(default)]
    pub gpu: bool,
}

/// A validated step, ready to run.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    /// The step's name as the workflow file writes it (shared by a fan-out's copies).
    pub group: String,
    /// Its output key under the store root.
    pub key: String,
    pub gpu: bool,
    pub kind: StepKind,
    pub config: RawConfig,
    pub overrides: Overrides,
    /// Indexes of the steps this one depends on.
    pub deps: Vec<usize>,
}

/// A validated workflow: steps in a topological order.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub source: String,
    pub store: String,
    /// The step image of rendered workflows, if the file names one.
    pub image: Option<String>,
    pub steps: Vec<Planned>,
}

impl Workflow {
    /// Reads and validates a workflow file; `store` replaces the file's store root and each
    /// of `sets` (`STEP.KEY=VALUE`) sets a key of a step's config.
    pub fn load(path: &std::path::Path, store: Option<&str>, sets: &[String]) -> Result<Workflow> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::config(format!("workflow {source}: {e}")))?;
        Self::parse_with(&source, &text, store, sets)
    }

    /// [`Workflow::parse`], with `sets` (`STEP.KEY=VALUE`, STEP a step or a fan-out's name)
    /// applied to the steps' configs.
    pub fn parse_with(source: &str, text: &str, store: Option<&str>, sets: &[String]) -> Result<Workflow> {
        Self::build(source, text, store, sets)
    }

    /// Validates a workflow document: known kinds, unique names, no dangling references,
    /// no cycles, keys inside the store root, and every step's config resolved.
    pub fn parse(source: &str, text: &str, store: Option<&str>) -> Result<Workflow> {
        Self::build(source, text, store, &[])
    }

    fn build(source: &str, text: &str, store: Option<&str>, sets: &[String]) -> Result<Workflow> {
        let err = |msg: String| Error::config(format!("workflow {source}: {msg}"));
        let de = serde_yaml::Deserializer::from_str(text);
        let mut spec: WorkflowSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(if path == "." { e.inner().to_string() } else { format!("key `{path}`: {}", e.inner()) })
        })?;
        let root = store.unwrap_or(&spec.store).trim_end_matches('/').to_string();
        if spec.steps.is_empty() {
            return Err(err("no steps".into()));
        }
        let mut written = std::collections::HashSet::new();
        for step in &spec.steps {
            // `{key}` placeholders (`{train.seed}`); what is left after expansion is checked below.
            let placeholders = |c: char| c == '{' || c == '}' || c == '.';
            if step.name.is_empty()
                || !step.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || placeholders(c))
            {
                return Err(err(format!("step name {:?}: use letters, digits, `-` and `_`", step.name)));
            }
            if !written.insert(step.name.as_str()) {
                return Err(err(format!("two steps are named `{}`", step.name)));
            }
        }
        let (var_sets, sets): (Vec<&String>, Vec<&String>) = sets.iter().partition(|s| s.starts_with("vars."));
        for set in var_sets {
            let bad = |e: String| Error::config(format!("--set {set}: {e}"));
            let (name, value) =
                set["vars.".len()..].split_once('=').ok_or_else(|| bad("expected vars.NAME=VALUE".into()))?;
            if !spec.vars.contains_key(name) {
                return Err(bad(format!("the workflow has no var `{name}`")));
            }
            let value: serde_yaml::Value = serde_yaml::from_str(value).map_err(|e| bad(e.to_string()))?;
            spec.vars.insert(serde_yaml::Value::String(name.to_string()), value);
        }
        for step in &mut spec.steps {
            for input in step.inputs.iter_mut().filter(|i| i.contains("${")) {
                *input = placed_vars(input, &spec.vars)
                    .map_err(|e| err(format!("step `{}`: input `{input}`: {e}", step.name)))?;
            }
            for (key, value) in step.foreach.iter_mut() {
                let Some(name) = value.as_str().and_then(|v| v.strip_prefix("${")).and_then(|v| v.strip_suffix('}'))
                else {
                    continue;
                };
                *value = spec.vars.get(name).cloned().ok_or_else(|| {
                    err(format!(
                        "step `{}`: foreach.{}: `${{{name}}}` names no entry of `vars`",
                        step.name,
                        key.as_str().unwrap_or("?")
                    ))
                })?;
            }
        }
        let mut steps = expand::expand(&spec.steps).map_err(err)?;
        if let Some(bad) =
            steps.iter().find(|s| !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(err(format!(
                "step name {:?}: use letters, digits, `-` and `_` (`{{key}}` only in a fan-out)",
                bad.name
            )));
        }
        for set in sets {
            expand::apply_set(&mut steps, set).map_err(|e| Error::config(format!("--set {set}: {e}")))?;
        }
        let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut outs: HashMap<String, String> = HashMap::new();
        let mut planned = Vec::with_capacity(steps.len());
        for step in &steps {
            let at = |msg: String| err(format!("step `{}`: {msg}", step.name));
            let kind = StepKind::parse(&step.kind).ok_or_else(|| {
                let known: Vec<_> = StepKind::ALL.iter().map(|k| k.name()).collect();
                at(format!("unknown kind `{}` (expected one of: {})", step.kind, known.join(", ")))
            })?;
            let key = step.out.clone().unwrap_or_else(|| step.name.clone());
            check_key(&key).map_err(|e| at(e.to_string()))?;
            if let Some((other, _)) = outs.iter().find(|(k, _)| nested(k, &key)) {
                let owner = &outs[other];
                return Err(at(if *other == key {
                    format!("output key `{key}` is used by step `{owner}` too")
                } else {
                    format!("output key `{key}` and the key `{other}` of step `{owner}` are nested: one output would hold the other")
                }));
            }
            outs.insert(key.clone(), step.name.clone());
            let deps = step
                .inputs
                .iter()
                .map(|input| {
                    index
                        .get(input.as_str())
                        .copied()
                        .ok_or_else(|| at(format!("input `{input}` names no step of this workflow")))
                })
                .collect::<Result<Vec<_>>>()?;
            let config = match &step.config {
                serde_yaml::Value::Null => RawConfig::empty(format!("{source}: step `{}`", step.name)),
                value => RawConfig::from_yaml(
                    &format!("{source}: step `{}`", step.name),
                    &serde_yaml::to_string(value).map_err(|e| at(e.to_string()))?,
                )?,
            };
            planned.push(Planned {
                name: step.name.clone(),
                group: step.group.clone(),
                key: key.clone(),
                gpu: step.gpu,
                kind,
                config,
                overrides: Overrides { out: Some(join_url(&root, &key)), ..Default::default() },
                deps,
            });
        }
        // Inputs are the outputs of the steps named, in the order given.
        for i in 0..planned.len() {
            let inputs: Vec<String> =
                planned[i].deps.iter().map(|&d| planned[d].overrides.out.clone().expect("set above")).collect();
            planned[i].overrides.inputs = inputs;
        }
        let order = topological_order(&planned)
            .map_err(|cycle| err(format!("the steps {} depend on each other in a cycle", cycle.join(", "))))?;
        for step in &planned {
            steps::check(step.kind, &step.config, &step.overrides)?;
        }
        // Renumber dependencies into the topological order.
        let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        let mut ordered: Vec<Planned> = order.iter().map(|&i| planned[i].clone()).collect();
        for step in &mut ordered {
            step.deps = step.deps.iter().map(|d| position[d]).collect();
        }
        Ok(Workflow { name: spec.name, source: source.to_string(), store: root, image: spec.image, steps: ordered })
    }
}

/// Whether one key is the other or lies under it (`a` and `a/b`; not `a` and `ab`).
fn nested(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short || long.starts_with(&format!("{short}/"))
}

/// The URL of `key` under the root URL or path `root`.
pub fn join_url(root: &str, key: &str) -> String {
    format!("{}/{key}", root.trim_end_matches('/'))
}

/// Kahn's algorithm; on a cycle returns the names of the steps left in it.
fn topological_order(steps: &[Planned]) -> std::result::Result<Vec<usize>, Vec<String>> {
    let mut pending: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
    // First in, first out: independent steps keep the order the file gives them.
    let mut ready: std::collections::VecDeque<usize> = (0..steps.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for (j, step) in steps.iter().enumerate() {
            for _ in step.deps.iter().filter(|&&d| d == i) {
                pending[j] -= 1;
                if pending[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
    }
    if order.len() == steps.len() {
        Ok(order)
    } else {
        Err(steps.iter().enumerate().filter(|(i, _)| !order.contains(i)).map(|(_, s)| s.name.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workflow> {
        Workflow::parse("w.yaml", text, None)
    }

    const PREP: &str = "kind: prep\n    config: {synthetic: {train: 2, val: 0, test: 0, unlabeled: 0}}";

    #[test]
    fn sets_reach_the_named_step_and_are_checked() {
        let text = format!("name: w\nstore: /tmp/w\nsteps:\n  - name: a\n    {PREP}\n  - name: b\n    kind: prep\n");
        let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let wf =
            Workflow::parse_with("w.yaml", &text, None, &sets(&["a.synthetic.seed=7", "b.synthetic.train=3"])).unwrap();
        assert_eq!(wf.steps[0].config.value["synthetic"]["seed"], 7);
        assert_eq!(wf.steps[0].config.value["synthetic"]["train"], 2, "other keys stay");
        assert_eq!(wf.steps[1].config.value["synthetic"]["train"], 3, "a step without config gets one");
        let err = |s: &[&str]| Workflow::parse_with("w.yaml", &text, None, &sets(s)).unwrap_err().to_string();
        assert!(err(&["c.x=1"]).contains("--set c.x=1: the workflow has no step named `c`"));
        assert!(err(&["a=1"]).contains("--set a=1: expected STEP.KEY=VALUE"));
        assert!(err(&["a.synthetic.sede=1"]).contains("sede"), "{}", err(&["a.synthetic.sede=1"]));
    }

    #[test]
    fn vars_give_a_fan_out_its_values_and_an_input_its_name() {
        let text = format!(
            "name: w\nstore: /tmp/w\nvars: {{seeds: [1, 2], pick: 2}}\nsteps:\n  - name: a\n    {PREP}\n    foreach: {{synthetic.seed: '${{seeds}}'}}\n  - name: b\n    kind: prep\n    inputs: ['a-${{pick}}']\n"
        );
        let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names = |wf: &Workflow| wf.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let wf = Workflow::parse_with("w.yaml", &text, None, &[]).unwrap();
        assert_eq!(names(&wf), ["a-1", "a-2", "b"]);
        assert_eq!(wf.steps[1].config.value["synthetic"]["seed"], 2);
        assert_eq!(wf.steps[2].deps.iter().map(|&d| wf.steps[d].name.as_str()).collect::<Vec<_>>(), ["a-2"]);
        let wf = Workflow::parse_with("w.yaml", &text, None, &sets(&["vars.seeds=[5,6,7]", "vars.pick=7"])).unwrap();
        assert_eq!(names(&wf), ["a-5", "a-6", "a-7", "b"]);
        let err = |s: &[&str]| Workflow::parse_with("w.yaml", &text, None, &sets(s)).unwrap_err().to_string();
        assert!(err(&["vars.seed=[1]"]).contains("the workflow has no var `seed`"));
        assert!(err(&["vars.pick=3"]).contains("input `a-3` names no step"), "{}", err(&["vars.pick=3"]));
        assert!(err(&["vars.pick=[1]"]).contains("`${pick}` is not a single value"));
        assert!(err(&["vars.seeds=[]"]).contains("expected a non-empty list"));
        let missing = text.replace("'${seeds}'", "'${sedes}'");
        let e = Workflow::parse("w.yaml", &missing, None).unwrap_err().to_string();
        assert!(e.contains("step `a`: foreach.synthetic.seed: `${sedes}` names no entry of `vars`"), "{e}");
    }

    #[test]
    fn orders_steps_and_wires_outputs_to_inputs() {
        let wf = parse(&format!(
            "name: w\nstore: memory://w/root/\nsteps:\n  - name: b\n    kind: prep\n    inputs: [a]\n  - name: a\n    out: x/a\n    {PREP}\n"
        ))
        .unwrap();
        let names: Vec<_> = wf.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(wf.steps[0].overrides.out.as_deref(), Some("memory://w/root/x/a"));
        assert_eq!(wf.steps[1].overrides.inputs, ["memory://w/root/x/a"]);
        assert_eq!(wf.steps[1].deps, [0]);
        // The same step given inputs *and* synthetic data is rejected at load time.
        let err = parse(&format!(
            "name: w\nstore: s\nsteps:\n  - name: b\n    inputs: [a]\n    {PREP}\n  - name: a\n    {PREP}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("step `b`") && err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn rejects_bad_workflows_before_running() {
        let cases = [
            ("name: w\nstore: s\nsteps: []\n", "no steps"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    kind: nope\n", "unknown kind `nope`"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    inputs: [zz]\n    kind: prep\n", "input `zz` names no step"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    out: ../x\n    kind: prep\n", "`..`"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    out: /abs\n    kind: prep\n", "must be relative"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    inputs: [b]\n    kind: prep\n  - name: b\n    inputs: [a]\n    kind: prep\n", "cycle"),
            ("name: w\nstore: s\nstepz: []\n", "unknown field `stepz`"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    kind: prep\n    config: {synthetic: {seed: x}}\n", "synthetic.seed"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    kind: prep\n  - name: a\n    kind: prep\n", "two steps are named `a`"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    kind: prep\n  - name: b\n    out: a/b\n    kind: prep\n", "are nested"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    out: x/y\n    kind: prep\n  - name: b\n    out: x\n    kind: prep\n", "are nested"),
            ("name: w\nstore: s\nsteps:\n  - name: a\n    kind: prep\n  - name: b\n    out: a\n    kind: prep\n", "used by step `a` too"),
            ("name: w\nstore: s\nsteps:\n  - name: a{b}\n    kind: prep\n", "`{key}` only in a fan-out"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.exit_kind(), crate::error::ExitKind::BadInput);
            let msg = err.to_string();
            assert!(msg.contains("w.yaml") && msg.contains(want), "{want:?} not in {msg:?}");
        }
    }
}
