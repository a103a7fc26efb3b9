//! The configuration file (TOML). Every key is optional; the defaults are the ones
//! `packaging/sinkhole.toml` documents.
//!
//! Every value is checked while it is parsed, so an error always carries the key's path and the
//! line it stands on: `sinkhole.toml:12: dnsbl.zone[0].codes[1]: ...`. Every number and
//! duration has an inclusive range, written where the key is declared (`duration::<_, MIN_MS,
//! MAX_MS>`, `count::<_, MIN, MAX>`, ...) and listed in `docs/reliability.md` (a unit test
//! holds the two together); a value outside it is refused naming the range:
//! `sinkhole.toml:3: smtp.idle_timeout: 2h is outside 1s..=1h`.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::prefix::parse_prefix;
use crate::signature::Signature;

/// The whole configuration.
/// Where every command looks for the configuration when `--config` names none.
pub const DEFAULT_CONFIG: &str = "/etc/sinkhole/sinkhole.toml";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub storage: StorageConfig,
    pub dnsbl: DnsblConfig,
    pub xdp: XdpConfig,
    pub policy: PolicyConfig,
    pub campaign: CampaignConfig,
    pub metrics: MetricsConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(deserialize_with = "non_empty")]
    pub listen: Vec<SocketAddr>,
    #[serde(deserialize_with = "hostname")]
    pub hostname: String,
    #[serde(deserialize_with = "count::<_, 1, 1_000_000>")]
    pub max_connections: NonZeroUsize,
    /// Not tied to `max_connections`: the smaller of the two is what holds.
    #[serde(deserialize_with = "count::<_, 1, 1_000_000>")]
    pub max_connections_per_ip: NonZeroUsize,
    /// 1 KiB..=1 GiB.
    #[serde(deserialize_with = "bytes::<_, 1024, 1_073_741_824>")]
    pub max_message_bytes: u64,
    #[serde(deserialize_with = "count::<_, 1, 10_000>")]
    pub max_recipients: NonZeroUsize,
    /// NOOP, RSET, VRFY and HELP tolerated until a message is accepted (Postfix's
    /// `smtpd_junk_command_limit`); the next one gets 421. 1..=100000.
    #[serde(deserialize_with = "count::<_, 1, 100_000>")]
    pub max_junk_commands: NonZeroUsize,
    /// 1s..=1h.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 3_600_000>",
        serialize_with = "show_duration"
    )]
    pub idle_timeout: Duration,
    /// How long the loop keeps polling without sleeping after its last event (0: it always
    /// sleeps when idle). A busy server answers without a wake-up's latency. Never while a
    /// message is being stored: the capture threads need that CPU. 0..=10ms.
    #[serde(
        deserialize_with = "duration::<_, 0, 10>",
        serialize_with = "show_duration"
    )]
    pub busy_poll: Duration,
    /// The banner's first line (`220-`) goes out at once and its last (`220 `) this much
    /// later; a client that sends anything before the last line is `pregreet` (postscreen's
    /// greet wait). 0 (the default): a one-line banner at once. 0s..=30s.
    #[serde(
        deserialize_with = "duration::<_, 0, 30_000>",
        serialize_with = "show_duration"
    )]
    pub greet_wait: Duration,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub run_as: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 2525)),
                SocketAddr::from(([0u16; 8], 2525)),
            ],
            hostname: "sinkhole.invalid".into(),
            max_connections: NonZeroUsize::new(20_000).unwrap(),
            max_connections_per_ip: NonZeroUsize::new(50).unwrap(),
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: NonZeroUsize::new(100).unwrap(),
            max_junk_commands: NonZeroUsize::new(100).unwrap(),
            idle_timeout: Duration::from_secs(300),
            busy_poll: Duration::from_micros(200),
            greet_wait: Duration::ZERO,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            run_as: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub dir: PathBuf,
    pub capture: bool,
    /// Free space kept in reserve on the filesystem of `dir` (Postfix's `queue_minfree`):
    /// below it MAIL is refused with 452 and session log lines are short; below a quarter of it
    /// nothing more is written (`capture::floor`). 0B..=1PiB, or 0%..=50% of the filesystem.
    #[serde(deserialize_with = "min_free", serialize_with = "show_min_free")]
    pub min_free: MinFree,
    /// When the session log is rotated: `"daily"` (at midnight UTC), a size (`"100MiB"`,
    /// 64KiB..=100GiB), both (`"daily,100MiB"`: whichever comes first), or `"never"` (e.g. for
    /// logrotate and `SIGUSR1`).
    #[serde(deserialize_with = "log_rotate", serialize_with = "show_log_rotate")]
    pub log_rotate: LogRotate,
    /// Rotated session logs kept; older ones are deleted.
    #[serde(deserialize_with = "count::<_, 1, 10_000>")]
    pub log_keep: NonZeroUsize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: PathBuf::from("./sinkhole-data"),
            capture: true,
            log_rotate: LogRotate {
                daily: true,
                max_bytes: None,
            },
            log_keep: NonZeroUsize::new(30).unwrap(),
            min_free: MinFree::Bytes(1 << 30),
        }
    }
}

