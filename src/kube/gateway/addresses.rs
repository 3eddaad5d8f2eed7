//! Per-Gateway addresses: each Gateway of our classes gets data-plane ports of its own
//! (a TLS port, TCP and UDP, and a plaintext one), chosen by a pure function of the set of
//! Gateways, so every replica listens on the same ports without talking to the others;
//! the leader then gives each accepted Gateway a Service that maps its listener ports to
//! them (`services`), whose address the Gateway's status shows.
//!
//! The choice: a Gateway's preferred slot is a hash of `namespace/name` (FNV-1a, stable
//! across builds and versions); Gateways take their slots oldest first (then by
//! `namespace/name`), and one whose slot is taken takes the next free one. So deleting or
//! adding a Gateway moves no other one, unless their slots collided.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The data-plane ports Gateways' addresses are served on (`--gateway-port-range`),
/// taken in pairs: slot `k` is `first + 2k` (TLS) and `first + 2k + 1` (plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("{0:?} is not FIRST-LAST (like 20000-20999)")]
    Syntax(String),
    #[error("{0:?} holds no pair of ports (FIRST must be at least 1 and below LAST)")]
    Empty(String),
}

impl PortRange {
    /// The default range: 500 Gateways.
    pub const DEFAULT: PortRange = PortRange { first: 20000, last: 20999 };

    pub fn parse(text: &str) -> Result<Self, PortRangeError> {
        let syntax = || PortRangeError::Syntax(text.to_string());
        let (first, last) = text.split_once('-').ok_or_else(syntax)?;
        let first: u16 = first.trim().parse().map_err(|_| syntax())?;
        let last: u16 = last.trim().parse().map_err(|_| syntax())?;
        if first == 0 || last <= first {
            return Err(PortRangeError::Empty(text.to_string()));
        }
        Ok(Self { first, last })
    }

    /// Whether `port` is in the range (a listener there would take a Gateway's port).
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Pairs of ports in the range.
    pub fn slots(&self) -> usize {
        let ports = usize::from(self.last) - usize::from(self.first) + 1;
        ports / 2
    }

