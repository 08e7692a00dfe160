//! The `taft` binary: parse the command line, run, and turn the outcome into an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use taft::config::RawConfig;
use taft::steps::{self, Overrides, Report, StepKind};

mod cli;
use cli::{Cli, Command, LogFormat};

/// `print!` for what taft reports on stdout, returning the outcome instead of panicking:
/// a reader that has gone away (`taft … | head`) ends nothing (what the text reports has
/// happened, and nobody is left to read it); any other write error is an error.
macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}

fn write_stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// The training build's allocator, for libtorch as well: the binary exports `malloc` and
/// `free`, so the tensors' memory comes from jemalloc too. Freed activations return to
/// jemalloc's size classes and are reused across steps; glibc's heap kept them fragmented,
/// about a fifth of `taft finetune`'s peak RSS at distilcamembert's shape (bench/RESULTS.md).
#[cfg(feature = "train")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (`MALLOC_CONF` in the environment still overrides
/// them): every size in the ordinary arenas. The default sends allocations of 8 MiB and more
/// to an arena that returns them to the kernel at once, and a training step allocates its
/// large activations again at every step, each time faulting fresh pages in.
#[cfg(feature = "train")]
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: &u8 = &b"oversize_threshold:0\0"[0]; // `const char *`, NUL-terminated

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    init_logging(json);
    let bars = std::env::var("TAFT_PROGRESS").map_or(true, |v| v != "off");
    taft::progress::set_interactive(bars && !json && std::io::stderr().is_terminal());
    match std::panic::catch_unwind(|| run(cli.command, json)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            write_stderr(&format!("error: {}\n", taft::error::redact(&format!("{err:#}"))));
            ExitCode::from(taft::error::exit_code(&err))
        }
        // A bug: the panic message is above; exit 1 ("anything else"), not Rust's 101.
        Err(_) => {
            write_stderr("error: internal error (a bug in taft; the message above says where)\n");
            ExitCode::from(1)
        }
    }
}

/// The last line on stderr. With stderr closed it is lost, and the exit code (the
/// scheduler's signal) is still the error's, not a panic's.
fn write_stderr(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("taft=info,object_store::client::retry=info,warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Redacted(Vec::new()));
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.compact().init();
    }
}

/// One log event, written to stderr without credentials (see [`taft::error::redact`]) when
/// the logger is done with it.
struct Redacted(Vec<u8>);

impl std::io::Write for Redacted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Redacted {
    fn drop(&mut self) {
        let text = taft::error::redact(&String::from_utf8_lossy(&self.0));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
    }
}

fn run(command: Command, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = match command {
        Command::Step(cli::StepCommand { kind, args }) => runtime.block_on(step(kind, args)),
        Command::Run(args) => runtime.block_on(workflow(args, json)),
        Command::Render(target) => render(target),
        Command::Synth(args) => runtime.block_on(synth(args)),
        #[cfg(feature = "serve")]
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Info => {
            out!("{}\n", serde_json::to_string_pretty(&taft::runtime::describe())?)
        }
    };
    // A step given up after SIGTERM may leave work on a blocking thread: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    outcome
}

async fn step(kind: StepKind, args: cli::StepArgs) -> anyhow::Result<()> {
    let mut raw = match (&args.config, &args.config_yaml) {
        (Some(path), _) => RawConfig::from_file(path)?,
        (None, Some(text)) => RawConfig::from_yaml("--config-yaml", text)?,
        (None, None) => RawConfig::empty("(command line)"),
    };
    raw.apply_sets(&args.sets)?;
    if let Some(shard) = &args.shard {
        raw.apply_sets(&[format!("shard={shard}")])?;
    }
    let overrides = Overrides { inputs: args.inputs, out: args.out, force: args.force };
    let report = steps::run(kind, &raw, &overrides).await.with_context(|| format!("taft {}", kind.name()))?;
    print_report(&report)
}

fn print_report(report: &Report) -> anyhow::Result<()> {
    if report.up_to_date {
        out!("{}: up to date: {}\n", report.step, report.out)
    } else {
        out!("{}: done: {} {}\n", report.step, report.out, report.summary)
    }
}

