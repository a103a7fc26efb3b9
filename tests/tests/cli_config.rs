//! Which configuration a command reads (`--config`/`-c`, else /etc/sinkhole/sinkhole.toml,
//! else the embedded defaults, said with `--verbose`), and the read-only commands refusing a
//! `pin_dir` that holds no maps instead of making empty ones.

use std::fs;
use std::path::Path;

use sinkhole_tests::netns::PinDir;
use sinkhole_tests::{kernel_tests_allowed, sinkhole, sinkhole_ok, skip, temp_dir};

const SYSTEM_CONFIG: &str = "/etc/sinkhole/sinkhole.toml";

/// `sinkhole ARGS`: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = sinkhole(args).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_config_commands_read_etc_sinkhole_and_verbose_says_which() {
    let test = "without_config_commands_read_etc_sinkhole_and_verbose_says_which";
    if !rustix::process::geteuid().is_root() {
        skip(test, "writing /etc/sinkhole needs root");
        return;
    }
    // No other test may see the system file while it is there.
    let _machine = sinkhole_tests::exclusive();
    let system = Path::new(SYSTEM_CONFIG);
    let saved = fs::read(system).ok();
    let had_system = saved.is_some();
    let made_dir = !system.parent().unwrap().exists();
    fs::create_dir_all(system.parent().unwrap()).unwrap();

    // A file that `check-config` refuses shows that it was read.
    fs::write(system, "[smtp]\nmax_connections = 0\n").unwrap();
    let (code, _, stderr) = run(&["check-config", "--verbose"]);
    let system_result = (code, stderr);
    fs::write(system, "[smtp]\nhostname = \"etc.sinkhole.test\"\n").unwrap();
    let (code, stdout, stderr) = run(&["check-config", "-v"]);
    let named = temp_dir("cli-config");
    let own = named.path().join("own.toml");
    fs::write(&own, "[smtp]\nhostname = \"own.sinkhole.test\"\n").unwrap();
    let (own_code, _, own_stderr) = run(&["check-config", "-v", "-c", own.to_str().unwrap()]);
    match saved {
        Some(text) => fs::write(system, text).unwrap(),
        None => fs::remove_file(system).unwrap(),
    }
    if made_dir {
        fs::remove_dir(system.parent().unwrap()).unwrap();
    }
    let (defaults_code, _, defaults_stderr) = run(&["check-config", "--verbose"]);

    assert_eq!(system_result.0, Some(2), "{}", system_result.1);
    assert!(
        system_result
            .1
            .contains("/etc/sinkhole/sinkhole.toml:2: smtp.max_connections"),
        "{}",
        system_result.1
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "configuration ok\n");
    assert!(
        stderr.contains("sinkhole: configuration /etc/sinkhole/sinkhole.toml"),
        "{stderr}"
    );
    // -c names another file, which wins.
    assert_eq!(own_code, Some(0), "{own_stderr}");
    assert!(
        own_stderr.contains(&format!("sinkhole: configuration {}", own.display())),
        "{own_stderr}"
    );
    if !had_system {
        assert_eq!(defaults_code, Some(0), "{defaults_stderr}");
        assert!(
            defaults_stderr.contains("the embedded defaults"),
            "{defaults_stderr}"
        );
    }
}

#[test]
fn read_only_commands_refuse_a_pin_dir_without_maps_and_make_none() {
    if !kernel_tests_allowed("read_only_commands_refuse_a_pin_dir_without_maps_and_make_none") {
        return;
    }
    let pins = PinDir::new("nomap");
    let dir = temp_dir("cli-nomaps");
    let config = dir.path().join("sinkhole.toml");
    fs::write(
        &config,
        format!("[xdp]\npin_dir = \"{}\"\n", pins.path().display()),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let wanted = format!(
        "no sinkhole maps in {} (xdp.pin_dir)",
        pins.path().display()
    );
    for args in [
        vec!["list"],
        vec!["list", "-j"],
        vec!["stats", "--json"],
        vec!["unblock", "192.0.2.1"],
        vec!["export", "--format", "rbldnsd", "--family", "ipv4"],
    ] {
        let mut args = args;
        args.extend(["-c", cfg]);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(&wanted), "{args:?}: {stderr}");
        assert!(
            !pins.path().exists(),
            "{args:?} made {}",
            pins.path().display()
        );
    }
    // `block` makes them; then `list` reads them.
    sinkhole_ok(&["block", "192.0.2.1", "-c", cfg]).unwrap();
    let listed = sinkhole_ok(&["list", "-j", "-c", cfg]).unwrap();
    assert!(listed.contains("192.0.2.1/32"), "{listed}");
}

#[test]
fn version_names_the_commit_and_the_build_day() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    let (code, stdout, stderr) = run(&["--version"]);
    assert_eq!(code, Some(0), "{stderr}");
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(
        stdout.starts_with(&format!(
            "sinkhole {} (commit {}, built 20",
            env!("CARGO_PKG_VERSION"),
            head.trim()
        )),
        "{stdout}"
    );
}

#[test]
fn config_prints_what_differs_from_the_defaults_and_all_with_all() {
    let dir = temp_dir("cli-print");
    let file = dir.path().join("sinkhole.toml");
    fs::write(
        &file,
        "[smtp]\nhostname = \"trap.example\"\nmax_connections = 20000\n\
         [dnsbl]\ntimeout = \"1500ms\"\n",
    )
    .unwrap();
    let cfg = file.to_str().unwrap();
    let printed = sinkhole_ok(&["config", "-c", cfg]).unwrap();
    // max_connections is set, but to its default.
    assert_eq!(
        printed,
        "[dnsbl]\ntimeout = \"1s 500ms\"\n\n[smtp]\nhostname = \"trap.example\"\n"
    );
    let all = sinkhole_ok(&["config", "--all", "-c", cfg]).unwrap();
    for line in [
        "hostname = \"trap.example\"",
        "max_connections = 20000",
        "pin_dir = \"/sys/fs/bpf/sinkhole\"",
        "[[dnsbl.zone]]",
    ] {
        assert!(all.contains(line), "{line} in\n{all}");
    }
    // What it prints reads back as the same configuration.
    let again = dir.path().join("again.toml");
    fs::write(&again, &all).unwrap();
    assert_eq!(
        sinkhole_ok(&["config", "--all", "-c", again.to_str().unwrap()]).unwrap(),
        all
    );
}
