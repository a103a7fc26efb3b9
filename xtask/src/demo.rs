//! `cargo xtask demo`: a first look at sinkhole in under a minute (root). In two network
//! namespaces it creates (a server side and a client side joined by a veth pair, documentation
//! addresses only) it starts the daemon with XDP on the server's interface and a local
//! `rbldnsd` serving two demo DNSBL zones, replays a small spam campaign with `swaks` from
//! several client addresses, and prints as it happens each session's score and verdict, every
//! escalation into the drop map, the kernel's drop counters rising while the blocked clients
//! keep trying, and finally the campaign report. It cleans up after itself: on return or
//! error through [`Lab`]'s `Drop`, and on Ctrl-C or a kill through a watcher process that runs
//! the same clean-up once this process is gone.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, is_root, run_quiet, workspace_root};

const SERVER: &str = "198.51.100.1";
const PORT: u16 = 25;
/// The demo's DNSBL zones: weights 3 (refused at RCPT) and 2; both together reach the block
/// threshold of 5.
const ZONE_SPAM: &str = "spam.demo.example";
const ZONE_BOTS: &str = "bots.demo.example";

/// The campaign's clients: address, what it is, listed in which zones, whether it sends with
/// MAIL FROM equal to RCPT TO (a signature the demo config blocks on).
const CLIENTS: [(&str, &str, &[&str], bool); 4] = [
    ("198.51.100.20", "a clean sender", &[], false),
    ("198.51.100.10", "listed in one zone", &[ZONE_SPAM], false),
    (
        "198.51.100.11",
        "listed in both zones",
        &[ZONE_SPAM, ZONE_BOTS],
        false,
    ),
    ("198.51.100.12", "clean, MAIL FROM = RCPT TO", &[], true),
];

