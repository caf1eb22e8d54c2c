//! TestContext: a temp lake (local directory or a real s3s-fs server on loopback), pinned
//! environment, and helpers to run the `clicklake` binary the way a user does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;

pub const ACCESS_KEY: &str = "clicklake-test";
pub const SECRET_KEY: &str = "clicklake-test-secret";
pub const BUCKET: &str = "lake";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// A running s3s-fs on a free loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("s3s-fs"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    candidates
        .into_iter()
        .chain(home_bin)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs is not installed: the storage tests need it. Install it with \
                 `cargo install --locked s3s-fs@0.14.1 --features binary` (scripts/test.sh does this)"
            )
        })
}

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        std::fs::create_dir_all(root.join("inbox")).expect("inbox bucket dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = StdCommand::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
        }
    }
}

/// The pseudonymisation key every test run uses.
pub const TEST_PII_KEY: &str = "test-pii-key-0123456789abcdef";

pub struct TestContext {
    pub dir: tempfile::TempDir,
    pub lake: String,
    pub s3: Option<S3Server>,
}

impl TestContext {
    pub fn new(backend: Backend) -> TestContext {
        let dir = tempfile::tempdir().expect("temp dir");
        let (lake, s3) = match backend {
            Backend::Local => (dir.path().join("lake").display().to_string(), None),
            Backend::S3 => {
                let server = S3Server::start(&dir.path().join("s3"));
                (format!("s3://{BUCKET}/prod"), Some(server))
            }
        };
        TestContext { dir, lake, s3 }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The binary with a pinned environment, run in the temp dir.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("clicklake").expect("binary built");
        self.pin(c.env_clear());
        c.current_dir(self.dir.path());
        c
    }

