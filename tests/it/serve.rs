//! `taft serve` end to end with a real HTTP client, on the serving build when the test
//! harness gives one (`TAFT_SERVE_BIN`, built without libtorch by scripts/test): bad
//! requests get 400/413/422 naming the field or limit, 240 concurrent requests all succeed
//! with the answers of batch prediction (and are batched together), the metrics count them,
//! and SIGTERM lets requests in flight finish.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::export::{max_diff, models, predictions};

/// The binary that serves: the libtorch-free build when given.
fn serve_bin() -> PathBuf {
    match std::env::var_os("TAFT_SERVE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_taft")),
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(export: &Path, sets: &[&str]) -> Server {
        let mut cmd = Command::new(serve_bin());
        cmd.env("TAFT_LOG_FORMAT", "json").current_dir(root());
        cmd.args(["serve", "--input", s(export), "--port", "0", "--set", "threads=1"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("taft serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("serve: listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
        let server = Server { child, url };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http::blocking_get(&format!("{}/ready", server.url)) {
                if r == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn terminate(&mut self) -> i32 {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod http {
    //! A runtime for the async client, and a blocking GET for the simple checks.

    pub fn blocking_get(url: &str) -> reqwest::Result<u16> {
        runtime().block_on(async { Ok(reqwest::Client::new().get(url).send().await?.status().as_u16()) })
    }

    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }
}

async fn post(client: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client
        .post(format!("{url}/v1/predict"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

/// Conversations of the synthetic test split: (id, texts, authors).
fn conversations(n: usize) -> Vec<(String, Vec<String>, Vec<u8>)> {
    let dir = tempdir();
    let test = format!("test={n}");
    let path = dir.path().join("c.jsonl");
    let mut args = vec!["synth", "-o", s(&path)];
    for x in ["seed=5", "train=0", "val=0", &test, "unlabeled=0", "learnable=true"] {
        args.extend(["--set", x]);
    }
    taft_run(&args).ok();
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            let texts = v["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            let authors = v["authors"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap() as u8).collect();
            (format!("c{i}"), texts, authors)
        })
        .collect()
}

#[test]
fn bad_requests_are_refused_naming_the_field_or_limit() {
    let server = Server::start(&models().tapt_export, &["max_items=4", "max_text_chars=50", "max_body_bytes=2000"]);
    let url = server.url.clone();
    http::runtime().block_on(async move {
        let c = reqwest::Client::new();
        let cases: Vec<(String, u16, &str)> = vec![
            ("{\"texts\": [\"bonjour\"".into(), 400, "malformed JSON"),
            ("[1, 2]".into(), 422, "`[0]`"),
            ("7".into(), 422, "body"),
            (r#"{"texts": ["bonjour", 3]}"#.into(), 422, "texts[1]"),
            (r#"{"conversations": [{"texts": "x"}]}"#.into(), 422, "conversations[0].texts"),
            (r#"{"conversations": [{"texts": ["a"], "authors": [2, 3]}]}"#.into(), 422, "conversations[0].authors"),
            (r#"{"texts": ["ok", "  "]}"#.into(), 422, "texts[1]"),
            (r#"{"texts": []}"#.into(), 422, "texts"),
            (r#"{"text": ["a"]}"#.into(), 422, "unknown field `text`"),
            (r#"{}"#.into(), 422, "either `conversations` or `texts`"),
            (r#"{"texts": ["a", "b", "c", "d", "e"]}"#.into(), 413, "max_items"),
            (format!(r#"{{"texts": ["{}"]}}"#, "a".repeat(51)), 422, "max_text_chars"),
            (format!(r#"{{"texts": ["{}"]}}"#, "a ".repeat(1500)), 413, "max_body_bytes"),
        ];
        for (body, status, needle) in cases {
            let (got, v) = post(&c, &url, body.clone()).await;
            assert_eq!(got, status, "{body:.80}: {v}");
            let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
            assert!(msg.contains(needle) || v["limit"]["name"] == needle, "{body:.80}: {v}");
        }
        let (ok, v) = post(&c, &url, r#"{"texts": ["bonjour"]}"#).await;
        assert_eq!(ok, 200, "{v}");
        assert_eq!(c.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    });
}

#[test]
fn concurrent_requests_are_batched_and_answer_what_batch_prediction_does() {
    let export = &models().tapt_export;
    let convs = conversations(240);
    // Batch prediction of the same conversations.
    let dir = tempdir();
    let lines: Vec<String> =
        convs.iter().map(|(id, t, a)| json!({"id": id, "texts": t, "authors": a}).to_string()).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let jsonl = write_lines(dir.path(), "c.jsonl", &lines);
    taft_run(&["predict", "-i", s(export), "-i", s(&jsonl), "-o", s(&dir.path().join("p"))]).ok();
    let batch = predictions(&dir.path().join("p/predictions.parquet"));

    let server = Server::start(export, &["max_batch_size=32", "max_wait_ms=20"]);
    let url = server.url.clone();
    let answers = http::runtime().block_on(async move {
        let c = reqwest::Client::new();
        let tasks: Vec<_> = convs
            .iter()
            .map(|(id, texts, authors)| {
                let (c, url) = (c.clone(), url.clone());
                let body = json!({"conversations": [{"id": id, "texts": texts, "authors": authors}]}).to_string();
                tokio::spawn(async move { post(&c, &url, body).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        let metrics = c.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        (out, metrics)
    });
    let (answers, metrics) = answers;
    assert_eq!(answers.len(), 240);
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        let p = &v["predictions"][0];
        let id = p["id"].as_str().unwrap().to_string();
        for (head, (label, probs)) in &batch[&(id.clone(), -1)] {
            assert_eq!(p[head]["label"].as_i64().unwrap(), i64::from(*label), "{id} {head}");
            let got: Vec<f32> =
                p[head]["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert!(max_diff(&got, probs) <= 1e-5, "{id} {head}: {got:?} vs {probs:?}");
            assert_eq!(p[head]["class"], v["classes"][head][*label as usize]);
        }
    }
    // Every request counted; fewer model runs than requests (they were batched).
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert_eq!(value(r#"taft_http_requests_total{path="/v1/predict",status="200"}"#), 240.0);
    let runs = value("taft_batch_items_count");
    assert_eq!(value("taft_batch_items_sum"), 240.0);
    assert!(runs < 240.0, "{runs} model runs for 240 requests: no batching");
    assert!(metrics.contains("taft_http_request_duration_seconds_bucket") && metrics.contains("taft_queue_items"));
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    // The batcher waits up to 2 s for a full batch: requests are in flight when SIGTERM comes.
    let mut server = Server::start(&models().tapt_export, &["max_batch_size=4096", "max_wait_ms=2000"]);
    let url = server.url.clone();
    let rt = http::runtime();
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            rt.spawn(async move { post(&c, &url, json!({"texts": [format!("bonjour {i}")]}).to_string()).await })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let code = server.terminate();
    assert_eq!(code, 0, "taft serve exits 0 after draining");
    for t in tasks {
        let (status, v) = rt.block_on(t).unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(v["predictions"][0]["status"]["label"].is_i64(), "{v}");
    }
    // Gone: new connections are refused.
    assert!(http::blocking_get(&format!("{url}/health")).is_err());
}

#[test]
fn serve_refuses_what_is_not_an_export() {
    let dir = tempdir();
    let r = run(Command::new(serve_bin()).args(["serve", "--input", s(&models().tapt), "--port", "0"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not an export output"), "{}", r.stderr);
    let r =
        run(Command::new(serve_bin()).args(["serve", "--input", s(dir.path()), "--port", "0", "--set", "max_items=0"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("max_items"), "{}", r.stderr);
}
