//! `sinkhole check-config` validates the policy file the configuration names.

use std::process::Command;

use sinkhole_tests::sinkhole_bin;

/// Runs `check-config` on a config naming `policy`; returns (exit code, stdout, stderr).
fn check(policy: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!("[policy]\nfile = {:?}\nstall = \"10s\"\n", policy_path),
    )
    .unwrap();
    let out = Command::new(sinkhole_bin())
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr)
        .unwrap()
        .replace(policy_path.to_str().unwrap(), "POLICY");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        stderr,
    )
}

#[test]
fn a_good_policy_passes() {
    let (code, stdout, _) = check(sinkhole::policy::EXAMPLE_FILE);
    assert_eq!((code, stdout.as_str()), (0, "configuration ok\n"));
}

#[test]
fn a_broken_policy_names_file_line_and_key() {
    let cases = [
        (
            "[[rule]]\nto = \"*\"\naction = \"drop\"\n",
            "sinkhole: POLICY:3: rule[0].action: unknown variant `drop`",
        ),
        (
            "[[rule]]\nto = \"*\"\n\nhost = [\"203.0.113.0/24\", \"mx\"]\naction = \"reject\"\n",
            "sinkhole: POLICY:4: rule[0].host[1]: ",
        ),
        (
            "[[rule]]\nto = \"*\"\naction = \"tempfail\"\nmessage = \"550 no\"\n",
            "sinkhole: POLICY:4: rule[0].message: ",
        ),
        (
            "local_domains = \"example.org\"\n",
            "sinkhole: POLICY:1: local_domains: ",
        ),
    ];
    for (policy, expected) in cases {
        let (code, _, stderr) = check(policy);
        assert_eq!(code, 2, "{policy}: {stderr}");
        assert!(stderr.starts_with(expected), "{policy}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_missing_policy_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(&config, "[policy]\nfile = \"/nonexistent/policy.toml\"\n").unwrap();
    let out = Command::new(sinkhole_bin())
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("sinkhole: /nonexistent/policy.toml: "),
        "{stderr}"
    );
}

#[test]
fn every_address_file_is_checked_and_a_broken_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let addresses = dir.path().join("addresses");
    std::fs::create_dir(&addresses).unwrap();
    std::fs::write(
        addresses.join("a.toml"),
        "addresses = [\"a@example.org\"]\n",
    )
    .unwrap();
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\naddresses_dir = {:?}\nlocal_domains_phase = \"rcpt\"\n",
            addresses
        ),
    )
    .unwrap();
    let check = || {
        Command::new(sinkhole_bin())
            .args(["check-config", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broken = addresses.join("b.toml");
    std::fs::write(
        &broken,
        "addresses = [\"b@example.org\"]\n[block]\nhosts = [\"nope\"]\n",
    )
    .unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "sinkhole: {}:3: block.hosts[0]: `nope` is not a reverse name",
            broken.display()
        )),
        "{stderr}"
    );
    // A phase that is not one of the two is named with its line.
    std::fs::write(&config, "[policy]\nlocal_domains_phase = \"data\"\n").unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":2: policy.local_domains_phase: unknown variant `data`"),
        "{stderr}"
    );
}
