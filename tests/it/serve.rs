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
        Self::start_with(export, sets, &[])
    }

    /// A server with environment variables (`FAILPOINTS`: faults injected into a binary
    /// built with the `failpoints` feature, as `scripts/test` builds it).
    fn start_with(export: &Path, sets: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(serve_bin());
        cmd.envs(env.iter().copied());
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

/// A response's body as JSON (reqwest without its `json` feature, so the tests' reqwest is
/// compiled as object_store's is and the two builds share it).
async fn json_of(r: reqwest::Response) -> Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

async fn post(client: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client
        .post(format!("{url}/v1/predict"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
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
            (
                r#"{"conversations": [{"texts": ["a", "b"], "authors": [2, 7]}]}"#.into(),
                422,
                "conversations[0].authors[1]",
            ),
            (r#"{"conversations": [{"texts": ["a"], "authors": [0]}]}"#.into(), 422, "conversations[0].authors[0]"),
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
        // Unknown paths and methods are JSON errors too.
        for (r, status) in [(c.get(format!("{url}/nope")), 404), (c.get(format!("{url}/v1/predict")), 405)] {
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status);
            let v = json_of(r).await;
            assert!(v["error"].is_string(), "{v}");
        }
    });
}

#[test]
fn role_requests_count_utterances_and_may_have_none() {
    let server = Server::start(&models().role_export, &["max_items=4"]);
    let url = server.url.clone();
    http::runtime().block_on(async move {
        let c = reqwest::Client::new();
        // Only an alert (author 1): no utterance to score, an empty answer.
        let body = json!({"conversations": [{"id": "a", "texts": ["Connexion perdue."], "authors": [1]}]});
        let (status, v) = post(&c, &url, body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["predictions"][0]["utterances"], json!([]), "{v}");
        assert_eq!(v["predictions"][0]["id"], "a", "{v}");
        // One conversation, six scored utterances: over max_items (4).
        let texts: Vec<String> = (0..6).map(|i| format!("bonjour conseiller {i}.")).collect();
        let body = json!({"conversations": [{"texts": texts, "authors": [2, 3, 2, 3, 2, 3]}]});
        let (status, v) = post(&c, &url, body.to_string()).await;
        assert_eq!(status, 413, "{v}");
        assert_eq!(v["limit"]["name"], "max_items", "{v}");
        // Alerts do not count: four scored utterances of six.
        let body = json!({"conversations": [{"texts": texts, "authors": [1, 3, 2, 1, 2, 3]}]});
        let (status, v) = post(&c, &url, body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        let utterances: Vec<i64> = v["predictions"][0]["utterances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["utterance"].as_i64().unwrap())
            .collect();
        assert_eq!(utterances, [1, 2, 4, 5], "{v}");
    });
}

/// Reads what the server sends on a raw connection until it closes it (or `limit` passes).
fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> std::io::Result<String> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn slow_clients_time_out_and_sigterm_drains_within_the_window() {
    use std::io::Write;
    use std::net::TcpStream;
    let sets = [
        "header_timeout_ms=300",
        "body_timeout_ms=300",
        "max_connections=4",
        "drain_delay_s=2",
        "request_timeout_ms=3000",
    ];
    let mut server = Server::start(&models().tapt_export, &sets);
    let url = server.url.clone();
    let addr = url.strip_prefix("http://").unwrap().to_string();
    let slow_headers = |addr: &str| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: taft\r\n").unwrap();
        c
    };
    // Twice as many clients trickling their headers as there are connection slots.
    let slow: Vec<TcpStream> = (0..8).map(|_| slow_headers(&addr)).collect();
    let rt = http::runtime();
    let c = reqwest::Client::new();
    let started = Instant::now();
    let (status, v) = rt.block_on(post(&c, &url, r#"{"texts": ["bonjour"]}"#));
    assert_eq!(status, 200, "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?} behind slow clients", started.elapsed());
    // The server closed every slow connection.
    for mut s in slow {
        read_until_closed(&mut s, Duration::from_secs(5)).expect("the server closes a connection without headers");
    }
    // A body trickled past body_timeout_ms: 408, naming the limit.
    let mut trickle = TcpStream::connect(&addr).unwrap();
    trickle
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: taft\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"texts\"")
        .unwrap();
    let answer = read_until_closed(&mut trickle, Duration::from_secs(5)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout_ms"), "{answer}");

    // SIGTERM with slow clients connected: /ready turns 503 at once (with Retry-After),
    // requests are still answered during drain_delay_s, and the process exits soon after.
    let _held: Vec<TcpStream> = (0..2).map(|_| slow_headers(&addr)).collect();
    let term = Instant::now();
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    rt.block_on(async {
        loop {
            let r = c.get(format!("{url}/ready")).send().await.unwrap();
            if r.status() == 503 {
                assert_eq!(r.headers()["retry-after"], "1");
                break;
            }
            assert!(term.elapsed() < Duration::from_secs(1), "/ready still 200 after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, v) = post(&c, &url, r#"{"texts": ["encore une"]}"#).await;
        assert_eq!(status, 200, "during the drain delay: {v}");
    });
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        assert!(term.elapsed() < Duration::from_secs(6), "still running {:?} after SIGTERM", term.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 0);
    assert!(term.elapsed() >= Duration::from_secs(2), "closed before drain_delay_s: {:?}", term.elapsed());
}

#[test]
fn work_of_clients_gone_away_is_dropped_before_the_model() {
    let convs = conversations(32);
    let server = Server::start(&models().tapt_export, &["max_batch_size=32", "max_wait_ms=5"]);
    let url = server.url.clone();
    let rt = http::runtime();
    let (fresh, metrics) = rt.block_on(async move {
        let patient = reqwest::Client::new();
        let body: Vec<Value> = convs.iter().map(|(_, t, a)| json!({"texts": t, "authors": a})).collect();
        let body = json!({"conversations": body}).to_string();
        // How long one such request takes alone.
        let started = Instant::now();
        assert_eq!(post(&patient, &url, body.clone()).await.0, 200);
        let one = started.elapsed();
        // A burst of them from clients that give up after 100 ms.
        let hasty = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
        // (Fewer items than the queue holds, 2048: none of them is refused.)
        let burst = 60;
        let tasks: Vec<_> = (0..burst)
            .map(|_| {
                let (c, url, body) = (hasty.clone(), url.clone(), body.clone());
                tokio::spawn(async move { c.post(format!("{url}/v1/predict")).body(body).send().await.is_ok() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // A fresh one-text request is not stuck behind the abandoned work.
        let started = Instant::now();
        let (status, v) = post(&patient, &url, r#"{"texts": ["bonjour"]}"#).await;
        assert_eq!(status, 200, "{v}");
        let fresh = started.elapsed();
        eprintln!("one request of 32: {one:?}; fresh request after a burst of {burst}: {fresh:?}");
        // At most the run already under way (8 requests' worth) is ahead of it.
        assert!(fresh < one * 15, "{fresh:?}: behind the abandoned work ({burst} × {one:?})");
        let metrics = patient.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        (fresh, metrics)
    });
    let dropped = metric(&metrics, "taft_dropped_items_total");
    assert!(dropped >= 32.0, "{dropped} items dropped (fresh request took {fresh:?})");
    // The abandoned requests hold no room in the queue.
    assert!(metrics.lines().any(|l| l == "taft_queue_items 0"), "{metrics}");
    // Without `join_tokens` in the config, what batching is worth was measured at load
    // (-1: not measured).
    let join = metric(&metrics, "taft_join_tokens");
    assert!(join >= 0.0, "taft_join_tokens {join}: not measured at load");
}

/// The value of the first sample of `name` in Prometheus text.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

/// Age before length: a long request queued before short ones is answered first, although
/// the batcher cuts its runs by length (shortest first would answer it last).
#[test]
fn an_older_long_request_is_not_kept_behind_younger_short_ones() {
    // Each answer is followed by 200 ms of sleep in the runner: requests queue up meanwhile,
    // and the order of the runs shows in when each request is answered.
    let sets = ["max_batch_size=1", "max_wait_ms=1"];
    let server = Server::start_with(&models().tapt_export, &sets, &[("FAILPOINTS", "serve::answered=sleep(200)")]);
    let url = server.url.clone();
    let long = ["le problème de connexion persiste depuis trois jours malgré le redémarrage du routeur"; 6].join(" ");
    let order = http::runtime().block_on(async move {
        let c = reqwest::Client::new();
        let t0 = Instant::now();
        let send = |text: String, after: u64| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let (status, v) = post(&c, &url, json!({"texts": [text]}).to_string()).await;
                assert_eq!(status, 200, "{v}");
                t0.elapsed()
            })
        };
        // A first request occupies the runner; then, while it sleeps, the long request and,
        // after it, four short ones.
        let first = send("bonjour".into(), 0);
        let long = send(long, 60);
        let short: Vec<_> = (0..4).map(|i| send(format!("merci {i}"), 100 + 10 * i)).collect();
        first.await.unwrap();
        let long = long.await.unwrap();
        let mut short_done = Vec::new();
        for s in short {
            short_done.push(s.await.unwrap());
        }
        (long, short_done)
    });
    let (long, short) = order;
    assert!(short.iter().all(|s| long < *s), "the long request ({long:?}) waited behind younger ones ({short:?})");
}

#[test]
fn concurrent_requests_are_batched_and_answer_what_batch_prediction_does() {
    concurrent_requests_answer_what_batch_prediction_does(&[], 1);
}

/// Two sessions of the model, each on one thread, take requests from one queue.
#[test]
fn instances_of_the_model_share_the_queue_and_answer_what_batch_prediction_does() {
    concurrent_requests_answer_what_batch_prediction_does(&["threads=2", "instances=2"], 2);
}

/// 240 concurrent one-conversation requests to a server with `sets`: every answer is batch
/// prediction's, runs hold several items, `instances` sessions run them.
fn concurrent_requests_answer_what_batch_prediction_does(sets: &[&str], instances: usize) {
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

    // `join_tokens` fixed: how runs are cut does not hang on a timing taken at load while
    // other tests hold the CPU.
    let mut settings = vec!["max_batch_size=32", "max_wait_ms=20", "join_tokens=10000"];
    settings.extend_from_slice(sets);
    let server = Server::start(export, &settings);
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
        let ready = json_of(c.get(format!("{url}/ready")).send().await.unwrap()).await;
        (out, metrics, ready)
    });
    let (answers, metrics, ready) = answers;
    assert_eq!(ready["instances"], instances, "{ready}");
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
    // Every request counted; fewer model runs than requests.
    let value = |name: &str| metric(&metrics, name);
    assert_eq!(value(r#"taft_http_requests_total{path="/v1/predict",status="200"}"#), 240.0);
    assert_eq!(value("taft_batch_items_sum"), 240.0);
    assert!(value("taft_batch_items_count") < 240.0, "the batcher took one request at a time");
    assert_eq!(value("taft_join_tokens"), 10000.0, "join_tokens from the config");
    assert_eq!(value("taft_model_instances"), instances as f64);
    for i in 0..instances {
        let ran = value(&format!(r#"taft_instance_runs_total{{instance="{i}"}}"#));
        assert!(ran > 0.0, "instance {i} ran nothing");
    }
    let runs = value("taft_model_runs_total");
    assert!(runs < 240.0, "{runs} model runs for 240 requests: no batching");
    assert!(metrics.contains("taft_http_request_duration_seconds_bucket") && metrics.contains("taft_queue_items"));
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    // The batcher waits up to 2 s for a full batch: requests are in flight when SIGTERM comes.
    let mut server =
        Server::start(&models().tapt_export, &["max_batch_size=4096", "max_wait_ms=2000", "drain_delay_s=0"]);
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
    let r = run(Command::new(serve_bin()).args([
        "serve",
        "--input",
        s(dir.path()),
        "--port",
        "0",
        "--set",
        "join_tokens=-3",
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("join_tokens"), "{}", r.stderr);
}

#[test]
fn a_model_whose_outputs_disagree_with_its_taft_json_is_refused_at_load() {
    use taft::infer::{Exported, Variant};
    let dir = &models().tapt_export;
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (model, tokenizer, taft_json) = (read("model.onnx"), read("tokenizer.json"), read("taft.json"));
    let url = dir.display().to_string();
    assert!(Exported::from_bytes(&url, &model, &tokenizer, &taft_json, Variant::Fp32, Some(1)).is_ok());
    // One class fewer than the model's output: refused, naming the output, not shifted rows.
    let mut taft: Value = serde_json::from_slice(&taft_json).unwrap();
    let classes = taft["heads"]["status"].as_array_mut().unwrap();
    classes.pop();
    let fewer = serde_json::to_vec(&taft).unwrap();
    let err = match Exported::from_bytes(&url, &model, &tokenizer, &fewer, Variant::Fp32, Some(1)) {
        Ok(_) => panic!("a taft.json with a class fewer than the model was accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("output `probs_status` has"), "{err}");
    assert_eq!(taft::error::exit_code(&anyhow::Error::new(err)), 2);
}

/// ONNX Runtime's threads default to the CPUs the process may use (here its affinity, as a
/// container's cgroup quota would be), not the machine's cores.
#[test]
fn onnx_runtime_threads_default_to_the_cpus_the_process_may_use() {
    if std::process::Command::new("taskset").arg("-V").output().is_err() {
        panic!("taskset (util-linux) is needed to pin the server to one CPU");
    }
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(serve_bin())
        .args(["serve", "--input", s(&models().tapt_export), "--port", "0"])
        .env("TAFT_LOG_FORMAT", "json")
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("serve: listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let rt = http::runtime();
    let ready = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/ready")).await {
                if r.status() == 200 {
                    break json_of(r).await;
                }
            }
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready["threads"], 1, "{ready}");
}

/// A server with `fault` injected (`FAILPOINTS`), and its answer to a first one-text
/// request: a 500 from the run the fault hit.
fn faulty(export: &Path, fault: &str, expect: u16, rt: &tokio::runtime::Runtime) -> (Server, Value) {
    let server = Server::start_with(export, &["max_wait_ms=1"], &[("FAILPOINTS", fault)]);
    let url = server.url.clone();
    let (status, v) =
        rt.block_on(async move { post(&reqwest::Client::new(), &url, r#"{"texts": ["bonjour"]}"#).await });
    assert_eq!(
        status, expect,
        "the serving binary has no fail points: build it with `--features serve,failpoints` (scripts/test does) and set TAFT_SERVE_BIN: {v}"
    );
    (server, v)
}

/// A model run that panics answers 500 to the requests it held, and the server goes on
/// serving (its session lock is not left poisoned); a model runner that dies turns `/ready`
/// and `/health` to 503 (a restart is the only cure) and requests get 503 at once.
#[test]
fn a_panic_in_a_model_run_fails_only_its_requests_and_a_dead_runner_fails_the_probes() {
    let export = &models().tapt_export;
    let rt = http::runtime();
    let (server, v) = faulty(export, "serve::run=1*panic(injected)", 500, &rt);
    assert!(v["error"].as_str().unwrap().contains("the model run failed"), "{v}");
    let url = server.url.clone();
    rt.block_on(async move {
        let c = reqwest::Client::new();
        for _ in 0..3 {
            let (status, v) = post(&c, &url, r#"{"texts": ["bonjour", "merci"]}"#).await;
            assert_eq!(status, 200, "the next runs are served: {v}");
        }
        for probe in ["ready", "health"] {
            assert_eq!(c.get(format!("{url}/{probe}")).send().await.unwrap().status(), 200, "{probe}");
        }
    });
    // The request that reaches the runner as it dies, the probes and every later request say
    // the runner stopped (503: a load balancer sends them elsewhere), however fast they come.
    let (server, v) = faulty(export, "serve::batcher=panic(injected)", 503, &rt);
    assert!(v["error"].as_str().unwrap().contains("the model runner stopped"), "{v}");
    let url = server.url.clone();
    rt.block_on(async move {
        let c = reqwest::Client::new();
        for probe in ["ready", "health"] {
            let r = c.get(format!("{url}/{probe}")).send().await.unwrap();
            assert_eq!(r.status(), 503, "{probe}");
            let v = json_of(r).await;
            assert!(v["error"].as_str().unwrap().contains("the model runner stopped"), "{probe}: {v}");
        }
        let (status, v) = post(&c, &url, r#"{"texts": ["bonjour"]}"#).await;
        assert_eq!(status, 503, "{v}");
        assert!(v["error"].as_str().unwrap().contains("the model runner stopped"), "{v}");
    });
}
