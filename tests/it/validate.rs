//! `runner validate`: fixtures for every mistake with exact output and positions, valid files with
//! no false positives, the CLI's exit codes and formats, the schema, and a no-panic property test.

use assert_cmd::Command;
use runner::workflow::{self, SourceFile};
use runner::workflow::{Format, render as render_diagnostics};
use std::path::{Path, PathBuf};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new("tests/fixtures").join(dir))
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn source(path: &Path) -> SourceFile {
    SourceFile {
        path: path.display().to_string(),
        text: std::fs::read_to_string(path).expect("read fixture"),
    }
}

/// `# expect: LINE:COL CODE` lines at the top of a fixture.
fn expectations(text: &str) -> Vec<(u32, u32, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (pos, code) = rest.split_once(' ').expect("`LINE:COL CODE`");
            let (line, col) = pos.split_once(':').expect("LINE:COL");
            (
                line.parse().expect("line"),
                col.parse().expect("col"),
                code.trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_invalid_fixture_reports_its_problem_at_its_place_with_the_exact_output() {
    let files = fixtures("invalid");
    assert!(
        files.len() >= 30,
        "at least 30 distinct mistakes, found {}",
        files.len()
    );
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut failures = Vec::new();
    for path in &files {
        let file = source(path);
        let expected = expectations(&file.text);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.path
        );
        let checked = workflow::check_set(std::slice::from_ref(&file));
        let diags = checked.diagnostics();
        let got: Vec<(u32, u32, String)> = diags
            .iter()
            .map(|d| (d.pos.line, d.pos.col, d.code.as_str().to_string()))
            .collect();
        // Design §2: every problem comes with a hint.
        for d in &diags {
            if d.hint.as_deref().is_none_or(str::is_empty) {
                failures.push(format!("{}: no hint for {:?}", file.path, d.message));
            }
        }
        for e in &expected {
            if !got.contains(e) {
                failures.push(format!(
                    "{}: expected {}:{} {}, got {:?}",
                    file.path, e.0, e.1, e.2, got
                ));
            }
        }
        if got.len() != expected.len() {
            failures.push(format!(
                "{}: expected {} diagnostics, got {:?}",
                file.path,
                expected.len(),
                got
            ));
        }
        let output = render_diagnostics(&diags, std::slice::from_ref(&file), Format::Human, 1);
        let snapshot = path.with_extension("out");
        if update || !snapshot.exists() {
            std::fs::write(&snapshot, &output).expect("write snapshot");
        } else {
            let want = std::fs::read_to_string(&snapshot).expect("read snapshot");
            if want != output {
                failures.push(format!(
                    "{}: output differs from {}:\n--- want\n{want}\n--- got\n{output}",
                    file.path,
                    snapshot.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_files_and_the_examples_have_no_false_positives() {
    let mut files: Vec<SourceFile> = fixtures("valid").iter().map(|p| source(p)).collect();
    files.extend(
        runner::sources::read_sources(&[PathBuf::from("workflows")])
            .expect("examples")
            .files,
    );
    assert!(files.len() >= 5);
    let checked = workflow::check_set(&files);
    let diags = checked.diagnostics();
    let text = render_diagnostics(&diags, &files, Format::Human, files.len());
    assert!(diags.is_empty(), "{text}");
}

#[test]
fn the_valid_fixture_builds_the_model_it_says() {
    let file = source(Path::new("tests/fixtures/valid/everything.yaml"));
    let wf = workflow::check_file(&file.path, &file.text).expect("valid");
    assert_eq!(wf.name, "everything.v2");
    assert_eq!(wf.schedules.len(), 4);
    assert_eq!(wf.schedules[1].cron.timezone().name(), "Europe/Berlin");
    assert!(wf.webhook);
    assert_eq!(wf.steps.len(), 20);
    match &wf.find_step("summary").expect("step").kind {
        workflow::StepKind::Call(c) => {
            assert_eq!(c.workflow, "weekly-summary");
            assert_eq!(c.input.as_ref().unwrap()["userId"], "{{ input.userId }}");
        }
        other => panic!("`summary` is {other:?}"),
    }
    assert_eq!(
        wf.output.as_ref().unwrap()["summary_run"],
        "{{ steps.summary.run_id }}"
    );
    assert_eq!(wf.timeout, Some(std::time::Duration::from_secs(3 * 86_400)));
    assert_eq!(wf.events, ["user.signed_up", "crm:contact/updated"]);
    let flow = |id: &str| wf.find_step(id).expect("step").flow_control.clone();
    let welcome = flow("welcome").expect("its own flow_control");
    assert_eq!(welcome.key.as_str(), "welcome-{{ input.userId }}");
    assert_eq!((welcome.parallelism, welcome.rate), (Some(2), Some(30)));
    assert_eq!(welcome.period, std::time::Duration::from_secs(60));
    let default = flow("fetch-user").expect("http steps take `defaults.flow_control`");
    assert_eq!((default.parallelism, default.rate), (None, Some(100)));
    assert_eq!(default.period, std::time::Duration::from_secs(1));
    assert!(flow("wait").is_none(), "not a sleep step");
    assert_eq!(wf.cancel_on.len(), 1);
    assert_eq!(wf.cancel_on[0].key.as_str(), "{{ input.userId }}");
    let per_key = wf.concurrency.per_key.as_ref().expect("concurrency.key");
    assert_eq!(per_key.key.as_str(), "report-{{ input.userId }}");
    assert_eq!(
        (per_key.limit, per_key.on_limit),
        (2, workflow::OnLimit::Queue)
    );
    assert_eq!(
        wf.concurrency.queue_timeout,
        Some(std::time::Duration::from_secs(7200))
    );
    match &wf.find_step("verified").expect("step").kind {
        workflow::StepKind::WaitForEvent(w) => {
            assert_eq!(w.event, "email.verified");
            assert_eq!(
                w.key.as_ref().map(|k| k.as_str()),
                Some("user-{{ input.userId }}")
            );
            assert_eq!(w.timeout, std::time::Duration::from_secs(2 * 86_400));
            assert!(w.on_timeout_continue);
        }
        other => panic!("`verified` is {other:?}"),
    }
    let needs = |id: &str| wf.find_step(id).expect("step").needs.clone();
    assert_eq!(
        needs("fetch-user"),
        Vec::<String>::new(),
        "the first step starts with the run"
    );
    assert_eq!(
        needs("nested_body"),
        ["fetch-user"],
        "no `needs`: the step before"
    );
    assert_eq!(needs("audit"), Vec::<String>::new());
    assert_eq!(needs("crm"), ["fetch-user", "audit"]);
    assert!(wf.find_step("audit").expect("audit").continue_on_error);
    assert_eq!(
        wf.find_step("report").expect("report").when,
        workflow::Join::AllDone
    );
    assert_eq!(
        wf.find_step("cleanup").expect("cleanup").when,
        workflow::Join::AnyFailed
    );
    assert_eq!(
        wf.find_step("crm").expect("crm").when,
        workflow::Join::AllSuccess
    );
    let fe = wf
        .find_step("per-tag")
        .and_then(|s| s.foreach.clone())
        .expect("foreach");
    assert_eq!(
        (fe.as_name.as_str(), fe.max_parallel, fe.fail_fast),
        ("tag", 3, false)
    );
    let fe = wf
        .find_step("mail-each")
        .and_then(|s| s.foreach.clone())
        .expect("foreach");
    assert_eq!(
        (fe.as_name.as_str(), fe.max_parallel, fe.fail_fast),
        ("item", 10, true)
    );
    assert_eq!(wf.on_failure.len(), 2);
    assert_eq!(wf.on_failure[0].id, "on_failure-1");
    assert_eq!(wf.on_failure[1].id, "mail-ops");
    let send = wf.find_step("send").expect("send");
    assert_eq!(send.retry.limit, 0);
    assert_eq!(send.timeout, std::time::Duration::from_secs(120));
    let fetch = wf.find_step("fetch-user").expect("fetch-user");
    assert_eq!(fetch.retry.limit, 3);
    assert_eq!(
        fetch.retry.initial,
        Some(std::time::Duration::from_secs(10))
    );
    let bare = wf.find_step("bare_condition").expect("bare");
    assert_eq!(
        bare.condition.as_ref().map(|t| t.as_str()),
        Some("{{ steps.review.decision != 'rejected' }}")
    );
    match &wf.find_step("review").expect("review").kind {
        workflow::StepKind::Approval(a) => {
            assert_eq!(a.to.len(), 3);
            assert_eq!(a.on_timeout, workflow::Decision::Approved);
            assert_eq!(a.timeout, std::time::Duration::from_secs(2 * 86_400));
        }
        other => panic!("review is {other:?}"),
    }
}

#[test]
fn duplicate_names_across_files_are_reported_on_the_second() {
    let a = SourceFile {
        path: "w/a.yaml".into(),
        text: "name: same\nsteps:\n  - id: x\n    sleep: 1s\n".into(),
    };
    let b = SourceFile {
        path: "w/b.yaml".into(),
        text: "name: same\nsteps:\n  - id: x\n    sleep: 1s\n".into(),
    };
    let c = SourceFile {
        path: "w/same.yaml".into(),
        text: "steps:\n  - id: x\n    sleep: 1s\n".into(),
    };
    let diags = workflow::check_set(&[a, b, c]).diagnostics();
    let got: Vec<String> = diags
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{} {} {}",
                d.file,
                d.pos.line,
                d.pos.col,
                d.code.as_str(),
                d.message
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "w/b.yaml:1:7 duplicate-name workflow name `same` is already used by `w/a.yaml`",
            "w/same.yaml:1:1 duplicate-name workflow name `same` is already used by `w/a.yaml`",
        ]
    );
}

#[test]
fn run_input_is_checked_against_inputs() {
    let file = source(Path::new("tests/fixtures/valid/everything.yaml"));
    let wf = workflow::check_file(&file.path, &file.text).expect("valid");
    let ok = workflow::resolve_input(&wf, &serde_json::json!({"userId": "u9"})).expect("ok");
    assert_eq!(ok["days"], 7);
    assert_eq!(ok["userId"], "u9");
    let errs = workflow::resolve_input(&wf, &serde_json::json!({"days": "7", "usrId": 1}))
        .expect_err("bad");
    assert_eq!(
        errs,
        [
            "input `userId` is required",
            "input `days` must be an integer, not a string",
            "unknown input `usrId`; did you mean `userId`?",
        ]
    );
    assert!(workflow::resolve_input(&wf, &serde_json::json!([1])).is_err());
}

/// A file nested as deep as allowed checks on a thread with a 2 MiB stack (the size of the
/// threads that check files); one level more is refused as a limit, not a crash. At
/// serde-saphyr's own limit (64 levels) parsing overflowed such a stack in a debug build.
#[test]
fn nesting_is_limited_to_what_a_small_stack_can_parse() {
    // root, steps, the step, http: 4 levels, then `body` and a chain of `k:` mappings.
    let file = |depth: usize| {
        let mut text = String::from(
            "steps:\n  - id: deep\n    http:\n      url: https://example.com\n      body:\n",
        );
        for level in 0..depth - 4 {
            text.push_str(&" ".repeat(8 + 2 * level));
            text.push_str("k:\n");
        }
        text
    };
    let max = workflow::yaml::MAX_DEPTH;
    let (ok, too_deep) = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            (
                workflow::check_file("deep.yaml", &file(max)).map(|_| ()),
                workflow::check_file("deep.yaml", &file(max + 1)).map(|_| ()),
            )
        })
        .expect("spawn")
        .join()
        .expect("no stack overflow");
    assert_eq!(ok, Ok(()));
    let diags = too_deep.expect_err("one level too deep");
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code.as_str(), "yaml-limit");
}

/// Validate and the engine agree about an optional input without a default: a template that
/// validates renders for a run started without the input (its input resolved as a run's is),
/// and one refused would have failed the step.
#[test]
fn an_optional_input_without_default_is_refused_exactly_where_a_run_without_it_would_fail() {
    let cases = [
        ("{{ input.x }}", false),
        ("x = {{ input.x }}", false),
        ("{{ input.x | upper }}", false),
        ("{{ input.x ~ '!' }}", false),
        ("{{ input.x.y | default('a') }}", false),
        ("{{ input.x | length }}", false),
        ("{% for c in input.x %}{{ c }}{% endfor %}", false),
        ("{{ input.x | default('a') }}", true),
        ("{{ input.x|d('a') | upper }}", true),
        ("{{ input['x'] | default(none) }}", true),
        ("{{ input.x is defined }}", true),
        ("{{ input.x is not defined }}", true),
        ("{{ input.x is none }}", true),
        ("{% if input.x is defined %}{{ input.x }}{% endif %}", true),
        ("{{ input.x if input.x is defined else 'none' }}", true),
        (
            "{% if input.x is undefined %}none{% else %}{{ input.x }}{% endif %}",
            true,
        ),
    ];
    for (template, renders) in cases {
        let text = format!(
            "inputs:\n  x: {{ type: string }}\nsteps:\n  - id: a\n    http:\n      url: https://example.com\n      body: {{ v: {template:?} }}\n"
        );
        let checked = workflow::check_file("w.yaml", &text);
        let codes: Vec<&str> = checked
            .as_ref()
            .err()
            .map(|d| d.iter().map(|d| d.code.as_str()).collect())
            .unwrap_or_default();
        let wf = workflow::check_file(
            "w.yaml",
            &text.replace("x: { type: string }", "x: { type: string, required: true }"),
        )
        .expect("valid once the input is required");
        let input = workflow::resolve_input(&wf, &serde_json::json!({})).err();
        assert!(input.is_some(), "a required input is required");
        let mut optional = wf.clone();
        optional.inputs[0].required = false;
        let input = workflow::resolve_input(&optional, &serde_json::json!({})).expect("optional");
        let ctx = workflow::template::context(&serde_json::json!({ "input": input }));
        let rendered = workflow::template::render_str(template, &ctx);
        assert_eq!(
            rendered.is_ok(),
            renders,
            "{template} renders: {rendered:?}"
        );
        assert_eq!(
            checked.is_ok(),
            renders,
            "{template}: validate says {codes:?}, a run without `x` renders {rendered:?}"
        );
        if !renders {
            assert_eq!(codes, ["optional-input-without-default"], "{template}");
        }
    }
}

fn runner() -> Command {
    Command::cargo_bin("runner").expect("binary")
}

#[test]
fn cli_exit_codes() {
    runner()
        .args(["validate", "workflows"])
        .assert()
        .code(0)
        .stdout("checked 6 files: no problems\n");
    runner()
        .args([
            "validate",
            "tests/fixtures/invalid/03-misspelt-http-key.yaml",
        ])
        .assert()
        .code(1)
        .stdout(
            std::fs::read_to_string("tests/fixtures/invalid/03-misspelt-http-key.out")
                .expect("snapshot"),
        );
    // A file named twice, or a directory and a file in it, is one file, not a duplicate name.
    runner()
        .args([
            "validate",
            "workflows",
            "workflows/daily-backup.yaml",
            "./workflows/daily-backup.yaml",
        ])
        .assert()
        .code(0)
        .stdout("checked 6 files: no problems\n");
    runner()
        .args(["validate", "does/not/exist"])
        .assert()
        .code(2)
        .stderr(predicates_str("error: cannot read `does/not/exist`"));
    runner()
        .args(["validate", "--format", "nope"])
        .assert()
        .code(2);
}

/// A directory with every kind of entry that cannot be read, beside files that can: each bad
/// entry is its own diagnostic at 1:1 (exact output in `tests/fixtures/unreadable-files.out`), the
/// other files are checked, the exit code is 1 (problems), not 2 (could not run), and nothing
/// blocks (a FIFO would, if it were opened for reading).
#[cfg(unix)]
#[test]
fn cli_validate_reports_each_unreadable_entry_and_checks_the_others() {
    use std::os::unix::fs::symlink;
    const SMALL: &str =
        "name: at-limit\non: { webhook: true }\nsteps:\n  - id: one\n    sleep: 1s\n";
    let tmp = tempfile::tempdir().expect("tempdir");
    let wf = tmp.path().join("workflows");
    std::fs::create_dir(&wf).expect("mkdir");
    std::fs::copy("workflows/daily-backup.yaml", wf.join("good.yaml")).expect("copy");
    std::fs::copy(
        "tests/fixtures/invalid/03-misspelt-http-key.yaml",
        wf.join("misspelt.yaml"),
    )
    .expect("copy");
    // Exactly the limit is read and checked; one byte more is refused unread.
    let limit = usize::try_from(runner::sources::MAX_FILE_BYTES).expect("fits");
    let mut at_limit = SMALL.to_string();
    while at_limit.len() < limit {
        let line = format!("# {}\n", "x".repeat(77));
        at_limit.push_str(&line[..line.len().min(limit - at_limit.len())]);
    }
    std::fs::write(wf.join("at-limit.yaml"), &at_limit).expect("write");
    std::fs::write(
        wf.join("over-limit.yaml"),
        at_limit.replace("at-limit", "over-limit") + "\n",
    )
    .expect("write");
    symlink("/proc/self/mem", wf.join("mem.yaml")).expect("symlink");
    symlink("missing.yaml", wf.join("dangling.yaml")).expect("symlink");
    symlink("loop.yaml", wf.join("loop.yaml")).expect("symlink");
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(wf.join("fifo.yaml"))
        .status()
        .expect("mkfifo");
    assert!(mkfifo.success());
    std::fs::create_dir(wf.join("dir.yaml")).expect("mkdir");
    std::fs::write(wf.join("dir.yaml/inner.yaml"), SMALL).expect("write");
    std::fs::create_dir(wf.join("team")).expect("mkdir");
    std::fs::write(wf.join("team/nested.yaml"), SMALL).expect("write");

    let run = |args: &[&str]| {
        runner()
            .current_dir(tmp.path())
            .arg("validate")
            .args(args)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
    };
    let out = run(&["workflows"])
        .code(1)
        .stderr(
            "note: `workflows/team` is a subdirectory with workflow files and was not checked: \
             runner reads only the files directly in a directory\n",
        )
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).expect("utf8");
    let snapshot = Path::new("tests/fixtures/unreadable-files.out");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !snapshot.exists() {
        std::fs::write(snapshot, &out).expect("write snapshot");
    } else {
        let want = std::fs::read_to_string(snapshot).expect("read snapshot");
        assert_eq!(out, want, "output differs from {}", snapshot.display());
    }

    let json = run(&["--format", "json", "workflows"])
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
    let got: Vec<(String, String, u64, u64)> = (v.as_array().expect("array").iter())
        .map(|d| {
            assert!(d["hint"].as_str().is_some_and(|h| !h.is_empty()), "{d}");
            (
                d["file"].as_str().expect("file").to_string(),
                d["code"].as_str().expect("code").to_string(),
                d["line"].as_u64().expect("line"),
                d["column"].as_u64().expect("column"),
            )
        })
        .collect();
    let want: Vec<(String, String, u64, u64)> = [
        ("dangling", "unreadable-file", 1, 1),
        ("dir", "not-a-file", 1, 1),
        ("fifo", "not-a-file", 1, 1),
        ("loop", "unreadable-file", 1, 1),
        ("mem", "unreadable-file", 1, 1),
        ("misspelt", "unknown-key", 6, 7),
        ("over-limit", "file-too-large", 1, 1),
    ]
    .iter()
    .map(|(f, c, l, col)| (format!("workflows/{f}.yaml"), c.to_string(), *l, *col))
    .collect();
    assert_eq!(got, want);

    // Named on the command line, such files are diagnostics too; a path that is not there at
    // all still means validate could not run.
    run(&["workflows/fifo.yaml", "workflows/good.yaml"])
        .code(1)
        .stdout(predicates::str::contains("error[not-a-file]"))
        .stdout(predicates::str::contains(
            "checked 2 files: 1 problem in 1 file",
        ));
    run(&["workflows/dangling.yaml"])
        .code(1)
        .stdout(predicates::str::contains("error[unreadable-file]"));
    run(&["workflows/at-limit.yaml"]).code(0);
    run(&["workflows/nope.yaml"]).code(2);
}

fn predicates_str(prefix: &'static str) -> impl predicates::Predicate<str> {
    predicates::str::starts_with(prefix)
}

#[test]
fn cli_github_and_json_formats() {
    let out = runner()
        .args([
            "validate",
            "--format",
            "github",
            "tests/fixtures/invalid/03-misspelt-http-key.yaml",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "::error file=tests/fixtures/invalid/03-misspelt-http-key.yaml,line=6,col=7,endColumn=12,title=runner unknown-key::unknown key `metod` in `http` (hint: did you mean `method`?)\n"
    );
    let out = runner()
        .args([
            "validate",
            "--format",
            "json",
            "tests/fixtures/invalid/38-many-problems.yaml",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let items = v.as_array().expect("array");
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[0],
        serde_json::json!({
            "file": "tests/fixtures/invalid/38-many-problems.yaml",
            "line": 7, "column": 13, "end_column": 25,
            "severity": "error", "code": "invalid-cron",
            "message": items[0]["message"], "hint": items[0]["hint"],
        })
    );
    let keys: Vec<&String> = items[0].as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "file",
            "line",
            "column",
            "end_column",
            "severity",
            "code",
            "message",
            "hint"
        ]
    );
}

#[test]
fn schema_is_fresh_and_accepts_the_examples() {
    let committed = std::fs::read_to_string("schemas/workflow.schema.json").unwrap_or_default();
    let generated = workflow::schema::generate();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write("schemas/workflow.schema.json", &generated).expect("write schema");
    } else {
        assert!(
            committed == generated,
            "schemas/workflow.schema.json is stale: run `cargo run -- schema > schemas/workflow.schema.json`"
        );
    }
    let schema: serde_json::Value = serde_json::from_str(&generated).expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let mut files: Vec<SourceFile> = fixtures("valid").iter().map(|p| source(p)).collect();
    files.extend(
        runner::sources::read_sources(&[PathBuf::from("workflows")])
            .expect("examples")
            .files,
    );
    for f in &files {
        let doc = workflow::yaml::parse(&f.text).expect("yaml").to_json();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.path);
        assert!(
            f.text.starts_with("# yaml-language-server: $schema="),
            "{} lacks the schema line",
            f.path
        );
    }
}