/// `storage.min_free`: bytes (`1GiB`), or a share of the filesystem (`5%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    /// Whole percent of the filesystem's size, 0..=50.
    Percent(u8),
}

impl MinFree {
    /// The floor in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(bytes) => bytes,
            MinFree::Percent(percent) => (u128::from(total) * u128::from(percent) / 100) as u64,
        }
    }
}

/// When the session log is rotated (`storage.log_rotate`); neither: never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRotate {
    /// When a line would be written on a later UTC day than the file's first line.
    pub daily: bool,
    /// When a write would take the file past this many bytes.
    pub max_bytes: Option<u64>,
}

impl StorageConfig {
    /// `STORAGE/maildir`.
    pub fn maildir(&self) -> PathBuf {
        self.dir.join("maildir")
    }

    /// `STORAGE/sessions.jsonl`.
    pub fn session_log(&self) -> PathBuf {
        self.dir.join("sessions.jsonl")
    }

    /// What the daemon writes into after start-up: the storage folder, the Maildir's folders
    /// and the session log (handed to `smtp.run_as` when the daemon drops root).
    pub fn written_paths(&self) -> Vec<PathBuf> {
        let maildir = self.maildir();
        vec![
            self.dir.clone(),
            maildir.join("tmp"),
            maildir.join("new"),
            maildir.join("cur"),
            maildir,
            self.session_log(),
        ]
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsblConfig {
    /// Empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Every score is answered within this of accept, complete or not. A zone (or reverse
    /// DNS) that leaves 16 queries in a row unanswered is then only probed, once a second,
    /// and its clients go unscored at once until it answers again. 100ms..=1m.
    #[serde(
        deserialize_with = "duration::<_, 100, 60_000>",
        serialize_with = "show_duration"
    )]
    pub timeout: Duration,
    #[serde(deserialize_with = "score::<_, { -1000 }, 1000>")]
    pub reject_threshold: i32,
    #[serde(deserialize_with = "score::<_, { -1000 }, 1000>")]
    pub block_threshold: i32,
    /// 1s..=365d.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 31_536_000_000>",
        serialize_with = "show_duration"
    )]
    pub block_ttl: Duration,
    pub zone: Vec<ZoneConfig>,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        DnsblConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            reject_threshold: 3,
            block_threshold: 5,
            block_ttl: Duration::from_secs(3600),
            zone: vec![ZoneConfig {
                name: "zen.spamhaus.org".into(),
                weight: 1,
                codes: vec![CodeRange {
                    first: Ipv4Addr::new(127, 0, 0, 2),
                    last: Ipv4Addr::new(127, 0, 0, 11),
                }],
            }],
        }
    }
}

/// One DNSBL zone.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    #[serde(deserialize_with = "hostname")]
    pub name: String,
    #[serde(default = "one", deserialize_with = "score::<_, { -100 }, 100>")]
    pub weight: i32,
    /// Empty: every answer outside 127.255.255.0/24 counts.
    #[serde(default)]
    pub codes: Vec<CodeRange>,
}

fn one() -> i32 {
    1
}

/// An inclusive range of DNSBL answer addresses: `127.0.0.2-127.0.0.11` or `127.0.0.2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl CodeRange {
    pub fn contains(&self, answer: Ipv4Addr) -> bool {
        self.first <= answer && answer <= self.last
    }
}

impl FromStr for CodeRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not an address or a range like 127.0.0.2-127.0.0.11");
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (text.trim(), text.trim()),
        };
        let first: Ipv4Addr = first.parse().map_err(|_| bad())?;
        let last: Ipv4Addr = last.parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!("`{text}`: the range ends before it starts"));
        }
        Ok(CodeRange { first, last })
    }
}

impl Serialize for CodeRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.first == self.last {
            true => serializer.collect_str(&self.first),
            false => serializer.collect_str(&format_args!("{}-{}", self.first, self.last)),
        }
    }
}

impl<'de> Deserialize<'de> for CodeRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode, falling back to skb (generic) mode.
    #[default]
    Auto,
    Skb,
    Driver,
}

