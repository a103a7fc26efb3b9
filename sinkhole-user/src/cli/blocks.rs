//! `sinkhole block`, `unblock`, `list` and `stats`: each works on the pinned maps in
//! `xdp.pin_dir`, so it makes no difference whether the daemon runs. `block` creates them when
//! they do not exist yet; the others fail then, naming the directory. Each returns the text to
//! print.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use ipnet::IpNet;
use serde_json::json;

use crate::config::Config;
use crate::kernel::{Block, BlockMaps, KernelError, PacketCounters, attached, clock, maps, xdp};
use crate::prefix::check_width;
use crate::text::{self, escape};

/// The pinned maps, made if missing (opening them also refreshes the program's clock offset).
fn open_or_create(config: &Config) -> Result<BlockMaps, KernelError> {
    maps::open_maps(&config.xdp.pin_dir)
}

/// The pinned maps, which must exist.
fn open(config: &Config) -> Result<BlockMaps, KernelError> {
    maps::open_existing_maps(&config.xdp.pin_dir)
}

/// `sinkhole block PREFIX [--ttl T] [--reason R] [--force]`: a prefix wider than /8 or /16 only
/// with `force`.
pub fn block(
    config: &Config,
    prefix: IpNet,
    ttl: Option<Duration>,
    reason: &str,
    force: bool,
) -> anyhow::Result<String> {
    if !force {
        check_width(prefix)?;
    }
    if let Some(allow) = config.xdp.allow.iter().find(|a| a.contains(&prefix)) {
        bail!("{prefix} is allow-listed by {allow} (xdp.allow) and would never be dropped");
    }
    let mut maps = open_or_create(config)?;
    maps.insert(prefix, clock::expiry(ttl), reason)?;
    let reason = escape(reason);
    Ok(match ttl {
        Some(ttl) => format!(
            "blocked {prefix} for {} ({reason})\n",
            humantime::format_duration(ttl)
        ),
        None => format!("blocked {prefix} until unblocked ({reason})\n"),
    })
}

/// `sinkhole unblock PREFIX`.
pub fn unblock(config: &Config, prefix: IpNet) -> anyhow::Result<String> {
    if open(config)?.remove(prefix)? {
        Ok(format!("unblocked {prefix}\n"))
    } else {
        bail!("{prefix} is not blocked")
    }
}

/// The live blocks, sorted by prefix.
fn live_blocks(maps: &BlockMaps) -> Result<Vec<Block>, KernelError> {
    let now = clock::boot_ns();
    let mut blocks: Vec<Block> = maps
        .list()?
        .into_iter()
        .filter(|b| b.entry.is_live(now))
        .collect();
    blocks.sort_by_key(|b| b.prefix);
    Ok(blocks)
}

/// `sinkhole list [--json]`: the live blocks (expired ones wait for the sweep, unshown), the
/// reasons escaped for a terminal ([`crate::text`]).
pub fn list(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let blocks = live_blocks(&open(config)?)?;
    if as_json {
        let array: Vec<_> = blocks
            .iter()
            .map(|b| {
                json!({
                    "prefix": b.prefix.to_string(),
                    "reason": b.reason(),
                    "expires_at": clock::rfc3339(b.entry.expires_at),
                    "drops": b.entry.drops,
                    "last_drop_at": clock::rfc3339(b.entry.last_drop_at),
                })
            })
            .collect();
        return Ok(text::json_line(&array));
    }
    let mut out = format!(
        "{:<43} {:<20} {:>12} {:<20} REASON\n",
        "PREFIX", "EXPIRES", "DROPS", "LAST DROP"
    );
    for b in &blocks {
        let _ = writeln!(
            out,
            "{:<43} {:<20} {:>12} {:<20} {}",
            b.prefix.to_string(),
            clock::rfc3339(b.entry.expires_at).unwrap_or_else(|| "never".into()),
            b.entry.drops,
            clock::rfc3339(b.entry.last_drop_at).unwrap_or_else(|| "-".into()),
            escape(&b.reason())
        );
    }
    let _ = writeln!(out, "{} blocked", blocks.len());
    Ok(out)
}

