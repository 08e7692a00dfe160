//! `taft render`: Argo resources that pass Argo's schema and hold the workflow's graph, and
//! Airflow DAGs loaded by a real Airflow, whose local mode runs the demo to the same outputs
//! as `taft run`.

use std::collections::BTreeMap;

use crate::common::*;

/// Argo Workflows' JSON schema (v4.1.2, from its repository's api/jsonschema/schema.json).
fn schema() -> std::path::PathBuf {
    root().join("tests/sched/argo-workflows-v4.1.2.schema.json")
}

/// The tiny data the Airflow comparison runs on.
const TINY_DEMO: [&str; 4] = [
    "--set",
    "prep.synthetic={seed: 42, train: 200, val: 40, test: 40, unlabeled: 200, learnable: true}",
    "--set",
    "vars.seeds=[1]",
];

/// The paper workflow's inputs as object-store URLs.
const PAPER_SETS: [&str; 4] = [
    "--set",
    "prep.inputs=[s3://corpus/conversations.jsonl]",
    "--set",
    "init.pretrained=s3://models/distilcamembert-base",
];

/// Each step of a workflow after fan-out and the steps it waits for, from its dry run.
fn dry_run_graph(args: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut all = vec!["run"];
    all.extend(args);
    all.push("--dry-run");
    let r = taft_run(&all).ok();
    r.stdout
        .lines()
        .map(|line| {
            let head = line.split_once(": taft ").unwrap().0;
            let (name, after) = head.split_once(" [after ").unwrap_or((head, "]"));
            let mut after: Vec<String> =
                after.trim_end_matches(']').split(", ").filter(|s| !s.is_empty()).map(String::from).collect();
            after.sort();
            (name.to_string(), after)
        })
        .collect()
}

fn argo_check(files: &[&std::path::Path]) -> Run {
    let mut cmd = python();
    cmd.arg(root().join("tests/sched/argo_check.py")).arg(schema()).args(files);
    run(&mut cmd)
}