pub fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    cargo(&["build", "--release", "-p", "sinkhole-user"])?;
    for tool in ["rbldnsd", "swaks", "nsenter", "ip"] {
        if !crate::status_ok(Command::new("sh").args(["-c", &format!("command -v {tool}")])) {
            bail!("the demo needs `{tool}` (`cargo xtask setup` installs it)");
        }
    }
    let started = Instant::now();
    let mut lab = Lab::new()?;
    say(&format!(
        "server namespace {} ({SERVER}), client namespace {}",
        lab.srv, lab.cli
    ));
    lab.start_rbldnsd()?;
    lab.start_daemon()?;

    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| watch_sessions(&lab, &done));
        scope.spawn(|| watch_drop_map(&lab, &done));
        let result = replay(&lab);
        done.store(true, Ordering::Relaxed);
        result
    })?;

    say("the campaign report (`sinkhole campaigns`):");
    let report = lab.sinkhole(&["campaigns"])?;
    for line in report.lines() {
        println!("    {line}");
    }
    say(&format!(
        "done in {:.1}s; cleaning up",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Seconds since the demo started, for every printed line.
fn say(text: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    println!("[{:5.1}s] {text}", start.elapsed().as_secs_f64());
}

/// The campaign: one session from each client, then the refused clients keep trying.
fn replay(lab: &Lab) -> Result<()> {
    say("the campaign: one message from each client");
    for (ip, what, _, eq) in CLIENTS {
        let to = "trap@example.org";
        let from = if eq { to } else { "offers@bulk.example.com" };
        say(&format!(
            "client {ip} ({what}) sends from <{from}> to <{to}>"
        ));
        let outcome = lab.swaks(ip, from, to, 10)?;
        say(&format!("  {ip}: {outcome}"));
        std::thread::sleep(Duration::from_millis(600));
    }
    say("the refused clients keep trying for 10 s; the blocked ones never reach TCP");
    let until = Instant::now() + Duration::from_secs(10);
    let mut last_report = Instant::now();
    while Instant::now() < until {
        for (ip, _, zones, eq) in CLIENTS {
            if zones.is_empty() && !eq {
                continue;
            }
            let outcome = lab.swaks(ip, "again@bulk.example.com", "trap@example.org", 1)?;
            if last_report.elapsed() > Duration::from_secs(3) {
                say(&format!("  {ip}: {outcome}"));
            }
        }
        if last_report.elapsed() > Duration::from_secs(3) {
            print_drops(lab)?;
            last_report = Instant::now();
        }
    }
    print_drops(lab)?;
    Ok(())
}

/// The kernel's counters: drops per blocked entry and in total.
fn print_drops(lab: &Lab) -> Result<()> {
    let list = lab.sinkhole(&["list", "--json"])?;
    let entries: Vec<String> = json_objects(&list)
        .iter()
        .map(|e| {
            format!(
                "{} {} drops",
                field(e, "prefix").unwrap_or_default(),
                field(e, "drops").unwrap_or_default()
            )
        })
        .collect();
    let stats = lab.sinkhole(&["stats", "--json"])?;
    say(&format!(
        "kernel drop counters: {}; packets dropped in all {}",
        entries.join(", "),
        field(&stats, "dropped").unwrap_or_default()
    ));
    Ok(())
}

/// Prints each finished session from `sessions.jsonl`: client, score, listings, signatures,
/// verdict.
fn watch_sessions(lab: &Lab, done: &AtomicBool) {
    let log = lab.dir.join("data/sessions.jsonl");
    let mut seen = 0;
    while !done.load(Ordering::Relaxed) {
        let text = fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().skip(seen) {
            seen += 1;
            let zones: Vec<String> = line
                .split("\"zone\":\"")
                .skip(1)
                .filter_map(|rest| rest.split('"').next().map(str::to_string))
                .collect();
            say(&format!(
                "  session from {}: score {}, DNSBL [{}], signatures [{}], verdict {}",
                field(line, "client_ip").unwrap_or_default(),
                field(line, "score").unwrap_or_default(),
                zones.join(", "),
                array(line, "signatures").unwrap_or_default(),
                field(line, "verdict").unwrap_or_default(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints every entry that appears in the drop map, with its reason.
fn watch_drop_map(lab: &Lab, done: &AtomicBool) {
    let mut known = HashSet::new();
    while !done.load(Ordering::Relaxed) {
        if let Ok(list) = lab.sinkhole(&["list", "--json"]) {
            for entry in json_objects(&list) {
                let prefix = field(&entry, "prefix").unwrap_or_default();
                if known.insert(prefix.clone()) {
                    say(&format!(
                        "  >> {prefix} escalated into the XDP drop map (reason {})",
                        field(&entry, "reason").unwrap_or_default()
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The top-level objects of a JSON array printed one per `{...}` without nesting beyond
/// strings, as `sinkhole list --json` prints them.
fn json_objects(text: &str) -> Vec<String> {
    text.split('{')
        .skip(1)
        .map(|o| o.split('}').next().unwrap_or_default().to_string())
        .collect()
}

/// The scalar value of `"key":` in `json` (strings unquoted); enough for the demo's output.
fn field(json: &str, key: &str) -> Option<String> {
    let rest = json.split(&format!("\"{key}\":")).nth(1)?.trim_start();
    Some(match rest.strip_prefix('"') {
        Some(s) => s.split('"').next()?.to_string(),
        None => rest.split([',', '}', ']']).next()?.trim().to_string(),
    })
}

/// The items of the array `"key":[...]` in `json`, unquoted and comma-joined.
fn array(json: &str, key: &str) -> Option<String> {
    let rest = json.split(&format!("\"{key}\":[")).nth(1)?;
    Some(rest.split(']').next()?.replace('"', "").replace(',', ", "))
}

/// The namespaces, files and processes of one demo run.
struct Lab {
    srv: String,
    cli: String,
    dir: PathBuf,
    config: PathBuf,
    children: Vec<Child>,
    /// Removes the namespaces (and with them the veth pair), the pin dir and `dir`.
    cleanup: String,
}

impl Lab {
    fn new() -> Result<Lab> {
        let id = std::process::id();
        let (srv, cli) = (format!("shdemo-srv-{id}"), format!("shdemo-cli-{id}"));
        let dir = std::env::temp_dir().join(format!("sinkhole-demo-{id}"));
        let pins = PathBuf::from(format!("/sys/fs/bpf/sinkhole-demo-{id}"));
        let cleanup = format!(
            "ip netns del {srv} 2>/dev/null; ip netns del {cli} 2>/dev/null; rm -rf {} {}",
            pins.display(),
            dir.display()
        );
        // Runs the clean-up once this process is gone, however it went; its own process group
        // keeps a Ctrl-C at the terminal from reaching it.
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {id} 2>/dev/null; do sleep 0.2; done; {cleanup}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the clean-up watcher")?;
        let lab = Lab {
            srv,
            cli,
            config: dir.join("sinkhole.toml"),
            dir,
            children: Vec::new(),
            cleanup,
        };
        lab.network(&pins)?;
        Ok(lab)
    }

    fn network(&self, pins: &Path) -> Result<()> {
        let (srv, cli) = (self.srv.as_str(), self.cli.as_str());
        let id = std::process::id() % 1_000_000;
        let (near, far) = (format!("shd{id}a"), format!("shd{id}b"));
        let mut steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), srv.into()],
            vec!["netns".into(), "add".into(), cli.into()],
        ];
        let ns = |ns: &str, args: &[&str]| -> Vec<String> {
            ["-n", ns]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        steps.push(ns(
            srv,
            &[
                "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", cli,
            ],
        ));
        steps.push(ns(
            srv,
            &["addr", "add", &format!("{SERVER}/24"), "dev", &near],
        ));
        for (ip, ..) in CLIENTS {
            steps.push(ns(cli, &["addr", "add", &format!("{ip}/24"), "dev", &far]));
        }
        for (ns_name, dev) in [(srv, &near), (cli, &far)] {
            steps.push(ns(ns_name, &["link", "set", "lo", "up"]));
            steps.push(ns(ns_name, &["link", "set", dev, "up"]));
        }
        for step in steps {
            run_quiet(Command::new("ip").args(&step))?;
        }
        fs::create_dir_all(self.dir.join("zones"))?;
        fs::write(
            &self.config,
            format!(
                r#"[smtp]
listen = ["{SERVER}:{PORT}"]
hostname = "sinkhole.demo.example"
[storage]
dir = "{data}"
[dnsbl]
nameservers = ["127.0.0.1:5353"]
timeout = "1s"
reject_threshold = 3
block_threshold = 5
block_ttl = "10m"
[[dnsbl.zone]]
name = "{ZONE_SPAM}"
weight = 3
[[dnsbl.zone]]
name = "{ZONE_BOTS}"
weight = 2
[xdp]
interfaces = ["{near}"]
mode = "skb"
pin_dir = "{pins}"
[campaign]
block_signatures = [["mail-from-eq-rcpt-to"]]
[metrics]
listen = "127.0.0.1:9725"
"#,
                data = self.dir.join("data").display(),
                pins = pins.display(),
            ),
        )?;
        Ok(())
    }

    /// `rbldnsd` in the server namespace on 127.0.0.1:5353, listing the campaign's clients.
    fn start_rbldnsd(&mut self) -> Result<()> {
        let mut specs = Vec::new();
        for zone in [ZONE_SPAM, ZONE_BOTS] {
            let listed: Vec<&str> = CLIENTS
                .iter()
                .filter(|(_, _, zones, _)| zones.contains(&zone))
                .map(|(ip, ..)| *ip)
                .collect();
            let file = format!("{zone}.ip4set");
            fs::write(
                self.dir.join("zones").join(&file),
                format!(
                    ":127.0.0.2:listed by the sinkhole demo\n{}\n",
                    listed.join("\n")
                ),
            )?;
            specs.push(format!("{zone}:ip4set:{file}"));
            say(&format!("rbldnsd zone {zone} lists {}", listed.join(", ")));
        }
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.srv, "rbldnsd", "-n", "-u", "rbldns", "-b",
            ])
            .arg("127.0.0.1/5353")
            .arg("-w")
            .arg(self.dir.join("zones"))
            .args(&specs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rbldnsd")?;
        self.children.push(child);
        Ok(())
    }

    /// The daemon in the server namespace (through `nsenter`, so it sees the host's bpffs);
    /// its log lines about XDP and blocks are shown. Returns once it listens.
    fn start_daemon(&mut self) -> Result<()> {
        let mut child = self
            .in_srv(workspace_root().join("target/release/sinkhole"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sinkhole")?;
        let stderr = child.stderr.take().expect("piped");
        self.children.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let shown = ["XDP", "listening", "block", "WARN", "ERROR"];
                if shown.iter().any(|s| line.contains(s)) {
                    // The logger's own timestamp and module are noise next to ours.
                    let text = line.split_once("] ").map_or(line.as_str(), |(_, t)| t);
                    say(&format!("daemon: {text}"));
                }
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .context("the daemon did not start listening within 20 s")
    }

    fn in_srv(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.srv))
            .arg("--")
            .arg(program);
        command
    }

    /// `sinkhole ARGS --config CONFIG` (on the pinned maps and storage); its stdout.
    fn sinkhole(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(workspace_root().join("target/release/sinkhole"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "sinkhole {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One SMTP session from `source` with `swaks`; what came of it, in a few words.
    fn swaks(&self, source: &str, from: &str, to: &str, timeout_s: u32) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.cli))
            .args(["--", "swaks", "--server"])
            .arg(format!("{SERVER}:{PORT}"))
            .args(["--local-interface", source, "--from", from, "--to", to])
            .args(["--helo", "mail.bulk.example.com", "--timeout"])
            .arg(format!("{timeout_s}s"))
            .args(["--header", "Subject: cheap watches"])
            .stdin(Stdio::null())
            .output()
            .context("running swaks")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let refused = text.lines().find(|l| l.starts_with("<** "));
        Ok(match (out.status.code(), refused) {
            (Some(0), _) => "message accepted (250)".into(),
            (_, Some(reply)) => format!("refused: {}", reply.trim_start_matches("<** ")),
            (Some(2), _) => "no connection: its SYNs are dropped by XDP".into(),
            (code, None) => format!("swaks exited {code:?}"),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first, so the daemon detaches and writes its session log.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("sh").arg("-c").arg(&self.cleanup).status();
    }
}
