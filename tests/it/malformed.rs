//! Bad input: each malformed record, file or config gets its own message naming the
//! source, line and field, exit code 2, and nothing committed.

use crate::common::*;

const GOOD: &str = r#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["Bonjour","Merci"],"authors":[2,3],"labels":[1,2]}"#;

/// (name, lines of the input file, line at fault, expected message after `file:line: `)
fn cases() -> Vec<(&'static str, Vec<&'static [u8]>, u64, &'static str)> {
    vec![
        ("not_json", vec![br#"{"id": 1, "split": "#], 1, "not JSON: EOF while parsing a value (column 19)"),
        ("trailing_garbage", vec![br#"{"id": 1} x"#], 1, "not JSON: trailing characters"),
        ("not_an_object", vec![b"[1, 2]"], 1, "expected a JSON object, found a list"),
        ("missing_id", vec![br#"{"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "missing field `id`"),
        ("id_boolean", vec![br#"{"id":true,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "field `id`: expected an integer or a string, found a boolean (true)"),
        ("id_float", vec![br#"{"id":1.5,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "field `id`: expected an integer or a string, found a number (1.5)"),
        ("missing_split", vec![br#"{"id":1,"status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "missing field `split`"),
        ("unknown_split", vec![br#"{"id":1,"split":"dev","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, r#"field `split`: unknown split "dev" (expected train, val, test or unlabeled)"#),
        ("split_number", vec![br#"{"id":1,"split":3,"status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "field `split`: expected a string, found a number (3)"),
        ("status_too_big", vec![GOOD.as_bytes(), br#"{"id":2,"split":"val","status":5,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 2, "field `status`: 5 is out of range 0..=4"),
        ("status_negative", vec![br#"{"id":1,"split":"test","status":-1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "field `status`: -1 is out of range 0..=4"),
        ("status_string", vec![br#"{"id":1,"split":"train","status":"1","satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, r#"field `status`: expected an integer, found a string ("1")"#),
        ("status_missing_on_labeled", vec![br#"{"id":1,"split":"train","satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "missing field `status` (required on labeled splits)"),
        ("satisfaction_too_big", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":7,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "field `satisfaction`: 7 is out of range 0..=6"),
        ("satisfaction_null_on_labeled", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":null,"texts":["a"],"authors":[2],"labels":[1]}"#], 1, "missing field `satisfaction` (required on labeled splits)"),
        ("author_out_of_range", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["a","b"],"authors":[2,4],"labels":[1,1]}"#], 1, "field `authors[1]`: 4 is out of range 0..=3"),
        ("label_out_of_range", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[12]}"#], 1, "field `labels[0]`: 12 is out of range 0..=11"),
        ("texts_not_a_list", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":"a","authors":[2],"labels":[1]}"#], 1, r#"field `texts`: expected a list, found a string ("a")"#),
        ("text_not_a_string", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":[5],"authors":[2],"labels":[1]}"#], 1, "field `texts[0]`: expected a string, found a number (5)"),
        ("missing_texts", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"authors":[2],"labels":[1]}"#], 1, "missing field `texts`"),
        // `labels` may be absent or null (the method does not use them), not of another type.
        ("labels_not_a_list", vec![GOOD.as_bytes(), br#"{"id":2,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2]}"#, br#"{"id":3,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":"x"}"#], 3, r#"field `labels`: expected a list, found a string ("x")"#),
        ("lengths_differ", vec![br#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["a","b"],"authors":[2,3],"labels":[1]}"#], 1, "fields `texts`, `authors`, `labels` have different lengths (2, 2, 1)"),
        ("empty_conversation", vec![br#"{"id":1,"split":"unlabeled","texts":[],"authors":[],"labels":[]}"#], 1, "field `texts`: empty conversation: no utterances (after dropping padding)"),
        ("only_padding", vec![br#"{"id":1,"split":"unlabeled","texts":["<pad>","<pad>"],"authors":[0,0],"labels":[0,0]}"#], 1, "field `texts`: empty conversation: no utterances (after dropping padding)"),
        ("duplicate_id", vec![GOOD.as_bytes(), GOOD.as_bytes()], 2, "field `id`: duplicate id 1 (first at "),
        ("mixed_id_types", vec![GOOD.as_bytes(), br#"{"id":"x","split":"unlabeled","texts":["a"],"authors":[2],"labels":[1]}"#], 2, "field `id`: expected an integer like the first record's id ("),
        ("invalid_utf8", vec![GOOD.as_bytes(), b"{\"id\":2,\"split\":\"unlabeled\",\"texts\":[\"caf\xe9\"],\"authors\":[2],\"labels\":[1]}"], 2, "not valid UTF-8 (at byte 41)"),
    ]
}

#[test]
fn each_malformed_record_is_named_with_file_line_and_field() {
    let dir = tempdir();
    let cases = cases();
    assert!(cases.len() >= 20);
    for (name, lines, line, message) in cases {
        let input = dir.path().join(format!("{name}.jsonl"));
        let mut bytes = Vec::new();
        for l in &lines {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let r = taft_run(&["prep", "--input", s(&input), "--out", s(&out)]);
        assert_eq!(r.code, 2, "{name}: exit {}: {}", r.code, r.stderr);
        let want = format!("{}:{line}: {message}", s(&input));
        assert!(r.stderr.contains(&want), "{name}: expected {want:?} in\n{}", r.stderr);
        assert!(r.stderr.contains("nothing was committed"), "{name}: {}", r.stderr);
        assert!(manifest(&out).is_none(), "{name}: committed despite the error");
        assert!(!out.join("conversations.parquet").exists(), "{name}: left a complete-looking file");
    }
}

#[test]
fn emotion_labels_may_be_absent_or_null() {
    let dir = tempdir();
    let input = dir.path().join("no-labels.jsonl");
    let lines = [
        GOOD,
        r#"{"id":2,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2]}"#,
        r#"{"id":3,"split":"unlabeled","texts":["a","b"],"authors":[2,3],"labels":null}"#,
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let r = taft_run(&["prep", "--input", s(&input), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(manifest(&out).unwrap()["summary"]["conversations"], 3);
}

#[test]
fn every_problem_is_counted_and_the_first_are_quoted() {
    let dir = tempdir();
    let bad = r#"{"id":1,"split":"train","status":9,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#;
    let lines: Vec<String> = (0..30).map(|i| bad.replace("\"id\":1", &format!("\"id\":{i}"))).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = write_lines(dir.path(), "many.jsonl", &refs);
    let r = taft_run(&["prep", "--input", s(&input), "--out", s(&dir.path().join("out"))]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("30 invalid record(s)"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}:20: field `status`", s(&input))));
    assert!(!r.stderr.contains(&format!("{}:21: ", s(&input))));
    assert!(r.stderr.contains("… and 10 more"), "{}", r.stderr);
}

#[test]
fn bad_files_and_configs_exit_2_with_a_clear_message() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let gz = dir.path().join("corrupt.jsonl.gz");
    std::fs::write(&gz, b"\x1f\x8b\x08\x00garbage that is not deflate").unwrap();
    let config = dir.path().join("prep.yaml");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--input".into(), s(&dir.path().join("missing.jsonl")).into()],
            format!("{}: no such file", s(&dir.path().join("missing.jsonl"))),
        ),
        (vec!["--input".into(), s(&gz).into()], format!("{}: cannot decompress", s(&gz))),
        (vec![], "prep has no input: give `--input URL` (JSON lines) or a `synthetic:` section".into()),
        (
            vec!["--set".into(), "synthetic.seed=abc".into()],
            "key `synthetic.seed`: invalid type: string \"abc\", expected u64".into(),
        ),
        (vec!["--set".into(), "synthetic.sed=1".into()], "key `synthetic.sed`: unknown field `sed`".into()),
        (
            vec!["--set".into(), "on_error=ignore".into()],
            "key `on_error`: unknown variant `ignore`, expected `fail` or `skip`".into(),
        ),
        (
            vec![
                "--set".into(),
                "synthetic.min_utterances=9".into(),
                "--set".into(),
                "synthetic.max_utterances=3".into(),
            ],
            "need 1 <= min_utterances <= max_utterances".into(),
        ),
        (vec!["--set".into(), "nokey".into()], "--set nokey: expected key=value".into()),
        (vec!["--input".into(), "ftp://host/x.jsonl".into()], "unsupported scheme `ftp`".into()),
    ];
    for (args, want) in cases {
        let mut cmd = taft();
        cmd.args(["prep", "--out", s(&out)]).args(&args);
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(&want), "{args:?}: expected {want:?} in\n{}", r.stderr);
    }
    // A config file: the error names the file and the key.
    std::fs::write(&config, "synthetic:\n  seed: 1\n  learnable: maybe\n").unwrap();
    let r = taft_run(&["prep", "--config", s(&config), "--out", s(&out)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!(
            "config {}: key `synthetic.learnable`: invalid type: string \"maybe\", expected a boolean",
            s(&config)
        )),
        "{}",
        r.stderr
    );
    std::fs::write(&config, "inputs: [a.jsonl\n").unwrap();
    let r = taft_run(&["prep", "--config", s(&config), "--out", s(&out)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains(&format!("config {}:", s(&config))), "{}", r.stderr);
    let r = taft_run(&["prep", "--config", s(&dir.path().join("nope.yaml"))]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope.yaml: No such file"), "{}", r.stderr);
    assert!(manifest(&out).is_none());
}
