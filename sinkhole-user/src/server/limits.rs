//! Connection limits: in total and per client.
//!
//! IPv6 clients are counted per /64, the smallest block a single site is usually given; an
//! address per connection costs an IPv6 spammer nothing.

use std::collections::HashMap;
use std::net::IpAddr;

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `smtp.max_connections` connections are open.
    Total,
    /// `smtp.max_connections_per_ip` connections are open from this client.
    PerIp,
}

impl Refusal {
    /// The reply sent before closing.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::Total => b"421 4.7.0 Too many connections, try again later\r\n",
            Refusal::PerIp => b"421 4.7.0 Too many connections from your address\r\n",
        }
    }
}

pub struct Limits {
    max_total: usize,
    max_per_client: u32,
    active: usize,
    /// Open connections per client key; an entry goes when its count drops to zero, so the
    /// table is never larger than `max_total`.
    per_client: HashMap<IpAddr, u32>,
}

impl Limits {
    pub fn new(max_total: usize, max_per_client: usize) -> Limits {
        Limits {
            max_total,
            max_per_client: u32::try_from(max_per_client).unwrap_or(u32::MAX),
            active: 0,
            per_client: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip`, or says why it may not have one.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.active >= self.max_total {
            return Err(Refusal::Total);
        }
        let count = self.per_client.entry(client_key(ip)).or_insert(0);
        if *count >= self.max_per_client {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        self.active += 1;
        Ok(())
    }

    /// A connection admitted for `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        let key = client_key(ip);
        if let Some(count) = self.per_client.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&key);
            }
            self.active -= 1;
        }
    }
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_total_limits_refuse_and_release() {
        let mut limits = Limits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(limits.admit(a), Ok(()));
        assert_eq!(limits.admit(a), Ok(()));
        assert_eq!(limits.admit(a), Err(Refusal::PerIp));
        assert_eq!(limits.admit(b), Ok(()));
        assert_eq!(limits.admit(b_same_64), Err(Refusal::Total));
        limits.release(a);
        assert_eq!(limits.admit(b_same_64), Ok(()));
        assert_eq!(limits.admit(b), Err(Refusal::Total));
        limits.release(b);
        limits.release(a);
        assert_eq!(limits.admit(b), Ok(()));
        assert_eq!(limits.admit(b), Err(Refusal::PerIp));
        assert_eq!(limits.admit("::ffff:192.0.2.1".parse().unwrap()), Ok(()));
    }
}
