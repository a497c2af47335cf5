//! Approval gates and e-mail, end to end: `runner serve` sends real mail to a real SMTP server
//! (MailDev, from `tests/smtp`), the tests read it back over MailDev's REST API, follow the links
//! as an approver would (plain HTTP, and once in headless Chromium, whose screenshot is OCR'd),
//! and check what the run and the next step saw. The outbox tests parse the `.eml` files with a
//! real MIME decoder.

use crate::support::{
    Api, Daemon, HttpResponse, KillOnDrop, QstashReceiver, http_request, now_ms, receiver_log,
    runner_cmd, temp_dir, wait_for, write,
};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMTP_HINT: &str =
    "run `npm ci --prefix tests/smtp` (MailDev and playwright-core; scripts/test does)";

fn smtp_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp")
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------------
// MailDev: a real SMTP server with a REST API, killed when dropped.

struct MailDev {
    child: KillOnDrop,
    smtp_port: u16,
    web: String,
    log: PathBuf,
}

impl MailDev {
    fn start(dir: &Path) -> MailDev {
        Self::start_with(dir, &[])
    }

    /// Starts MailDev on two free ports with `extra` arguments; waits (20 s at most) until both
    /// its SMTP port and its REST API answer. Mail is kept in a folder below `dir`.
    fn start_with(dir: &Path, extra: &[&str]) -> MailDev {
        Self::start_ports(dir, extra, None)
    }

    /// MailDev with its SMTP port chosen by the test (runner was told of it before it existed).
    fn start_on(dir: &Path, smtp_port: u16) -> MailDev {
        Self::start_ports(dir, &[], Some(smtp_port))
    }

    fn start_ports(dir: &Path, extra: &[&str], smtp: Option<u16>) -> MailDev {
        let bin = smtp_tools().join("node_modules/maildev/bin/maildev");
        assert!(bin.is_file(), "MailDev is not installed: {SMTP_HINT}");
        let mut last_log = String::new();
        // Another process may take a free port before MailDev binds it: try a few pairs.
        for _ in 0..3 {
            let (smtp_port, web_port) = (smtp.unwrap_or_else(free_port), free_port());
            let store = dir.join(format!("maildev-{smtp_port}"));
            std::fs::create_dir_all(&store).expect("maildev folder");
            let log = dir.join(format!("maildev-{smtp_port}.log"));
            let out = std::fs::File::create(&log).expect("maildev log");
            let child = Command::new("node")
                .arg(&bin)
                .args(["--smtp", &smtp_port.to_string()])
                .args(["--web", &web_port.to_string()])
                .args(["--ip", "127.0.0.1"])
                .arg("--mail-directory")
                .arg(&store)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log handle"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SMTP_HINT}"));
            let mut md = MailDev {
                child: KillOnDrop(child),
                smtp_port,
                web: format!("http://127.0.0.1:{web_port}"),
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if md.child.0.try_wait().expect("try_wait").is_some() {
                    break;
                }
                let smtp_up = std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok();
                let web_up = http_request("GET", &format!("{}/email", md.web), &[], None)
                    .is_ok_and(|r| r.status == 200);
                if smtp_up && web_up {
                    return md;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log = std::fs::read_to_string(&md.log).unwrap_or_default();
        }
        panic!("MailDev did not start ({SMTP_HINT}); its output:\n{last_log}");
    }

    fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    /// Every message MailDev received, oldest first.
    fn emails(&self) -> Vec<Mail> {
        let r = http_request("GET", &format!("{}/email", self.web), &[], None)
            .expect("MailDev's REST API answers");
        assert_eq!(r.status, 200, "GET /email: {}", r.body);
        let Value::Array(list) = r.json() else {
            panic!("GET /email answered {}", r.body)
        };
        list.iter().map(Mail::from_maildev).collect()
    }

    /// Waits until MailDev holds `n` messages (failing after `timeout`, or when it holds more).
    fn wait_emails(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let mails = wait_for(timeout, &format!("{n} e-mails at MailDev"), || {
            let m = self.emails();
            (m.len() >= n).then_some(m)
        });
        assert_eq!(
            mails.len(),
            n,
            "MailDev received more mail than expected: {mails:#?}"
        );
        mails
    }
}

// ---------------------------------------------------------------------------------------------
// An SMTP server with a per-recipient policy (tests/smtp/policy-smtp.mjs, nodemailer's
// `smtp-server`): greylisting, a full mailbox. Killed when dropped.

struct PolicySmtp {
    _child: KillOnDrop,
    port: u16,
    policy: PathBuf,
    mail_dir: PathBuf,
    log: PathBuf,
}

