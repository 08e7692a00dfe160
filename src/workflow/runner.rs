//! The local DAG runner. Each step runs as its own process, `taft <step> --input … --out …
//! --set key=value …` — the command Argo and Airflow run — so parallel steps share no
//! global state (libtorch's random generator and thread pool among them). A step gets the
//! thread count it would get run alone (its config's, else `TAFT_THREADS`, else the CPUs
//! this process may use), so its results are the same bytes either way; independent steps
//! run in parallel while their threads fit in those CPUs (at most `jobs` at once), up-to-date
//! steps are skipped by the step contract, and after a failure no new step starts; a rerun
//! continues from what was committed.

use std::process::Stdio;

use tokio::task::JoinSet;

use super::{Planned, Workflow};
use crate::error::{Error, Result};

/// A step that finished, with what it printed (`STEP: done: …` or `STEP: up to date: …`).
#[derive(Debug, Clone)]
pub struct Finished {
    pub name: String,
    pub up_to_date: bool,
    pub stdout: String,
}

/// How a workflow run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The steps that finished (ran or were up to date), in completion order.
    pub finished: Vec<Finished>,
}

/// The command line of a step: its kind, inputs, output and every config key as a
/// `--set key=JSON` (JSON is YAML, so the step reads back exactly the workflow's values).
pub fn step_args(step: &Planned, force: bool) -> Result<Vec<String>> {
    let mut args = vec![step.kind.name().to_string()];
    for input in &step.overrides.inputs {
        args.extend(["--input".to_string(), input.clone()]);
    }
    if let Some(out) = &step.overrides.out {
        args.extend(["--out".to_string(), out.clone()]);
    }
    if let serde_yaml::Value::Mapping(map) = &step.config.value {
        for (key, value) in map {
            let key = key
                .as_str()
                .ok_or_else(|| Error::config(format!("{}: config keys must be strings", step.config.source)))?;
            args.extend(["--set".to_string(), format!("{key}={}", serde_json::to_string(value)?)]);
        }
    }
    if force {
        args.push("--force".into());
    }
    Ok(args)
}

/// Runs the workflow with the `taft` binary at `exe`; `jobs` bounds how many steps run at
/// once; children log as `log_format` (`json` or `text`).
pub async fn run(
    workflow: &Workflow,
    exe: &std::path::Path,
    force: bool,
    jobs: usize,
    log_format: &str,
) -> Result<RunOutcome> {
    if workflow.store.starts_with("memory://") {
        return Err(Error::config(format!(
            "workflow {}: store {}: a memory:// store lives inside one process, and the steps of a workflow run as processes of their own; use a path or an object-store URL",
            workflow.source, workflow.store
        )));
    }
    let n = workflow.steps.len();
    let cpus = crate::runtime::cpus();
    let needs: Vec<usize> = workflow.steps.iter().map(|s| threads_of(s, cpus)).collect::<Result<_>>()?;
    let mut busy = 0usize;
    let mut waiting: Vec<usize> = workflow.steps.iter().map(|s| s.deps.len()).collect();
    let mut started = vec![false; n];
    let mut running = JoinSet::new();
    let mut finished = Vec::new();
    let mut failure: Option<Error> = None;
    loop {
        if failure.is_none() {
            // Steps start while their threads fit in the CPUs (one always may): parallel
            // training steps do not oversubscribe the CPU, and no step's thread count
            // depends on what else happens to run.
            let mut launch = Vec::new();
            for i in (0..n).filter(|&i| !started[i] && waiting[i] == 0) {
                let fits = running.len() + launch.len() == 0 || busy + needs[i] <= cpus;
                if running.len() + launch.len() >= jobs.max(1) || !fits {
                    break;
                }
                busy += needs[i];
                launch.push(i);
            }
            for i in launch {
                started[i] = true;
                let step = &workflow.steps[i];
                let threads = needs[i];
                let args = step_args(step, force)?;
                tracing::info!(workflow = %workflow.name, step = %step.name, threads, command = %format!("taft {}", args.join(" ")), "step started");
                let mut cmd = tokio::process::Command::new(exe);
                cmd.args(&args)
                    .env("TAFT_LOG_FORMAT", log_format)
                    .env("TAFT_PROGRESS", "off")
                    .env(crate::train::THREADS_VAR, threads.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true);
                let kind = step.kind.name();
                running.spawn(async move {
                    let output = run_child(&mut cmd).await;
                    (i, kind, args, output)
                });
            }
        }
        let Some(joined) = running.join_next().await else { break };
        let (i, kind, args, output) = joined.map_err(|e| Error::Other(format!("step task: {e}")))?;
        let name = workflow.steps[i].name.clone();
        busy -= needs[i];
        let (status, stdout) =
            output.map_err(|e| Error::Other(format!("step `{name}`: cannot run {}: {e}", exe.display())))?;
        if status.success() {
            let up_to_date = stdout.starts_with(&format!("{kind}: up to date"));
            tracing::info!(workflow = %workflow.name, step = %name, up_to_date, "step finished");
            finished.push(Finished { name: name.clone(), up_to_date, stdout });
            for (j, step) in workflow.steps.iter().enumerate() {
                waiting[j] -= step.deps.iter().filter(|&&d| d == i).count();
            }
        } else {
            let code = status.code();
            tracing::error!(workflow = %workflow.name, step = %name, code, "step failed");
            let source = Error::Child { command: format!("taft {}", args.join(" ")), code };
            failure.get_or_insert(Error::Step { step: name, source: Box::new(source) });
        }
    }
    let not_run: Vec<String> =
        workflow.steps.iter().zip(&started).filter(|(_, s)| !**s).map(|(p, _)| p.name.clone()).collect();
    match failure {
        Some(e) => {
            if !not_run.is_empty() {
                tracing::warn!(steps = ?not_run, "not run because a step failed");
            }
            Err(e)
        }
        None => Ok(RunOutcome { finished }),
    }
}

