//! What the kernel says is attached to an interface (`IFLA_XDP`: the mode and the program id),
//! asked over rtnetlink on a socket opened once: the daemon opens it at start-up, while it may
//! still make netlink sockets, and asks again at every scrape of `/metrics`; `sinkhole stats`
//! asks once.

use std::io;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How an XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the driver (`XDP_ATTACHED_DRV`).
    Driver,
    /// Generic, on socket buffers (`XDP_ATTACHED_SKB`).
    Skb,
    /// Offloaded to the NIC (`XDP_ATTACHED_HW`).
    Hardware,
    /// Programs in more than one mode at once (`XDP_ATTACHED_MULTI`).
    Multiple,
}

impl Mode {
    /// The name `xdp.mode` and the metrics use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Driver => "driver",
            Mode::Skb => "skb",
            Mode::Hardware => "hw",
            Mode::Multiple => "multi",
        }
    }
}

/// An XDP program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub mode: Mode,
    pub program_id: u32,
}

/// A route netlink socket for asking about interfaces.
#[derive(Debug)]
pub struct LinkProbe {
    socket: Socket,
}

/// Replies are one link message: a page is plenty, 64 KiB keeps clear of truncation.
const REPLY_BYTES: usize = 65_536;

impl LinkProbe {
    pub fn open() -> io::Result<LinkProbe> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(LinkProbe { socket })
    }

    /// The XDP program on the interface with index `ifindex`, if there is one.
    pub fn xdp(&self, ifindex: u32) -> io::Result<Option<Attached>> {
        let mut link = LinkMessage::default();
        link.header.index = ifindex;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut reply = Vec::with_capacity(REPLY_BYTES);
        self.socket.recv(&mut reply, 0)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                Ok(xdp_of(&link.attributes))
            }
            NetlinkPayload::Error(e) => Err(e.to_io()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected rtnetlink reply {other:?}"),
            )),
        }
    }
}

/// The program and mode in a link's attributes.
fn xdp_of(attributes: &[LinkAttribute]) -> Option<Attached> {
    let xdp = attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    })?;
    let mode = xdp.iter().find_map(|x| match x {
        LinkXdp::Attached(XdpAttached::Driver) => Some(Mode::Driver),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(Mode::Skb),
        LinkXdp::Attached(XdpAttached::Hardware) => Some(Mode::Hardware),
        LinkXdp::Attached(XdpAttached::Multiple) => Some(Mode::Multiple),
        _ => None,
    })?;
    let program_id = xdp
        .iter()
        .find_map(|x| match x {
            LinkXdp::ProgId(id) => Some(*id),
            _ => None,
        })
        .unwrap_or(0);
    Some(Attached { mode, program_id })
}

/// The index of the interface named `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// Named interfaces and a probe to ask about them (indexes resolved when opened).
#[derive(Debug)]
pub struct Interfaces {
    probe: LinkProbe,
    names: Vec<(String, u32)>,
}

impl Interfaces {
    pub fn open(names: &[String]) -> io::Result<Interfaces> {
        let names = names
            .iter()
            .map(|name| {
                let index = ifindex(name)
                    .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {e}")))?;
                Ok((name.clone(), index))
            })
            .collect::<io::Result<_>>()?;
        Ok(Interfaces {
            probe: LinkProbe::open()?,
            names,
        })
    }

    /// Each interface with what is attached to it now.
    pub fn states(&self) -> impl Iterator<Item = (&str, io::Result<Option<Attached>>)> {
        self.names
            .iter()
            .map(|(name, index)| (name.as_str(), self.probe.xdp(*index)))
    }
}