#[test]
fn schema_and_checker_agree_on_keys() {
    use runner::workflow::schema::*;
    let schema: serde_json::Value =
        serde_json::from_str(&workflow::schema::generate()).expect("json");
    let props = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    let sorted = |keys: &[&str]| -> Vec<String> {
        let mut k: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    let defs = &schema["$defs"];
    assert_eq!(props(&schema), sorted(TOP_KEYS));
    assert_eq!(props(&defs["Triggers"]), sorted(ON_KEYS));
    assert_eq!(props(&defs["ScheduleDecl"]), sorted(SCHEDULE_KEYS));
    assert_eq!(props(&defs["InputDecl"]), sorted(INPUT_KEYS));
    assert_eq!(props(&defs["ConcurrencyDecl"]), sorted(CONCURRENCY_KEYS));
    assert_eq!(props(&defs["DefaultsDecl"]), sorted(DEFAULTS_KEYS));
    assert_eq!(props(&defs["RetryDecl"]), sorted(RETRY_KEYS));
    assert_eq!(props(&defs["StepDecl"]), sorted(STEP_KEYS));
    assert_eq!(props(&defs["HookDecl"]), sorted(HOOK_KEYS));
    // A hook is a step without a required `id` and without the graph's keys (hooks run in order).
    let graph = [
        "needs",
        "when",
        "continue_on_error",
        "foreach",
        "as",
        "key",
        "max_parallel",
        "fail_fast",
        "flow_control",
    ];
    let step_keys: Vec<&str> = STEP_KEYS
        .iter()
        .copied()
        .filter(|k| !graph.contains(k))
        .collect();
    assert_eq!(sorted(HOOK_KEYS), sorted(&step_keys));
    assert_eq!(props(&defs["HttpDecl"]), sorted(HTTP_KEYS));
    assert_eq!(props(&defs["ApprovalDecl"]), sorted(APPROVAL_KEYS));
    assert_eq!(props(&defs["EmailDecl"]), sorted(EMAIL_KEYS));
    assert_eq!(
        props(&defs["WaitForEventDecl"]),
        sorted(WAIT_FOR_EVENT_KEYS)
    );
    assert_eq!(props(&defs["CancelOnDecl"]), sorted(CANCEL_ON_KEYS));
    assert_eq!(props(&defs["FlowControlDecl"]), sorted(FLOW_CONTROL_KEYS));
}

/// `runner next` across both DST transitions in New York and Berlin (design §3: a fixed-time slot
/// in the gap fires once at the first instant after it; one in the repeated hour fires once;
/// elapsed-time schedules skip the gap and fire in both passes).
#[test]
fn next_prints_utc_then_local_across_dst() {
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            "0,30 2 * * *",
            "America/New_York",
            "2026-03-08T05:00:00Z",
            "3",
            &[
                "2026-03-08T07:00:00Z  2026-03-08 03:00:00 -04:00 America/New_York  (for 02:00)",
                "2026-03-08T07:00:00Z  2026-03-08 03:00:00 -04:00 America/New_York  (for 02:30)",
                "2026-03-09T06:00:00Z  2026-03-09 02:00:00 -04:00 America/New_York",
            ],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            "2",
            &[
                "2026-11-01T05:30:00Z  2026-11-01 01:30:00 -04:00 America/New_York",
                "2026-11-02T06:30:00Z  2026-11-02 01:30:00 -05:00 America/New_York",
            ],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z",
            "3",
            &[
                "2026-11-01T05:00:00Z  2026-11-01 01:00:00 -04:00 America/New_York",
                "2026-11-01T06:00:00Z  2026-11-01 01:00:00 -05:00 America/New_York",
                "2026-11-01T07:00:00Z  2026-11-01 02:00:00 -05:00 America/New_York",
            ],
        ),
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            "2",
            &[
                "2026-03-29T01:00:00Z  2026-03-29 03:00:00 +02:00 Europe/Berlin  (for 02:30)",
                "2026-03-30T00:30:00Z  2026-03-30 02:30:00 +02:00 Europe/Berlin",
            ],
        ),
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            "2",
            &[
                "2026-10-25T00:30:00Z  2026-10-25 02:30:00 +02:00 Europe/Berlin",
                "2026-10-26T01:30:00Z  2026-10-26 02:30:00 +01:00 Europe/Berlin",
            ],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:15:00Z",
            "3",
            &[
                "2026-03-29T00:30:00Z  2026-03-29 01:30:00 +01:00 Europe/Berlin",
                "2026-03-29T01:00:00Z  2026-03-29 03:00:00 +02:00 Europe/Berlin",
                "2026-03-29T01:30:00Z  2026-03-29 03:30:00 +02:00 Europe/Berlin",
            ],
        ),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    for (cron, tz, from, n, want) in cases {
        let file = dir.path().join("w.yaml");
        std::fs::write(&file, format!("on:\n  schedule:\n    - cron: \"{cron}\"\n      timezone: {tz}\nsteps:\n  - id: a\n    sleep: 1s\n")).expect("write");
        let out = runner()
            .args([
                "next",
                file.to_str().expect("utf8"),
                "-n",
                n,
                "--from",
                from,
            ])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let got = String::from_utf8(out).expect("utf8");
        let want: String = want.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(got, want, "{cron} in {tz} from {from}");
    }
}

