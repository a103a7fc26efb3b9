//! Host names of the `http://` and `https://` URLs in a captured message: what a campaign
//! advertises. Plain text and HTML as sent, including quoted-printable soft line breaks
//! inside a URL; base64 parts are not decoded.

/// At most this many distinct hosts are taken from one message.
pub const MAX_HOSTS_PER_MESSAGE: usize = 64;

/// Longest authority (`user@host:port`) looked at; DNS names are at most 253 octets.
const MAX_AUTHORITY: usize = 300;

/// The distinct hosts, lowercased, in order of first appearance.
pub fn url_hosts(body: &[u8]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(at) = find_scheme_end(body, i) {
        i = at;
        let Some(host) = authority_host(body, at) else {
            continue;
        };
        if !hosts.contains(&host) {
            hosts.push(host);
            if hosts.len() == MAX_HOSTS_PER_MESSAGE {
                break;
            }
        }
    }
    hosts
}

/// The position just after the next `http://` or `https://` (any case) at or after `from`.
fn find_scheme_end(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 7 <= body.len() {
        let rest = &body[i..];
        if rest[..4].eq_ignore_ascii_case(b"http") {
            let after = if rest.len() > 4 && rest[4].eq_ignore_ascii_case(&b's') {
                5
            } else {
                4
            };
            if rest[after..].starts_with(b"://") {
                return Some(i + after + 3);
            }
        }
        i += 1;
    }
    None
}

/// The host of the authority starting at `at`, validated: a DNS name or an IP literal.
fn authority_host(body: &[u8], mut at: usize) -> Option<String> {
    let mut authority = Vec::with_capacity(64);
    while at < body.len() {
        // Quoted-printable soft line break: `=` at the end of a line continues it.
        if body[at] == b'=' {
            let rest = &body[at + 1..];
            let soft_break = if rest.starts_with(b"\r\n") {
                3
            } else if rest.starts_with(b"\n") {
                2
            } else {
                0
            };
            if soft_break > 0 {
                at += soft_break;
                continue;
            }
        }
        let b = body[at];
        if matches!(
            b,
            b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\' | b')' | b'='
        ) || b.is_ascii_whitespace()
            || b.is_ascii_control()
        {
            break;
        }
        if authority.len() == MAX_AUTHORITY {
            return None;
        }
        authority.push(b.to_ascii_lowercase());
        at += 1;
    }
    let host_port = match authority.iter().rposition(|&b| b == b'@') {
        Some(i) => &authority[i + 1..],
        None => &authority[..],
    };
    let host = if host_port.first() == Some(&b'[') {
        let end = host_port.iter().position(|&b| b == b']')?;
        let inner = &host_port[..=end];
        inner
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b".:[]".contains(b))
            .then_some(inner)?
    } else {
        let end = host_port
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(host_port.len());
        let host = &host_port[..end];
        let host = host.strip_suffix(b".").unwrap_or(host);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split(|&b| b == b'.').all(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then_some(host)?
    };
    // Only ASCII bytes were kept, so this cannot fail.
    String::from_utf8(host.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_text_and_html() {
        let body = b"Subject: deal\r\n\r\nVisit HTTPS://Shop.Example.COM/x?y=1 or\r\n\
            <a href=\"http://user:pw@track.example.net:8080/c\">here</a>\r\n\
            http://shop.example.com./again http://[2001:db8::1]/v6 http://192.0.2.7:80/\r\n\
            not a url: http:/broken.example https:// ftp://files.example\r\n";
        assert_eq!(
            url_hosts(body),
            vec![
                "shop.example.com",
                "track.example.net",
                "[2001:db8::1]",
                "192.0.2.7"
            ]
        );
    }

    #[test]
    fn quoted_printable_soft_breaks_inside_a_url() {
        let body = b"<a href=3D\"https://spam.exa=\r\nmple.org/path\">x</a> http://b.exam=\nple/";
        assert_eq!(url_hosts(body), vec!["spam.example.org", "b.example"]);
    }

    #[test]
    fn hostile_input_is_bounded() {
        assert!(url_hosts(b"").is_empty());
        assert!(url_hosts(b"http").is_empty());
        assert!(url_hosts(b"http://").is_empty());
        assert!(url_hosts(b"http://=").is_empty());
        assert!(url_hosts(format!("http://{}", "a".repeat(10_000)).as_bytes()).is_empty());
        assert!(url_hosts(b"http://bad_\xff.example/").is_empty());
        let many: String = (0..1000)
            .map(|i| format!("http://h{i}.example/ "))
            .collect();
        assert_eq!(url_hosts(many.as_bytes()).len(), MAX_HOSTS_PER_MESSAGE);
    }
}