/// Which packets from a blocked source are dropped.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpScope {
    /// Only TCP to the SMTP ports (`xdp.ports`).
    #[default]
    Smtp,
    /// Everything.
    All,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdpConfig {
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    pub scope: XdpScope,
    /// TCP destination ports that scope `smtp` covers. Empty: 25, 465, 587 and the port of
    /// every `smtp.listen` address.
    #[serde(deserialize_with = "ports")]
    pub ports: Vec<u16>,
    pub pin_dir: PathBuf,
    #[serde(deserialize_with = "prefixes", serialize_with = "show_prefixes")]
    pub allow: Vec<IpNet>,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            interfaces: Vec::new(),
            mode: XdpMode::Auto,
            scope: XdpScope::Smtp,
            ports: Vec::new(),
            pin_dir: PathBuf::from("/sys/fs/bpf/sinkhole"),
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The rule file. Empty: no rules.
    pub file: PathBuf,
    /// 100ms..=10m.
    #[serde(
        deserialize_with = "duration::<_, 100, 600_000>",
        serialize_with = "show_duration"
    )]
    pub stall: Duration,
    /// Where a sender in one of the rule file's `local_domains` is refused.
    pub local_domains_phase: LocalDomainsPhase,
    /// One TOML file per address (or per person) with its own rules. Empty: none.
    pub addresses_dir: PathBuf,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            file: PathBuf::new(),
            stall: Duration::from_secs(30),
            local_domains_phase: LocalDomainsPhase::Mail,
            addresses_dir: PathBuf::new(),
        }
    }
}

/// `policy.local_domains_phase`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LocalDomainsPhase {
    /// The MAIL is refused; what the client pipelined behind it gets 503.
    #[default]
    Mail,
    /// Each recipient is refused (the MAIL is accepted).
    Rcpt,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CampaignConfig {
    /// A client whose session shows every signature of one set is blocked.
    pub block_signatures: Vec<Vec<Signature>>,
    /// A campaign (by its key, `campaign::features`) with this many sessions within
    /// `alert_window` is logged once at WARN and counted active. 1..=1000000.
    #[serde(deserialize_with = "count::<_, 1, 1_000_000>")]
    pub alert_sessions: NonZeroUsize,
    /// 1m..=30d.
    #[serde(
        deserialize_with = "duration::<_, 60_000, 2_592_000_000>",
        serialize_with = "show_duration"
    )]
    pub alert_window: Duration,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        CampaignConfig {
            block_signatures: Vec::new(),
            alert_sessions: NonZeroUsize::new(50).unwrap(),
            alert_window: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9725)),
        }
    }
}

/// A configuration that could not be read, naming where and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}: {key}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        key: String,
        message: String,
    },
    /// A per-address file of `policy.addresses_dir` that cannot be read or parsed, or the
    /// directory itself: `FILE:LINE: key: why`.
    #[error("{0}")]
    AddressFile(String),
}

impl ConfigError {
    /// `section.name` found wrong after parsing, named with the line in `text` (the file
    /// `origin`) where `name = ...` is set; for keys whose names are unique in the file.
    pub fn at_key(text: &str, origin: &str, section: &str, name: &str, message: String) -> Self {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line: key_line(text, name),
            key: format!("{section}.{name}"),
            message,
        }
    }
}

impl Config {
    /// Reads `path`, or returns the embedded defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        Config::parse(&read(path)?, &path.display().to_string())
    }

    /// The configuration as TOML, in the syntax it is read in: with `all`, every key; else
    /// only the keys whose values differ from the embedded defaults (`postconf -n`).
    pub fn to_toml(&self, all: bool) -> String {
        // Every field serializes (the derives and `show_*` above); nothing here can fail.
        let mut value = toml::Value::try_from(self).expect("the configuration serializes");
        if !all {
            let defaults = toml::Value::try_from(Config::default()).expect("so do the defaults");
            keep_differences(&mut value, &defaults);
        }
        toml::to_string(&value).expect("a table serializes")
    }

    /// Like [`Config::load`], and also hands back the file's text and name, for checks made
    /// after parsing that name a key ([`ConfigError::at_key`]).
    pub fn load_with_source(
        path: Option<&Path>,
    ) -> Result<(Config, Option<(String, String)>), ConfigError> {
        let Some(path) = path else {
            return Ok((Config::default(), None));
        };
        let (text, origin) = (read(path)?, path.display().to_string());
        let config = Config::parse(&text, &origin)?;
        Ok((config, Some((text, origin))))
    }

    /// Parses a configuration; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, origin)?;
        config.check_tls_pair(text, origin)?;
        Ok(config)
    }

    /// `smtp.tls_cert` and `smtp.tls_key` come together, or neither (a self-signed pair).
    fn check_tls_pair(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let (cert, key) = (&self.smtp.tls_cert, &self.smtp.tls_key);
        let (set, missing) = match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
            (false, true) => ("tls_cert", "tls_key"),
            (true, false) => ("tls_key", "tls_cert"),
            _ => return Ok(()),
        };
        Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            // The line of the key that is set (the one that is missing has none).
            line: key_line(text, set),
            key: format!("smtp.{missing}"),
            message: format!(
                "must be set together with smtp.{set} (or leave both empty for a self-signed pair)"
            ),
        })
    }

    /// TCP ports the XDP scope `smtp` covers.
    pub fn smtp_ports(&self) -> Vec<u16> {
        let mut ports = if self.xdp.ports.is_empty() {
            let mut ports = vec![25, 465, 587];
            ports.extend(self.smtp.listen.iter().map(SocketAddr::port));
            ports
        } else {
            self.xdp.ports.clone()
        };
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Parses any TOML document into `T`, reporting errors as `origin:line: key.path: message`.
/// The policy file shares it.
pub fn parse_toml<T: de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
        let line = span.map_or(1, |s| line_of(text, s.start));
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            key,
            message,
        }
    };
    let deserializer = toml::de::Deserializer::parse(text)
        .map_err(|e| invalid(e.span(), "(syntax)".into(), e.message().to_owned()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        invalid(inner.span(), key, inner.message().to_owned())
    })
}

