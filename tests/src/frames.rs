//! Ethernet frames crafted byte by byte for `BPF_PROG_TEST_RUN`: what the XDP program sees.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A frame to build: addresses, transport, and the oddities the parser must cope with.
#[derive(Clone, Debug)]
pub struct Frame {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// IP protocol / IPv6 next header.
    pub protocol: u8,
    pub dst_port: u16,
    /// An 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// IPv4 option words (each 4 bytes of NOPs); raises the IHL above 5.
    pub ipv4_option_words: u8,
    /// IPv4 fragment offset (in 8-byte units) and more-fragments flag.
    pub fragment_offset: u16,
    pub more_fragments: bool,
    /// TCP flags (SYN by default) and options (a multiple of 4 bytes).
    pub tcp_flags: u8,
    pub tcp_options: Vec<u8>,
}

impl Frame {
    /// A TCP SYN from `source` to port `dst_port` of a documentation address of its family.
    pub fn tcp(source: IpAddr, dst_port: u16) -> Frame {
        let destination = match source {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 25)),
        };
        Frame {
            source,
            destination,
            protocol: TCP,
            dst_port,
            vlan: None,
            ipv4_option_words: 0,
            fragment_offset: 0,
            more_fragments: false,
            tcp_flags: 0x02,
            tcp_options: Vec::new(),
        }
    }

    /// With these TCP flags and options (padded to 4 bytes with EOL).
    pub fn tcp_header(mut self, flags: u8, options: &[u8]) -> Frame {
        self.tcp_flags = flags;
        self.tcp_options = options.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(0);
        }
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Frame {
        self.protocol = protocol;
        self
    }

    pub fn vlan(mut self, id: u16) -> Frame {
        self.vlan = Some(id);
        self
    }

    pub fn ipv4_options(mut self, words: u8) -> Frame {
        self.ipv4_option_words = words;
        self
    }

    pub fn fragment(mut self, offset: u16, more: bool) -> Frame {
        self.fragment_offset = offset;
        self.more_fragments = more;
        self
    }

    /// The bytes on the wire, and the offsets at which each header starts (for truncation).
    pub fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::with_capacity(128);
        let mut boundaries = vec![0];
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        if let Some(id) = self.vlan {
            b.extend_from_slice(&0x8100u16.to_be_bytes());
            b.extend_from_slice(&id.to_be_bytes());
        }
        let ethertype: u16 = if self.source.is_ipv4() {
            0x0800
        } else {
            0x86dd
        };
        b.extend_from_slice(&ethertype.to_be_bytes());
        boundaries.push(b.len());
        let l4 = self.transport();
        match (self.source, self.destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 5 + self.ipv4_option_words;
                let total = usize::from(ihl) * 4 + l4.len();
                let frag =
                    (self.fragment_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
                b.push(0x40 | ihl);
                b.push(0);
                b.extend_from_slice(&(total as u16).to_be_bytes());
                b.extend_from_slice(&[0, 1]); // id
                b.extend_from_slice(&frag.to_be_bytes());
                b.push(64);
                b.push(self.protocol);
                b.extend_from_slice(&[0, 0]); // checksum: XDP does not check it
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend(std::iter::repeat_n(
                    1u8,
                    usize::from(self.ipv4_option_words) * 4,
                ));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                b.push(self.protocol);
                b.push(64);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
            }
            _ => panic!("source and destination of different families"),
        }
        boundaries.push(b.len());
        b.extend_from_slice(&l4);
        boundaries.push(b.len());
        (b, boundaries)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.build().0
    }

    /// A TCP header (20 bytes and the options; a SYN with window 65535 unless told otherwise),
    /// or 8 bytes of UDP / other payload.
    fn transport(&self) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&40000u16.to_be_bytes());
        t.extend_from_slice(&self.dst_port.to_be_bytes());
        if self.protocol == TCP {
            let words = 5 + self.tcp_options.len() as u8 / 4;
            t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, words << 4, self.tcp_flags]);
            t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            t.extend_from_slice(&self.tcp_options);
        } else {
            t.extend_from_slice(&[0, 8, 0, 0]);
        }
        t
    }
}

/// An ARP request: neither IPv4 nor IPv6.
pub fn arp() -> Vec<u8> {
    let mut b = vec![0xff; 6];
    b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06]);
    b.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    b
}