impl PolicySmtp {
    /// Starts it with `policy` (JSON, see the script) and waits (20 s at most) until it listens.
    fn start(dir: &Path, policy: &str) -> PolicySmtp {
        let script = smtp_tools().join("policy-smtp.mjs");
        assert!(
            smtp_tools().join("node_modules/smtp-server").is_dir(),
            "smtp-server is not installed: {SMTP_HINT}"
        );
        let port = free_port();
        let policy_file = dir.join(format!("policy-{port}.json"));
        std::fs::write(&policy_file, policy).expect("policy file");
        let mail_dir = dir.join(format!("policy-mail-{port}"));
        let log = dir.join(format!("policy-smtp-{port}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("node")
            .arg(&script)
            .arg(port.to_string())
            .arg(&policy_file)
            .arg(&mail_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SMTP_HINT}"));
        let smtp = PolicySmtp {
            _child: KillOnDrop(child),
            port,
            policy: policy_file,
            mail_dir,
            log,
        };
        wait_for(Duration::from_secs(20), "the policy SMTP server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        smtp
    }

    fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn set_policy(&self, policy: &str) {
        // Written aside and renamed, so the server never reads half a file.
        let tmp = self.policy.with_extension("tmp");
        std::fs::write(&tmp, policy).expect("policy file");
        std::fs::rename(&tmp, &self.policy).expect("policy file");
    }

    /// `RCPT <address> <code>` lines, in order.
    fn rcpt_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("RCPT "))
            .map(str::to_string)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// `runner serve` with mail settings, in its own folder (the default outbox is `./outbox` there).

#[derive(Default)]
struct Opts {
    listen: Option<String>,
    public_url: Option<String>,
    smtp_url: Option<String>,
    outbox: Option<PathBuf>,
    env: Vec<(&'static str, &'static str)>,
}

/// Starts `runner serve` with `root` as its working directory, `root/workflows` and
/// `root/runner.db` (the shared daemon guard of `support`, with mail settings).
fn start_serve(root: &Path, opts: &Opts) -> Daemon {
    let n = std::fs::read_dir(root)
        .map(|d| d.count())
        .unwrap_or_default();
    let log = root.join(format!("serve-{n}-{}.log", now_ms()));
    let mut cmd = runner_cmd();
    cmd.current_dir(root)
        .args([
            "serve",
            "--dir",
            "workflows",
            "--db",
            "runner.db",
            "--listen",
        ])
        .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"));
    if let Some(u) = &opts.public_url {
        cmd.args(["--public-url", u]);
    }
    if let Some(u) = &opts.smtp_url {
        cmd.args(["--smtp-url", u]);
    }
    if let Some(o) = &opts.outbox {
        cmd.arg("--outbox").arg(o);
    }
    cmd.env_remove("RUNNER_OUTBOX")
        .env_remove("RUNNER_MAIL_FROM")
        .env("NO_COLOR", "1");
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    Daemon::spawn(cmd, log, None)
}

/// The daemon's log without colour codes.
fn serve_logs(d: &Daemon) -> String {
    strip_ansi(&d.logs())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Messages, links and pages.

/// One e-mail as a recipient reads it.
#[derive(Debug, Clone)]
struct Mail {
    to: Vec<String>,
    subject: String,
    text: String,
    html: Option<String>,
}

impl Mail {
    fn from_maildev(v: &Value) -> Mail {
        let to = v["to"]
            .as_array()
            .expect("`to` is a list")
            .iter()
            .map(|t| {
                let addr = t["address"].as_str().unwrap_or_default();
                match t["name"].as_str().filter(|n| !n.is_empty()) {
                    Some(name) => format!("{name} <{addr}>"),
                    None => addr.to_string(),
                }
            })
            .collect();
        Mail {
            to,
            subject: v["subject"].as_str().unwrap_or_default().to_string(),
            text: v["text"].as_str().unwrap_or_default().to_string(),
            html: v["html"].as_str().map(str::to_string),
        }
    }

    /// Parses an RFC 5322 message with a MIME decoder (quoted-printable and base64 parts).
    fn from_eml(raw: &[u8]) -> Mail {
        use mailparse::MailHeaderMap;
        let parsed = mailparse::parse_mail(raw).expect("a parsable e-mail");
        let header = |name: &str| parsed.headers.get_first_value(name).unwrap_or_default();
        // Every message has a Message-ID of the sender's domain.
        let id = header("Message-ID");
        assert!(
            id.starts_with('<') && id.ends_with('>') && id.contains('@') && id.len() > 10,
            "Message-ID `{id}`"
        );
        let mut text = String::new();
        let mut html = None;
        let mut parts = vec![&parsed];
        while let Some(p) = parts.pop() {
            if p.subparts.is_empty() {
                let body = p.get_body().expect("a decodable part");
                match p.ctype.mimetype.as_str() {
                    "text/plain" => text = body,
                    "text/html" => html = Some(body),
                    other => panic!("unexpected part {other}"),
                }
            } else {
                parts.extend(p.subparts.iter());
            }
        }
        let to = mailparse::addrparse_header(
            parsed.headers.get_first_header("To").expect("a To header"),
        )
        .expect("parsable recipients")
        .iter()
        .flat_map(|a| match a {
            mailparse::MailAddr::Single(s) => vec![s.clone()],
            mailparse::MailAddr::Group(g) => g.addrs.clone(),
        })
        .map(|s| match s.display_name {
            Some(name) => format!("{name} <{}>", s.addr),
            None => s.addr,
        })
        .collect();
        Mail {
            to,
            subject: header("Subject"),
            text,
            html,
        }
    }

    /// The URL after `label` (`Approve:` or `Reject:`) in the plain-text part.
    fn text_link(&self, label: &str) -> String {
        let line = self
            .text
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in the text part:\n{}", self.text));
        line[label.len()..].trim().to_string()
    }

    fn approve(&self) -> String {
        self.text_link("Approve:")
    }

    fn reject(&self) -> String {
        self.text_link("Reject:")
    }

    /// The `href` of the HTML part's link whose text is `label`.
    fn html_link(&self, label: &str) -> String {
        let html = self.html.as_deref().expect("an HTML part");
        html_anchors(html)
            .into_iter()
            .find(|(text, _)| text == label)
            .map(|(_, href)| href)
            .unwrap_or_else(|| panic!("no `{label}` link in the HTML part:\n{html}"))
    }
}

/// Every `<a href="…">text</a>` of a page, as (visible text, href).
fn html_anchors(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chunk in html.split("<a ").skip(1) {
        let Some(h) = chunk.find("href=\"") else {
            continue;
        };
        let rest = &chunk[h + 6..];
        let href = &rest[..rest.find('"').expect("closing quote")];
        let inner = &rest[rest.find('>').expect("end of tag") + 1..];
        let text = &inner[..inner.find("</a>").expect("</a>")];
        out.push((visible_text(text), unescape(href)));
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A page's text with tags removed, entities decoded and white space collapsed.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    let body = html
        .find("</style>")
        .map_or(html, |i| &html[i + "</style>".len()..]);
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `link` (made with `public` as its base) on the daemon at `base`.
fn on(base: &str, public: &str, link: &str) -> String {
    let path = link
        .strip_prefix(public)
        .unwrap_or_else(|| panic!("`{link}` does not start with the public URL `{public}`"));
    format!("{base}{path}")
}

fn get_page(url: &str) -> HttpResponse {
    http_request("GET", url, &[], None).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The page's form submit: POST with `comment` url-encoded.
fn post_page(url: &str, comment: &str) -> HttpResponse {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("comment", comment)
        .finish();
    http_request(
        "POST",
        url,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form),
    )
    .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

fn run_of(api: &Api, id: &str) -> Value {
    let (status, run) = api.get(&format!("/runs/{id}"));
    assert_eq!(status, 200, "GET /runs/{id}: {run}");
    run
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step `{id}` in {run:#}"))
}

fn wait_status(api: &Api, id: &str, status: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = run_of(api, id);
        if last["status"] == status {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is not `{status}` after {timeout:?}; last seen:\n{last:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bodies the receiver got on `path`, as JSON.
fn received(receiver: &QstashReceiver, path: &str) -> Vec<Value> {
    receiver_log(receiver)
        .into_iter()
        .filter(|r| r["path"] == path)
        .map(|r| {
            assert_eq!(
                r["valid"], true,
                "the receiver refused the signature: {r:#}"
            );
            serde_json::from_str(r["body"].as_str().unwrap_or("null")).expect("a JSON body")
        })
        .collect()
}

/// The `.eml` files in `dir` (sorted by name, i.e. by time), once there are `n` of them.
fn wait_outbox(dir: &Path, n: usize, timeout: Duration) -> Vec<(PathBuf, Mail)> {
    let files = wait_for(
        timeout,
        &format!("{n} .eml files in {}", dir.display()),
        || {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect();
            files.sort();
            (files.len() >= n).then_some(files)
        },
    );
    assert_eq!(files.len(), n, "more e-mails than expected: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let raw = std::fs::read(&p).expect("read .eml");
            let mail = Mail::from_eml(&raw);
            (p, mail)
        })
        .collect()
}

/// Runs a command with a time limit; answers (success, stdout, stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr:\n{}",
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    )
}

fn workflows(root: &Path) -> PathBuf {
    let dir = root.join("workflows");
    std::fs::create_dir_all(&dir).expect("workflows dir");
    dir
}

/// The `review` workflow: an approval to two recipients, then a call that reports the decision.
fn review_yaml(receiver: &QstashReceiver, timeout: &str, on_timeout: Option<&str>) -> String {
    let on_timeout = on_timeout.map_or(String::new(), |d| format!("\n      on_timeout: {d}"));
    format!(
        r#"name: review
on: {{ webhook: true }}
inputs:
  title: {{ type: string, required: true }}
steps:
  - id: review
    approval:
      to: ["alice@example.com", "Ed <ed@example.com>"]
      subject: "Publish {{{{ input.title }}}}?"
      body: "Please check {{{{ input.title }}}} before it goes out."
      timeout: {timeout}{on_timeout}
  - id: publish
    http:
      url: "{echo}"
      body:
        decision: "{{{{ steps.review.decision }}}}"
        approver: "{{{{ steps.review.approver }}}}"
        comment: "{{{{ steps.review.comment }}}}"
"#,
        echo = receiver.url("/echo"),
    )
}

const PUBLIC: &str = "https://approve.example.test";

// ---------------------------------------------------------------------------------------------
// 1. The whole path through a real SMTP server.

#[test]
fn approval_mails_links_pages_and_decision_end_to_end() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let maildev = MailDev::start(tmp.path());
    write(
        &workflows(tmp.path()),
        "review.yaml",
        &review_yaml(&receiver, "1h", None),
    );
    let serve = start_serve(
        tmp.path(),
        &Opts {
            public_url: Some(format!("{PUBLIC}/")),
            smtp_url: Some(maildev.smtp_url()),
            ..Opts::default()
        },
    );
    let api = serve.api();
    let started = chrono::Utc::now();
    let id = api.start_run("review", r#"{"title": "the spring report"}"#);

    // One e-mail per recipient, each with its own Approve and Reject links on the public URL.
    let mut mails = maildev.wait_emails(2, Duration::from_secs(20));
    mails.sort_by(|a, b| a.to.cmp(&b.to));
    let (ed, alice) = (&mails[0], &mails[1]);
    assert_eq!(alice.to, ["alice@example.com"], "{mails:#?}");
    assert_eq!(ed.to, ["Ed <ed@example.com>"], "{mails:#?}");
    let mut all_links = Vec::new();
    for m in &mails {
        assert_eq!(m.subject, "Publish the spring report?");
        assert!(
            m.text
                .contains("Please check the spring report before it goes out."),
            "text part: {}",
            m.text
        );
        assert!(
            m.text
                .contains(&format!("Workflow review, run {id}, step review.")),
            "text part: {}",
            m.text
        );
        let html = m.html.as_deref().expect("an HTML part");
        let shown = visible_text(html);
        assert!(
            shown.contains("Publish the spring report?")
                && shown.contains("Please check the spring report before it goes out.")
                && shown.contains(&id),
            "HTML part: {shown}"
        );
        for (label, link) in [("Approve", m.approve()), ("Reject", m.reject())] {
            assert!(
                link.starts_with(&format!("{PUBLIC}/approvals/")) && link.len() > 60,
                "{label} link {link:?} is not on the public URL"
            );
            assert_eq!(
                m.html_link(label),
                link,
                "the HTML part's {label} link differs from the text part's"
            );
            all_links.push(link);
        }
    }
    let mut unique = all_links.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        4,
        "every link is its own token: {all_links:?}"
    );

    // Opening a link (as a mail scanner would) shows the page and changes nothing.
    let approve = on(&serve.base, PUBLIC, &alice.approve());
    for _ in 0..2 {
        let page = get_page(&approve);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{:?}",
            page.headers
        );
        let text = visible_text(&page.body);
        for want in [
            "Publish the spring report?",
            "Workflow review",
            &format!("Run {id}"),
            "Step review",
            "You are alice@example.com",
            "Please check the spring report before it goes out.",
            "Approve",
            "Nothing is decided until you press the button.",
        ] {
            assert!(
                text.contains(want),
                "confirmation page lacks {want:?}: {text}"
            );
        }
        assert!(page.body.contains(r#"method="post""#), "{}", page.body);
    }
    let reject_page = visible_text(&get_page(&on(&serve.base, PUBLIC, &ed.reject())).body);
    assert!(
        reject_page.contains("You are Ed <ed@example.com>") && reject_page.contains("Reject"),
        "{reject_page}"
    );
    let run = run_of(&api, &id);
    assert_eq!(run["status"], "waiting_approval", "{run:#}");
    assert_eq!(step(&run, "review")["status"], "waiting_approval");
    assert_eq!(step(&run, "review")["output"], Value::Null, "{run:#}");
    assert!(received(&receiver, "/echo").is_empty());

    // The button decides; the next step sees the decision, who made it and the comment.
    let comment = "Looks good — ship it & tell <ops>";
    let page = post_page(&approve, comment);
    assert_eq!(page.status, 200, "{}", page.body);
    let text = visible_text(&page.body);
    assert!(text.contains("Approved. The run continues."), "{text}");
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &step(&run, "review")["output"];
    assert_eq!(out["decision"], "approved", "{run:#}");
    assert_eq!(out["approver"], "alice@example.com", "{run:#}");
    assert_eq!(out["comment"], comment, "{run:#}");
    let decided_at: chrono::DateTime<chrono::Utc> = out["decided_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("decided_at is a time: {out}"));
    assert!(
        decided_at >= started - chrono::Duration::seconds(1)
            && decided_at <= chrono::Utc::now() + chrono::Duration::seconds(1),
        "{decided_at}"
    );
    let bodies = received(&receiver, "/echo");
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!(
        bodies[0],
        serde_json::json!({"decision": "approved", "approver": "alice@example.com", "comment": comment})
    );

    // A second click does not decide again, and neither does the other recipient's link.
    let again = post_page(&approve, "second thoughts");
    assert_eq!(again.status, 409, "{}", again.body);
    let text = visible_text(&again.body);
    assert!(
        text.contains(&format!(
            "Already approved by alice@example.com at {}",
            out["decided_at"].as_str().unwrap()
        )),
        "{text}"
    );
    let other = on(&serve.base, PUBLIC, &ed.reject());
    let shown = get_page(&other);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(
        visible_text(&shown.body).contains("Already approved by alice@example.com"),
        "{}",
        shown.body
    );
    let posted = post_page(&other, "no!");
    assert_eq!(posted.status, 409, "{}", posted.body);
    assert!(
        visible_text(&posted.body).contains("Already approved by alice@example.com"),
        "{}",
        posted.body
    );
    let run = run_of(&api, &id);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(step(&run, "review")["output"], *out, "the decision changed");
    assert_eq!(received(&receiver, "/echo").len(), 1);

    // A forged token, or one of another length, is a plain 404 that does not echo the token.
    let real = alice.approve();
    let token = real.rsplit('/').next().unwrap();
    let mut forged: Vec<char> = token.chars().collect();
    forged[5] = if forged[5] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    for bad in [
        forged.as_str(),
        "not-a-token",
        "<script>alert(1)</script>",
        &"x".repeat(500),
    ] {
        let enc = url::form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>();
        let url = format!("{}/approvals/{enc}", serve.base);
        for page in [get_page(&url), post_page(&url, "hi")] {
            assert_eq!(page.status, 404, "{bad}: {}", page.body);
            assert!(
                visible_text(&page.body).contains("This link is not valid."),
                "{}",
                page.body
            );
            assert!(
                !page.body.contains(bad) && !page.body.contains(&enc),
                "the 404 page echoes the token: {}",
                page.body
            );
        }
    }
    // No more mail than the two approval requests.
    assert_eq!(maildev.emails().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. Reject.

#[test]
fn reject_link_ends_the_run_rejected_without_later_steps_or_hooks() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let maildev = MailDev::start(tmp.path());
    write(
        &workflows(tmp.path()),
        "gate.yaml",
        &format!(
            r#"on: {{ webhook: true }}
steps:
  - id: review
    approval:
      to: ["Ed <ed@example.com>"]
      subject: "Ship it?"
      timeout: 1h
  - id: publish
    http: {{ url: "{publish}" }}
on_failure:
  - http: {{ url: "{hook}" }}
  - email: {{ to: [ops@example.com], subject: "{{{{ workflow.name }}}} failed" }}
"#,
            publish = receiver.url("/echo"),
            hook = receiver.url("/ok"),
        ),
    );
    let serve = start_serve(
        tmp.path(),
        &Opts {
            public_url: Some(PUBLIC.into()),
            smtp_url: Some(maildev.smtp_url()),
            ..Opts::default()
        },
    );
    let api = serve.api();
    let id = api.start_run("gate", "{}");
    let mails = maildev.wait_emails(1, Duration::from_secs(20));
    let reject = on(&serve.base, PUBLIC, &mails[0].reject());
    let page = get_page(&reject);
    assert_eq!(page.status, 200);
    assert!(visible_text(&page.body).contains("Reject"), "{}", page.body);
    assert_eq!(run_of(&api, &id)["status"], "waiting_approval");

    let page = post_page(&reject, "not yet");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        visible_text(&page.body).contains("Rejected. The run stops here."),
        "{}",
        page.body
    );
    let run = api.wait_run(&id, Duration::from_secs(10));
    assert_eq!(run["status"], "rejected", "{run:#}");
    let review = step(&run, "review");
    assert_eq!(review["output"]["decision"], "rejected", "{run:#}");
    assert!(
        review["output"]["approver"]
            .as_str()
            .is_some_and(|a| a.contains("ed@example.com")),
        "{run:#}"
    );
    assert_eq!(review["output"]["comment"], "not yet");
    assert_eq!(step(&run, "publish")["status"], "skipped", "{run:#}");
    assert_eq!(step(&run, "publish")["attempts"], 0, "{run:#}");
    assert_eq!(run["failure"], Value::Null, "{run:#}");
    for hook in run["on_failure"].as_array().expect("hooks") {
        assert_eq!(hook["status"], "skipped", "a hook ran: {run:#}");
        assert_eq!(hook["attempts"], 0, "a hook ran: {run:#}");
    }
    // Give a wrongly started step or hook time to show up.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        receiver_log(&receiver).is_empty(),
        "the receiver was called: {:#?}",
        receiver_log(&receiver)
    );
    assert_eq!(maildev.emails().len(), 1, "a failure e-mail was sent");
    assert_eq!(run_of(&api, &id)["status"], "rejected");
    // The approve link of the same e-mail now reports the rejection.
    let approve = on(&serve.base, PUBLIC, &mails[0].approve());
    let page = post_page(&approve, "");
    assert_eq!(page.status, 409);
    assert!(
        visible_text(&page.body).contains("Already rejected by ed@example.com"),
        "{}",
        page.body
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Timeouts.

#[test]
fn approval_timeout_rejects_by_default_or_approves_with_on_timeout() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let dir = workflows(tmp.path());
    write(&dir, "review.yaml", &review_yaml(&receiver, "2s", None));
    write(
        &dir,
        "auto.yaml",
        &review_yaml(&receiver, "2s", Some("approve")).replacen("name: review", "name: auto", 1),
    );
    let outbox = tmp.path().join("mail");
    let serve = start_serve(
        tmp.path(),
        &Opts {
            outbox: Some(outbox.clone()),
            ..Opts::default()
        },
    );
    let api = serve.api();
    let t0 = Instant::now();
    let rejected = api.start_run("review", r#"{"title": "A"}"#);
    let approved = api.start_run("auto", r#"{"title": "B"}"#);
    let mails = wait_outbox(&outbox, 4, Duration::from_secs(10));
    let link = mails
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.text.contains(&format!("run {rejected},")))
        .expect("an e-mail of the first run")
        .approve();
    let link = on(&serve.base, &serve.base, &link);

    let run = api.wait_run(&rejected, Duration::from_secs(15));
    let waited = t0.elapsed();
    assert_eq!(run["status"], "rejected", "{run:#}");
    let out = &step(&run, "review")["output"];
    assert_eq!(out["decision"], "rejected", "{run:#}");
    assert_eq!(out["approver"], "timeout", "{run:#}");
    assert_eq!(step(&run, "publish")["status"], "skipped", "{run:#}");
    assert!(
        waited >= Duration::from_millis(1500),
        "decided after {waited:?}, before the 2 s deadline"
    );

    let run = api.wait_run(&approved, Duration::from_secs(15));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &step(&run, "review")["output"];
    assert_eq!(out["decision"], "approved", "{run:#}");
    assert_eq!(out["approver"], "timeout", "{run:#}");
    let bodies = received(&receiver, "/echo");
    assert_eq!(
        bodies.len(),
        1,
        "only the auto-approved run publishes: {bodies:#?}"
    );
    assert_eq!(bodies[0]["decision"], "approved");
    assert_eq!(bodies[0]["approver"], "timeout");

    // After the deadline the link is dead: 410 while the timer has not fired yet, and once it
    // has (almost always, it fires at the deadline), the page says the timeout decided.
    for (page, post) in [(get_page(&link), false), (post_page(&link, "late"), true)] {
        let text = visible_text(&page.body);
        let expired = page.status == 410 && text.contains("This link expired at");
        let decided = page.status == if post { 409 } else { 200 }
            && text.contains("Already rejected by timeout at");
        assert!(
            expired || decided,
            "an expired link answered {}: {text}",
            page.status
        );
    }
    assert_eq!(run_of(&api, &rejected)["status"], "rejected");
}

// ---------------------------------------------------------------------------------------------
// 4. kill -9 while waiting.

#[test]
fn approval_survives_kill_9_without_a_second_email() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let maildev = MailDev::start(tmp.path());
    write(
        &workflows(tmp.path()),
        "review.yaml",
        &review_yaml(&receiver, "1h", None),
    );
    // The same address before and after the restart, so the links in the e-mail keep working.
    let port = free_port();
    let opts = Opts {
        listen: Some(format!("127.0.0.1:{port}")),
        smtp_url: Some(maildev.smtp_url()),
        ..Opts::default()
    };
    let mut first = start_serve(tmp.path(), &opts);
    let id = first.api().start_run("review", r#"{"title": "X"}"#);
    let mails = maildev.wait_emails(2, Duration::from_secs(20));
    // Both e-mails are recorded as sent once the daemon logs them.
    wait_for(Duration::from_secs(10), "both sends logged", || {
        (serve_logs(&first).matches("approval e-mail sent").count() == 2).then_some(())
    });
    let before = run_of(&first.api(), &id);
    assert_eq!(before["status"], "waiting_approval");
    let deadline = step(&before, "review")["wake_at"].clone();
    assert!(deadline.is_string(), "{before:#}");
    first.kill9();

    let second = start_serve(tmp.path(), &opts);
    assert_eq!(second.base, format!("http://127.0.0.1:{port}"));
    let api = second.api();
    let after = run_of(&api, &id);
    assert_eq!(after["status"], "waiting_approval", "{after:#}");
    assert_eq!(step(&after, "review")["status"], "waiting_approval");
    assert_eq!(
        step(&after, "review")["wake_at"],
        deadline,
        "the deadline moved"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        maildev.emails().len(),
        2,
        "an approval e-mail was sent again"
    );
    assert!(
        !serve_logs(&second).contains("approval e-mail sent"),
        "{}",
        serve_logs(&second)
    );

    // The link from the e-mail, sent by the first process, decides in the second.
    let link = mails
        .iter()
        .find(|m| m.to == ["alice@example.com"])
        .expect("alice's e-mail")
        .approve();
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/approvals/")),
        "{link}"
    );
    let page = post_page(&link, "after the crash");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(visible_text(&page.body).contains("Approved. The run continues."));
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        received(&receiver, "/echo"),
        [
            serde_json::json!({"decision": "approved", "approver": "alice@example.com", "comment": "after the crash"})
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A real browser.

#[test]
fn headless_chromium_approves_from_the_email_link() {
    let chromium = PathBuf::from("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "Chromium is not installed: `apt-get install chromium` (scripts/test does)"
    );
    let click = smtp_tools().join("click.mjs");
    assert!(
        smtp_tools()
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed: {SMTP_HINT}"
    );
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let maildev = MailDev::start(tmp.path());
    write(
        &workflows(tmp.path()),
        "review.yaml",
        &review_yaml(&receiver, "1h", None),
    );
    // No --public-url: the links use the address the daemon listens on.
    let serve = serve_with_smtp(tmp.path(), maildev.smtp_url());
    let api = serve.api();
    let id = api.start_run("review", r#"{"title": "the phone test"}"#);
    let mails = maildev.wait_emails(2, Duration::from_secs(20));
    let alice = mails
        .iter()
        .find(|m| m.to == ["alice@example.com"])
        .expect("alice's e-mail");
    // The link a reader clicks: the HTML part's Approve button.
    let link = alice.html_link("Approve");
    assert!(
        link.starts_with(&format!("{}/approvals/", serve.base)),
        "the link {link} is not on the daemon's address {}",
        serve.base
    );

    let shot = tmp.path().join("approved.png");
    let before = tmp.path().join("confirm.png");
    let mut cmd = Command::new("node");
    cmd.arg(&click)
        .arg(&link)
        .arg(&shot)
        .args(["--comment", "LGTM from my phone"])
        .args(["--expect", "Approved. The run continues."])
        .arg("--before")
        .arg(&before)
        .env("CHROMIUM_PATH", &chromium);
    let (ok, stdout, stderr) = run_bounded(cmd, Duration::from_secs(60));
    assert!(ok, "click.mjs failed:\n{stderr}\n{stdout}");
    let seen: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("click.mjs printed {stdout:?} ({e}); stderr:\n{stderr}"));
    assert_eq!(seen["first_status"], 200, "{seen:#}");
    assert_eq!(seen["status"], 200, "{seen:#}");
    let confirm = seen["before"].as_str().unwrap_or_default();
    assert!(
        confirm.contains("Publish the phone test?") && confirm.contains("Approve"),
        "{confirm}"
    );
    let outcome = seen["text"].as_str().unwrap_or_default();
    assert!(
        outcome.contains("Approved. The run continues."),
        "{outcome}"
    );
    if let Ok(keep) = std::env::var("RUNNER_TEST_SCREENSHOTS") {
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&shot, Path::new(&keep).join("approved.png"));
        let _ = std::fs::copy(&before, Path::new(&keep).join("confirm.png"));
    }

    // What the approver saw, read back from the pixels.
    let mut ocr = Command::new("tesseract");
    ocr.arg(&shot).arg("-");
    let (ok, text, err) = run_bounded(ocr, Duration::from_secs(30));
    assert!(
        ok,
        "tesseract failed (`apt-get install tesseract-ocr`; scripts/test does): {err}"
    );
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("Approved. The run continues."),
        "the screenshot does not read as approved; OCR: {text:?}"
    );

    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        received(&receiver, "/echo"),
        [
            serde_json::json!({"decision": "approved", "approver": "alice@example.com", "comment": "LGTM from my phone"})
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Zero configuration: the outbox folder and the log.

#[test]
fn outbox_eml_links_work_and_are_logged() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    // A long subject and body with non-ASCII text make the parts quoted-printable or base64.
    let long = "Überprüfung der Frühjahrsausgabe für alle Leserinnen und Leser — ".repeat(3);
    write(
        &workflows(tmp.path()),
        "review.yaml",
        &review_yaml(&receiver, "1h", None).replace(
            "before it goes out.",
            &format!("before it goes out. {long}"),
        ),
    );
    let serve = start_serve(tmp.path(), &Opts::default());
    let api = serve.api();
    let id = api.start_run("review", r#"{"title": "Frühling ☀"}"#);
    let outbox = tmp.path().join("outbox");
    let mails = wait_outbox(&outbox, 2, Duration::from_secs(10));
    let mut approve_links = Vec::new();
    for (path, m) in &mails {
        let raw = std::fs::read_to_string(path).expect("an .eml is text");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        // The parts are transfer-encoded (links split by soft line breaks): only a MIME decoder
        // reads them right.
        assert!(
            raw.contains("Content-Transfer-Encoding: quoted-printable")
                || raw.contains("Content-Transfer-Encoding: base64"),
            "{raw}"
        );
        assert_eq!(m.subject, "Publish Frühling ☀?", "{raw}");
        assert!(m.text.contains(long.trim()), "{}", m.text);
        assert!(m.html.is_some(), "no HTML part in {raw}");
        for (label, link) in [("Approve", m.approve()), ("Reject", m.reject())] {
            assert!(
                link.starts_with(&format!("{}/approvals/", serve.base)),
                "the {label} link {link} is not on the daemon's address {}",
                serve.base
            );
            assert_eq!(m.html_link(label), link);
            // The daemon log shows the links, for a user without mail.
            assert!(
                serve_logs(&serve).contains(&link),
                "the log lacks {link}:\n{}",
                serve_logs(&serve)
            );
        }
        approve_links.push((m.to.clone(), m.approve()));
    }
    let mut to: Vec<_> = approve_links.iter().map(|(t, _)| t.join(",")).collect();
    to.sort();
    assert_eq!(to, ["Ed <ed@example.com>", "alice@example.com"]);
    let (_, link) = approve_links
        .iter()
        .find(|(t, _)| t == &["Ed <ed@example.com>"])
        .expect("Ed's e-mail");
    let page = get_page(link);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        visible_text(&page.body).contains(long.trim()),
        "{}",
        page.body
    );
    let page = post_page(link, "gut");
    assert_eq!(page.status, 200, "{}", page.body);
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let bodies = received(&receiver, "/echo");
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["decision"], "approved");
    assert!(
        bodies[0]["approver"]
            .as_str()
            .is_some_and(|a| a.contains("ed@example.com")),
        "{bodies:#?}"
    );
}

/// Issue 18, item 8: an approval's subject and body are stored with the run and shown on the
/// approval page to anyone with the link. `validate` refuses `secrets` there; a secret's value
/// that arrives in an input is redacted in the e-mail and in what is stored and shown on the page.
#[test]
fn a_secrets_value_never_reaches_the_approval_mail_or_page() {
    const SECRET: &str = "approval-it-s3cr3t";
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    write(
        &workflows(tmp.path()),
        "ship.yaml",
        &format!(
            r#"name: ship
on: {{ webhook: true }}
secrets: [SHIP_TOKEN]
inputs:
  note: {{ type: string, required: true }}
steps:
  - id: ask
    approval:
      to: [lead@example.com]
      subject: "Ship it? {{{{ input.note }}}}"
      body: "Note: {{{{ input.note }}}}"
  - id: ship
    http: {{ url: "{echo}", headers: {{ Authorization: "Bearer {{{{ secrets.SHIP_TOKEN }}}}" }} }}
"#,
            echo = receiver.url("/echo"),
        ),
    );
    let serve = start_serve(
        tmp.path(),
        &Opts {
            env: vec![("SHIP_TOKEN", SECRET)],
            ..Opts::default()
        },
    );
    let api = serve.api();
    let id = api.start_run("ship", &format!(r#"{{"note": "token is {SECRET}"}}"#));
    let mails = wait_outbox(&tmp.path().join("outbox"), 1, Duration::from_secs(10));
    let (path, mail) = &mails[0];
    let raw = std::fs::read_to_string(path).expect("an .eml is text");
    assert_eq!(
        mail.subject, "Ship it? token is [redacted:SHIP_TOKEN]",
        "{raw}"
    );
    assert!(
        mail.text.contains("Note: token is [redacted:SHIP_TOKEN]"),
        "{}",
        mail.text
    );
    let page = get_page(&mail.approve());
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        visible_text(&page.body).contains("Note: token is [redacted:SHIP_TOKEN]"),
        "{}",
        page.body
    );
    // The page shows the subject and body as stored with the approval's links.
    for (what, bytes) in [
        ("the e-mail", raw.as_bytes()),
        ("the page", page.body.as_bytes()),
    ] {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{what} holds the secret"
        );
    }
    let page = post_page(&mail.approve(), "");
    assert_eq!(page.status, 200, "{}", page.body);
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
}

#[test]
fn on_reject_continue_runs_on_and_the_next_step_reads_the_rejection() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let yaml = review_yaml(&receiver, "1h", None).replace(
        "      timeout: 1h\n",
        "      timeout: 1h\n      on_reject: continue\n",
    );
    assert!(yaml.contains("on_reject: continue"), "{yaml}");
    write(&workflows(tmp.path()), "review.yaml", &yaml);
    let serve = start_serve(tmp.path(), &Opts::default());
    let api = serve.api();
    let id = api.start_run("review", r#"{"title": "maybe"}"#);
    wait_status(&api, &id, "waiting_approval", Duration::from_secs(10));
    let mut c = runner_cmd();
    c.args(["reject", &id, "review", "--comment", "not this week"])
        .args(["--server", &serve.base])
        .env("USER", "dana")
        .env_remove("USERNAME");
    let (ok, out, err) = run_bounded(c, Duration::from_secs(20));
    assert!(ok, "runner reject failed: {err}{out}");
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        received(&receiver, "/echo"),
        [
            serde_json::json!({"decision": "rejected", "approver": "dana (api)", "comment": "not this week"})
        ]
    );
}

#[test]
fn cli_approve_and_reject_are_recorded_as_api_decisions() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    write(
        &workflows(tmp.path()),
        "review.yaml",
        &review_yaml(&receiver, "1h", None),
    );
    let serve = start_serve(tmp.path(), &Opts::default());
    let api = serve.api();
    let yes = api.start_run("review", r#"{"title": "yes"}"#);
    let no = api.start_run("review", r#"{"title": "no"}"#);
    wait_status(&api, &yes, "waiting_approval", Duration::from_secs(10));
    wait_status(&api, &no, "waiting_approval", Duration::from_secs(10));
    let cli = |args: &[&str]| {
        let mut c = runner_cmd();
        c.args(args)
            .args(["--server", &serve.base])
            .env("USER", "dana")
            .env_remove("USERNAME");
        run_bounded(c, Duration::from_secs(20))
    };
    let (ok, out, err) = cli(&["approve", &yes, "review", "--comment", "from the terminal"]);
    assert!(ok, "runner approve failed: {err}{out}");
    let (ok, out, err) = cli(&["reject", &no, "review"]);
    assert!(ok, "runner reject failed: {err}{out}");

    let run = api.wait_run(&yes, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        received(&receiver, "/echo"),
        [
            serde_json::json!({"decision": "approved", "approver": "dana (api)", "comment": "from the terminal"})
        ]
    );
    // `runner show` prints the decision, who made it, when, and the comment.
    let mut show = runner_cmd();
    show.args(["show", &yes, "--db"])
        .arg(tmp.path().join("runner.db"));
    let (ok, out, err) = run_bounded(show, Duration::from_secs(20));
    assert!(ok, "runner show failed: {err}");
    assert!(
        out.contains("approved by dana (api) at ") && out.contains("\"from the terminal\""),
        "{out}"
    );
    let run = api.wait_run(&no, Duration::from_secs(10));
    assert_eq!(run["status"], "rejected", "{run:#}");
    assert_eq!(step(&run, "review")["output"]["approver"], "dana (api)");
    assert_eq!(step(&run, "publish")["status"], "skipped");

    // A decided step is not decided again, from the CLI or from an e-mail link.
    let (ok, out, err) = cli(&["reject", &yes, "review"]);
    assert!(!ok, "a second decision succeeded: {out}");
    assert!(
        err.contains("not waiting") && err.contains("approved by dana (api)"),
        "{err}"
    );
    let mails = wait_outbox(&tmp.path().join("outbox"), 4, Duration::from_secs(10));
    let link = mails
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.text.contains(&format!("run {no},")))
        .expect("an e-mail of the rejected run")
        .approve();
    let page = post_page(&link, "");
    assert_eq!(page.status, 409, "{}", page.body);
    assert!(
        visible_text(&page.body).contains("Already rejected by dana (api)"),
        "{}",
        page.body
    );
}

// ---------------------------------------------------------------------------------------------
// 7. `email` steps, e-mail hooks and SMTP failures.

#[test]
fn email_step_and_failure_hook_arrive_rendered() {
    let tmp = temp_dir();
    let receiver = QstashReceiver::start();
    let maildev = MailDev::start(tmp.path());
    write(
        &workflows(tmp.path()),
        "notify.yaml",
        &format!(
            r#"on: {{ webhook: true }}
inputs:
  version: {{ type: string, required: true }}
steps:
  - id: tell
    email:
      to: ["Ops <ops@example.com>", dev@example.com]
      subject: "Release {{{{ input.version }}}} is out"
      body: "Version {{{{ input.version }}}} shipped by run {{{{ run.id }}}}."
  - id: boom
    http: {{ url: "{boom}" }}
on_failure:
  - email:
      to: [oncall@example.com]
      subject: "{{{{ workflow.name }}}} failed at {{{{ failure.step }}}}"
      body: "Status {{{{ failure.status }}}} after {{{{ failure.attempts }}}} attempt(s): {{{{ failure.error }}}}"
"#,
            boom = receiver.url("/nonretryable"),
        ),
    );
    let serve = serve_with_smtp(tmp.path(), maildev.smtp_url());
    let api = serve.api();
    let id = api.start_run("notify", r#"{"version": "2.4.1"}"#);
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "failed", "{run:#}");
    let tell = step(&run, "tell");
    assert_eq!(tell["status"], "succeeded", "{run:#}");
    assert_eq!(
        tell["output"]["sent_to"],
        serde_json::json!(["Ops <ops@example.com>", "dev@example.com"])
    );
    let hook = &run["on_failure"][0];
    assert_eq!(hook["status"], "succeeded", "{run:#}");

    let mails = maildev.wait_emails(2, Duration::from_secs(10));
    let release = mails
        .iter()
        .find(|m| m.subject.starts_with("Release"))
        .unwrap_or_else(|| panic!("{mails:#?}"));
    assert_eq!(release.subject, "Release 2.4.1 is out");
    assert_eq!(release.to, ["Ops <ops@example.com>", "dev@example.com"]);
    assert_eq!(
        release.text.trim(),
        format!("Version 2.4.1 shipped by run {id}.")
    );
    let alert = mails
        .iter()
        .find(|m| m.to == ["oncall@example.com"])
        .unwrap_or_else(|| panic!("{mails:#?}"));
    assert_eq!(alert.subject, "notify failed at boom");
    assert!(
        alert.text.starts_with("Status 489 after 1 attempt(s): "),
        "{}",
        alert.text
    );
}

#[test]
fn smtp_refusal_fails_the_email_step_at_once() {
    let tmp = temp_dir();
    // This MailDev wants a login runner does not have: 530 is a permanent refusal.
    let maildev = MailDev::start_with(
        tmp.path(),
        &["--incoming-user", "someone", "--incoming-pass", "secret"],
    );
    write(
        &workflows(tmp.path()),
        "notify.yaml",
        r#"on: { webhook: true }
steps:
  - id: tell
    email: { to: [ops@example.com], subject: "hello" }
    retry: { limit: 3, backoff: fixed, initial: 1s }
"#,
    );
    let serve = serve_with_smtp(tmp.path(), maildev.smtp_url());
    let api = serve.api();
    let id = api.start_run("notify", "{}");
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "failed", "{run:#}");
    let tell = step(&run, "tell");
    assert_eq!(tell["attempts"], 1, "a refusal is not retried: {run:#}");
    let error = tell["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("530"),
        "unclear error: {error}"
    );
    assert!(maildev.emails().is_empty());
}

#[test]
fn unreachable_smtp_is_retried_then_fails_the_step() {
    let tmp = temp_dir();
    write(
        &workflows(tmp.path()),
        "notify.yaml",
        r#"on: { webhook: true }
steps:
  - id: tell
    email: { to: [ops@example.com], subject: "hello" }
    retry: { limit: 2, backoff: fixed, initial: 1s }
"#,
    );
    let dead = free_port();
    let serve = serve_with_smtp(tmp.path(), format!("smtp://127.0.0.1:{dead}"));
    let api = serve.api();
    let t0 = Instant::now();
    let id = api.start_run("notify", "{}");
    let run = api.wait_run(&id, Duration::from_secs(20));
    let took = t0.elapsed();
    assert_eq!(run["status"], "failed", "{run:#}");
    let tell = step(&run, "tell");
    assert_eq!(tell["attempts"], 3, "1 attempt and 2 retries: {run:#}");
    let error = tell["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("SMTP delivery failed"),
        "unclear error: {error}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "two 1 s backoffs took {took:?}"
    );
    assert_eq!(run["failure"]["step"], "tell", "{run:#}");
    assert_eq!(run["failure"]["attempts"], 3, "{run:#}");
    // Every attempt is shown, as an HTTP step's are.
    let log = tell["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(log.len(), 3, "{run:#}");
    let outcomes: Vec<&str> = log
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "failed"], "{run:#}");
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1, "{a:#}");
        assert_eq!(a["request"]["to"][0], "ops@example.com", "{a:#}");
        assert_eq!(a["request"]["subject"], "hello", "{a:#}");
        assert!(
            a["error"]
                .as_str()
                .unwrap_or_default()
                .contains("SMTP delivery failed"),
            "{a:#}"
        );
        assert!(a["finished_at"].is_string(), "{a:#}");
    }
}

/// The SMTP server is down when the approval e-mails are due and comes up a few seconds later:
/// the step keeps waiting (no failure), the e-mails arrive, and the link works.
#[test]
fn approval_emails_wait_out_an_smtp_outage() {
    let tmp = temp_dir();
    write(
        &workflows(tmp.path()),
        "gate.yaml",
        r#"on: { webhook: true }
steps:
  - id: gate
    approval:
      to: [alice@example.com]
      subject: "Ship it?"
      timeout: 10m
  - id: after
    sleep: 1s
"#,
    );
    let port = free_port();
    let serve = serve_with_smtp(tmp.path(), format!("smtp://127.0.0.1:{port}"));
    let api = serve.api();
    let id = api.start_run("gate", "{}");
    // Tries at about 0 s and 2 s fail (nothing listens); the next is at about 6 s.
    wait_for(Duration::from_secs(20), "a failed try to be logged", || {
        serve_logs(&serve)
            .contains("approval e-mail failed; trying again")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    let run = run_of(&api, &id);
    assert_eq!(step(&run, "gate")["status"], "waiting_approval", "{run:#}");
    let maildev = MailDev::start_on(tmp.path(), port);
    let mails = wait_for(Duration::from_secs(30), "the approval e-mail", || {
        let mails = maildev.emails();
        (!mails.is_empty()).then_some(mails)
    });
    assert_eq!(mails.len(), 1, "one e-mail for one recipient");
    let approve = on(&serve.base, &serve.base, &mails[0].approve());
    let page = post_page(&approve, "after the outage");
    assert_eq!(page.status, 200, "{}", page.body);
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(
        run["status"],
        "succeeded",
        "{run:#}\n{}",
        serve_logs(&serve)
    );
}

/// `runner serve` in `root`, mailing through the SMTP server at `url`.
fn serve_with_smtp(root: &Path, url: impl Into<String>) -> Daemon {
    start_serve(
        root,
        &Opts {
            smtp_url: Some(url.into()),
            ..Opts::default()
        },
    )
}

/// A port where a server accepts connections (20 at most) and keeps them open, saying nothing.
fn silent_server() -> u16 {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(20) {
            held.extend(conn.ok());
        }
    });
    port
}

/// `runner serve` with a `gate` workflow (an approval to alice and bob), mailing through a policy
/// SMTP server with `policy`.
fn gate_for_two(root: &Path, policy: &str) -> (PolicySmtp, Daemon) {
    let smtp = PolicySmtp::start(root, policy);
    write(
        &workflows(root),
        "gate.yaml",
        r#"on: { webhook: true }
steps:
  - id: gate
    approval:
      to: [alice@example.com, bob@example.com]
      subject: "Ship it?"
      timeout: 10m
"#,
    );
    let serve = serve_with_smtp(root, smtp.smtp_url());
    (smtp, serve)
}

/// One recipient is greylisted (451 twice): the other is mailed in the first round, not after
/// the first one's retries, and the greylisted one gets hers on a later round.
#[test]
fn a_greylisted_recipient_does_not_hold_back_the_others() {
    let tmp = temp_dir();
    let (smtp, serve) = gate_for_two(
        tmp.path(),
        r#"{"alice@example.com": {"code": 451, "times": 2}}"#,
    );
    let api = serve.api();
    let id = api.start_run("gate", "{}");
    let first = wait_outbox(&smtp.mail_dir, 1, Duration::from_secs(20));
    assert_eq!(first[0].1.to, ["bob@example.com"], "bob first: {first:?}");
    assert_eq!(
        smtp.rcpt_log(),
        ["RCPT alice@example.com 451", "RCPT bob@example.com 250"],
        "bob was asked in the same round as alice's first refusal"
    );
    // The run shows whose e-mail got out and whose is still being retried. (The SMTP server
    // writes the message before runner hears its answer and records it: wait for the record.)
    let sent_of = |run: &serde_json::Value, to: &str| {
        step(run, "gate")["emails"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .find(|e| e["to"] == to)
            .map(|e| e["sent_at"].is_string())
    };
    let run = wait_for(
        Duration::from_secs(10),
        "bob's e-mail recorded as sent",
        || {
            let run = run_of(&api, &id);
            (sent_of(&run, "bob@example.com") == Some(true)).then_some(run)
        },
    );
    let sent = |to: &str| sent_of(&run, to);
    assert_eq!(
        (sent("alice@example.com"), sent("bob@example.com")),
        (Some(false), Some(true)),
        "{run:#}"
    );
    // Retries at about 2 s and 6 s: the second one is accepted.
    let both = wait_outbox(&smtp.mail_dir, 2, Duration::from_secs(30));
    assert_eq!(both[1].1.to, ["alice@example.com"], "{both:?}");
    assert_eq!(
        smtp.rcpt_log()[2..],
        ["RCPT alice@example.com 451", "RCPT alice@example.com 250"],
        "only alice is tried again"
    );
    let run = run_of(&api, &id);
    assert_eq!(step(&run, "gate")["status"], "waiting_approval", "{run:#}");
}

/// A server that accepts the connection and never answers: an `email` step's attempt ends at the
/// step's `timeout` and is retried, instead of waiting forever.
#[test]
fn a_silent_smtp_server_times_the_email_step_out() {
    let tmp = temp_dir();
    let port = silent_server();
    write(
        &workflows(tmp.path()),
        "notify.yaml",
        r#"on: { webhook: true }
steps:
  - id: tell
    email: { to: [ops@example.com], subject: "hello" }
    timeout: 1s
    retry: { limit: 1, backoff: fixed, initial: 1s }
"#,
    );
    let serve = serve_with_smtp(tmp.path(), format!("smtp://127.0.0.1:{port}"));
    let api = serve.api();
    let id = api.start_run("notify", "{}");
    let run = api.wait_run(&id, Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run:#}");
    let tell = step(&run, "tell");
    assert_eq!(
        tell["attempts"], 2,
        "the timed-out attempt is retried: {run:#}"
    );
    let error = tell["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not finish within 1 s"),
        "unclear error: {error}"
    );
}

/// An approval step that failed (one mailbox refused) and is retried asks every recipient again,
/// with new links expiring at the new deadline; a link of the first round says it was replaced.
#[test]
fn a_retried_approval_mails_everyone_new_links() {
    let tmp = temp_dir();
    let (smtp, serve) = gate_for_two(tmp.path(), r#"{"bob@example.com": 550}"#);
    let api = serve.api();
    let id = api.start_run("gate", "{}");
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "failed", "{run:#}");
    let first = wait_outbox(&smtp.mail_dir, 1, Duration::from_secs(5));
    assert_eq!(first[0].1.to, ["alice@example.com"]);
    let old_link = on(&serve.base, &serve.base, &first[0].1.approve());

    smtp.set_policy("{}");
    let (status, body) = api.post(&format!("/runs/{id}/retry"), "");
    assert!(status < 300, "retry: {status} {body}");
    let all = wait_outbox(&smtp.mail_dir, 3, Duration::from_secs(20));
    let mut again: Vec<&str> = all[1..].iter().map(|(_, m)| m.to[0].as_str()).collect();
    again.sort_unstable();
    assert_eq!(again, ["alice@example.com", "bob@example.com"], "{all:?}");

    let page = get_page(&old_link);
    assert_eq!(page.status, 410, "{}", page.body);
    assert!(
        visible_text(&page.body).contains("Link replaced"),
        "{}",
        page.body
    );
    let alice_new = all[1..]
        .iter()
        .find(|(_, m)| m.to[0] == "alice@example.com")
        .expect("alice's new e-mail");
    let page = post_page(&on(&serve.base, &serve.base, &alice_new.1.approve()), "");
    assert_eq!(page.status, 200, "{}", page.body);
    let run = api.wait_run(&id, Duration::from_secs(20));
    assert_eq!(run["status"], "succeeded", "{run:#}");
}

/// Two API decisions at once: one is recorded and answered 200, the other 409 naming it; a
/// decision with a field of the wrong type is refused (a decision cannot be taken back).
#[test]
fn api_decisions_race_and_bad_fields_are_refused() {
    let tmp = temp_dir();
    write(
        &workflows(tmp.path()),
        "gate.yaml",
        r#"on: { webhook: true }
steps:
  - id: gate
    approval: { to: [alice@example.com], subject: "Ship it?", timeout: 1h }
"#,
    );
    let serve = start_serve(tmp.path(), &Opts::default());
    let api = serve.api();
    let first = api.start_run("gate", "{}");
    wait_status(&api, &first, "waiting_approval", Duration::from_secs(20));
    for (body, why) in [
        (
            r#"{"comment": 5}"#,
            "`comment` must be a string, not an integer",
        ),
        (
            r#"{"approver": ["x"]}"#,
            "`approver` must be a string, not an array",
        ),
        (r#"{"coment": "typo"}"#, "unknown field `coment`"),
        ("[1]", "the body must be an object"),
    ] {
        let (status, v) = api.post(&format!("/runs/{first}/steps/gate/approve"), body);
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(why),
            "{body}: {v}"
        );
    }
    let run = run_of(&api, &first);
    assert_eq!(step(&run, "gate")["status"], "waiting_approval", "{run:#}");

    let mut runs = vec![first];
    runs.extend((0..4).map(|_| api.start_run("gate", "{}")));
    for id in &runs {
        wait_status(&api, id, "waiting_approval", Duration::from_secs(20));
        let calls: Vec<_> = ["approve", "reject"]
            .into_iter()
            .map(|verb| {
                let (api, id) = (serve.api(), id.clone());
                std::thread::spawn(move || {
                    (
                        verb,
                        api.post(&format!("/runs/{id}/steps/gate/{verb}"), "{}"),
                    )
                })
            })
            .collect();
        let answers: Vec<(&str, (u16, Value))> = calls
            .into_iter()
            .map(|c| c.join().expect("thread"))
            .collect();
        let won: Vec<_> = answers.iter().filter(|(_, (s, _))| *s == 200).collect();
        assert_eq!(won.len(), 1, "exactly one decision counts: {answers:?}");
        let lost = answers
            .iter()
            .find(|(_, (s, _))| *s != 200)
            .expect("a loser");
        assert_eq!(lost.1.0, 409, "{answers:?}");
        let run = run_of(&api, id);
        let recorded = step(&run, "gate")["output"]["decision"].clone();
        assert_eq!(recorded, won[0].1.1["decision"], "{run:#} {answers:?}");
    }
}

/// `runner run` in the foreground serves the approval pages; the Reject that ends the run still
/// gets its page before the process exits (it used to exit first: an empty reply).
#[test]
fn foreground_run_answers_the_rejection_that_ends_it() {
    let tmp = temp_dir();
    let file = tmp.path().join("gate.yaml");
    std::fs::write(
        &file,
        r#"steps:
  - id: gate
    approval: { to: [alice@example.com], subject: "Ship it?", timeout: 1h }
  - id: after
    sleep: 1s
"#,
    )
    .expect("write");
    let outbox = tmp.path().join("outbox");
    let port = free_port();
    let mut cmd = runner_cmd();
    cmd.arg("run")
        .arg(&file)
        .arg("--db")
        .arg(tmp.path().join("runner.db"))
        .arg("--outbox")
        .arg(&outbox)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let child = std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(60)));
    let mails = wait_outbox(&outbox, 1, Duration::from_secs(30));
    let page = post_page(&mails[0].1.reject(), "no");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        visible_text(&page.body).contains("Rejected"),
        "{}",
        page.body
    );
    let (ok, out, err) = child.join().expect("runner run");
    assert!(!ok, "a rejected run exits non-zero: {out}\n{err}");
    assert!(out.contains(" rejected"), "{out}\n{err}");
}

/// Four retries of one failed run at once: one is taken (200), the others see it (409).
#[test]
fn api_retries_at_once_count_once() {
    let tmp = temp_dir();
    // An endpoint that never answers: each attempt runs into its 1 s timeout, so a retried run
    // is still running while the other retries arrive.
    let port = silent_server();
    write(
        &workflows(tmp.path()),
        "call.yaml",
        &format!(
            r#"on: {{ webhook: true }}
steps:
  - id: call
    http: {{ url: "http://127.0.0.1:{port}/never" }}
    timeout: 1s
    retry: {{ limit: 0 }}
"#
        ),
    );
    let serve = start_serve(tmp.path(), &Opts::default());
    let api = serve.api();
    for _ in 0..3 {
        let id = api.start_run("call", "{}");
        let run = api.wait_run(&id, Duration::from_secs(20));
        assert_eq!(run["status"], "failed", "{run:#}");
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (api, id) = (serve.api(), id.clone());
                std::thread::spawn(move || api.post(&format!("/runs/{id}/retry"), "").0)
            })
            .collect();
        let mut codes: Vec<u16> = calls
            .into_iter()
            .map(|c| c.join().expect("thread"))
            .collect();
        codes.sort_unstable();
        assert_eq!(codes, [200, 409, 409, 409], "run {id}");
        api.wait_run(&id, Duration::from_secs(20));
    }
}
