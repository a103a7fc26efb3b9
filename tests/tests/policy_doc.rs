//! `docs/policy.md` is what sinkhole does: every TOML block parses as the file its first line
//! names (`# policy.toml`, `# addresses/NAME.toml`, `# sinkhole.toml`), and every worked
//! example (between `<!-- example: NAME -->` and `<!-- end -->`) runs as it stands against the
//! real daemon: its files written, its SMTP sessions (`C:` lines sent, a run of them in one
//! write; `S:` lines read and compared) replayed from 127.0.0.1, its `$ sinkhole ...` commands
//! run and their output compared. In expected lines `…` stands for any text, and runs of
//! blanks compare as one.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sinkhole::config::Config;
use sinkhole::policy::Policy;
use sinkhole::policy::address::AddressFile;
use sinkhole_tests::daemon::{Daemon, SmtpClient, dns_without_zones, smtp_config};
use sinkhole_tests::dns::{start_nsd, zone_file};
use sinkhole_tests::{free_port, sinkhole_bin, temp_dir};

const DOC: &str = include_str!("../../docs/policy.md");

/// A fenced block: its info string (`toml`, `text`, `console`) and its lines.
struct Block {
    info: String,
    lines: Vec<String>,
}

/// The doc's blocks, each with the example it belongs to (if any).
fn blocks() -> Vec<(Option<String>, Block)> {
    let mut out = Vec::new();
    let mut example: Option<String> = None;
    let mut open: Option<Block> = None;
    for line in DOC.lines() {
        if let Some(block) = &mut open {
            if line.starts_with("```") {
                out.push((example.clone(), open.take().unwrap()));
            } else {
                block.lines.push(line.to_owned());
            }
            continue;
        }
        if let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            example = Some(name.to_owned());
        } else if line == "<!-- end -->" {
            example = None;
        } else if let Some(info) = line.strip_prefix("```") {
            open = Some(Block {
                info: info.to_owned(),
                lines: Vec::new(),
            });
        }
    }
    assert!(open.is_none(), "an unclosed block");
    out
}

/// A TOML block's file name (its first line, `# NAME`) and text.
fn toml_file(block: &Block) -> (String, String) {
    let name = block.lines[0]
        .strip_prefix("# ")
        .unwrap_or_else(|| panic!("a TOML block must start with `# FILE`: {:?}", block.lines));
    (name.to_owned(), block.lines.join("\n") + "\n")
}

/// Parses a TOML block as the file it names.
fn parse(name: &str, text: &str) {
    let result = if name.starts_with("sinkhole") {
        Config::parse(text, name).map(drop)
    } else if name.starts_with("addresses/") {
        AddressFile::parse(text, name).map(drop)
    } else {
        Policy::parse(text, name).map(drop)
    };
    if let Err(e) = result {
        panic!("docs/policy.md: {name} does not parse: {e}\n{text}");
    }
}

#[test]
fn every_toml_block_parses_as_the_file_it_names() {
    let mut parsed = 0;
    for (_, block) in blocks() {
        if block.info == "toml" {
            let (name, text) = toml_file(&block);
            parse(&name, &text);
            parsed += 1;
        }
    }
    assert!(parsed >= 12, "only {parsed} TOML blocks");
}

/// Whether `actual` is what `expected` says: `…` any text, runs of blanks as one.
fn like(expected: &str, actual: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (expected, actual) = (squeeze(expected), squeeze(actual));
    let parts: Vec<&str> = expected.split('…').collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// `base` with `over`'s tables and keys laid over it.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Replays one `text` block from 127.0.0.1; the first mismatch, if any.
fn session(addr: SocketAddr, lines: &[String]) -> Result<(), String> {
    let mut client = SmtpClient::connect_from(addr, "127.0.0.1".parse().unwrap());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("C:") {
            let mut write = Vec::new();
            while i < lines.len() && lines[i].starts_with("C:") {
                let text = lines[i][2..].strip_prefix(' ').unwrap_or(&lines[i][2..]);
                write.extend_from_slice(text.as_bytes());
                write.extend_from_slice(b"\r\n");
                i += 1;
            }
            client.send(&write);
        } else if let Some(expected) = lines[i].strip_prefix("S: ") {
            let got = client.line().unwrap_or_else(|| "<closed>".into());
            if !like(expected, &got) {
                return Err(format!("expected `{expected}`, got `{got}`"));
            }
            i += 1;
        } else {
            panic!("a session line is `C: ...` or `S: ...`: {:?}", lines[i]);
        }
    }
    Ok(())
}

