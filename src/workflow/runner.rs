//! The local DAG runner: independent steps run in parallel, up-to-date steps are skipped by
//! the step contract, and after a failure no new step starts; a rerun continues from what
//! was committed.

use tokio::task::JoinSet;

use super::Workflow;
use crate::error::{Error, Result};
use crate::steps::{self, Report};

/// How a workflow run ended, step by step.
#[derive(Debug)]
pub struct RunOutcome {
    /// Reports of the steps that finished (ran or were up to date), in completion order.
    pub reports: Vec<Report>,
    /// Steps not started because a step failed.
    pub not_run: Vec<String>,
}

/// Runs the workflow; `jobs` bounds how many steps run at once.
pub async fn run(workflow: &Workflow, force: bool, jobs: usize) -> Result<RunOutcome> {
    let n = workflow.steps.len();
    let mut waiting: Vec<usize> = workflow.steps.iter().map(|s| s.deps.len()).collect();
    let mut started = vec![false; n];
    let mut running = JoinSet::new();
    let mut reports = Vec::new();
    let mut failure: Option<Error> = None;
    loop {
        if failure.is_none() {
            for i in 0..n {
                if running.len() >= jobs.max(1) {
                    break;
                }
                if !started[i] && waiting[i] == 0 {
                    started[i] = true;
                    let step = workflow.steps[i].clone();
                    let mut overrides = step.overrides.clone();
                    overrides.force = force;
                    tracing::info!(workflow = %workflow.name, step = %step.name, "step started");
                    running.spawn(async move {
                        let result = steps::run(step.kind, &step.config, &overrides).await;
                        (i, result)
                    });
                }
            }
        }
        let Some(joined) = running.join_next().await else { break };
        let (i, result) = joined.map_err(|e| Error::Other(format!("step task panicked: {e}")))?;
        let name = &workflow.steps[i].name;
        match result {
            Ok(report) => {
                tracing::info!(workflow = %workflow.name, step = %name, up_to_date = report.up_to_date, "step finished");
                reports.push(report);
                for (j, step) in workflow.steps.iter().enumerate() {
                    waiting[j] -= step.deps.iter().filter(|&&d| d == i).count();
                }
            }
            Err(e) => {
                tracing::error!(workflow = %workflow.name, step = %name, error = %crate::error::chain(&e), "step failed");
                failure.get_or_insert(Error::Step { step: name.clone(), source: Box::new(e) });
            }
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
        None => Ok(RunOutcome { reports, not_run }),
    }
}