/// What one configured interface runs, as the kernel says.
enum InterfaceState {
    /// An XDP program is attached; `ours` when it is the one the daemon's pinned link runs.
    Attached {
        mode: &'static str,
        program_id: u32,
        ours: bool,
    },
    NotAttached,
    Unknown(String),
}

/// Each of `xdp.interfaces`, asked over rtnetlink (in this network namespace).
fn interface_states(config: &Config) -> Vec<(String, InterfaceState)> {
    let probe = attached::LinkProbe::open();
    config
        .xdp
        .interfaces
        .iter()
        .map(|name| {
            let state = probe.as_ref().map_err(|e| e.to_string()).and_then(|probe| {
                let index = attached::ifindex(name).map_err(|e| e.to_string())?;
                probe.xdp(index).map_err(|e| e.to_string())
            });
            let state = match state {
                Ok(Some(attached)) => InterfaceState::Attached {
                    mode: attached.mode.as_str(),
                    program_id: attached.program_id,
                    ours: xdp::pinned_program(&xdp::link_pin(config, name))
                        == Some(attached.program_id),
                },
                Ok(None) => InterfaceState::NotAttached,
                Err(e) => InterfaceState::Unknown(e),
            };
            (name.clone(), state)
        })
        .collect()
}

/// `sinkhole stats [--json]`: packet counters, live block counts, and per configured interface
/// whether the program is attached, its id and mode.
pub fn stats(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let interfaces = interface_states(config);
    let maps = open(config)?;
    let c: PacketCounters = maps.counters()?;
    let blocks = live_blocks(&maps)?;
    let v4 = blocks.iter().filter(|b| b.prefix.addr().is_ipv4()).count();
    let v6 = blocks.len() - v4;
    if as_json {
        let value = json!({
            "packets": {"passed": c.passed(), "dropped": c.dropped()},
            "blocked_entries": blocks.len(),
            "malformed": c.malformed,
            "ipv4": {"passed": c.passed_ipv4, "dropped": c.dropped_ipv4, "blocked_entries": v4},
            "ipv6": {"passed": c.passed_ipv6, "dropped": c.dropped_ipv6, "blocked_entries": v6},
            "other": {"passed": c.passed_other},
            "interfaces": interfaces.iter().map(|(name, state)| match state {
                InterfaceState::Attached { mode, program_id, ours } => json!({
                    "interface": name, "attached": true, "mode": mode,
                    "program_id": program_id, "sinkhole": ours,
                }),
                InterfaceState::NotAttached => json!({"interface": name, "attached": false}),
                InterfaceState::Unknown(error) => json!({"interface": name, "error": error}),
            }).collect::<Vec<_>>(),
        });
        return Ok(format!("{value}\n"));
    }
    let mut out = format!(
        "{:<8} {:>14} {:>14} {:>10}\n\
         {:<8} {:>14} {:>14} {:>10}\n\
         {:<8} {:>14} {:>14} {:>10}\n\
         {:<8} {:>14} {:>14} {:>10}\n\
         {:<8} {:>14} {:>14} {:>10}\n\
         malformed (passed): {}\n",
        "",
        "PASSED",
        "DROPPED",
        "BLOCKED",
        "ipv4",
        c.passed_ipv4,
        c.dropped_ipv4,
        v4,
        "ipv6",
        c.passed_ipv6,
        c.dropped_ipv6,
        v6,
        "other",
        c.passed_other,
        "-",
        "-",
        "total",
        c.passed(),
        c.dropped(),
        blocks.len(),
        c.malformed,
    );
    for (name, state) in &interfaces {
        let _ = match state {
            InterfaceState::Attached {
                mode,
                program_id,
                ours: true,
            } => writeln!(
                out,
                "{name}: sinkhole attached ({mode} mode, program {program_id})"
            ),
            InterfaceState::Attached {
                mode, program_id, ..
            } => writeln!(
                out,
                "{name}: another XDP program attached ({mode} mode, program {program_id})"
            ),
            InterfaceState::NotAttached => writeln!(out, "{name}: not attached"),
            InterfaceState::Unknown(e) => writeln!(out, "{name}: cannot tell ({e})"),
        };
    }
    Ok(out)
}