    /// The same as a std Command (for kill and rusage tests).
    pub fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("clicklake"));
        c.env_clear();
        c.envs(self.env());
        c.current_dir(self.dir.path());
        c
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("HOME".to_string(), self.dir.path().display().to_string()),
            ("CLICKLAKE_LAKE".to_string(), self.lake.clone()),
            ("TZ".to_string(), "Europe/Berlin".to_string()),
            // Personal columns are pseudonymised at landing with this key.
            ("CLICKLAKE_PII_KEY".to_string(), TEST_PII_KEY.to_string()),
        ];
        if let Some(s3) = &self.s3 {
            env.extend([
                ("AWS_ENDPOINT_URL".to_string(), s3.endpoint.clone()),
                ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
                ("AWS_REGION".to_string(), "us-east-1".to_string()),
                ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
                // s3s-fs does not set TCP_NODELAY: a request on a reused connection waits
                // about 40 ms for the client's delayed ACK.
                (
                    "CLICKLAKE_S3_REUSE_CONNECTIONS".to_string(),
                    "false".to_string(),
                ),
            ]);
        }
        env
    }

    fn pin<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.envs(self.env())
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run");
        assert!(
            out.status.success(),
            "clicklake {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Starts `args` in the background, held at the test hook `pause` (`point:seconds`, see
    /// `CLICKLAKE_PAUSE`); stdout is discarded, stderr kept for `wait_with_output`.
    pub fn spawn_paused(&self, pause: &str, args: &[&str]) -> std::process::Child {
        self.std_cmd()
            .env("CLICKLAKE_PAUSE", pause)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn clicklake")
    }

    /// Writes `text` as this test's `clicklake.toml` (read by every later command).
    pub fn write_config(&self, text: impl AsRef<[u8]>) {
        std::fs::write(self.path("clicklake.toml"), text).expect("write clicklake.toml");
    }

    /// Writes a check file `name` into this test's `checks/` (made if missing), the directory
    /// `--checks-dir checks` names.
    pub fn write_check(&self, name: &str, sql: &str) {
        let dir = self.path("checks");
        std::fs::create_dir_all(&dir).expect("create checks/");
        std::fs::write(dir.join(name), sql).expect("write a check file");
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run")
    }

    /// Ingest with `--json`, parsed.
    pub fn ingest_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["ingest", "--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ingest json: {e}: {out}"))
    }

    /// Runs a query and returns its rows as CSV lines (header dropped).
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = self.ok(&["sql", "--format", "csv", "-c", sql]);
        out.lines().skip(1).map(str::to_string).collect()
    }

    /// The row groups a query's scan considered and those its bloom filters did not rule out
    /// (`row_groups_pruned_bloom_filter=N total → M matched` in `EXPLAIN ANALYZE`).
    pub fn bloom_filter_row_groups(&self, sql: &str) -> (u64, u64) {
        let plan = self.ok(&["sql", "-c", &format!("EXPLAIN ANALYZE {sql}")]);
        let metric = plan
            .split("row_groups_pruned_bloom_filter=")
            .nth(1)
            .unwrap_or_else(|| panic!("no bloom filter metric in:\n{plan}"));
        let numbers: Vec<u64> = metric
            .split(',')
            .next()
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (numbers[0], numbers[1])
    }

    /// A single number from a query.
    pub fn count(&self, sql: &str) -> u64 {
        let rows = self.query(sql);
        assert_eq!(rows.len(), 1, "{sql} returned {rows:?}");
        rows[0]
            .parse()
            .unwrap_or_else(|_| panic!("{sql} returned {rows:?}"))
    }

    /// Runs `generate` into `rel` and returns the manifest.
    pub fn generate(&self, rel: &str, args: &[&str]) -> serde_json::Value {
        let out = self.path(rel);
        let mut all = vec!["generate", "--out", out.to_str().expect("utf8 path")];
        all.extend_from_slice(args);
        self.ok(&all);
        let text = std::fs::read_to_string(out.join("_manifest.json")).expect("manifest");
        serde_json::from_str(&text).expect("manifest json")
    }

    /// The local directory holding a table's files: the lake directory, or where s3s-fs stores
    /// the table's objects.
    pub fn table_dir(&self, table: &str) -> PathBuf {
        match &self.s3 {
            None => self.path("lake").join(table),
            Some(s3) => s3.root.join(BUCKET).join("prod").join(table),
        }
    }

    /// Writes `sql` as the model `file` of `layer` (`clean` or `star`) into this test's override
    /// directory and returns that directory, to pass as `--sql-dir`.
    pub fn override_model(&self, layer: &str, file: &str, sql: &str) -> String {
        let dir = self.path(&format!("models/{layer}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(file), sql).expect("write model");
        self.path("models").to_str().expect("utf8 path").to_string()
    }

    /// Overrides the model `file` of `layer` with its embedded text edited by replacing `from`
    /// with `to` (see [`edited_model`]); returns the directory to pass as `--sql-dir`.
    pub fn override_edited_model(&self, layer: &str, file: &str, from: &str, to: &str) -> String {
        self.override_model(layer, file, &edited_model(layer, file, from, to))
    }

    /// Copies a fixture into the temp dir.
    pub fn fixture(&self, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let dst = self.path(&format!("fixtures/{name}"));
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        dst
    }

    /// The inbox holding `files` of this test's `inbox/` directory: that directory, or on S3
    /// the same files uploaded under `s3://inbox/in/`.
    pub fn inbox_of(&self, files: &[&str]) -> String {
        match &self.s3 {
            None => self.path("inbox").display().to_string(),
            Some(_) => {
                for f in files {
                    self.upload_to_inbox(&self.path(&format!("inbox/{f}")), &format!("in/{f}"));
                }
                "s3://inbox/in/".to_string()
            }
        }
    }

    /// Deletes `key` from the s3s-fs `inbox` bucket (it stores objects as files).
    pub fn delete_from_inbox(&self, key: &str) {
        let s3 = self.s3.as_ref().expect("an s3 context");
        std::fs::remove_file(s3.root.join("inbox").join(key)).expect("delete from bucket");
    }

    /// Makes `inbox/<file>` (and on S3 its copy in the inbox bucket) look written `age` ago.
    pub fn backdate_inbox_file(&self, file: &str, age: std::time::Duration) {
        let mut paths = vec![self.path(&format!("inbox/{file}"))];
        if let Some(s3) = &self.s3 {
            paths.push(s3.root.join("inbox").join("in").join(file));
        }
        for p in paths {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(std::time::SystemTime::now() - age))
                .unwrap_or_else(|e| panic!("backdate {}: {e}", p.display()));
        }
    }

    /// `run --inbox INBOX --json --no-check`, which must succeed; its summary.
    pub fn run_inbox_json(&self, inbox: &str) -> serde_json::Value {
        let out = self.run(&["run", "--inbox", inbox, "--json", "--no-check"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        serde_json::from_slice(&out.stdout).expect("run --json prints one object")
    }

    /// Puts a local file into the s3s-fs `inbox` bucket under `key` (s3s-fs stores objects as
    /// files); returns its s3:// URL.
    pub fn upload_to_inbox(&self, local: &Path, key: &str) -> String {
        let s3 = self.s3.as_ref().expect("an s3 context");
        let dst = s3.root.join("inbox").join(key);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(local, &dst).expect("copy into bucket");
        format!("s3://inbox/{key}")
    }
}

/// The text of an embedded model, `sql/<layer>/<file>`, edited by replacing `from` with `to`
/// (which must occur: an edit that no longer applies fails the test).
fn edited_model(layer: &str, file: &str, from: &str, to: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sql")
        .join(layer)
        .join(file);
    let text = std::fs::read_to_string(&path).expect("embedded model");
    assert!(
        text.contains(from),
        "{} no longer contains {from:?}",
        path.display()
    );
    text.replace(from, to)
}

/// The generated NDJSON files of `dir`, sorted (the generator numbers them in time order).
pub fn ndjson_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    files
}

/// A map of the generator's manifest (`{"a": 1}`) as the CSV lines a `key, value` query prints.
pub fn manifest_lines(manifest: &serde_json::Value, key: &str) -> Vec<String> {
    manifest[key]
        .as_object()
        .unwrap_or_else(|| panic!("manifest has no map {key}"))
        .iter()
        .map(|(k, v)| format!("{k},{v}"))
        .collect()
}

/// The Parquet files under a table's directory, whether the log references them or not.
pub fn parquet_files_under(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if !p.ends_with("_delta_log") {
                n += parquet_files_under(&p);
            }
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

/// Waits until some command holds (or held) the lake's lease.
pub fn wait_for_a_lease(ctx: &TestContext) {
    let lease_dir = match ctx.table_dir("x").parent() {
        Some(lake) => lake.join("_clicklake/lease"),
        None => unreachable!("a table directory has a parent"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // A held lease: one without `released_at` (an earlier ingest leaves its released one).
    let held = || {
        std::fs::read_dir(&lease_dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v.get("run_id").is_some() && v["released_at"].is_null())
            })
        })
    };
    while !held() {
        assert!(std::time::Instant::now() < deadline, "no lease appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until more Parquet files than `before` are under `dir` (a paused writer wrote its data).
pub fn wait_for_new_files(dir: &Path, before: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while parquet_files_under(dir) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no new files under {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Asserts a failure with exit `code` and one line on stderr mentioning each of `words`;
/// returns that line.
pub fn one_line_failure(out: &Output, code: i32, words: &[&str]) -> String {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for word in words {
        assert!(err.contains(word), "stderr should mention {word:?}: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

/// `sql FLAG VALUE` (time travel) must leave `raw_events` out: exit 2, and the note names it in
/// a line of its own (no log line of the delta kernel).
pub fn assert_raw_events_absent_at(ctx: &TestContext, flag: &str, value: &str) {
    let out = ctx.run(&["sql", flag, value, "-c", "SELECT count(*) FROM raw_events"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
    assert!(!err.contains("ERROR") && !err.contains("kernel"), "{err}");
    assert!(
        err.contains("not registered") && err.contains("raw_events"),
        "{err}"
    );
    // The hint speaks of that point in time, not of the lake as it is now.
    assert!(
        err.contains("at that version or time") && !err.contains("`clicklake"),
        "{err}"
    );
}

/// An ingest summary's (lines, landed, quarantined).
pub fn line_counts(s: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
    (n("lines"), n("landed"), n("quarantined"))
}

/// Runs both backends of a test body.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn local() {
                ($body)($crate::context::Backend::Local)
            }
            #[test]
            fn s3() {
                ($body)($crate::context::Backend::S3)
            }
        }
    };
}

/// Runs a command to completion and returns (status, stdout, peak RSS in KiB of that child).
pub fn run_with_rusage(mut cmd: StdCommand) -> (std::process::ExitStatus, Vec<u8>, i64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("read stdout");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child);
    (
        std::process::ExitStatus::from_raw(status),
        stdout,
        usage.ru_maxrss,
    )
}

/// One valid canonical event line (with its line end): a page view of visitor `a1`.
pub fn event_line(id: &str) -> String {
    format!(
        "{{\"event_id\":\"{id}\",\"event_time\":\"2026-01-05T10:00:00Z\",\
         \"event_type\":\"page_view\",\"anonymous_id\":\"a1\"}}\n"
    )
}

/// Appends `bytes` to the file at `path`, as a producer writing a log does.
pub fn append_to(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// The test cases of a JUnit report, read as a CI system reads them: (name, `pass` /
/// `failure` / `skipped`, the failure's text), after checking the suite's counts add up.
pub fn junit_cases(path: &std::path::Path) -> Vec<(String, String, String)> {
    use quick_xml::events::Event;
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut cases: Vec<(String, String, String)> = Vec::new();
    let mut in_failure = false;
    let mut declared = (0usize, 0usize);
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("{e}: {text}"))
        {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let attr = |name: &[u8]| {
                    e.try_get_attribute(name)
                        .unwrap()
                        .map(|a| a.unescape_value().unwrap().to_string())
                        .unwrap_or_default()
                };
                match e.name().as_ref() {
                    b"testsuite" => {
                        declared = (
                            attr(b"tests").parse().unwrap(),
                            attr(b"failures").parse().unwrap(),
                        )
                    }
                    b"testcase" => cases.push((attr(b"name"), "pass".into(), String::new())),
                    b"failure" => {
                        cases.last_mut().unwrap().1 = "failure".into();
                        in_failure = true;
                    }
                    b"skipped" => cases.last_mut().unwrap().1 = "skipped".into(),
                    _ => {}
                }
            }
            Event::Text(t) if in_failure => {
                cases.last_mut().unwrap().2 += &t.decode().unwrap();
            }
            Event::GeneralRef(r) if in_failure => {
                let name = r.decode().unwrap();
                let ch = match name.as_ref() {
                    "apos" => "'",
                    "quot" => "\"",
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    other => panic!("entity {other}"),
                };
                cases.last_mut().unwrap().2 += ch;
            }
            Event::End(e) if e.name().as_ref() == b"failure" => in_failure = false,
            _ => {}
        }
    }
    let failures = cases.iter().filter(|c| c.1 == "failure").count();
    assert_eq!(declared, (cases.len(), failures), "{text}");
    cases
}