/// The dotted key an error is about, written as TOML would need it (`smtp.listen`,
/// `dnsbl.zone[0].codes[1]`, `"".x` for a key that is empty); `(top level)` for the document.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                let bare = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    key.push_str(name);
                } else {
                    key.push_str(&format!("{name:?}"));
                }
            }
            Segment::Unknown => key.push_str(if key.is_empty() { "?" } else { ".?" }),
        }
    }
    if key.is_empty() {
        key.push_str("(top level)");
    }
    key
}

/// The text of the file at `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The line where `name = ...` is set (for keys whose names are unique in the file, like
/// `run_as`), or 1.
fn key_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let v = Vec::<SocketAddr>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("needs at least one address"));
    }
    Ok(v)
}

/// A DNS name: letters, digits, `-`, `_` and dots, labels of 1..=63, at most 253 in all.
fn hostname<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let trimmed = name.strip_suffix('.').unwrap_or(&name);
    let valid = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(de::Error::custom(format!(
            "`{name}` is not a valid DNS name"
        )));
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Parses `300s`, `1h`, `1h 30m`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 30s, 5m or 1h ({e})"))
}

/// `storage.log_rotate`: `daily`, a size, both separated by a comma, or `never` (or empty).
fn log_rotate<'de, D: Deserializer<'de>>(d: D) -> Result<LogRotate, D::Error> {
    let text = String::deserialize(d)?;
    let mut rotate = LogRotate {
        daily: false,
        max_bytes: None,
    };
    if matches!(text.trim(), "" | "never") {
        return Ok(rotate);
    }
    for part in text.split(',').map(str::trim) {
        if part == "daily" && !rotate.daily {
            rotate.daily = true;
            continue;
        }
        let size = parse_size(part).map_err(|_| {
            de::Error::custom(format!(
                "`{part}` is neither `daily` nor a size like 100MiB (write e.g. \"daily,100MiB\", \
                 or \"never\")"
            ))
        })?;
        let Some(size) = size.filter(|size| ((64 << 10)..=(100 << 30)).contains(size)) else {
            return Err(de::Error::custom(format!(
                "{part} is outside 64KiB..=100GiB"
            )));
        };
        if rotate.max_bytes.replace(size).is_some() {
            return Err(de::Error::custom("more than one size"));
        }
    }
    Ok(rotate)
}

/// A duration within `MIN_MS..=MAX_MS` milliseconds.
pub(crate) fn duration<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let duration = parse_duration(&text).map_err(de::Error::custom)?;
    let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
    if !(min..=max).contains(&duration) {
        return Err(de::Error::custom(format!(
            "{} is outside {}..={}",
            text.trim(),
            show_millis(MIN_MS),
            show_millis(MAX_MS)
        )));
    }
    Ok(duration)
}

/// `ms` milliseconds in the largest unit that divides them exactly: `0s`, `100ms`, `1h`, `365d`.
fn show_millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    units
        .iter()
        .find(|(size, _)| ms.is_multiple_of(*size))
        .map_or_else(
            || format!("{ms}ms"),
            |(size, unit)| format!("{}{unit}", ms / size),
        )
}

/// Parses a size: a whole number of `B`, `KiB`, `MiB`, `GiB`, `TiB` or `PiB` (`512MiB`, `1 GiB`).
/// `None` for a number too large for a `u64`.
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        "PiB" => 50,
        _ => return Err(format!("`{text}` is not a size like 512MiB or 1GiB")),
    };
    if number.is_empty() {
        return Err(format!("`{text}` is not a size like 512MiB or 1GiB"));
    }
    // Digits only: an error here is an overflow.
    Ok(number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift)))
}

