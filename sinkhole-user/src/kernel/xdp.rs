//! Loading the `sinkhole` program and attaching it to the configured interfaces. Dropping the
//! [`Attachment`] detaches it; the pinned maps stay.

use super::maps::{KernelError, Scope};
use crate::config::{Config, XdpMode as ConfigMode, XdpScope};
use aya::Ebpf;
use aya::programs::{Xdp, XdpMode};

/// The loaded program, attached to every configured interface while it lives.
pub struct Attachment {
    // Holds the program and its links: dropping it detaches from every interface.
    _ebpf: Ebpf,
    interfaces: Vec<String>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        log::info!(
            "XDP program detached from {} (the block maps stay pinned)",
            self.interfaces.join(", ")
        );
    }
}

/// What the program is to drop per `config` (`xdp.scope`, the ports of `smtp.listen`).
pub fn scope(config: &Config) -> Scope {
    Scope {
        all: config.xdp.scope == XdpScope::All,
        smtp_ports: config.smtp_ports(),
    }
}

/// Loads the program (its scope set when `ebpf` was opened, see [`scope`]) and attaches it to
/// each of `config.xdp.interfaces`, saying in which mode.
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
    for interface in &config.xdp.interfaces {
        let mode = attach_one(program, interface, config.xdp.mode)?;
        log::info!("XDP program attached to {interface} in {mode} mode");
    }
    Ok(Attachment {
        _ebpf: ebpf,
        interfaces: config.xdp.interfaces.clone(),
    })
}

/// Attaches to one interface; `auto` tries driver mode and falls back to skb mode.
fn attach_one(
    program: &mut Xdp,
    interface: &str,
    mode: ConfigMode,
) -> Result<&'static str, KernelError> {
    let mut try_mode = |mode: XdpMode| {
        program
            .attach(interface, mode)
            .map_err(|e| KernelError::bpf(format!("attach XDP to {interface}"), &e))
    };
    match mode {
        ConfigMode::Driver => try_mode(XdpMode::Driver).map(|_| "driver"),
        ConfigMode::Skb => try_mode(XdpMode::Skb).map(|_| "skb"),
        ConfigMode::Auto => match try_mode(XdpMode::Driver) {
            Ok(_) => Ok("driver"),
            Err(KernelError::NoPrivilege(e)) => Err(KernelError::NoPrivilege(e)),
            Err(driver_err) => {
                log::info!("{driver_err}: driver mode unavailable, trying skb mode");
                try_mode(XdpMode::Skb).map(|_| "skb")
            }
        },
    }
}
