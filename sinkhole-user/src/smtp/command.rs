//! The command parser: one command line (without its line ending) to a [`Command`], borrowing
//! from the line. Lenient where real clients are sloppy (verb case, spaces around `FROM:`,
//! missing angle brackets, trailing blanks), strict where it matters (arguments, parameters).

/// One parsed command. Byte slices borrow from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a [u8]),
    Ehlo(&'a [u8]),
    /// `MAIL FROM:<path> params`; `path` is without angle brackets (empty: the null sender).
    Mail {
        path: &'a [u8],
        params: &'a [u8],
    },
    Rcpt {
        path: &'a [u8],
        params: &'a [u8],
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Vrfy,
    Help,
    Quit,
    StartTls,
    /// A command of RFC 5321 or a common extension that we do not offer (EXPN, AUTH, ...).
    NotImplemented,
}

/// Why a line is not a command we can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a command at all (500).
    Unknown,
    /// A known command with bad arguments (501); the text is the reply's.
    Syntax(&'static str),
}

/// Parses one command line (without CRLF).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let line = line.trim_ascii_end();
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_ascii_start()),
        None => (line, &[][..]),
    };
    let verb_is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if verb_is("EHLO") || verb_is("HELO") {
        if rest.is_empty() {
            return Err(ParseError::Syntax("5.5.4 Syntax: EHLO hostname"));
        }
        return Ok(if verb_is("EHLO") {
            Command::Ehlo(rest)
        } else {
            Command::Helo(rest)
        });
    }
    if verb_is("MAIL") {
        let (path, params) = path_after(rest, b"FROM")
            .ok_or(ParseError::Syntax("5.5.4 Syntax: MAIL FROM:<address>"))?;
        return Ok(Command::Mail { path, params });
    }
    if verb_is("RCPT") {
        let (path, params) =
            path_after(rest, b"TO").ok_or(ParseError::Syntax("5.5.4 Syntax: RCPT TO:<address>"))?;
        return Ok(Command::Rcpt { path, params });
    }
    if verb_is("BDAT") {
        return parse_bdat(rest).ok_or(ParseError::Syntax("5.5.4 Syntax: BDAT size [LAST]"));
    }
    let (command, takes_argument) = if verb_is("DATA") {
        (Command::Data, false)
    } else if verb_is("RSET") {
        (Command::Rset, false)
    } else if verb_is("NOOP") {
        (Command::Noop, true)
    } else if verb_is("VRFY") {
        if rest.is_empty() {
            return Err(ParseError::Syntax("5.5.4 Syntax: VRFY address"));
        }
        (Command::Vrfy, true)
    } else if verb_is("HELP") {
        (Command::Help, true)
    } else if verb_is("QUIT") {
        (Command::Quit, false)
    } else if verb_is("STARTTLS") {
        (Command::StartTls, false)
    } else if [
        "EXPN", "AUTH", "TURN", "ETRN", "ATRN", "SAML", "SOML", "SEND", "XCLIENT", "XFORWARD",
    ]
    .iter()
    .any(|name| verb_is(name))
    {
        (Command::NotImplemented, true)
    } else {
        return Err(ParseError::Unknown);
    };
    if !takes_argument && !rest.is_empty() {
        return Err(ParseError::Syntax(
            "5.5.4 Syntax error: no arguments allowed",
        ));
    }
    Ok(command)
}

/// `FROM:<path> params` (also `FROM: <path>`, `FROM :path`): the path without brackets and the
/// parameter text.
fn path_after<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix(b"<") {
        let close = closing_bracket(inner)?;
        (&inner[..close], &inner[close + 1..])
    } else {
        // No brackets: real (mostly spam) clients send `MAIL FROM:user@host`.
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        (&rest[..end], &rest[end..])
    };
    if !params.is_empty() && !params.starts_with(b" ") {
        return None;
    }
    Some((strip_source_route(path), params.trim_ascii_start()))
}

