//! STARTTLS against the real daemon with real clients: swaks, Python's smtplib over TLS 1.2
//! and 1.3 (with the certificate verified), raw bytes pipelined after STARTTLS, a client that
//! sends garbage instead of a ClientHello, a configured certificate, and bad TLS config.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::run_client;
use sinkhole_tests::{sinkhole, temp_dir};

/// An smtplib client: EHLO, STARTTLS (TLS `max` 1.2 or exactly 1.3, SNI `sni`, the
/// certificate verified against `cafile` for the name `sni`, or not verified when empty),
/// EHLO again, one message, QUIT. Prints what the client saw as JSON.
const SMTPLIB_TLS: &str = r#"
import json, smtplib, ssl, sys
port, version, sni, cafile = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
if cafile:
    ctx.load_verify_locations(cafile)
else:
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
if version == '1.2':
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
else:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
s = smtplib.SMTP('127.0.0.1', int(port), timeout=10)
# smtplib sends the host it connected to as SNI; a name is what a real MX client sends.
s._host = sni
s.ehlo('python.example')
assert s.has_extn('starttls'), s.esmtp_features
code, _ = s.starttls(context=ctx)
assert code == 220, code
code, _ = s.ehlo('python-tls.example')
assert code == 250, code
refused = s.sendmail('a@example.com', ['trap@example.org'], b'Subject: tls\r\n\r\nover tls\r\n')
assert refused == {}, refused
cert = s.sock.getpeercert()
out = {'version': s.sock.version(), 'cipher': s.sock.cipher()[0],
       'subject': dict(x[0] for x in cert.get('subject', ())),
       'starttls_again': s.has_extn('starttls')}
s.quit()
print(json.dumps(out))
"#;

fn smtplib_tls(daemon: &Daemon, version: &str, sni: &str, cafile: Option<&Path>) -> Value {
    let cafile = cafile.map(|p| p.display().to_string()).unwrap_or_default();
    let output = Command::new("python3")
        .args(["-c", SMTPLIB_TLS, &daemon.addr.port().to_string()])
        .args([version, sni, &cafile])
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "smtplib failed: {}\ndaemon: {}",
        String::from_utf8_lossy(&output.stderr),
        daemon.stderr()
    );
    serde_json::from_slice(&output.stdout).expect("the client's JSON")
}

fn transcript_lines(session: &Value) -> Vec<(String, String)> {
    session["transcript"]
        .as_array()
        .expect("a transcript")
        .iter()
        .map(|l| (l[1].as_str().unwrap().into(), l[2].as_str().unwrap().into()))
        .collect()
}

fn position(lines: &[(String, String)], who: &str, prefix: &str) -> Option<usize> {
    lines
        .iter()
        .position(|(w, l)| w == who && l.starts_with(prefix))
}

#[test]
fn swaks_sends_a_message_over_starttls() {
    let mut daemon = Daemon::start("", "");
    let output = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(daemon.addr.port().to_string())
        .args(["--from", "sender@example.com", "--to", "trap@example.org"])
        .args(["--helo", "client.example", "--timeout", "10"])
        .args(["--tls", "--tls-sni", "mx.example.org", "--body", "tls body"])
        .output()
        .expect("run swaks");
    let out = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "swaks failed:\n{out}");
    assert!(out.contains("<-  220 2.0.0 Ready to start TLS"), "{out}");
    assert!(out.contains("=== TLS started with cipher TLSv1.3"), "{out}");
    // `~` marks lines swaks sent and received inside TLS.
    assert!(out.contains("<~  250 2.0.0 Ok: queued as "), "{out}");

    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1);
    let stored = fs::read_to_string(&messages[0]).unwrap();
    assert!(stored.contains("tls body"), "{stored}");
    // RFC 3848: the Received line names ESMTP over TLS.
    assert!(stored.contains(" (sinkhole) with ESMTPS id "), "{stored}");
    daemon.stop();
    let session = &daemon.sessions()[0];
    assert_eq!(session["tls"]["version"], "TLSv1_3", "{session}");
    assert_eq!(session["tls"]["sni"], "mx.example.org", "{session}");
    assert_eq!(session["verdict"], "accepted", "{session}");
}

