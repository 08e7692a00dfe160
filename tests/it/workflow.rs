//! `taft run`: the demo workflow, validation before anything runs, parallel steps, and a
//! rerun that continues from what a failed run committed.

use crate::common::*;

const TINY: &str = "synthetic: {train: 20, val: 5, test: 5, unlabeled: 30}";

/// The comparison table in the README: the lines between its markers.
fn readme_table() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("<!-- demo-table -->\n").expect("the README marks the demo's table") + 20;
    let end = readme[start..].find("<!-- /demo-table -->").expect("the table's end") + start;
    readme[start..end].to_string()
}

#[test]
fn demo_workflow_learns_and_a_copy_of_its_store_is_up_to_date() {
    let dir = tempdir();
    let (store, again) = (dir.path().join("demo"), dir.path().join("demo-again"));
    // Each step runs in a process of its own, so no step can move another's random
    // generator or thread count. That two runs give the same bytes, step by step, is the
    // Airflow test's (schedulers.rs: Airflow's run and `taft run` of the demo's graph on a
    // smaller synthetic set); this one runs the demo as the README does, then again in a
    // copy of its store, where every step is up to date (outputs do not depend on where
    // they are stored).
    let demo = |store: &std::path::Path| taft_run(&["run", "workflows/demo.yaml", "--store", s(store)]).ok();
    let r = demo(&store);
    assert!(r.stdout.contains(&format!("prep: done: {}/prep", s(&store))), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("outputs under {}", s(&store))), "{}", r.stdout);
    let m = manifest(&store.join("prep")).unwrap();
    assert_eq!(m["summary"]["conversations"], 5800);
    let init = manifest(&store.join("init")).unwrap();
    assert_eq!(init["inputs"][0]["fingerprint"], m["fingerprint"], "init reads prep's output");
    let dapt = manifest(&store.join("dapt")).unwrap();
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(store.join("dapt/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "eval")
        .collect();
    let eval: Vec<f64> = evals.iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    assert_eq!(eval.len(), 8, "{eval:?}");
    assert!(eval[1] < eval[0], "the demo's masked-LM loss falls: {eval:?}");
    let words: Vec<f64> = evals.iter().map(|r| r["first_token_words"].as_f64().unwrap()).collect();
    assert!(words[7] < words[0] - 0.05, "the first token learns its block's words: {words:?}");
    assert_eq!(dapt["summary"]["last_eval"]["loss"].as_f64(), eval.last().copied());
    let role = manifest(&store.join("role")).unwrap();
    let accuracy = role["summary"]["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "the demo's speaker-role model learns (learnable data): {accuracy}");
    // Step 2 ran once per seed (1, 2, 3); compare groups the runs of each setting. Every
    // method learns every task it trains (the demo's masked-LM step teaches the stand-in
    // encoder's first token to summarise its text, which the direct heads read): mean macro
    // F1 over the seeds at least 0.10 above the majority baseline's and mean kappa at least
    // 0.20, short of perfect (noise).
    let table = std::fs::read_to_string(store.join("compare/comparison.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 6 * 2 + 3, "taft, noadapt, tapt (two tasks each) and dapt: {table}");
    assert!(rows.iter().all(|r| r[4] == "3"), "three seeds each: {table}");
    let trained = [
        ("taft-status", "status"),
        ("taft-status", "satis3"),
        ("taft-pc", "pc"),
        ("taft-pc", "satis3"),
        ("noadapt-status", "status"),
        ("noadapt-status", "satis3"),
        ("noadapt-pc", "pc"),
        ("noadapt-pc", "satis3"),
        ("tapt-status", "status"),
        ("tapt-status", "satis3"),
        ("tapt-pc", "pc"),
        ("tapt-pc", "satis3"),
        ("dapt-status", "status"),
        ("dapt-pc", "pc"),
        ("dapt-satis3", "satis3"),
    ];
    let figure = |row: &[&str], i: usize| row[i].parse::<f64>().unwrap_or(f64::NAN);
    for (name, task) in trained {
        let row =
            rows.iter().find(|r| r[0] == name && r[2] == task).unwrap_or_else(|| panic!("{name} {task}: {table}"));
        // Columns: 5 + 4 per score (mean, sd, lo, hi): f1_macro at 13, kappa at 17.
        let (f1, kappa, baseline) = (figure(row, 13), figure(row, 17), figure(row, 25));
        assert!(f1 >= baseline + 0.10 && kappa >= 0.20 && f1 < 0.98, "{name} {task}: {row:?}\n{table}");
        let (lo, hi) = (figure(row, 15), figure(row, 16));
        assert!(lo < f1 && f1 < hi, "{name} {task}: the interval holds the mean: {row:?}");
    }
    // The same figures, with every run's and the paired tests, in comparison.json: between
    // any two settings of a task, on the items both scored, pooled over the three seeds.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("compare/comparison.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 45);
    let tests = json["significance"].as_array().unwrap();
    assert_eq!(tests.len(), 6 + 6 + 21, "pairs of the 4 status, 4 pc and 7 satis3 settings");
    let test = |a: &str, b: &str, task: &str| {
        tests.iter().find(|t| t["a"] == a && t["b"] == b && t["task"] == task).unwrap_or_else(|| panic!("{a} {b}"))
    };
    // On satisfaction, taft's adaptive layer (every token of the frozen encoder) is clearly
    // ahead of noadapt's head (the frozen first-token state alone): its whole interval above
    // zero. The margin moves with the CPU's float kernels (f1 +0.27 on an AVX-512 Xeon, +0.11
    // on an AVX2 EPYC, both with p < 0.001).
    let t = test("taft-status", "noadapt-status", "satis3");
    assert_eq!((t["seeds"].as_u64(), t["items"].as_u64(), t["resamples"].as_u64()), (Some(3), Some(250), Some(10_000)));
    assert!(
        t["diff"].as_f64().unwrap() > 0.05 && t["lo"].as_f64().unwrap() > 0.0 && t["p"].as_f64().unwrap() < 0.01,
        "{t}"
    );
    // dapt on satisfaction leaves the aborted conversations out (SPEC §5): fewer common items.
    assert_eq!(test("taft-pc", "dapt-satis3", "satis3")["items"].as_u64(), Some(188));
    let png = image::open(store.join("compare/comparison.png")).unwrap();
    assert!(
        png.width() <= 1400 && png.height() == 80 + 3 * 320,
        "one panel per task: {:?}",
        (png.width(), png.height())
    );
    // The README shows the table the demo prints: the same rows, columns and baselines (the
    // data's), and digits from one machine's run (README: other CPUs give other digits).
    let markdown = std::fs::read_to_string(store.join("compare/comparison.md")).unwrap();
    let shape = |table: &str| -> Vec<String> {
        table
            .lines()
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                match cells.len() {
                    // setting, method, task, split, runs … baseline.
                    13 => format!("{:?} {}", &cells[1..6], cells[11]),
                    // task, split, a, b, seeds, items.
                    11 => format!("{:?}", &cells[1..7]),
                    _ => line.to_string(),
                }
            })
            .collect()
    };
    assert_eq!(shape(&readme_table()), shape(&markdown), "README.md's demo table is not the one the demo prints");
    // taft and noadapt read the encode steps' states (taft's in two shards): no encoder pass
    // of their own, every labeled conversation's states there.
    let cached = manifest(&store.join("taft-status-1")).unwrap();
    let labeled: u64 = ["encode-0", "encode-1"]
        .iter()
        .map(|e| manifest(&store.join(e)).unwrap()["summary"]["states"]["conversations"].as_u64().unwrap())
        .sum();
    for step in ["taft-status-1", "noadapt-pc-3"] {
        let summary = &manifest(&store.join(step)).unwrap()["summary"];
        assert_eq!(summary["encoder_forwards"], 0, "{step}: {summary}");
        assert_eq!(summary["encoder_cache"]["source"], "encode", "{step}");
        assert_eq!(summary["encoder_cache"]["conversations"].as_u64(), Some(labeled), "{step}");
    }
    let evaluated = manifest(&store.join("evaluate-taft-status-1")).unwrap();
    assert_eq!(
        evaluated["summary"]["tasks"]["status"]["f1_macro"].as_f64(),
        cached["summary"]["test"]["status"]["f1_macro"].as_f64()
    );
    let status = std::process::Command::new("cp").arg("-r").arg(&store).arg(&again).status();
    assert!(status.unwrap().success());
    let r = demo(&again);
    let steps =
        std::fs::read_dir(&store).unwrap().filter(|e| e.as_ref().unwrap().path().join("_MANIFEST.json").exists());
    let steps = steps.count();
    assert_eq!(steps, 26 + 2 * 18 + 3, "every step of the demo committed its output");
    assert_eq!(r.stdout.matches(": up to date: ").count(), steps, "{}", r.stdout);
    for step in ["prep", "dapt", "encode-1", "taft-pc-2", "dapt-satis3-3", "evaluate-tapt-pc-1", "export", "compare"] {
        assert!(r.stdout.contains(&format!(": up to date: {}/{step}\n", s(&again))), "{step}: {}", r.stdout);
    }
    assert!(!r.stdout.contains(": done: "), "{}", r.stdout);
}

#[test]
fn independent_steps_run_in_parallel_as_processes_of_their_own() {
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
    // When each step's own work began and ended (its child's `started` and `committed`
    // events), and the process that logged them.
    let spans = |stderr: &str| -> Vec<(String, String, String, String)> {
        let events = events(stderr);
        ["a", "b"]
            .iter()
            .map(|step| {
                let out = s(&dir.path().join("store").join(step)).to_string();
                let find = |msg: &str| {
                    events
                        .iter()
                        .find(|e| e["message"] == msg && e["span"]["out"] == out.as_str())
                        .unwrap_or_else(|| panic!("no `{msg}` event for {out}: {stderr}"))
                        .clone()
                };
                let (start, end) = (find("started"), find("committed"));
                (
                    step.to_string(),
                    start["timestamp"].as_str().unwrap().to_string(),
                    end["timestamp"].as_str().unwrap().to_string(),
                    start["pid"].to_string(),
                )
            })
            .collect()
    };
    let r = taft_run(&["run", s(&wf)]).ok();
    let spans_par = spans(&r.stderr);
    let (a, b) = (&spans_par[0], &spans_par[1]);
    assert!(a.1 < b.2 && b.1 < a.2, "the two steps' work overlaps in time: {spans_par:?}");
    assert_ne!(a.3, b.3, "in two processes");
    // With one job at a time, one step's work ends before the other's begins.
    let r = taft_run(&["run", s(&wf), "--jobs", "1", "--force"]).ok();
    let seq = spans(&r.stderr);
    let (a, b) = (&seq[0], &seq[1]);
    assert!(a.2 < b.1 || b.2 < a.1, "one after the other: {seq:?}");
    // The printed plan is the commands a scheduler runs.
    let r = taft_run(&["run", s(&wf), "--dry-run"]).ok();
    assert!(r.stdout.contains(&format!("a: taft prep --out {}", s(&dir.path().join("store/a")))), "{}", r.stdout);
    assert!(r.stdout.contains("--set synthetic={\"unlabeled\":20000,\"seed\":7}"), "{}", r.stdout);
}

#[test]
fn an_in_process_store_cannot_hold_a_workflow() {
    let dir = tempdir();
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!("name: m\nstore: memory://wf/root\nsteps:\n  - name: a\n    kind: prep\n    config: {{{TINY}}}\n"),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("a memory:// store lives inside one process"), "{}", r.stderr);
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
        ("name: w\nstore: x\nsteps:\n  - name: a\n    kind: prep\n  - name: b\n    kind: prep\n    out: a/b\n", "are nested"),
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

/// (name, steps it waits for, kind, method and tasks) of each step of a workflow file after
/// fan-out, from its dry run.
fn graph(path: &str, sets: &[&str]) -> Vec<(String, String, String, String)> {
    let dir = tempdir();
    let mut args = vec!["run", path, "--dry-run", "--store", s(dir.path())];
    args.extend(sets);
    let r = taft_run(&args).ok();
    r.stdout
        .lines()
        .map(|line| {
            let (head, command) = line.split_once(": taft ").unwrap();
            let (name, after) = head.split_once(' ').unwrap_or((head, ""));
            let kind = command.split(' ').next().unwrap().to_string();
            let what: Vec<&str> = command
                .split(" --set ")
                .filter(|set| ["method=", "status=", "task=", "variant="].iter().any(|k| set.starts_with(k)))
                .collect();
            (name.to_string(), after.to_string(), kind, what.join(" "))
        })
        .collect()
}

fn find_in(g: &[(String, String, String, String)], name: &str) -> (String, String, String, String) {
    g.iter().find(|s| s.0 == name).unwrap_or_else(|| panic!("{name}: {g:?}")).clone()
}

#[test]
fn the_paper_workflow_is_the_demo_graph_and_takes_its_inputs_from_the_command_line() {
    // The same graph, but for init and step 1a: the demo's init trains a tokenizer on prep's
    // output, the paper's reads the user's pretrained model; the demo's role pretraining
    // starts from its masked-LM model (a tiny scratch encoder is worth freezing only then),
    // the paper's from the pretrained one.
    // The demo also encodes the frozen encoders' states once for its taft and noadapt
    // steps; the paper's file runs them as the original did (the encoder in every step).
    let without_init_inputs = |mut g: Vec<(String, String, String, String)>| {
        g.retain(|s| s.2 != "encode");
        for s in g.iter_mut() {
            s.1 = s.1.replace(", encode-0, encode-1", "").replace(", encode-direct", "");
        }
        g.iter_mut().filter(|s| s.0 == "init").for_each(|s| s.1.clear());
        g.iter_mut().filter(|s| s.0.starts_with("role")).for_each(|s| s.1 = s.1.replace("dapt", "init"));
        // The dry run lists steps in an order they can run in, which the encode steps move.
        g.sort();
        g
    };
    // The paper's file runs one seed (42), the demo three: the same graph on the same seed.
    let paper = graph("workflows/taft.yaml", &[]);
    let demo = graph("workflows/demo.yaml", &["--set", "vars.seeds=[42]", "--set", "vars.export_seed=42"]);
    assert_eq!(without_init_inputs(paper.clone()), without_init_inputs(demo));
    let demo = graph("workflows/demo.yaml", &[]);
    assert_eq!(find_in(&demo, "role").1, "[after prep, dapt]");
    assert_eq!(demo.len(), 26 + 2 * 18 + 3, "three seeds: 18 step-2 models and evaluations each; 3 encode steps");
    assert_eq!(find_in(&demo, "taft-pc-2").1, "[after prep, role, encode-0, encode-1]");
    assert_eq!(find_in(&demo, "noadapt-status-1").1, "[after prep, role-direct, encode-direct]");
    assert_eq!(find_in(&demo, "encode-1").1, "[after prep, role]");
    assert_eq!(find_in(&demo, "encode-direct").2, "encode");
    assert_eq!(find_in(&demo, "export").1, "[after taft-status-1]");
    assert_eq!(
        paper.len(),
        26,
        "prep, init, 3 step-1 models, 9 step-2 models, 9 evaluations, compare, export, predict"
    );
    // The fan-outs: methods × status tasks, dapt × its three tasks, an evaluation of each.
    let find = |name: &str| paper.iter().find(|s| s.0 == name).unwrap_or_else(|| panic!("{name}: {paper:?}")).clone();
    assert_eq!(find("taft-pc-42").1, "[after prep, role]");
    assert_eq!(find("taft-pc-42").3, r#"method="taft" status="pc""#);
    assert_eq!(find("tapt-status-42").3, r#"method="tapt" status="status""#);
    assert_eq!(find("dapt-satis3-42").3, r#"method="dapt" task="satis3""#);
    assert_eq!(find("evaluate-noadapt-pc-42").1, "[after noadapt-pc-42, prep]");
    let compare = find("compare").1;
    for method in [
        "taft-status",
        "taft-pc",
        "noadapt-status",
        "noadapt-pc",
        "tapt-status",
        "tapt-pc",
        "dapt-status",
        "dapt-pc",
        "dapt-satis3",
    ] {
        assert!(compare.contains(&format!("evaluate-{method}-42")), "{compare}");
    }
    let dir = tempdir();
    let r = taft_run(&[
        "run",
        "workflows/taft.yaml",
        "--dry-run",
        "--store",
        s(dir.path()),
        "--set",
        "prep.inputs=[data/sample.jsonl]",
        "--set",
        "init.pretrained=models/distilcamembert",
    ])
    .ok();
    assert!(r.stdout.contains("prep: taft prep --out"), "{}", r.stdout);
    assert!(r.stdout.contains(r#"--set inputs=["data/sample.jsonl"]"#), "{}", r.stdout);
    assert!(r.stdout.contains(r#"--set pretrained="models/distilcamembert""#), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 26);
    // Without the user's data and model, prep and init stop naming the files, and nothing
    // after them runs.
    let r = taft_run(&["run", "workflows/taft.yaml", "--store", s(dir.path())]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("data/conversations.jsonl: no such file"), "{}", r.stderr);
    assert!(r.stderr.contains("models/pretrained/config.json: no such file"), "{}", r.stderr);
    assert!(manifest(&dir.path().join("prep")).is_none() && !dir.path().join("dapt").exists());
}