/// `storage.min_free`: a size within 0B..=1PiB, or a whole percentage within 0%..=50%.
fn min_free<'de, D: Deserializer<'de>>(d: D) -> Result<MinFree, D::Error> {
    const MAX_BYTES: u64 = 1 << 50;
    const MAX_PERCENT: u8 = 50;
    let text = String::deserialize(d)?;
    let shown = text.trim();
    if let Some(percent) = shown.strip_suffix('%') {
        let bad = || de::Error::custom(format!("`{text}` is not a whole percentage like 5%"));
        if percent.is_empty() || !percent.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        return match percent.parse::<u8>() {
            Ok(p) if p <= MAX_PERCENT => Ok(MinFree::Percent(p)),
            _ => Err(de::Error::custom(format!(
                "{shown} is outside 0%..={MAX_PERCENT}%"
            ))),
        };
    }
    match parse_size(&text)
        .map_err(|e| de::Error::custom(format!("{e}, or a percentage like 5%")))?
    {
        Some(bytes) if bytes <= MAX_BYTES => Ok(MinFree::Bytes(bytes)),
        _ => Err(de::Error::custom(format!("{shown} is outside 0B..=1PiB"))),
    }
}

/// Removes from `value` what equals `defaults`, table by table.
fn keep_differences(value: &mut toml::Value, defaults: &toml::Value) {
    let (toml::Value::Table(table), toml::Value::Table(defaults)) = (value, defaults) else {
        return;
    };
    table.retain(|key, value| match defaults.get(key) {
        Some(default @ toml::Value::Table(_)) => {
            keep_differences(value, default);
            value.as_table().is_some_and(|t| !t.is_empty())
        }
        Some(default) => value != default,
        None => true,
    });
}

/// A duration as the configuration writes it (`300ms`, `5m`, `1h 30m`).
fn show_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    match duration.is_zero() {
        true => serializer.serialize_str("0s"),
        false => serializer.collect_str(&humantime::format_duration(*duration)),
    }
}

/// A size in the largest unit that divides it exactly (`1GiB`, `64KiB`, `1000B`).
fn show_size(bytes: u64) -> String {
    let units = [
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ];
    units
        .iter()
        .find(|(shift, _)| bytes != 0 && bytes.trailing_zeros() >= *shift)
        .map_or_else(
            || format!("{bytes}B"),
            |(shift, unit)| format!("{}{unit}", bytes >> shift),
        )
}

fn show_min_free<S: Serializer>(min_free: &MinFree, serializer: S) -> Result<S::Ok, S::Error> {
    match min_free {
        MinFree::Bytes(bytes) => serializer.serialize_str(&show_size(*bytes)),
        MinFree::Percent(percent) => serializer.collect_str(&format_args!("{percent}%")),
    }
}

fn show_log_rotate<S: Serializer>(rotate: &LogRotate, serializer: S) -> Result<S::Ok, S::Error> {
    let parts: Vec<String> = rotate
        .daily
        .then(|| "daily".to_string())
        .into_iter()
        .chain(rotate.max_bytes.map(show_size))
        .collect();
    match parts.is_empty() {
        true => serializer.serialize_str("never"),
        false => serializer.serialize_str(&parts.join(",")),
    }
}

fn show_prefixes<S: Serializer>(prefixes: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(prefixes.iter().map(ToString::to_string))
}

/// An integer within `MIN..=MAX`.
pub(crate) fn integer<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
    d: D,
) -> Result<i64, D::Error> {
    let n = i64::deserialize(d)?;
    if !(MIN..=MAX).contains(&n) {
        return Err(de::Error::custom(format!("{n} is outside {MIN}..={MAX}")));
    }
    Ok(n)
}

/// A count within `MIN..=MAX`, `MIN` at least 1.
pub(crate) fn count<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
    d: D,
) -> Result<NonZeroUsize, D::Error> {
    const { assert!(MIN >= 1 && MAX <= u32::MAX as i64) };
    let n = integer::<D, MIN, MAX>(d)?;
    Ok(NonZeroUsize::MIN.saturating_add(n.unsigned_abs() as usize - 1))
}

/// A size in bytes within `MIN..=MAX`, `MIN` at least 0.
fn bytes<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(d: D) -> Result<u64, D::Error> {
    const { assert!(MIN >= 0) };
    Ok(integer::<D, MIN, MAX>(d)?.unsigned_abs())
}

/// A score or weight within `MIN..=MAX`, both within `i32`.
fn score<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(d: D) -> Result<i32, D::Error> {
    const { assert!(MIN >= i32::MIN as i64 && MAX <= i32::MAX as i64) };
    let n = integer::<D, MIN, MAX>(d)?;
    // Within i32, as asserted above.
    Ok(n as i32)
}

/// TCP ports, each within 1..=65535.
fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    Vec::<i64>::deserialize(d)?
        .into_iter()
        .map(|port| {
            u16::try_from(port)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| de::Error::custom(format!("{port} is outside 1..=65535")))
        })
        .collect()
}