#[test]
fn smtplib_over_tls_1_2_and_1_3_is_logged_with_version_cipher_and_sni() {
    let mut daemon = Daemon::start("", "");
    // The self-signed pair made at first start, for the configured hostname: it verifies.
    let cert = daemon.storage().join("tls/cert.pem");
    let key = daemon.storage().join("tls/key.pem");
    let mode = fs::metadata(&key)
        .expect("the self-signed key")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let tls12 = smtplib_tls(&daemon, "1.2", "sinkhole.test", Some(&cert));
    assert_eq!(tls12["version"], "TLSv1.2", "{tls12}");
    assert_eq!(tls12["subject"]["commonName"], "sinkhole.test", "{tls12}");
    // Offered once: not again inside TLS.
    assert_eq!(tls12["starttls_again"], false, "{tls12}");
    let tls13 = smtplib_tls(&daemon, "1.3", "mx.example.org", None);
    assert_eq!(tls13["version"], "TLSv1.3", "{tls13}");
    assert_eq!(daemon.new_messages().len(), 2);
    daemon.stop();

    let sessions = daemon.sessions();
    assert_eq!(sessions.len(), 2);
    let (first, second) = (&sessions[0], &sessions[1]);
    assert_eq!(first["tls"]["version"], "TLSv1_2", "{first}");
    let cipher = first["tls"]["cipher"].as_str().unwrap();
    assert!(cipher.starts_with("TLS_ECDHE_"), "{first}");
    assert_eq!(first["tls"]["sni"], "sinkhole.test");
    assert_eq!(second["tls"]["version"], "TLSv1_3", "{second}");
    let cipher = second["tls"]["cipher"].as_str().unwrap();
    assert!(cipher.starts_with("TLS13_"), "{second}");
    assert_eq!(second["tls"]["sni"], "mx.example.org");
    // The transcript goes on inside TLS: the second EHLO, the message, QUIT.
    for session in [first, second] {
        let lines = transcript_lines(session);
        let ready = position(&lines, "s", "220 2.0.0 Ready to start TLS").expect("the 220");
        let ehlo = position(&lines, "c", "ehlo python-tls.example").expect("EHLO inside TLS");
        assert!(ready < ehlo, "{lines:?}");
        assert!(position(&lines, "s", "250 2.0.0 Ok: queued as").unwrap() > ehlo);
        assert!(position(&lines, "c", "quit").is_some(), "{lines:?}");
        assert_eq!(session["helo"], "python-tls.example");
    }
    let stored = fs::read_to_string(&daemon.new_messages()[0]).unwrap();
    assert!(stored.contains("over tls"), "{stored}");
}

/// Raw client: STARTTLS and MAIL in one write, then TLS. Prints every reply it got as JSON.
const PIPELINED_STARTTLS: &str = r#"
import json, socket, ssl, sys
sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)
def reply(recv):
    data = b''
    while True:
        chunk = recv(4096)
        if not chunk:
            return data.decode() + '<closed>'
        data += chunk
        last = data.decode().split('\r\n')[-2] if data.endswith(b'\r\n') else ''
        if len(last) >= 4 and last[3] == ' ':
            return data.decode()
seen = {'banner': reply(sock.recv)}
sock.sendall(b'EHLO raw.example\r\n')
seen['ehlo'] = reply(sock.recv)
sock.sendall(b'STARTTLS\r\nMAIL FROM:<a@b>\r\n')
seen['starttls'] = reply(sock.recv)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
tls = ctx.wrap_socket(sock)
tls.settimeout(1.0)
try:
    seen['unasked'] = tls.recv(4096).decode()
except socket.timeout:
    seen['unasked'] = ''
tls.settimeout(10)
tls.sendall(b'EHLO raw.example\r\n')
seen['ehlo_tls'] = reply(tls.recv)
tls.sendall(b'RCPT TO:<trap@example.org>\r\n')
seen['rcpt'] = reply(tls.recv)
tls.sendall(b'QUIT\r\n')
seen['quit'] = reply(tls.recv)
print(json.dumps(seen))
"#;

