//! Loading the `sinkhole` program and attaching it to the configured interfaces through BPF
//! links pinned as `PIN_DIR/link_IFNAME`.
//!
//! A daemon that finds its interface's link already pinned (a previous daemon still running,
//! or one that died) swaps its program into that link in one step (BPF_LINK_UPDATE): there is
//! never a moment with no program on the interface, which is what lets `sinkhole run
//! --takeover` replace a running daemon. Dropping the [`Attachment`] detaches (unpins) only
//! the links that still run this daemon's program: a daemon stopped after a newer one took
//! over leaves the newer program in place. The pinned maps always stay.

use std::path::{Path, PathBuf};

use super::maps::{KernelError, Scope};
use crate::config::{Config, XdpMode as ConfigMode, XdpScope};
use aya::Ebpf;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Xdp, XdpMode};

/// The loaded program, attached to every configured interface while it lives.
pub struct Attachment {
    // Holds the program: its id is what the links are compared against when dropped.
    _ebpf: Ebpf,
    program_id: u32,
    links: Vec<InterfaceLink>,
}

/// One interface's pinned link, held open to read which program it runs.
struct InterfaceLink {
    interface: String,
    pin: PathBuf,
    link: FdLink,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        for InterfaceLink {
            interface,
            pin,
            link,
        } in &self.links
        {
            match link.info().map(|info| info.program_id()) {
                Ok(id) if id != self.program_id => tracing::info!(
                    "XDP program on {interface} was replaced (now program {id}): left attached"
                ),
                _ => match std::fs::remove_file(pin) {
                    // The link goes with its last reference, the descriptor closed next.
                    Ok(()) => tracing::info!(
                        "XDP program detached from {interface} (the block maps stay pinned)"
                    ),
                    Err(e) => tracing::warn!("cannot unpin {}: {e}", pin.display()),
                },
            }
        }
    }
}

/// Where the link attaching the program to `interface` is pinned.
pub fn link_pin(config: &Config, interface: &str) -> PathBuf {
    config.xdp.pin_dir.join(format!("link_{interface}"))
}

/// The id of the program that the link pinned at `pin` runs, if a link is pinned there.
pub fn pinned_program(pin: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(pin).ok()?);
    Some(link.info().ok()?.program_id())
}

/// What the program is to drop per `config` (`xdp.scope`, the ports of `smtp.listen`).
pub fn scope(config: &Config) -> Scope {
    Scope {
        all: config.xdp.scope == XdpScope::All,
        smtp_ports: config.smtp_ports(),
    }
}

/// Loads the program (its scope set when `ebpf` was opened, see [`scope`]) and attaches it to
/// each of `config.xdp.interfaces`: into the link pinned there if there is one, else anew (in
/// the configured mode), pinning the link.
pub fn attach(mut ebpf: Ebpf, config: &Config) -> Result<Attachment, KernelError> {
    if config.xdp.interfaces.is_empty() {
        return Err(KernelError::Bpf {
            context: "attach XDP".into(),
            detail: "no interface configured (xdp.interfaces)".into(),
        });
    }
    let program: &mut Xdp = ebpf
        .program_mut("sinkhole")
        .ok_or_else(|| KernelError::Bpf {
            context: "load XDP".into(),
            detail: "the object has no program `sinkhole`".into(),
        })?
        .try_into()
        .map_err(|e| KernelError::bpf("load XDP", &e))?;
    program
        .load()
        .map_err(|e| KernelError::bpf("load the XDP program", &e))?;
    let program_id = program
        .info()
        .map_err(|e| KernelError::bpf("read the XDP program's id", &e))?
        .id();
    let mut links = Vec::with_capacity(config.xdp.interfaces.len());
    for interface in &config.xdp.interfaces {
        let pin = link_pin(config, interface);
        let link = match replace(program, &pin) {
            Ok(link) => {
                tracing::info!(
                    "XDP program attached to {interface} in place of the previous one (program {program_id}, link {})",
                    pin.display()
                );
                link
            }
            Err(e) => {
                if pin.exists() {
                    tracing::warn!("{e}; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
                let (mode, link) = attach_one(program, interface, config.xdp.mode, &pin)?;
                tracing::info!(
                    "XDP program attached to {interface} in {mode} mode (program {program_id})"
                );
                link
            }
        };
        links.push(InterfaceLink {
            interface: interface.clone(),
            pin,
            link,
        });
    }
    Ok(Attachment {
        _ebpf: ebpf,
        program_id,
        links,
    })
}

/// Swaps `program` into the link pinned at `pin`, atomically.
fn replace(program: &mut Xdp, pin: &Path) -> Result<FdLink, KernelError> {
    let context = || format!("replace the program of {}", pin.display());
    let pinned = PinnedLink::from_pin(pin).map_err(|e| KernelError::bpf(context(), &e))?;
    let link =
        XdpLink::try_from(FdLink::from(pinned)).map_err(|e| KernelError::bpf(context(), &e))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| KernelError::bpf(context(), &e))?;
    let link = program
        .take_link(id)
        .map_err(|e| KernelError::bpf(context(), &e))?;
    FdLink::try_from(link).map_err(|e| KernelError::bpf(context(), &e))
}

/// Attaches to one interface and pins the link at `pin`; `auto` tries driver mode and falls
/// back to skb mode.
fn attach_one(
    program: &mut Xdp,
    interface: &str,
    mode: ConfigMode,
    pin: &Path,
) -> Result<(&'static str, FdLink), KernelError> {
    let context = || format!("attach XDP to {interface}");
    let mut try_mode = |mode: XdpMode| {
        program
            .attach(interface, mode)
            .map_err(|e| KernelError::bpf(context(), &e))
    };
    let (mode, id) = match mode {
        ConfigMode::Driver => ("driver", try_mode(XdpMode::Driver)?),
        ConfigMode::Skb => ("skb", try_mode(XdpMode::Skb)?),
        ConfigMode::Auto => match try_mode(XdpMode::Driver) {
            Ok(id) => ("driver", id),
            Err(KernelError::NoPrivilege(e)) => return Err(KernelError::NoPrivilege(e)),
            Err(driver_err) => {
                tracing::info!("{driver_err}: driver mode unavailable, trying skb mode");
                ("skb", try_mode(XdpMode::Skb)?)
            }
        },
    };
    let link = program
        .take_link(id)
        .map_err(|e| KernelError::bpf(context(), &e))?;
    // Only kernels without XDP links (before 5.9) fall back to netlink, which cannot be pinned.
    let link = FdLink::try_from(link).map_err(|e| KernelError::bpf(context(), &e))?;
    let pinned = link
        .pin(pin)
        .map_err(|e| KernelError::bpf(format!("pin {}", pin.display()), &e))?;
    Ok((mode, FdLink::from(pinned)))
}
