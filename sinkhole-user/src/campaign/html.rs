//! `sinkhole campaigns --html FILE`: the report as one self-contained HTML page (inline CSS,
//! inline SVG, no script, nothing fetched): per campaign a timeline of its sessions per hour,
//! why its sessions were grouped, its variants, its top clients and URL hosts.
//!
//! The timeline is hand-written SVG (a bar per hour, or per day for a campaign longer than
//! [`MAX_BARS`] hours): a few dozen lines, where a plotting crate would bring fonts and a
//! rasteriser the page does not need. Every text from the log is escaped.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::log::parse_time;
use super::report::{Campaign, Hour, Ranked, Report};

/// Bars in a timeline at most: past it, one bar per day.
pub const MAX_BARS: usize = 24 * 31;
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const MARGIN: f64 = 36.0;

/// The page.
pub fn page(report: &Report, generated: SystemTime) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>sinkhole campaigns</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222;background:#fff}}\
         section{{border-top:2px solid #888;margin-top:2em}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}\
         code{{background:#f2f2f2}}svg{{background:#fafafa;border:1px solid #ddd}}\
         </style></head><body>\n<h1>sinkhole campaigns</h1>\n<p>{} campaigns, {} sessions \
         ({} in no campaign), generated {}</p>\n",
        report.campaigns.len(),
        report.sessions,
        report.unclustered,
        humantime::format_rfc3339_seconds(generated)
    );
    for (i, campaign) in report.campaigns.iter().enumerate() {
        section(&mut out, i + 1, campaign);
    }
    out.push_str("</body></html>\n");
    out
}

fn section(out: &mut String, n: usize, c: &Campaign) {
    let _ = write!(
        out,
        "<section id=\"{id}\"><h2>#{n} {id}: {sessions} sessions from {clients} clients</h2>\n\
         <p>seen {first} .. {last}, {rate} sessions per hour; signatures of every session: \
         <code>{common}</code></p>\n",
        id = escape(&c.id),
        sessions = c.sessions,
        clients = c.clients,
        first = escape(c.first_seen.as_deref().unwrap_or("?")),
        last = escape(c.last_seen.as_deref().unwrap_or("?")),
        rate = c.sessions_per_hour,
        common = escape(&c.signatures.join(" ")),
    );
    timeline(out, &c.per_hour);
    out.push_str("<h3>Grouped by</h3><table><tr><th>feature</th><th>id</th><th>value</th><th>sessions</th></tr>\n");
    for g in &c.grouped_by {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            g.feature,
            escape(&g.id),
            escape(&g.value),
            g.sessions
        );
    }
    out.push_str("</table><h3>Variants</h3><table><tr><th>signatures</th><th>sessions</th></tr>\n");
    for v in &c.variants {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            escape(&v.signatures.join(" ")),
            v.sessions
        );
    }
    out.push_str("</table>\n");
    for (title, list) in [
        ("Top clients", &c.top_clients),
        ("URL hosts", &c.url_hosts),
        ("Recipients", &c.recipients),
        ("SYN fingerprints", &c.syn),
    ] {
        ranked(out, title, list);
    }
    out.push_str("</section>\n");
}

fn ranked(out: &mut String, title: &str, list: &[Ranked]) {
    let _ = write!(out, "<h3>{title}</h3>");
    if list.is_empty() {
        out.push_str("<p>-</p>\n");
        return;
    }
    out.push_str("<table>");
    for r in list {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            escape(&r.name),
            r.count
        );
    }
    out.push_str("</table>\n");
}

/// The sessions per hour as SVG bars from the first hour to the last (per day when that is
/// more than [`MAX_BARS`] hours).
fn timeline(out: &mut String, hours: &[Hour]) {
    let points: Vec<(u64, u64)> = hours
        .iter()
        .filter_map(|h| {
            let t = parse_time(&h.hour)?;
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
            Some((secs / 3600, h.sessions))
        })
        .collect();
    let (Some(&(first, _)), Some(&(last, _))) = (points.first(), points.last()) else {
        return;
    };
    let step = if last - first + 1 > MAX_BARS as u64 {
        24
    } else {
        1
    };
    let bars = ((last - first) / step + 1) as usize;
    let mut counts = vec![0u64; bars];
    for (hour, sessions) in points {
        counts[((hour - first) / step) as usize] += sessions;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let plot_w = WIDTH - 2.0 * MARGIN;
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let bar_w = plot_w / bars as f64;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\"><title>sessions per {unit}</title>\
         <line x1=\"{MARGIN}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" stroke=\"#444\"/>\
         <text x=\"2\" y=\"{top}\" font-size=\"11\">{max}</text>\
         <text x=\"{MARGIN}\" y=\"{label}\" font-size=\"11\">{from}</text>\
         <text x=\"{right}\" y=\"{label}\" font-size=\"11\" text-anchor=\"end\">{to}</text>",
        unit = if step == 1 { "hour" } else { "day" },
        base = MARGIN + plot_h,
        right = WIDTH - MARGIN,
        top = MARGIN + 4.0,
        label = HEIGHT - 8.0,
        from = hour_label(first),
        to = hour_label(last),
    );
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h = plot_h * n as f64 / max as f64;
        let _ = write!(
            out,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"#c0392b\"><title>{n}</title></rect>",
            MARGIN + bar_w * i as f64,
            MARGIN + plot_h - h,
            (bar_w - 1.0).max(1.0),
        );
    }
    out.push_str("</svg>\n");
}

fn hour_label(hour: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(hour * 3600);
    humantime::format_rfc3339_seconds(t).to_string()[..13].replace('T', " ") + "h"
}

/// Text for HTML content and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_nothing_is_fetched() {
        let report = Report {
            campaigns: vec![Campaign {
                id: "k-<b>".into(),
                signatures: vec!["pregreet".into()],
                sessions: 3,
                clients: 2,
                first_seen: Some("2026-03-01T10:00:00Z".into()),
                last_seen: Some("2026-03-01T12:10:00Z".into()),
                dnsbl: Default::default(),
                examples: vec![],
                grouped_by: vec![],
                variants: vec![],
                top_clients: vec![],
                recipients: vec![Ranked {
                    name: "<script>x</script>@example.org".into(),
                    count: 3,
                }],
                url_hosts: vec![],
                messages: 0,
                syn: vec![],
                per_hour: vec![
                    Hour {
                        hour: "2026-03-01T10:00:00Z".into(),
                        sessions: 2,
                    },
                    Hour {
                        hour: "2026-03-01T12:00:00Z".into(),
                        sessions: 1,
                    },
                ],
                sessions_per_hour: 1.4,
            }],
            sessions: 4,
            unclustered: 1,
            refused: 0,
        };
        let page = page(&report, SystemTime::UNIX_EPOCH);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;@example.org"));
        assert!(page.contains("k-&lt;b&gt;"));
        // Two bars over a three-hour span; nothing but the SVG namespace names another place.
        assert_eq!(page.matches("<rect").count(), 2);
        assert_eq!(page.matches("http").count(), 1, "{page}");
    }
}