    fn ports(&self, slot: usize) -> Option<GatewayPorts> {
        let tls = u16::try_from(usize::from(self.first) + 2 * slot).ok()?;
        let plain = tls.checked_add(1).filter(|p| *p <= self.last)?;
        Some(GatewayPorts { tls, plain })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The data-plane ports of one Gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayPorts {
    /// HTTPS listeners: TCP (HTTP/1.1, HTTP/2) and UDP (HTTP/3).
    pub tls: u16,
    /// HTTP listeners: TCP.
    pub plain: u16,
}

/// One Gateway as the assignment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayId<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub created: Option<&'a Time>,
}

/// FNV-1a, 64 bits: a hash that is the same in every build (std's hashers promise nothing).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The ports of each Gateway (by index into `gateways`); a Gateway left out had no free
/// slot (the range is full).
pub fn assign(gateways: &[GatewayId<'_>], range: PortRange) -> BTreeMap<usize, GatewayPorts> {
    let slots = range.slots();
    let mut order: Vec<usize> = (0..gateways.len()).collect();
    order.sort_by_key(|&i| {
        let g = &gateways[i];
        (g.created.map(|t| t.0), g.namespace, g.name)
    });
    let mut taken = vec![false; slots];
    let mut out = BTreeMap::new();
    for i in order {
        let g = &gateways[i];
        let key = format!("{}/{}", g.namespace, g.name);
        let preferred = usize::try_from(fnv1a(key.as_bytes()) % slots as u64).unwrap_or(0);
        let free = (0..slots).map(|k| (preferred + k) % slots).find(|&s| !taken[s]);
        if let Some(slot) = free
            && let Some(ports) = range.ports(slot)
        {
            taken[slot] = true;
            out.insert(i, ports);
        }
    }
    out
}

/// The port scope of a Gateway's routes in the route table.
pub fn scope_name(namespace: &str, name: &str) -> String {
    format!("gateway:{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(namespace: &'a str, name: &'a str, created: Option<&'a Time>) -> GatewayId<'a> {
        GatewayId { namespace, name, created }
    }

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn port_ranges_parse_and_hold_pairs() {
        assert_eq!(PortRange::parse("20000-20999").unwrap(), PortRange::DEFAULT);
        assert_eq!(PortRange::DEFAULT.slots(), 500);
        assert_eq!(PortRange::parse("100-102").unwrap().slots(), 1, "an odd port left over is not used");
        assert!(matches!(PortRange::parse("20000"), Err(PortRangeError::Syntax(_))));
        assert!(matches!(PortRange::parse("a-b"), Err(PortRangeError::Syntax(_))));
        assert!(matches!(PortRange::parse("20000-20000"), Err(PortRangeError::Empty(_))));
        assert!(matches!(PortRange::parse("0-10"), Err(PortRangeError::Empty(_))));
        assert_eq!(PortRange::parse("65534-65535").unwrap().ports(0), Some(GatewayPorts { tls: 65534, plain: 65535 }));
    }

    #[test]
    fn each_gateway_gets_its_own_pair_the_same_whatever_the_order_given() {
        let (t1, t2, t3) = (at(1), at(2), at(3));
        let gws =
            [id("ns", "same-namespace", Some(&t1)), id("ns", "all-namespaces", Some(&t2)), id("b", "x", Some(&t3))];
        let ports = assign(&gws, PortRange::DEFAULT);
        assert_eq!(ports.len(), 3);
        let mut distinct: Vec<GatewayPorts> = ports.values().copied().collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "no two Gateways share a port");
        for p in ports.values() {
            assert!((20000..=20999).contains(&p.tls) && p.plain == p.tls + 1 && p.tls % 2 == 0, "{p:?}");
        }
        // Another replica lists them in another order: the same ports.
        let reversed: Vec<GatewayId<'_>> = gws.iter().rev().cloned().collect();
        let again = assign(&reversed, PortRange::DEFAULT);
        for (i, p) in &ports {
            assert_eq!(again[&(gws.len() - 1 - i)], *p);
        }
    }

    #[test]
    fn a_gateway_keeps_its_ports_when_another_goes_unless_they_collided() {
        // One slot in two: every Gateway prefers... whichever it hashes to; with two slots
        // and three Gateways at least two collide, and the oldest keeps the slot.
        let range = PortRange::parse("30000-30003").unwrap();
        let (t1, t2) = (at(1), at(2));
        let old = id("ns", "old", Some(&t1));
        let young = id("ns", "young", Some(&t2));
        let both = assign(&[young.clone(), old.clone()], range);
        let alone = assign(std::slice::from_ref(&old), range);
        assert_eq!(both[&1], alone[&0], "the older Gateway's ports do not depend on the younger one");
        assert_ne!(both[&0], both[&1]);
        // A large range: removing any one Gateway moves none of the others (no collision
        // among these names in 500 slots is checked by the distinctness above).
        let names = ["a", "b", "c", "d", "e"];
        let gws: Vec<GatewayId<'_>> = names.iter().map(|n| id("team", n, None)).collect();
        let all = assign(&gws, PortRange::DEFAULT);
        let preferred: Vec<usize> =
            names.iter().map(|n| (fnv1a(format!("team/{n}").as_bytes()) % 500) as usize).collect();
        let collided = preferred.iter().any(|p| preferred.iter().filter(|q| *q == p).count() > 1);
        if !collided {
            let without_c: Vec<GatewayId<'_>> = gws.iter().filter(|g| g.name != "c").cloned().collect();
            let after = assign(&without_c, PortRange::DEFAULT);
            for (j, g) in without_c.iter().enumerate() {
                let before = names.iter().position(|n| *n == g.name).unwrap();
                assert_eq!(after[&j], all[&before], "{} moved", g.name);
            }
        }
    }

    #[test]
    fn a_full_range_leaves_the_youngest_without_ports() {
        let range = PortRange::parse("30000-30001").unwrap();
        let (t1, t2) = (at(1), at(2));
        let ports = assign(&[id("ns", "b", Some(&t2)), id("ns", "a", Some(&t1))], range);
        assert_eq!(ports.keys().copied().collect::<Vec<_>>(), [1], "the older one has the one slot");
        assert_eq!(ports[&1], GatewayPorts { tls: 30000, plain: 30001 });
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Reference values of FNV-1a 64 (the empty string and "a").
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
