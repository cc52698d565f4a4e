//! Per-client limits: a token-bucket request rate and a cap on concurrent
//! connections, both keyed by the client's IP address.
//!
//! Owns: the buckets and the connection counts.
//! Must not: know HTTP; callers turn a refusal into a 429 or a closed socket.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests per second per client address, with a burst allowance.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: DashMap<IpAddr, Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32) -> Option<RateLimiter> {
        (per_sec > 0).then(|| RateLimiter {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
            buckets: DashMap::new(),
        })
    }

    /// Takes one request's token, or says how long until one is free.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    /// Forgets clients whose bucket has refilled: they are indistinguishable
    /// from new ones, and the map must not grow with every address seen.
    pub fn sweep(&self) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_sec);
        let now = Instant::now();
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }
}

/// Concurrent connections per client address.
#[derive(Clone)]
pub struct ConnectionLimiter {
    max: usize,
    open: Arc<DashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it releases the slot.
pub struct ConnectionSlot {
    ip: IpAddr,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl ConnectionLimiter {
    /// `None` when `max` is 0 (no limit).
    pub fn new(max: usize) -> Option<ConnectionLimiter> {
        (max > 0).then(|| ConnectionLimiter {
            max,
            open: Arc::new(DashMap::new()),
        })
    }

    pub fn acquire(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut n = self.open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.open.remove_if(&self.ip, |_, n| *n == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let r = RateLimiter::new(10, 3).unwrap();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.check_at(ip, t0).is_ok());
        }
        let wait = r.check_at(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another client is not affected.
        assert!(r.check_at([10, 0, 0, 2].into(), t0).is_ok());
        // A tenth of a second refills one token at 10/s.
        assert!(r.check_at(ip, t0 + Duration::from_millis(100)).is_ok());
        assert!(r.check_at(ip, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_is_no_limiter() {
        assert!(RateLimiter::new(0, 10).is_none());
        assert!(ConnectionLimiter::new(0).is_none());
    }

    #[test]
    fn connection_slots_are_counted_and_released() {
        let l = ConnectionLimiter::new(2).unwrap();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none());
        drop(a);
        assert!(l.acquire(ip).is_some());
    }
}