#[test]
fn commands_pipelined_after_starttls_are_discarded_and_logged() {
    let mut daemon = Daemon::start("", "");
    let output = run_client(Command::new("python3").args([
        "-c",
        PIPELINED_STARTTLS,
        &daemon.addr.port().to_string(),
    ]));
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        seen["ehlo"].as_str().unwrap().contains("250-STARTTLS"),
        "{seen}"
    );
    assert_eq!(
        seen["starttls"], "220 2.0.0 Ready to start TLS\r\n",
        "{seen}"
    );
    // No reply to the smuggled MAIL arrives inside TLS, and the transaction never began.
    assert_eq!(seen["unasked"], "", "{seen}");
    assert!(
        seen["ehlo_tls"]
            .as_str()
            .unwrap()
            .starts_with("250-sinkhole.test"),
        "{seen}"
    );
    assert!(seen["rcpt"].as_str().unwrap().starts_with("503 "), "{seen}");
    assert!(seen["quit"].as_str().unwrap().starts_with("221 "), "{seen}");
    daemon.stop();

    let session = &daemon.sessions()[0];
    let lines = transcript_lines(session);
    let discarded = "<discarded after STARTTLS> MAIL FROM:<a@b>";
    assert!(position(&lines, "c", discarded).is_some(), "{lines:?}");
    assert!(position(&lines, "s", "250 2.1.0").is_none(), "{lines:?}");
    assert_eq!(session["tls"]["version"], "TLSv1_3", "{session}");
    assert!(
        session["transactions"].as_array().unwrap().is_empty(),
        "{session}"
    );
}

#[test]
fn garbage_instead_of_a_client_hello_is_logged_and_closed() {
    let mut daemon = Daemon::start("", "");
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 sinkhole.test"));
    client.send(b"EHLO bad.example\r\n");
    client.reply();
    client.send(b"STARTTLS\r\n");
    assert_eq!(client.reply(), ["220 2.0.0 Ready to start TLS"]);
    client.send(b"GET / HTTP/1.1\r\nHost: sinkhole.test\r\n\r\n");
    assert!(client.closed(), "the daemon keeps a failed handshake open");
    daemon.wait_stderr("TLS handshake failed", Duration::from_secs(10));

    // Others are still served, in clear text and over TLS.
    let mut other = SmtpClient::connect(daemon.addr);
    assert!(other.reply()[0].starts_with("220 sinkhole.test"));
    other.send(b"QUIT\r\n");
    assert!(other.reply()[0].starts_with("221 "));
    smtplib_tls(&daemon, "1.3", "mx.example.org", None);
    daemon.assert_running();
    daemon.stop();

    let sessions = daemon.sessions();
    let failed = sessions
        .iter()
        .find(|s| s["helo"] == "bad.example")
        .expect("the failed session is logged");
    assert_eq!(failed["tls"], false, "{failed}");
    let lines = transcript_lines(failed);
    let (who, last) = lines.last().unwrap();
    assert_eq!(who, "c");
    assert!(last.starts_with("<TLS handshake failed: "), "{lines:?}");
}

#[test]
fn a_configured_certificate_is_served() {
    let dir = temp_dir("tls-cert");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=mx.configured.test"])
        .args(["-addext", "subjectAltName=DNS:mx.configured.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(status.status.success(), "{status:?}");
    let smtp = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let mut daemon = Daemon::start(&smtp, "");
    for version in ["1.2", "1.3"] {
        let seen = smtplib_tls(&daemon, version, "mx.configured.test", Some(&cert));
        assert_eq!(
            seen["subject"]["commonName"], "mx.configured.test",
            "{seen}"
        );
    }
    assert!(
        !daemon.storage().join("tls").exists(),
        "a self-signed pair was made anyway"
    );
    daemon.stop();
}

#[test]
fn bad_tls_config_is_one_line_and_a_failed_start() {
    let dir = temp_dir("tls-bad");
    let config = dir.path().join("half.toml");
    fs::write(&config, "[smtp]\ntls_cert = \"/etc/hostname\"\n").unwrap();
    let out = sinkhole(&["check-config", "--config", config.to_str().unwrap()]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":2: smtp.tls_key: "), "{stderr}");

    // A file that is no PEM certificate: the daemon names it and does not start.
    let junk = dir.path().join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    let config = dir.path().join("junk.toml");
    fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls_cert = \"{0}\"\ntls_key = \"{0}\"\n\
             [storage]\ndir = \"{1}\"\n[xdp]\npin_dir = \"{1}/no-bpffs\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            junk.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = sinkhole(&["run", "--config", config.to_str().unwrap()]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sinkhole: STARTTLS: ") && last.contains(&junk.display().to_string()),
        "{stderr}"
    );
}
