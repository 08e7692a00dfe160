//! `taft run`: the demo workflow, validation before anything runs, parallel steps, and a
//! rerun that continues from what a failed run committed.

use crate::common::*;

const TINY: &str = "synthetic: {train: 20, val: 5, test: 5, unlabeled: 30}";

#[test]
fn demo_workflow_runs_then_is_up_to_date() {
    let dir = tempdir();
    let store = dir.path().join("demo");
    let r = taft_run(&["run", "workflows/demo.yaml", "--store", s(&store)]).ok();
    assert!(r.stdout.contains(&format!("prep: done: {}/prep", s(&store))), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("outputs under {}", s(&store))), "{}", r.stdout);
    let m = manifest(&store.join("prep")).unwrap();
    assert_eq!(m["summary"]["conversations"], 5800);
    let init = manifest(&store.join("init")).unwrap();
    assert_eq!(init["inputs"][0]["fingerprint"], m["fingerprint"], "init reads prep's output");
    assert!(store.join("init/model.safetensors").exists());
    let dapt = manifest(&store.join("dapt")).unwrap();
    let eval: Vec<f64> = std::fs::read_to_string(store.join("dapt/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "eval")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(eval.len(), 2, "{eval:?}");
    assert!(eval[1] < eval[0], "the demo's masked-LM loss falls: {eval:?}");
    assert_eq!(dapt["summary"]["last_eval"]["loss"].as_f64(), Some(eval[1]));
    let role = manifest(&store.join("role")).unwrap();
    let accuracy = role["summary"]["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "the demo's speaker-role model learns (learnable data): {accuracy}");
    let r = taft_run(&["run", "workflows/demo.yaml", "--store", s(&store)]).ok();
    for step in ["prep", "init", "dapt", "role"] {
        assert!(r.stdout.contains(&format!("{step}: up to date")), "{}", r.stdout);
    }
}

#[test]
fn independent_steps_run_in_parallel() {
    let dir = tempdir();
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            "name: par\nstore: {}\nsteps:\n  - name: a\n    kind: prep\n    config: {{synthetic: {{unlabeled: 20000}}}}\n  - name: b\n    kind: prep\n    config: {{synthetic: {{unlabeled: 20000, seed: 7}}}}\n",
            s(&dir.path().join("store"))
        ),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf)]).ok();
    let events = events(&r.stderr);
    let pos = |msg: &str, step: &str| {
        events
            .iter()
            .position(|e| e["message"] == msg && e["step"] == step)
            .unwrap_or_else(|| panic!("no {msg} for {step}: {}", r.stderr))
    };
    let first_finish = pos("step finished", "a").min(pos("step finished", "b"));
    assert!(pos("step started", "a") < first_finish && pos("step started", "b") < first_finish, "{}", r.stderr);
    // With one job at a time they run one after the other.
    let r = taft_run(&["run", s(&wf), "--jobs", "1", "--force"]).ok();
    let events = crate::common::events(&r.stderr);
    let order: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "step started" || e["message"] == "step finished")
        .map(|e| format!("{} {}", e["message"].as_str().unwrap(), e["step"].as_str().unwrap()))
        .collect();
    assert_eq!(order, ["step started a", "step finished a", "step started b", "step finished b"]);
}

#[test]
fn a_bad_step_config_stops_the_workflow_before_anything_runs() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!("name: bad\nstore: {}\nsteps:\n  - name: a\n    kind: prep\n    config: {{{TINY}}}\n  - name: b\n    kind: prep\n    config: {{synthetic: {{seed: -1}}}}\n", s(&store)),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}: step `b`", s(&wf))) && r.stderr.contains("synthetic.seed"), "{}", r.stderr);
    assert!(!store.join("a").exists(), "step a ran although the workflow was invalid");
    for (text, want) in [
        ("name: w\nstore: x\nsteps:\n  - name: a\n    kind: train\n", "unknown kind `train`"),
        ("name: w\nstore: x\nsteps:\n  - name: a\n    kind: prep\n    inputs: [b]\n  - name: b\n    kind: prep\n    inputs: [a]\n", "cycle"),
        ("name: w\nstore: x\nsteps:\n  - name: a\n    kind: prep\n    inputs: [ghost]\n", "input `ghost` names no step"),
        ("name: w\nstore: x\nsteps:\n  - name: a\n    kind: prep\n    out: ../../etc\n", "must not contain `.` or `..`"),
    ] {
        std::fs::write(&wf, text).unwrap();
        let r = taft_run(&["run", s(&wf)]);
        assert_eq!(r.code, 2, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
}

#[test]
fn a_rerun_after_a_failure_continues_from_what_was_committed() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"split\": \"train\"}\n").unwrap();
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            "name: resume\nstore: {}\nsteps:\n  - name: good\n    kind: prep\n    config: {{{TINY}}}\n  - name: bad\n    kind: prep\n    config: {{inputs: [{}]}}\n",
            s(&store),
            s(&input)
        ),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf), "--jobs", "1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("step `bad`") && r.stderr.contains("missing field `status`"), "{}", r.stderr);
    assert!(manifest(&store.join("good")).is_some());
    assert!(manifest(&store.join("bad")).is_none());

    std::fs::copy(root().join("data/sample.jsonl"), &input).unwrap();
    let r = taft_run(&["run", s(&wf)]).ok();
    assert!(r.stdout.contains("prep: up to date") && r.stdout.contains("prep: done"), "{}", r.stdout);
    assert!(manifest(&store.join("bad")).is_some());
}
