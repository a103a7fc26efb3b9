//! The trace header block prepended to every captured message, and the dates it carries.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::score::DnsblListing;

/// What the trace headers say about a message's session.
#[derive(Clone, Debug)]
pub struct Trace {
    pub session_id: String,
    pub client: SocketAddr,
    pub rdns: Option<String>,
    pub helo: Option<String>,
    /// `SMTP`, `ESMTP` or `ESMTPS` ([`crate::smtp::Session::protocol`]).
    pub protocol: &'static str,
    pub dnsbl: Vec<DnsblListing>,
    pub mail_from: String,
}

/// Longest value taken from client input into a header.
const MAX_VALUE: usize = 255;
/// Shown for a value the session does not have.
const NONE: &str = "(none)";

impl Trace {
    /// `Return-Path`, `Received` and the `X-Sinkhole-*` headers, CRLF-terminated, ready to be
    /// written in front of the body. `by` is our hostname (from the configuration).
    pub fn header_block(&self, by: &str, at: SystemTime) -> Vec<u8> {
        let helo = self.helo.as_deref().map(sanitize);
        let rdns = self.rdns.as_deref().map(sanitize);
        let ip = self.client.ip();
        let dnsbl = if self.dnsbl.is_empty() {
            NONE.to_string()
        } else {
            let listings: Vec<String> = self
                .dnsbl
                .iter()
                .map(|l| format!("{}={}", sanitize(&l.zone), sanitize(&l.codes.join(","))))
                .collect();
            listings.join("; ")
        };
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "Return-Path: <{mail_from}>\r\n\
             Received: from {helo} ({rdns} [{ip}])\r\n\tby {by} (sinkhole) with {protocol} id {id};\r\n\t{date}\r\n\
             X-Sinkhole-Session: {id}\r\n\
             X-Sinkhole-Client: {client}\r\n\
             X-Sinkhole-Rdns: {rdns_value}\r\n\
             X-Sinkhole-Helo: {helo_value}\r\n\
             X-Sinkhole-Dnsbl: {dnsbl}\r\n",
            mail_from = sanitize(&self.mail_from),
            helo = helo.as_deref().unwrap_or("unknown"),
            rdns = rdns.as_deref().unwrap_or("unknown"),
            protocol = self.protocol,
            id = self.session_id,
            date = rfc5322_date(at),
            client = self.client,
            rdns_value = rdns.as_deref().unwrap_or(NONE),
            helo_value = helo.as_deref().unwrap_or(NONE),
        );
        out.into_bytes()
    }
}

/// Client input made safe for a header value: printable ASCII only (anything else, CR and LF
/// first of all, becomes `?`), at most [`MAX_VALUE`] characters.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .take(MAX_VALUE)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// `Thu, 26 Nov 2026 20:45:51 +0000` (RFC 5322 section 3.3, in UTC).
pub fn rfc5322_date(at: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let rest = secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let at = UNIX_EPOCH + Duration::from_secs(1_709_208_000); // 2024-02-29 12:00:00
        assert_eq!(rfc5322_date(at), "Thu, 29 Feb 2024 12:00:00 +0000");
        let at = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(rfc5322_date(at), "Thu, 31 Dec 2026 23:59:59 +0000");
    }

    #[test]
    fn client_input_cannot_inject_headers() {
        let trace = Trace {
            session_id: "abc".into(),
            client: "[2001:db8::7]:4000".parse().unwrap(),
            rdns: None,
            helo: Some("evil\r\nX-Injected: yes\u{7f}é".into()),
            protocol: "ESMTPS",
            dnsbl: vec![DnsblListing {
                zone: "zen.example".into(),
                codes: vec!["127.0.0.2".into(), "127.0.0.4".into()],
            }],
            mail_from: "a@b\nc".into(),
        };
        let block = String::from_utf8(trace.header_block("mx.example", UNIX_EPOCH)).unwrap();
        assert!(!block.contains("\r\nX-Injected"));
        assert!(block.contains("X-Sinkhole-Helo: evil??X-Injected: yes??\r\n"));
        assert!(block.contains("Return-Path: <a@b?c>\r\n"));
        assert!(block.contains("\tby mx.example (sinkhole) with ESMTPS id abc;\r\n"));
        assert!(block.contains("X-Sinkhole-Client: [2001:db8::7]:4000\r\n"));
        assert!(block.contains("X-Sinkhole-Rdns: (none)\r\n"));
        assert!(block.contains("X-Sinkhole-Dnsbl: zen.example=127.0.0.2,127.0.0.4\r\n"));
        // Every line ends in CRLF; continuation lines start with a tab.
        for line in block.split_terminator("\r\n") {
            assert!(!line.contains('\r') && !line.contains('\n'));
            assert!(line.starts_with('\t') || line.contains(": "), "{line:?}");
        }
        assert!(sanitize(&"x".repeat(1000)).len() == MAX_VALUE);
    }
}