/// Runs one `console` block's commands in `dir`; the first mismatch, if any.
fn console(dir: &Path, lines: &[String]) -> Result<(), String> {
    let mut i = 0;
    while i < lines.len() {
        let command = lines[i]
            .strip_prefix("$ sinkhole ")
            .unwrap_or_else(|| panic!("a console block runs `$ sinkhole ...`: {:?}", lines[i]));
        i += 1;
        let expected: Vec<&String> = lines[i..]
            .iter()
            .take_while(|l| !l.starts_with("$ "))
            .collect();
        i += expected.len();
        let out = Command::new(sinkhole_bin())
            .args(command.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("run sinkhole");
        if !out.status.success() {
            return Err(format!(
                "`sinkhole {command}` exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = stdout.lines().collect();
        let same =
            got.len() == expected.len() && expected.iter().zip(&got).all(|(e, g)| like(e, g));
        if !same {
            return Err(format!("`sinkhole {command}` printed:\n{stdout}"));
        }
    }
    Ok(())
}

/// Retries `step` (bounded): a change a command made reaches the daemon within a moment.
fn eventually(what: &str, mut step: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match step() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs the example `name` (its blocks in order).
fn run_example(name: &str, blocks: &[&Block]) {
    let dns = start_nsd(&[("127.in-addr.arpa", &zone_file(""))]).expect("nsd");
    let dir = temp_dir("policy-doc");
    let path = dir.path().to_owned();
    fs::create_dir_all(path.join("addresses")).unwrap();
    let mut configs = Vec::new();
    let mut policy = false;
    for block in blocks.iter().filter(|b| b.info == "toml") {
        let (file, text) = toml_file(block);
        parse(&file, &text);
        if file.starts_with("sinkhole") {
            configs.push((file, text));
        } else {
            policy |= !file.starts_with("addresses/");
            fs::write(path.join(&file), text).unwrap();
        }
    }
    let port = free_port();
    let mut rest = dns_without_zones(dns.addr);
    rest.push_str(&format!(
        "[policy]\naddresses_dir = \"{}\"\n",
        path.join("addresses").display()
    ));
    if policy {
        rest.push_str(&format!(
            "file = \"{}\"\n",
            path.join("policy.toml").display()
        ));
    }
    let base = smtp_config(port, &path, "", "", &rest).replace(
        "hostname = \"sinkhole.test\"",
        "hostname = \"mx.trap.example\"",
    );
    let config_for = |text: &str| {
        let mut table: toml::Table = base.parse().unwrap();
        merge(&mut table, text.parse().unwrap());
        toml::to_string(&table).unwrap()
    };
    // The daemon runs with `sinkhole.toml`; other configs are for the commands.
    let main = configs
        .iter()
        .find(|(file, _)| file == "sinkhole.toml")
        .map_or_else(|| base.clone(), |(_, text)| config_for(text));
    for (file, text) in &configs {
        fs::write(path.join(file), config_for(text)).unwrap();
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut daemon = Daemon::start_with_config(dir, &main, addr);
    let mut running = true;
    let mut after_command = false;
    for block in blocks {
        match block.info.as_str() {
            // A session right after a command may meet the daemon before it read the change:
            // tried again (bounded); any other session must hold the first time.
            "text" if after_command => {
                assert!(running, "{name}: a session after the daemon stopped");
                eventually(&format!("{name}: a session"), || {
                    session(addr, &block.lines)
                });
            }
            "text" => {
                assert!(running, "{name}: a session after the daemon stopped");
                if let Err(e) = session(addr, &block.lines) {
                    panic!("{name}: a session: {e}");
                }
            }
            "console" => {
                // What reads the session log waits for the daemon to write it out.
                let reads_log = block.lines.iter().any(|l| {
                    l.starts_with("$ sinkhole addresses")
                        || l.starts_with("$ sinkhole policy replay")
                });
                if reads_log && running {
                    daemon.stop();
                    running = false;
                }
                eventually(&format!("{name}: a command"), || {
                    console(&path, &block.lines)
                });
            }
            _ => {}
        }
        after_command = block.info == "console";
    }
    if running {
        daemon.stop();
    }
    let stderr = daemon.stderr();
    assert!(!stderr.contains(" ERROR "), "{name}: {stderr}");
    let _ = std::io::stderr().flush();
}

#[test]
fn every_worked_example_runs_as_it_stands() {
    let all = blocks();
    let mut names: Vec<String> = Vec::new();
    for (example, _) in &all {
        if let Some(name) = example
            && !names.contains(name)
        {
            names.push(name.clone());
        }
    }
    assert_eq!(
        names,
        [
            "campaign-session",
            "phases",
            "per-person",
            "auto-close",
            "replay"
        ]
    );
    for name in &names {
        let blocks: Vec<&Block> = all
            .iter()
            .filter(|(example, _)| example.as_ref() == Some(name))
            .map(|(_, block)| block)
            .collect();
        run_example(name, &blocks);
    }
}

#[test]
fn blanks_and_ellipses_in_expected_lines() {
    assert!(like(
        "250 2.0.0 Ok: queued as …",
        "250 2.0.0 Ok: queued as 17.M1.x"
    ));
    assert!(like("a  b … d", "a b c c d"));
    assert!(!like("a … d", "a c"));
    assert!(!like("a", "a b"));
}