/// With several schedules, the human lines and the JSON number them alike, from 1 in file order.
#[test]
fn next_numbers_schedules_from_one_in_both_formats() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "on:\n  schedule:\n    - cron: \"0 9 * * *\"\n    - cron: \"30 9 * * *\"\nsteps:\n  - id: a\n    sleep: 1s\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf8");
    let args = ["next", path, "-n", "2", "--from", "2026-01-01T00:00:00Z"];
    let out = runner()
        .args(args)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "2026-01-01T09:00:00Z  2026-01-01 09:00:00 +00:00 UTC  [schedule 1: 0 9 * * *]\n\
         2026-01-01T09:30:00Z  2026-01-01 09:30:00 +00:00 UTC  [schedule 2: 30 9 * * *]\n"
    );
    let out = runner()
        .args(args)
        .arg("--json")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let numbers: Vec<(i64, &str)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|f| {
            (
                f["schedule"].as_i64().expect("number"),
                f["cron"].as_str().expect("cron"),
            )
        })
        .collect();
    assert_eq!(numbers, [(1, "0 9 * * *"), (2, "30 9 * * *")]);
}

mod no_panic {
    use proptest::prelude::*;
    use runner::workflow;

    const KEYS: &[&str] = &[
        "name",
        "on",
        "schedule",
        "cron",
        "timezone",
        "input",
        "webhook",
        "inputs",
        "type",
        "default",
        "required",
        "secrets",
        "concurrency",
        "overlap",
        "defaults",
        "retry",
        "limit",
        "steps",
        "id",
        "if",
        "http",
        "url",
        "method",
        "headers",
        "body",
        "approval",
        "to",
        "subject",
        "sleep",
        "sleep_until",
        "email",
        "timeout",
        "on_failure",
        "zz",
        "",
    ];
    const SCALARS: &[&str] = &[
        "https://example.com/{{ input.x }}",
        "{{ steps['a-b'].body.c }}",
        "{{ steps.a-b }}",
        "{% for %}",
        "{{",
        "}}",
        "0 9 * * 1",
        "* * * * * *",
        "@daily",
        "CRON_TZ=Europe/Berlin 0 0 * * *",
        "Europe/Berln",
        "1d12h",
        "3 days",
        "a@b.c",
        "“quoted”",
        "é✓",
        "POST",
        "skip",
        "string",
        "integer",
        "\u{0}",
        "{{ 'é' ~ input.é }}",
    ];

