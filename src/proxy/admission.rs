//! Admission of new connections: caps on handshakes in progress and on open connections,
//! over all clients and per source IP, shared by the QUIC and TCP listeners. The per-IP
//! table holds only addresses with something open, so it is bounded by the global caps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Limits;

/// Which cap refused a client; also its `limit` label in `quic_ingress_limit_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Connections,
    ConnectionsPerIp,
    Handshakes,
    HandshakesPerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::Handshakes => "handshakes",
            Self::HandshakesPerIp => "handshakes_per_ip",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count {
    handshakes: u32,
    connections: u32,
}

#[derive(Debug, Default)]
struct State {
    total: Count,
    per_ip: HashMap<IpAddr, Count>,
}

#[derive(Debug, Clone, Copy)]
struct Caps {
    connections: u32,
    connections_per_ip: u32,
    handshakes: u32,
    handshakes_per_ip: u32,
}

/// The counters every listener admits through.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    state: Mutex<State>,
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Self> {
        let caps = Caps {
            connections: limits.max_connections,
            connections_per_ip: limits.max_connections_per_ip,
            handshakes: limits.max_handshakes,
            handshakes_per_ip: limits.max_handshakes_per_ip,
        };
        Arc::new(Self { caps, state: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated atomically under the lock: still coherent
        // after a panic elsewhere.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a handshake from `ip`, counted until the guard is dropped or becomes a
    /// connection. A handshake also needs room for the connection it would become.
    pub fn handshake(self: &Arc<Self>, ip: IpAddr) -> Result<Handshaking, Refusal> {
        let mut state = self.lock();
        Self::check_total(self.caps, state.total)?;
        Self::check_ip(self.caps, state.per_ip.get(&ip).copied().unwrap_or_default())?;
        state.total.handshakes += 1;
        state.per_ip.entry(ip).or_default().handshakes += 1;
        Ok(Handshaking { admission: Some(self.clone()), ip: Some(ip) })
    }

    /// Admits a handshake whose client is not known yet: a trusted load balancer's
    /// connection before its PROXY protocol header names the client. It counts against
    /// the totals only until [`Handshaking::attribute`] names the address, so the per-IP
    /// caps apply to the clients behind a balancer rather than to the balancer itself.
    pub fn handshake_unattributed(self: &Arc<Self>) -> Result<Handshaking, Refusal> {
        let mut state = self.lock();
        Self::check_total(self.caps, state.total)?;
        state.total.handshakes += 1;
        Ok(Handshaking { admission: Some(self.clone()), ip: None })
    }

    fn check_total(c: Caps, total: Count) -> Result<(), Refusal> {
        if total.handshakes >= c.handshakes {
            return Err(Refusal::Handshakes);
        }
        if total.connections + total.handshakes >= c.connections {
            return Err(Refusal::Connections);
        }
        Ok(())
    }

    fn check_ip(c: Caps, here: Count) -> Result<(), Refusal> {
        if here.handshakes >= c.handshakes_per_ip {
            return Err(Refusal::HandshakesPerIp);
        }
        if here.connections + here.handshakes >= c.connections_per_ip {
            return Err(Refusal::ConnectionsPerIp);
        }
        Ok(())
    }

    /// Counts a total-only handshake against `ip` as well, if `ip` has room.
    fn attribute(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut state = self.lock();
        Self::check_ip(self.caps, state.per_ip.get(&ip).copied().unwrap_or_default())?;
        state.per_ip.entry(ip).or_default().handshakes += 1;
        Ok(())
    }

    /// Handshakes in progress now (for the Retry threshold).
    pub fn handshakes(&self) -> u32 {
        self.lock().total.handshakes
    }

    /// Entries in the per-IP table (bounded by the caps).
    #[cfg(test)]
    pub fn tracked_addresses(&self) -> usize {
        self.lock().per_ip.len()
    }

    fn release(&self, ip: Option<IpAddr>, handshake: bool) {
        let mut state = self.lock();
        fn field(c: &mut Count, handshake: bool) -> &mut u32 {
            if handshake { &mut c.handshakes } else { &mut c.connections }
        }
        let total = field(&mut state.total, handshake);
        *total = total.saturating_sub(1);
        if let Some(ip) = ip
            && let Some(here) = state.per_ip.get_mut(&ip)
        {
            let n = field(here, handshake);
            *n = n.saturating_sub(1);
            if *here == Count::default() {
                state.per_ip.remove(&ip);
            }
        }
    }

    fn promote(&self, ip: Option<IpAddr>) {
        let mut state = self.lock();
        state.total.handshakes = state.total.handshakes.saturating_sub(1);
        state.total.connections += 1;
        if let Some(ip) = ip {
            let here = state.per_ip.entry(ip).or_default();
            here.handshakes = here.handshakes.saturating_sub(1);
            here.connections += 1;
        }
    }
}

/// A handshake admitted and in progress.
#[derive(Debug)]
pub struct Handshaking {
    admission: Option<Arc<Admission>>,
    /// `None` while the client is not known (counted in the totals only).
    ip: Option<IpAddr>,
}

impl Handshaking {
    /// Names the client of a handshake admitted without one, refusing it when that
    /// address is at its caps (the guard is then dropped, and its room given back). A
    /// handshake that already has an address keeps it.
    pub fn attribute(mut self, ip: IpAddr) -> Result<Self, Refusal> {
        if self.ip.is_none()
            && let Some(a) = &self.admission
        {
            a.attribute(ip)?;
            self.ip = Some(ip);
        }
        Ok(self)
    }

    /// The handshake completed: from now on it counts as a connection (room for it was
    /// reserved when the handshake was admitted).
    pub fn established(mut self) -> Connected {
        let admission = self.admission.take();
        if let Some(a) = &admission {
            a.promote(self.ip);
        }
        Connected { admission, ip: self.ip }
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            a.release(self.ip, true);
        }
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct Connected {
    admission: Option<Arc<Admission>>,
    ip: Option<IpAddr>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            a.release(self.ip, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(connections: u32, per_ip: u32, handshakes: u32, handshakes_per_ip: u32) -> Arc<Admission> {
        Admission::new(&Limits {
            max_connections: connections,
            max_connections_per_ip: per_ip,
            max_handshakes: handshakes,
            max_handshakes_per_ip: handshakes_per_ip,
            ..Limits::default()
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn handshakes_are_capped_per_ip_and_in_total() {
        let a = admission(100, 100, 3, 2);
        let _h = [a.handshake(ip(1)).unwrap(), a.handshake(ip(1)).unwrap()];
        assert_eq!(a.handshake(ip(1)).unwrap_err(), Refusal::HandshakesPerIp);
        let _third = a.handshake(ip(2)).unwrap();
        assert_eq!(a.handshake(ip(3)).unwrap_err(), Refusal::Handshakes);
        assert_eq!(a.handshakes(), 3);
    }

    #[test]
    fn connections_are_capped_and_released_on_drop() {
        let a = admission(3, 2, 10, 10);
        let c1 = a.handshake(ip(1)).unwrap().established();
        let c2 = a.handshake(ip(1)).unwrap().established();
        assert_eq!(a.handshake(ip(1)).unwrap_err(), Refusal::ConnectionsPerIp);
        let _c3 = a.handshake(ip(2)).unwrap().established();
        assert_eq!(a.handshake(ip(3)).unwrap_err(), Refusal::Connections);
        drop((c1, c2));
        assert!(a.handshake(ip(1)).is_ok(), "room again once closed");
    }

    #[test]
    fn a_balancer_connection_counts_against_its_client_once_named() {
        let a = admission(100, 2, 100, 100);
        let balancer = ip(9);
        // Many connections from one balancer: only the totals see them until attributed.
        let pending: Vec<_> = (0..5).map(|_| a.handshake_unattributed().unwrap()).collect();
        assert_eq!(a.handshakes(), 5);
        assert_eq!(a.tracked_addresses(), 0);
        assert!(a.handshake(balancer).is_ok(), "the balancer itself is not at a cap");
        let mut pending = pending.into_iter();
        let c1 = pending.next().unwrap().attribute(ip(1)).unwrap().established();
        let c2 = pending.next().unwrap().attribute(ip(1)).unwrap().established();
        assert_eq!(pending.next().unwrap().attribute(ip(1)).unwrap_err(), Refusal::ConnectionsPerIp);
        assert_eq!(a.handshakes(), 2, "the refused one gave its room back");
        let c3 = pending.next().unwrap().attribute(ip(2)).unwrap();
        assert_eq!(c3.attribute(ip(3)).unwrap().ip, Some(ip(2)), "an address once named stays");
        // LOCAL-style: never attributed, established on the totals alone.
        let local = pending.next().unwrap().established();
        drop((c1, c2, local));
        assert_eq!(a.tracked_addresses(), 0);
        assert_eq!(a.handshakes(), 0);
    }

    #[test]
    fn the_per_ip_table_forgets_addresses_with_nothing_open() {
        let a = admission(1000, 10, 1000, 10);
        for n in 0..=255 {
            let h = a.handshake(ip(n)).unwrap();
            if n % 2 == 0 {
                drop(h.established());
            }
        }
        assert_eq!(a.tracked_addresses(), 0);
        assert_eq!(a.handshakes(), 0);
    }
}