#[test]
fn argo_resources_pass_the_schema_and_hold_the_workflow_graph() {
    let dir = tempdir();
    // The demo adds three encode steps (encode-0, encode-1, encode-direct) to the graph.
    for (file, sets, gpu_steps, steps) in
        [("workflows/taft.yaml", &PAPER_SETS[..], 12, 26), ("workflows/demo.yaml", &TINY_DEMO[..], 0, 29)]
    {
        let mut graph_args = vec![file, "--store", "s3://bucket/runs"];
        graph_args.extend(sets);
        let graph = dry_run_graph(&graph_args);
        assert_eq!(graph.len(), steps, "{file}");
        for kind in ["workflowtemplate", "workflow"] {
            let out = dir.path().join(format!("{kind}.yaml"));
            let mut args = vec!["render", "argo", file, "--store", "s3://bucket/runs", "--kind", kind, "-o", s(&out)];
            args.extend(sets);
            args.extend(["--secret", "creds", "--image", "registry.example/taft", "--tag", "v9"]);
            args.extend(["--image-pull-secret", "regcred", "--parallelism", "3"]);
            taft_run(&args).ok();
            let r = argo_check(&[&out]);
            assert_eq!(r.code, 0, "{file} as {kind}: {}{}", r.stdout, r.stderr);
            let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            assert_eq!(doc["kind"], if kind == "workflow" { "Workflow" } else { "WorkflowTemplate" });
            let spec = &doc["spec"];
            let params: BTreeMap<String, String> = spec["arguments"]["parameters"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().into(), p["value"].as_str().unwrap().into()))
                .collect();
            assert_eq!(params["store"], "s3://bucket/runs");
            assert_eq!(params["secret"], "creds");
            assert_eq!((params["image"].as_str(), params["tag"].as_str()), ("registry.example/taft", "v9"));
            // A pod's lifetime and rights: a service account for Argo's executor, pull
            // secrets, Pod Security "restricted", bounded parallelism and cleanup.
            assert_eq!(spec["serviceAccountName"], "taft");
            assert_eq!(spec["imagePullSecrets"][0]["name"], "regcred");
            assert_eq!(spec["parallelism"], 3);
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
            assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
            assert!(spec["ttlStrategy"]["secondsAfterFailure"].as_u64().unwrap() > 0);
            let templates = spec["templates"].as_sequence().unwrap();
            let main = templates.iter().find(|t| t["name"] == "main").unwrap();
            // The DAG is the workflow's: the same tasks, the same dependencies.
            let tasks = main["dag"]["tasks"].as_sequence().unwrap();
            let dag: BTreeMap<String, Vec<String>> = tasks
                .iter()
                .map(|t| {
                    let mut deps: Vec<String> = t["dependencies"]
                        .as_sequence()
                        .map(|d| d.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                        .unwrap_or_default();
                    deps.sort();
                    (t["name"].as_str().unwrap().to_string(), deps)
                })
                .collect();
            assert_eq!(dag, graph, "{file}");
            // Each task writes under the store parameter and reads its inputs from there.
            // Step 2 runs once per seed: the paper's file 42, the tiny demo 1.
            let tapt = if file.ends_with("taft.yaml") { "tapt-pc-42" } else { "tapt-pc-1" };
            let evaluate = format!("evaluate-{tapt}");
            let task = tasks.iter().find(|t| t["name"].as_str() == Some(evaluate.as_str())).unwrap();
            let args: BTreeMap<&str, &str> = task["arguments"]["parameters"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
                .collect();
            assert_eq!(args["out"], format!("{{{{workflow.parameters.store}}}}/{evaluate}"));
            let config: serde_json::Value = serde_json::from_str(args["config"]).unwrap();
            assert_eq!(
                config["inputs"],
                serde_json::json!([
                    format!("{{{{workflow.parameters.store}}}}/{tapt}"),
                    "{{workflow.parameters.store}}/prep"
                ])
            );
            assert_eq!(config["test_resamples"], 5);
            // Containers: exit 3, SIGTERM and pod-level errors are retried (the backoff reaches
            // its cap), credentials come from the Secret, GPU steps ask for a GPU.
            let mut gpu_tasks = 0;
            for t in templates.iter().filter(|t| t["name"] != "main") {
                let name = t["name"].as_str().unwrap();
                let retry = &t["retryStrategy"];
                assert_eq!(
                    retry["expression"],
                    r#"asInt(lastRetry.exitCode) == 3 || asInt(lastRetry.exitCode) == 143 || lastRetry.status == "Error""#,
                    "{name}"
                );
                assert_eq!(retry["retryPolicy"], "Always", "{name}");
                let seconds = |v: &serde_yaml::Value| v.as_str().unwrap().trim_end_matches('s').parse::<u64>().unwrap();
                let (first, cap) = (seconds(&retry["backoff"]["duration"]), seconds(&retry["backoff"]["cap"]));
                let limit = retry["limit"].as_u64().unwrap() as u32;
                assert_eq!(first * 2u64.pow(limit - 1), cap, "{name}: the last retry waits the cap");
                assert!(t["activeDeadlineSeconds"].as_u64().unwrap() >= 3600, "{name}");
                let c = &t["container"];
                assert_eq!(c["command"][0], "taft", "{name}");
                assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL", "{name}");
                let threads = c["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "TAFT_THREADS").unwrap();
                assert_eq!(threads["valueFrom"]["resourceFieldRef"]["resource"], "requests.cpu", "{name}");
                assert_eq!(c["image"], "{{workflow.parameters.image}}:{{workflow.parameters.tag}}");
                assert_eq!(c["envFrom"][0]["secretRef"]["name"], "{{workflow.parameters.secret}}");
                assert_eq!(c["args"][0].as_str().unwrap(), name.trim_end_matches("-gpu"));
                assert!(
                    c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string()
                );
                let gpu = name.ends_with("-gpu");
                assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"].as_u64(), gpu.then_some(1), "{name}");
                assert!(t.get("nodeSelector").is_none(), "{name}: a node selector by default");
                assert_eq!(t["tolerations"][0]["key"].as_str(), gpu.then_some("nvidia.com/gpu"), "{name}");
                for task in tasks.iter().filter(|task| task["template"] == name && gpu) {
                    // A GPU step trains on CUDA or fails: never days on the CPU.
                    let config =
                        task["arguments"]["parameters"].as_sequence().unwrap().iter().find(|p| p["name"] == "config");
                    let config: serde_json::Value =
                        serde_json::from_str(config.unwrap()["value"].as_str().unwrap()).unwrap();
                    assert_eq!(config["train"]["device"], "cuda", "{}", task["name"].as_str().unwrap());
                    gpu_tasks += 1;
                }
            }
            assert_eq!(gpu_tasks, gpu_steps, "{file}: dapt, two role models and 9 fine-tunings on GPUs");
        }
    }
    // The checker itself fails on what Argo would refuse: an unknown field, a wrong type.
    let out = dir.path().join("workflowtemplate.yaml");
    let text = std::fs::read_to_string(&out).unwrap();
    for (bad, want) in [
        (
            text.replacen("entrypoint: main", "entrypoint: main\n  entrypiont: main", 1),
            "spec.entrypiont: unknown field",
        ),
        (text.replacen("podGC:", "podGC: 3\n  x:", 1), "is not of type 'object'"),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, bad).unwrap();
        let r = argo_check(&[&path]);
        assert!(r.code == 1 && r.stdout.contains(want), "{want}: {}{}", r.stdout, r.stderr);
    }
    // Pods share no disk: a local store is refused, naming the fix; so is a scheme no pod
    // can open.
    let r = taft_run(&["render", "argo", "workflows/demo.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("store `runs/demo` is not an object-store URL"), "{}", r.stderr);
    let r = taft_run(&["render", "argo", "workflows/demo.yaml", "--store", "abfss://c@a.dfs.core.windows.net/runs"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // One list of schemes: the store's, the renderers' and the chart's values schema.
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("charts/taft/values.schema.json")).unwrap()).unwrap();
    let pattern = format!("^({})://.+", taft::store::REMOTE_SCHEMES.join("|"));
    assert_eq!(schema["definitions"]["storeUrl"]["pattern"], pattern.as_str());
    for scheme in taft::store::REMOTE_SCHEMES {
        // (Azure wants an account name from the environment; the scheme itself is known.)
        if let Err(e) = taft::store::Store::open(&format!("{scheme}://bucket/runs")) {
            assert!(!e.to_string().contains("unsupported scheme"), "{scheme}: {e}");
        }
    }
}

/// Airflow in its own virtual environment (scripts/bootstrap --tests), with a fresh home.
struct Airflow {
    home: tempfile::TempDir,
}

impl Airflow {
    fn new() -> Airflow {
        let home = tempdir();
        std::fs::create_dir(home.path().join("dags")).unwrap();
        let af = Airflow { home };
        let r = run(af.cmd("airflow").args(["db", "migrate"]));
        assert_eq!(r.code, 0, "airflow db migrate: {}{}", r.stdout, r.stderr);
        af
    }

    fn cmd(&self, program: &str) -> std::process::Command {
        let bin = root().join(".tools/airflow/bin").join(program);
        assert!(bin.exists(), "{} missing: run scripts/test, which bootstraps it", bin.display());
        let mut cmd = std::process::Command::new(bin);
        cmd.env("AIRFLOW_HOME", self.home.path())
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__DAGS_FOLDER", self.dags())
            .current_dir(root());
        cmd
    }

    fn dags(&self) -> std::path::PathBuf {
        self.home.path().join("dags")
    }

    /// Checks a DAG file with tests/sched/airflow_dag.py (`env`: more of its environment).
    fn check_with(&self, dag: &std::path::Path, expected: serde_json::Value, env: &[(&str, &str)]) {
        let want = self.home.path().join("expected.json");
        std::fs::write(&want, expected.to_string()).unwrap();
        let mut cmd = self.cmd("python");
        cmd.arg(root().join("tests/sched/airflow_dag.py")).arg(dag).arg(&want).envs(env.iter().copied());
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{}: {}{}", dag.display(), r.stdout, r.stderr);
    }
}

#[cfg(feature = "train")]
#[test]
fn airflow_local_dag_runs_the_demo_to_the_outputs_of_taft_run() {
    let af = Airflow::new();
    let dir = tempdir();
    let (by_airflow, by_run) = (dir.path().join("airflow"), dir.path().join("run"));
    let dag = af.dags().join("demo.py");
    let mut args = vec!["render", "airflow", "workflows/demo.yaml", "--mode", "local", "--store", s(&by_airflow)];
    args.extend(TINY_DEMO);
    args.extend(["-o", s(&dag)]);
    taft_run(&args).ok();
    let mut graph_args = vec!["workflows/demo.yaml"];
    graph_args.extend(TINY_DEMO);
    let graph = dry_run_graph(&graph_args);
    af.check_with(&dag, serde_json::json!({"dag_id": "demo", "tasks": graph, "gpu": [], "mode": "local"}), &[]);
    // One task at a time, as `taft run --jobs 1` does: the same thread count, the same bytes.
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get()).to_string();
    let r = run(af.cmd("airflow").args(["dags", "test", "demo"]).env("TAFT_THREADS", &threads));
    assert_eq!(r.code, 0, "airflow dags test: {}{}", r.stdout, r.stderr);
    let mut args = vec!["run", "workflows/demo.yaml", "--jobs", "1", "--store", s(&by_run)];
    args.extend(TINY_DEMO);
    taft_run(&args).ok();
    // Every step's output holds the same bytes both ways, but for its training log and
    // TensorBoard events, which carry wall-clock times.
    let mut compared = 0;
    for step in graph.keys() {
        let (a, b) = (manifest(&by_airflow.join(step)), manifest(&by_run.join(step)));
        let (a, b) = (a.unwrap_or_else(|| panic!("{step}: not run by Airflow")), b.unwrap());
        assert_eq!(a["fingerprint"], b["fingerprint"], "{step}: Airflow's output differs from taft run's");
        let files = |m: &serde_json::Value| -> Vec<(String, String)> {
            let files = m["files"].as_array().unwrap().iter();
            let files =
                files.map(|f| (f["path"].as_str().unwrap().to_string(), f["sha256"].as_str().unwrap().to_string()));
            files.filter(|(path, _)| path != "metrics.jsonl" && !path.starts_with("tensorboard/")).collect()
        };
        assert_eq!(files(&a), files(&b), "{step}: Airflow's files differ from taft run's");
        compared += files(&a).len();
    }
    assert!(compared > 150, "{compared} files compared");
    // A second run of the DAG finds every step up to date.
    let r = run(af.cmd("airflow").args(["dags", "test", "demo"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let up_to_date = r.stdout.matches(": up to date: ").count() + r.stderr.matches(": up to date: ").count();
    assert!(up_to_date >= graph.len(), "{up_to_date} up to date: {}", r.stdout);
}

#[test]
fn airflow_kubernetes_dag_imports_with_the_workflow_tasks() {
    let af = Airflow::new();
    let dag = af.dags().join("taft.py");
    let mut args = vec!["render", "airflow", "workflows/taft.yaml", "--store", "gs://bucket/runs", "--secret", "gcs"];
    args.extend(PAPER_SETS);
    args.extend(["--image", "registry.example/taft", "--tag", "v9", "-o", s(&dag)]);
    taft_run(&args).ok();
    let mut graph_args = vec!["workflows/taft.yaml", "--store", "gs://bucket/runs"];
    graph_args.extend(PAPER_SETS);
    let graph = dry_run_graph(&graph_args);
    let gpu: Vec<&String> = graph
        .keys()
        .filter(|s| ["dapt", "role", "taft-", "noadapt-", "tapt-"].iter().any(|p| s.starts_with(p)))
        .collect();
    assert_eq!(gpu.len(), 12, "{gpu:?}");
    // The pods the operators would create (built offline against a cluster that is never
    // contacted) pass Kubernetes' schemas, unknown fields rejected.
    let kubeconfig = af.home.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: none, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: none, user: {token: none}}]\ncontexts: [{name: none, context: {cluster: none, user: none}}]\ncurrent-context: none\n",
    )
    .unwrap();
    let pods = af.home.path().join("pods.yaml");
    af.check_with(
        &dag,
        serde_json::json!({"dag_id": "taft", "tasks": graph, "gpu": gpu, "mode": "kubernetes", "secret": "gcs",
            "image": "registry.example/taft:v9", "pods": pods}),
        &[("KUBECONFIG", s(&kubeconfig))],
    );
    let validate = root().join(".venv/bin/kubernetes-validate");
    let r = run(std::process::Command::new(validate).args(["--strict", "-k", "1.30.0", s(&pods)]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(" passed for resource pod/").count(), 26, "{}", r.stdout);
    let r = run(af.cmd("airflow").args(["dags", "list-import-errors", "--local", "-o", "json"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("taft.py"), "{}", r.stdout);
}

#[test]
fn fan_out_steps_run_in_parallel_and_gather() {
    let dir = tempdir();
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            "name: fan\nstore: {}\nsteps:\n  - name: prep\n    kind: prep\n    foreach: {{synthetic.seed: [1, 2], synthetic.train: [20]}}\n    config: {{synthetic: {{val: 5, test: 5, unlabeled: 10}}}}\n",
            s(&dir.path().join("store"))
        ),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf), "--set", "prep-2-20.synthetic.val=6"]).ok();
    assert!(r.stdout.contains("workflow fan: 2 step(s) finished"), "{}", r.stdout);
    let (a, b) = (
        manifest(&dir.path().join("store/prep-1-20")).unwrap(),
        manifest(&dir.path().join("store/prep-2-20")).unwrap(),
    );
    assert_eq!(a["config"]["synthetic"]["seed"], 1);
    assert_eq!(b["config"]["synthetic"]["seed"], 2);
    assert_eq!(
        (a["config"]["synthetic"]["val"].as_u64(), b["config"]["synthetic"]["val"].as_u64()),
        (Some(5), Some(6))
    );
    assert_eq!((a["summary"]["conversations"].as_u64(), b["summary"]["conversations"].as_u64()), (Some(40), Some(41)));
    assert_ne!(a["fingerprint"], b["fingerprint"]);
}

#[test]
fn the_helm_chart_renders_lints_and_validates_for_default_gpu_and_s3_values() {
    // Its WorkflowTemplate is the renderer's output for the paper's workflow.
    let dir = tempdir();
    let fresh = dir.path().join("workflowtemplate.yaml");
    let r = run(std::process::Command::new(root().join("scripts/chart"))
        .arg(&fresh)
        .env("TAFT", env!("CARGO_BIN_EXE_taft"))
        .current_dir(root()));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let shipped = std::fs::read_to_string(root().join("charts/taft/files/workflowtemplate.yaml")).unwrap();
    assert!(
        shipped == std::fs::read_to_string(&fresh).unwrap(),
        "charts/taft/files/workflowtemplate.yaml is not what scripts/chart renders: run scripts/chart"
    );
    let r = argo_check(&[&fresh]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut cmd = python();
    cmd.arg(root().join("tests/sched/chart.py")).arg(root().join("charts/taft")).arg(schema());
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn the_dockerfile_builds_non_root_images_from_paths_that_exist() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Instructions, with continuation lines joined and comments dropped.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut stages: Vec<(String, Vec<&str>)> = Vec::new();
    for line in &lines {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        match op {
            "FROM" => {
                let name = rest.split(" AS ").nth(1).expect("every stage is named").trim().to_string();
                stages.push((name, Vec::new()));
            }
            "ARG" if stages.is_empty() => {}
            _ => stages.last_mut().expect("an instruction before FROM").1.push(line),
        }
    }
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["build", "serve", "runtime-cpu", "runtime"], "the default target (last) is the step image");
    for (i, (name, body)) in stages.iter().enumerate() {
        for line in body.iter().filter(|l| l.starts_with("COPY ")) {
            let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
            if let Some(from) = parts.iter().find_map(|p| p.strip_prefix("--from=")) {
                assert!(names[..i].contains(&from), "{name}: {line}: no earlier stage `{from}`");
                continue;
            }
            let sources = &parts[..parts.len() - 1];
            for src in sources.iter().filter(|s| !s.starts_with("--")) {
                assert!(root().join(src).exists(), "{name}: {line}: {src} is not in the repository");
                assert!(
                    !ignored.iter().any(|i| src.starts_with(i.as_str())),
                    "{name}: {line}: {src} is in .dockerignore"
                );
            }
        }
        if name == "build" {
            continue;
        }
        let user = body.iter().rev().find_map(|l| l.strip_prefix("USER ")).unwrap_or_else(|| panic!("{name}: no USER"));
        assert!(!["root", "0"].contains(&user.trim()), "{name}: runs as {user}");
        assert!(body.contains(&r#"ENTRYPOINT ["taft"]"#), "{name}: the entrypoint is taft");
        assert!(
            !body.iter().any(|l| l.contains("python")),
            "{name}: no Python interpreter in a run-time image: {body:?}"
        );
        assert!(body.iter().any(|l| l.starts_with("COPY --from=build") && l.contains("/taft ")), "{name}: the binary");
    }
    let serve = &stages[1].1;
    assert!(!serve.iter().any(|l| l.contains("LD_LIBRARY_PATH")), "the serving image carries no libtorch");
    let build = &stages[0].1;
    assert!(build.iter().any(|l| l.contains("--no-default-features --features serve")), "the serving build");
    // Each image copies its own part of what scripts/image-stage lays out (scripts/images
    // builds and runs them): no CUDA compute library in the CPU image, no libtorch in the
    // serving one.
    assert!(build.iter().any(|l| l.contains("scripts/image-stage /opt/taft ")), "{build:?}");
    let copies = |stage: &[&str]| -> Vec<String> {
        stage.iter().filter(|l| l.starts_with("COPY --from=build")).map(|l| l.to_string()).collect()
    };
    assert_eq!(
        copies(serve),
        [
            "COPY --from=build /opt/taft/serve/lib /opt/taft/lib",
            "COPY --from=build /opt/taft/serve/taft /usr/local/bin/taft"
        ]
    );
    assert_eq!(
        copies(&stages[2].1),
        [
            "COPY --from=build /opt/taft/cpu/lib /opt/taft/lib",
            "COPY --from=build /opt/taft/cpu/taft /usr/local/bin/taft"
        ]
    );
    assert_eq!(
        copies(&stages[3].1),
        ["COPY --from=build /opt/taft/lib /opt/taft/lib", "COPY --from=build /opt/taft/bin/taft /usr/local/bin/taft"]
    );
    // The libraries the step images need, searched first; the GPU image adds where GKE
    // mounts the driver, and keeps what the base image set.
    let ld = |stage: &[&str]| stage.iter().find(|l| l.contains("LD_LIBRARY_PATH=")).map(|l| l.to_string()).unwrap();
    assert!(ld(&stages[3].1).contains("LD_LIBRARY_PATH=/opt/taft/lib:/usr/local/nvidia/lib64:"));
    for stage in [&stages[2].1, &stages[3].1] {
        assert!(ld(stage).contains("${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"), "{}", ld(stage));
    }
}

#[cfg(feature = "train")]
#[test]
fn airflow_local_tasks_fail_at_once_on_exit_2_and_retry_on_exit_3() {
    let af = Airflow::new();
    let dir = tempdir();
    // Real steps: a missing input (exit 2), an object store that does not answer (exit 3),
    // and one that works.
    let wf = dir.path().join("exits.yaml");
    std::fs::write(
        &wf,
        format!(
            "name: exits\nstore: {}\nsteps:\n  - name: bad\n    kind: prep\n    config: {{inputs: [{}]}}\n  - name: flaky\n    kind: prep\n    config: {{inputs: ['s3://nobucket/in.jsonl']}}\n  - name: good\n    kind: prep\n    config: {{synthetic: {{train: 4, val: 2, test: 2, unlabeled: 4}}}}\n",
            s(&dir.path().join("store")),
            s(&dir.path().join("missing.jsonl"))
        ),
    )
    .unwrap();
    let dag = af.dags().join("exits.py");
    taft_run(&["render", "airflow", s(&wf), "--mode", "local", "-o", s(&dag)]).ok();
    let mut cmd = af.cmd("python");
    cmd.arg(root().join("tests/sched/airflow_exits.py")).arg(&dag).arg("exits").envs([
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "y"),
        ("AWS_REGION", "us-east-1"),
        ("TAFT_STORE_RETRY_TIMEOUT", "1"),
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let outcomes: BTreeMap<&str, &str> =
        r.stdout.lines().filter_map(|l| l.strip_prefix("outcome ")?.split_once(' ')).collect();
    assert_eq!(outcomes, BTreeMap::from([("bad", "fail"), ("flaky", "retry"), ("good", "ok")]), "{}", r.stderr);
}