    fn json_tree() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            prop::sample::select(SCALARS).prop_map(|s| serde_json::Value::String(s.to_string())),
            ".{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(
                    |entries| {
                        serde_json::Value::Object(
                            entries
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v))
                                .collect(),
                        )
                    }
                ),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = workflow::check_file("p.yaml", &text);
        }

        #[test]
        fn arbitrary_yaml_trees_never_panic(tree in json_tree()) {
            // JSON is YAML: a tree of known keys and tricky scalars exercises every checker path.
            let text = serde_json::to_string_pretty(&tree).expect("json");
            let _ = workflow::check_file("p.yaml", &text);
        }

        #[test]
        fn mutated_examples_never_panic(which in 0usize..5, at in any::<prop::sample::Index>(), cut in 0usize..40, insert in ".{0,8}") {
            let mut files: Vec<String> = std::fs::read_dir("workflows").expect("dir")
                .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
                .collect();
            files.push(std::fs::read_to_string("tests/fixtures/valid/everything.yaml").expect("read"));
            let text = &files[which % files.len()];
            let mut i = at.index(text.len().max(1));
            while !text.is_char_boundary(i) { i -= 1; }
            let mut j = (i + cut).min(text.len());
            while !text.is_char_boundary(j) { j -= 1; }
            let mutated = format!("{}{}{}", &text[..i], insert, &text[j..]);
            let _ = workflow::check_file("p.yaml", &mutated);
        }
    }
}