/// The index of the `>` that closes a path, skipping quoted strings (`<"a>b"@c>`).
fn closing_bracket(inner: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@relay,@relay:user@host` → `user@host` (RFC 5321 4.1.2: source routes are accepted and
/// ignored).
fn strip_source_route(path: &[u8]) -> &[u8] {
    match path.first() {
        Some(b'@') => match path.iter().position(|&b| b == b':') {
            Some(colon) => &path[colon + 1..],
            None => path,
        },
        _ => path,
    }
}

fn parse_bdat(rest: &[u8]) -> Option<Command<'static>> {
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = parse_decimal(words.next()?)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    match words.next() {
        None => Some(Command::Bdat { size, last }),
        Some(_) => None,
    }
}

/// A decimal number of at most 20 digits; values past `u64::MAX` saturate (they are "too big"
/// wherever a number is compared with a limit).
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// `MAIL FROM` parameters we understand (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub smtputf8: bool,
}

/// Why `MAIL FROM` parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// A parameter we do not know (555).
    Unknown,
    /// A known parameter with a bad value (501).
    Syntax,
}

/// Parses `MAIL FROM` parameters (`KEYWORD[=VALUE]`, blank-separated, keywords case-insensitive).
pub fn parse_mail_params(params: &[u8]) -> Result<MailParams, ParamError> {
    let mut parsed = MailParams::default();
    for param in params.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (keyword, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if keyword.eq_ignore_ascii_case(b"SIZE") {
            parsed.size = Some(value.and_then(parse_decimal).ok_or(ParamError::Syntax)?);
        } else if keyword.eq_ignore_ascii_case(b"BODY") {
            match value {
                Some(v)
                    if v.eq_ignore_ascii_case(b"7BIT") || v.eq_ignore_ascii_case(b"8BITMIME") => {}
                _ => return Err(ParamError::Syntax),
            }
        } else if keyword.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err(ParamError::Syntax);
            }
            parsed.smtputf8 = true;
        } else {
            return Err(ParamError::Unknown);
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_table() {
        use Command::*;
        let syntax = |s| Err(ParseError::Syntax(s));
        let cases: &[(&[u8], Result<Command, ParseError>)] = &[
            (b"EHLO host.example", Ok(Ehlo(b"host.example"))),
            (b"ehlo  [192.0.2.1] ", Ok(Ehlo(b"[192.0.2.1]"))),
            (b"HELO x", Ok(Helo(b"x"))),
            (b"EHLO", syntax("5.5.4 Syntax: EHLO hostname")),
            (
                b"MAIL FROM:<a@b>",
                Ok(Mail {
                    path: b"a@b",
                    params: b"",
                }),
            ),
            (
                b"MAIL From:<trap@example.org>",
                Ok(Mail {
                    path: b"trap@example.org",
                    params: b"",
                }),
            ),
            (
                b"mail from:<a@b>",
                Ok(Mail {
                    path: b"a@b",
                    params: b"",
                }),
            ),
            (
                b"MAIL FROM: <a@b>",
                Ok(Mail {
                    path: b"a@b",
                    params: b"",
                }),
            ),
            (
                b"MAIL FROM : <a@b>  SIZE=10 BODY=8BITMIME",
                Ok(Mail {
                    path: b"a@b",
                    params: b"SIZE=10 BODY=8BITMIME",
                }),
            ),
            (
                b"MAIL FROM:<>",
                Ok(Mail {
                    path: b"",
                    params: b"",
                }),
            ),
            (
                b"MAIL FROM:a@b SIZE=1",
                Ok(Mail {
                    path: b"a@b",
                    params: b"SIZE=1",
                }),
            ),
            (
                b"MAIL FROM:<\"x>y\"@b>",
                Ok(Mail {
                    path: b"\"x>y\"@b",
                    params: b"",
                }),
            ),
            (
                b"MAIL FROM:<@r1,@r2:a@b>",
                Ok(Mail {
                    path: b"a@b",
                    params: b"",
                }),
            ),
            (
                b"MAIL FROM:<a@b>x",
                syntax("5.5.4 Syntax: MAIL FROM:<address>"),
            ),
            (
                b"MAIL FROM:<a@b",
                syntax("5.5.4 Syntax: MAIL FROM:<address>"),
            ),
            (
                b"MAIL TO:<a@b>",
                syntax("5.5.4 Syntax: MAIL FROM:<address>"),
            ),
            (b"MAIL", syntax("5.5.4 Syntax: MAIL FROM:<address>")),
            (
                b"RCPT To:<trap@example.org>",
                Ok(Rcpt {
                    path: b"trap@example.org",
                    params: b"",
                }),
            ),
            (
                b"RCPT TO:<>",
                Ok(Rcpt {
                    path: b"",
                    params: b"",
                }),
            ),
            (b"RCPT TO:", syntax("5.5.4 Syntax: RCPT TO:<address>")),
            (b"DATA", Ok(Data)),
            (b"data ", Ok(Data)),
            (
                b"DATA now",
                syntax("5.5.4 Syntax error: no arguments allowed"),
            ),
            (
                b"BDAT 100",
                Ok(Bdat {
                    size: 100,
                    last: false,
                }),
            ),
            (
                b"bdat 0 last",
                Ok(Bdat {
                    size: 0,
                    last: true,
                }),
            ),
            (
                b"BDAT 99999999999999999999",
                Ok(Bdat {
                    size: u64::MAX,
                    last: false,
                }),
            ),
            (b"BDAT", syntax("5.5.4 Syntax: BDAT size [LAST]")),
            (b"BDAT -1", syntax("5.5.4 Syntax: BDAT size [LAST]")),
            (b"BDAT 1 LAST x", syntax("5.5.4 Syntax: BDAT size [LAST]")),
            (b"RSET", Ok(Rset)),
            (b"NOOP whatever", Ok(Noop)),
            (b"VRFY postmaster", Ok(Vrfy)),
            (b"VRFY", syntax("5.5.4 Syntax: VRFY address")),
            (b"HELP", Ok(Help)),
            (b"QUIT", Ok(Quit)),
            (b"StartTLS", Ok(StartTls)),
            (b"AUTH LOGIN", Ok(NotImplemented)),
            (b"EXPN list", Ok(NotImplemented)),
            (b"", Err(ParseError::Unknown)),
            (b"GET / HTTP/1.0", Err(ParseError::Unknown)),
            (b"\0\xff", Err(ParseError::Unknown)),
        ];
        for (line, expected) in cases {
            assert_eq!(
                &parse(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn mail_params_table() {
        let ok = |size, smtputf8| Ok(MailParams { size, smtputf8 });
        let cases: &[(&[u8], Result<MailParams, ParamError>)] = &[
            (b"", ok(None, false)),
            (b"SIZE=1000", ok(Some(1000), false)),
            (b"size=5 body=7bit smtputf8", ok(Some(5), true)),
            (b"BODY=8BITMIME", ok(None, false)),
            (b"SIZE=", Err(ParamError::Syntax)),
            (b"SIZE=12x", Err(ParamError::Syntax)),
            (b"SIZE", Err(ParamError::Syntax)),
            (b"BODY=BINARYMIME", Err(ParamError::Syntax)),
            (b"SMTPUTF8=yes", Err(ParamError::Syntax)),
            (b"RET=HDRS", Err(ParamError::Unknown)),
            (b"AUTH=<>", Err(ParamError::Unknown)),
        ];
        for (params, expected) in cases {
            assert_eq!(
                &parse_mail_params(params),
                expected,
                "{:?}",
                String::from_utf8_lossy(params)
            );
        }
    }
}