async fn workflow(args: cli::RunArgs, json: bool) -> anyhow::Result<()> {
    let wf = taft::workflow::Workflow::load(&args.workflow, args.store.as_deref(), &args.sets)?;
    if args.dry_run {
        // The expanded graph: each step, the steps it waits for, and its command.
        for step in &wf.steps {
            let command = taft::workflow::runner::step_args(step, args.force)?.join(" ");
            let mut after: Vec<&str> = step.deps.iter().map(|&d| wf.steps[d].name.as_str()).collect();
            after.dedup();
            let after = if after.is_empty() { String::new() } else { format!(" [after {}]", after.join(", ")) };
            out!("{}{after}: taft {command}\n", step.name)?;
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("the taft binary")?;
    let format = if json { "json" } else { "text" };
    let jobs = args.jobs.map_or_else(taft::runtime::cpus, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let outcome = taft::workflow::runner::run(&wf, &exe, args.force, jobs, format)
        .await
        .with_context(|| format!("workflow {}", wf.source))?;
    for step in &outcome.finished {
        out!("{}", step.stdout)?;
    }
    out!("workflow {}: {} step(s) finished; outputs under {}\n", wf.name, outcome.finished.len(), wf.store)
}

fn render(target: cli::RenderTarget) -> anyhow::Result<()> {
    use taft::workflow::render;
    let common = match &target {
        cli::RenderTarget::Argo(a) => &a.common,
        cli::RenderTarget::Airflow(a) => &a.common,
    };
    let wf = taft::workflow::Workflow::load(&common.workflow, common.store.as_deref(), &common.sets)?;
    let mut t = render::Target::new(&wf);
    if let Some(image) = &common.image {
        t.image = image.clone();
    }
    if let Some(tag) = &common.tag {
        t.tag = tag.clone();
    }
    t.secret = common.secret.clone();
    t.namespace = common.namespace.clone();
    t.service_account = common.service_account.clone();
    t.image_pull_secrets = common.image_pull_secrets.clone();
    t.parallelism = common.parallelism;
    if !common.gpu_node_selector.is_empty() {
        t.gpu_node_selector = common
            .gpu_node_selector
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| taft::error::Error::config(format!("--gpu-node-selector {kv}: expected KEY=VALUE")))
            })
            .collect::<Result<_, _>>()?;
    }
    let text = match &target {
        cli::RenderTarget::Argo(a) => {
            let kind = match a.kind {
                cli::ArgoKind::Workflowtemplate => render::argo::Kind::WorkflowTemplate,
                cli::ArgoKind::Workflow => render::argo::Kind::Workflow,
            };
            for kv in &a.params {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| taft::error::Error::config(format!("--param {kv}: expected NAME=VALUE")))?;
                t.params.push((k.to_string(), v.to_string()));
            }
            serde_yaml::to_string(&render::argo::render(&wf, &t, kind)?)?
        }
        cli::RenderTarget::Airflow(a) => {
            t.pool = a.pool.clone();
            let mode = match a.mode {
                cli::AirflowMode::Kubernetes => render::airflow::Mode::Kubernetes,
                cli::AirflowMode::Local => render::airflow::Mode::Local(match &a.taft {
                    Some(path) => std::path::absolute(path)?,
                    None => std::env::current_exe().context("the taft binary")?,
                }),
            };
            render::airflow::render(&wf, &t, &mode)?
        }
    };
    match &common.output {
        Some(path) => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).with_context(|| format!("{}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))?;
        }
        None => out!("{text}")?,
    }
    Ok(())
}

async fn synth(args: cli::SynthArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::empty("(command line)"),
    };
    raw.apply_sets(&args.sets)?;
    let config: taft::data::synthetic::SyntheticConfig = raw.resolve()?;
    config.validate()?;
    let config = config.scaled(args.scale)?;
    config.validate()?;
    let n = taft::data::synthetic::write_jsonl(&config, &args.out).await?;
    out!("synth: wrote {n} conversations to {}\n", args.out)
}

#[cfg(feature = "serve")]
async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::empty("(command line)"),
    };
    raw.apply_sets(&args.sets)?;
    if let Some(host) = &args.host {
        raw.set("host", serde_yaml::Value::String(host.clone())).map_err(taft::Error::config)?;
    }
    if let Some(port) = args.port {
        raw.set("port", serde_yaml::Value::Number(port.into())).map_err(taft::Error::config)?;
    }
    let raw = raw.with_defaults(taft::infer::server::DEFAULTS)?;
    let config: taft::infer::server::ServeConfig = raw.resolve()?;
    taft::infer::server::serve(&args.input, config).await.context("taft serve")?;
    Ok(())
}
