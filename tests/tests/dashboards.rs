//! The operator's monitoring kit in `packaging/`: the Prometheus alert rules pass `promtool`
//! (checked, and unit-tested against series that should and should not fire), and the rules
//! and the Grafana dashboard ask only for series a running daemon exports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use sinkhole_tests::netns::{NetNs, PinDir, spawn_xdp_daemon};
use sinkhole_tests::{free_port, kernel_tests_allowed, skip, temp_dir};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(packaging("prometheus"))
        .output()
        .expect("run promtool (Debian package prometheus; cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() {
    if Command::new("promtool").arg("--version").output().is_err() {
        skip(
            "the_alert_rules_pass_promtool_and_fire_when_they_should",
            "no promtool (cargo xtask setup installs the Debian package prometheus)",
        );
        return;
    }
    let (ok, out) = promtool(&["check", "rules", "sinkhole.rules.yml"]);
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "sinkhole.rules.test.yml"]);
    assert!(ok, "{out}");
}

/// The metric names in a PromQL expression: identifiers that start like sinkhole's and the
/// standard process series (label names and values, functions and keywords are not such).
fn metric_names(expr: &str, names: &mut BTreeSet<String>) {
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("sinkhole_") || word.starts_with("process_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
}

/// Every `expr` in a JSON document (the dashboard's targets).
fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => json_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_rules_ask_only_for_exported_series() -> anyhow::Result<()> {
    if !kernel_tests_allowed("the_dashboard_and_the_rules_ask_only_for_exported_series") {
        return Ok(());
    }
    let mut wanted = BTreeSet::new();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(packaging(
        "grafana/sinkhole.json",
    ))?)?;
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules = std::fs::read_to_string(packaging("prometheus/sinkhole.rules.yml"))?;
    exprs.extend(
        rules
            .lines()
            .skip_while(|l| !l.contains("groups:"))
            .map(str::to_string),
    );
    for expr in &exprs {
        metric_names(expr, &mut wanted);
    }

    // A daemon with everything that has series: XDP on the namespace's loopback, a DNSBL zone,
    // capture; its /metrics read inside the namespace.
    let ns = NetNs::new("dash")?;
    let pins = PinDir::new("dash");
    let storage = temp_dir("dashboards");
    let (smtp, metrics) = (free_port(), free_port());
    let config = storage.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"127.0.0.1:{smtp}\"]\n[storage]\ndir = \"{}\"\n\
             [dnsbl]\nnameservers = [\"127.0.0.1:{}\"]\n\
             [[dnsbl.zone]]\nname = \"zen.test\"\n\
             [xdp]\ninterfaces = [\"lo\"]\nmode = \"skb\"\npin_dir = \"{}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            storage.path().join("data").display(),
            free_port(),
            pins.path().display()
        ),
    )?;
    let _daemon = spawn_xdp_daemon(&ns, &config)?;
    let scrape = ns.run_in(|| {
        // One session, so that the reply counters have series.
        let mut smtp = TcpStream::connect(("127.0.0.1", smtp))?;
        smtp.write_all(b"QUIT\r\n")?;
        let mut replies = String::new();
        smtp.read_to_string(&mut replies)?;
        assert!(replies.contains("221 "), "{replies}");
        // Its counters move as it ends, a hair after the client saw its last reply.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut stream = TcpStream::connect(("127.0.0.1", metrics))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            if body.contains("sinkhole_smtp_replies_total{") || std::time::Instant::now() > deadline
            {
                return Ok::<_, std::io::Error>(body);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    })??;
    let exported: BTreeSet<&str> = scrape
        .lines()
        .skip_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "asked for but not exported: {missing:?}\nexported: {exported:?}"
    );
    Ok(())
}