/// The CPU threads a step uses: its config's (`train.threads`, or `threads` for the steps
/// without a `train:` section), else what a step run alone takes (`TAFT_THREADS`, else the
/// CPUs this process may use); 1 for the steps that compute on one thread (prep, init,
/// compare).
fn threads_of(step: &Planned, cpus: usize) -> Result<usize> {
    use super::StepKind;
    if matches!(step.kind, StepKind::Prep | StepKind::Init | StepKind::Compare) {
        return Ok(1);
    }
    let config = &step.config.value;
    let set = config.get("train").and_then(|t| t.get("threads")).or_else(|| config.get("threads"));
    if let Some(n) = set.and_then(serde_yaml::Value::as_u64) {
        return Ok((n as usize).max(1));
    }
    Ok(crate::train::TrainConfig::env_threads()?.unwrap_or(cpus))
}

/// Runs a child with its stderr going where ours goes (the logs flow live) and returns its
/// exit status and what it printed on stdout.
async fn run_child(cmd: &mut tokio::process::Command) -> std::io::Result<(std::process::ExitStatus, String)> {
    use tokio::io::AsyncReadExt;
    let mut child = cmd.spawn()?;
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout).await?;
    }
    Ok((child.wait().await?, stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_runs_as_the_command_a_scheduler_would_run() {
        let wf = Workflow::parse(
            "w.yaml",
            "name: w\nstore: /tmp/x\nsteps:\n  - name: a\n    kind: prep\n    config: {synthetic: {train: 2, learnable: true}, on_error: skip}\n  - name: b\n    kind: prep\n    inputs: [a]\n    out: k/b\n",
            None,
        )
        .unwrap();
        let a = step_args(&wf.steps[0], false).unwrap();
        assert_eq!(
            a,
            [
                "prep",
                "--out",
                "/tmp/x/a",
                "--set",
                r#"synthetic={"train":2,"learnable":true}"#,
                "--set",
                r#"on_error="skip""#
            ]
        );
        let b = step_args(&wf.steps[1], true).unwrap();
        assert_eq!(b, ["prep", "--input", "/tmp/x/a", "--out", "/tmp/x/k/b", "--force"]);
        // What the child reads back is the workflow's config.
        let mut raw = crate::config::RawConfig::empty("child");
        raw.apply_sets(&a[4..].iter().step_by(2).cloned().collect::<Vec<_>>()).unwrap();
        assert_eq!(raw.value, wf.steps[0].config.value);
    }
}