fn prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|p| parse_prefix(p).map_err(de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn tls_cert_and_key_come_together() {
        assert_eq!(
            err("[smtp]\nhostname = \"a\"\ntls_cert = \"/c.pem\"\n"),
            "t.toml:3: smtp.tls_key: must be set together with smtp.tls_cert (or leave both \
             empty for a self-signed pair)"
        );
        assert!(err("[smtp]\ntls_key = \"/k.pem\"\n").starts_with("t.toml:2: smtp.tls_cert: "));
        let both = Config::parse("[smtp]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n", "t.toml");
        assert_eq!(both.unwrap().smtp.tls_key, Path::new("/k"));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.smtp.listen.len(), 2);
        assert_eq!(c.smtp.max_connections.get(), 20_000);
        assert_eq!(c.smtp.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.smtp.busy_poll, Duration::from_micros(200));
        assert_eq!(c.dnsbl.zone[0].name, "zen.spamhaus.org");
        assert_eq!(c.xdp.pin_dir, Path::new("/sys/fs/bpf/sinkhole"));
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9725");
        assert_eq!(c.smtp_ports(), vec![25, 465, 587, 2525]);
    }

    #[test]
    fn the_contract_example_parses() {
        let c = Config::parse(
            r#"
[smtp]
listen = ["127.0.0.1:2525"]
idle_timeout = "5m"
[storage]
capture = false
[dnsbl]
nameservers = ["127.0.0.1:5353"]
block_ttl = "1h"
[[dnsbl.zone]]
name = "zen.spamhaus.org"
weight = 1
codes = ["127.0.0.2-127.0.0.11"]
[[dnsbl.zone]]
name = "list.dnswl.org"
weight = -5
[xdp]
interfaces = ["eth0"]
mode = "skb"
scope = "all"
allow = ["127.0.0.0/8", "::1/128", "203.0.113.9"]
[campaign]
block_signatures = [["mail-from-eq-rcpt-to", "mail-from-local-domain"]]
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.dnsbl.zone.len(), 2);
        assert_eq!(c.dnsbl.zone[1].weight, -5);
        assert!(c.dnsbl.zone[0].codes[0].contains(Ipv4Addr::new(127, 0, 0, 4)));
        assert!(!c.dnsbl.zone[0].codes[0].contains(Ipv4Addr::new(127, 0, 0, 12)));
        assert_eq!(c.xdp.mode, XdpMode::Skb);
        assert_eq!(c.xdp.scope, XdpScope::All);
        assert_eq!(c.xdp.allow[2].to_string(), "203.0.113.9/32");
        assert_eq!(
            c.campaign.block_signatures,
            vec![vec![
                Signature::MailFromEqRcptTo,
                Signature::MailFromLocalDomain
            ]]
        );
    }

    #[test]
    fn the_packaged_config_parses() {
        let c = Config::parse(
            include_str!("../../packaging/sinkhole.toml"),
            "sinkhole.toml",
        )
        .unwrap();
        assert_eq!(c.smtp.run_as, "sinkhole");
        assert_eq!(c.smtp_ports(), vec![25, 465, 587]);
    }

    #[test]
    fn the_configuration_prints_as_it_reads() {
        let packaged = Config::parse(
            include_str!("../../packaging/sinkhole.toml"),
            "sinkhole.toml",
        )
        .unwrap();
        let text = "[smtp]\nbusy_poll = \"150us\"\nidle_timeout = \"20m 30s\"\n\
                    [storage]\nmin_free = \"5%\"\nlog_rotate = \"daily,100MiB\"\n\
                    [dnsbl]\n[[dnsbl.zone]]\nname = \"bl.test\"\ncodes = [\"127.0.0.2\"]\n";
        let changed = Config::parse(text, "t.toml").unwrap();
        for config in [Config::default(), packaged, changed] {
            for all in [true, false] {
                let printed = config.to_toml(all);
                let again = Config::parse(&printed, "printed").unwrap();
                assert_eq!(again.to_toml(true), config.to_toml(true), "{printed}");
            }
        }
        assert_eq!(Config::default().to_toml(false), "");
        let only = Config::parse(text, "t.toml").unwrap().to_toml(false);
        assert!(only.contains("busy_poll = \"150us\""), "{only}");
        assert!(only.contains("idle_timeout = \"20m 30s\""), "{only}");
        assert!(only.contains("min_free = \"5%\""), "{only}");
        assert!(only.contains("log_rotate = \"daily,100MiB\""), "{only}");
        assert!(only.contains("codes = [\"127.0.0.2\"]"), "{only}");
        assert!(
            !only.contains("max_connections"),
            "defaults are left out: {only}"
        );
    }

    /// The TOML setting `key` (as the docs' table writes it) to `value`.
    fn setting(key: &str, value: &str) -> String {
        match key {
            "dnsbl.zone[].weight" => {
                format!("[[dnsbl.zone]]\nname = \"a.example\"\nweight = {value}\n")
            }
            "xdp.ports[]" => format!("[xdp]\nports = [{value}]\n"),
            _ => {
                let (table, name) = key.split_once('.').unwrap();
                format!("[{table}]\n{name} = {value}\n")
            }
        }
    }

    /// A range end of the docs' table, and the value just past it on the `outward` side
    /// (`None` when there is none: below 0s, 0B or 0%).
    fn just_past(end: &str, outward: i128) -> Option<String> {
        if let Ok(n) = end.parse::<i64>() {
            return Some((i128::from(n) + outward).to_string());
        }
        if let Some(percent) = end.strip_suffix('%') {
            let n = i128::from(percent.parse::<u8>().unwrap()) + outward;
            return (n >= 0).then(|| format!("\"{n}%\""));
        }
        if let Ok(size) = parse_size(end) {
            let n = i128::from(size.unwrap()) + outward;
            return (n >= 0).then(|| format!("\"{n}B\""));
        }
        let nanos = parse_duration(end).unwrap().as_nanos() as i128 + outward;
        (nanos >= 0).then(|| format!("\"{nanos}ns\""))
    }

    #[test]
    fn every_range_in_the_docs_holds() {
        let docs = include_str!("../../docs/reliability.md");
        let table = docs
            .split("| config key | default | allowed range |")
            .nth(1)
            .expect("the ranges table in docs/reliability.md");
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').map(|c| c.trim().trim_matches('`')).collect())
            .collect();
        assert_eq!(rows.len(), 21, "{rows:?}");
        for row in rows {
            let (key, default, range) = (row[1], row[2], row[3]);
            let (min, max) = range.split_once("..=").unwrap();
            let quoted = |v: &str| {
                if v.parse::<i64>().is_ok() || v.starts_with('[') {
                    v.to_owned()
                } else {
                    format!("\"{v}\"")
                }
            };
            let ok = |v: &str| {
                let text = setting(key, v);
                if let Err(e) = Config::parse(&text, "t.toml") {
                    panic!("{text}: {e}");
                }
            };
            if default != "[]" {
                ok(&quoted(default));
            }
            ok(&quoted(min));
            ok(&quoted(max));
            for past in [just_past(min, -1), just_past(max, 1)]
                .into_iter()
                .flatten()
            {
                let text = setting(key, &past);
                let shown = past.trim_matches('"');
                let key_path = key.replace("zone[]", "zone[0]").replace("ports[]", "ports");
                let line = if key.starts_with("dnsbl.zone") { 3 } else { 2 };
                assert_eq!(
                    err(&text),
                    format!("t.toml:{line}: {key_path}: {shown} is outside {range}"),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn log_rotation_by_day_size_both_or_never() {
        let rotate = |value: &str| {
            Config::parse(&format!("[storage]\nlog_rotate = \"{value}\"\n"), "t.toml")
                .map(|c| c.storage.log_rotate)
        };
        let by = |daily, max_bytes| LogRotate { daily, max_bytes };
        assert_eq!(
            Config::parse("", "t.toml").unwrap().storage.log_rotate,
            by(true, None)
        );
        assert_eq!(rotate("daily").unwrap(), by(true, None));
        assert_eq!(rotate("100MiB").unwrap(), by(false, Some(100 << 20)));
        assert_eq!(rotate("daily, 1GiB").unwrap(), by(true, Some(1 << 30)));
        assert_eq!(rotate("64KiB,daily").unwrap(), by(true, Some(64 << 10)));
        assert_eq!(rotate("never").unwrap(), by(false, None));
        assert_eq!(rotate("").unwrap(), by(false, None));
        assert_eq!(
            err("[storage]\nlog_rotate = \"weekly\"\n"),
            "t.toml:2: storage.log_rotate: `weekly` is neither `daily` nor a size like 100MiB \
             (write e.g. \"daily,100MiB\", or \"never\")"
        );
        assert!(
            err("[storage]\nlog_rotate = \"1MiB,2MiB\"\n")
                .starts_with("t.toml:2: storage.log_rotate: more than one size")
        );
        assert_eq!(
            err("[storage]\nlog_rotate = \"daily,1KiB\"\n"),
            "t.toml:2: storage.log_rotate: 1KiB is outside 64KiB..=100GiB"
        );
        assert_eq!(parse_size("1MiB"), Ok(Some(1 << 20)));
        assert_eq!(parse_size("99999999999GiB"), Ok(None));
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn absurd_durations_and_sizes_name_their_range() {
        assert_eq!(
            err("[smtp]\nhostname = \"a\"\nidle_timeout = \"18446744073709551615s\"\n"),
            "t.toml:3: smtp.idle_timeout: 18446744073709551615s is outside 1s..=1h"
        );
        assert_eq!(
            err("[smtp]\nbusy_poll = \"1000000h\"\n"),
            "t.toml:2: smtp.busy_poll: 1000000h is outside 0s..=10ms"
        );
        assert_eq!(
            err("[smtp]\nmax_message_bytes = 0\n"),
            "t.toml:2: smtp.max_message_bytes: 0 is outside 1024..=1073741824"
        );
        assert_eq!(
            err("[dnsbl]\nblock_ttl = \"0s\"\n"),
            "t.toml:2: dnsbl.block_ttl: 0s is outside 1s..=365d"
        );
        assert_eq!(
            err("[xdp]\nports = [25, 0]\n"),
            "t.toml:2: xdp.ports: 0 is outside 1..=65535"
        );
        assert_eq!(show_millis(0), "0s");
        assert_eq!(show_millis(1_500), "1500ms");
        assert_eq!(show_millis(90_000), "90s");
    }

    #[test]
    fn min_free_is_a_size_or_a_percentage() {
        let min_free = |v: &str| {
            Config::parse(&format!("[storage]\nmin_free = \"{v}\"\n"), "t.toml")
                .map(|c| c.storage.min_free)
                .map_err(|e| e.to_string())
        };
        assert_eq!(Config::default().storage.min_free, MinFree::Bytes(1 << 30));
        assert_eq!(min_free("8MiB"), Ok(MinFree::Bytes(8 << 20)));
        assert_eq!(min_free(" 1 GiB "), Ok(MinFree::Bytes(1 << 30)));
        assert_eq!(min_free("4096B"), Ok(MinFree::Bytes(4096)));
        assert_eq!(min_free("5%"), Ok(MinFree::Percent(5)));
        assert_eq!(
            min_free("5.5%").unwrap_err(),
            "t.toml:2: storage.min_free: `5.5%` is not a whole percentage like 5%"
        );
        assert_eq!(
            min_free("1GB").unwrap_err(),
            "t.toml:2: storage.min_free: `1GB` is not a size like 512MiB or 1GiB, or a \
             percentage like 5%"
        );
        assert!(min_free("GiB").is_err());
        assert_eq!(
            min_free("99999999999999999999PiB").unwrap_err(),
            "t.toml:2: storage.min_free: 99999999999999999999PiB is outside 0B..=1PiB"
        );
        assert_eq!(
            min_free("300%").unwrap_err(),
            "t.toml:2: storage.min_free: 300% is outside 0%..=50%"
        );
        assert_eq!(MinFree::Percent(5).bytes(1000), 50);
        assert_eq!(MinFree::Percent(50).bytes(u64::MAX), u64::MAX / 2);
        assert_eq!(MinFree::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        assert_eq!(
            err("[smtp]\nhostname = \"ok\"\nidle_timeout = \"soon\"\n"),
            "t.toml:3: smtp.idle_timeout: `soon` is not a duration like 30s, 5m or 1h (expected number at 0)"
        );
        assert_eq!(
            err(
                "[dnsbl]\n[[dnsbl.zone]]\nname = \"a.example\"\ncodes = [\"127.0.0.2\", \"127.0.0.9-127.0.0.3\"]\n"
            ),
            "t.toml:4: dnsbl.zone[0].codes[1]: `127.0.0.9-127.0.0.3`: the range ends before it starts"
        );
        assert!(err("[xdp]\nallow = [\"10.0.0.1/8\"]\n").starts_with("t.toml:2: xdp.allow: "));
        assert!(
            err("[smtp]\nmax_connections = 0\n").starts_with("t.toml:2: smtp.max_connections: ")
        );
        assert!(err("[smtp]\nlisten = []\n").starts_with("t.toml:2: smtp.listen: "));
        assert!(err("[xdp]\nmode = \"turbo\"\n").starts_with("t.toml:2: xdp.mode: "));
        assert!(
            err("\n[smtp]\nlisten_on = 1\n")
                .starts_with("t.toml:3: smtp.listen_on: unknown field `listen_on`")
        );
        assert!(
            err("[campaign]\nblock_signatures = [[\"nope\"]]\n")
                .starts_with("t.toml:2: campaign.block_signatures[0][0]: unknown signature `nope`")
        );
        assert!(err("[smtp\n").starts_with("t.toml:1: (syntax): "));
        // Keys that need quoting are quoted (an empty one was once an empty key).
        assert!(err("[\"\"]\n").starts_with("t.toml:1: \"\": unknown field"));
        assert!(err("[smtp]\n\"a b\" = 1\n").starts_with("t.toml:2: smtp.\"a b\": unknown field"));
    }
}
