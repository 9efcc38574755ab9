//! Rate limits: a token bucket per bearer token and one per client address, for every
//! request that does not carry the owner's admin token. A request over either limit gets
//! 429 with `Retry-After` (on `/v1`, OpenAI's error shape). The buckets are bounded in
//! number: full (idle) ones are dropped first, and when every slot holds a recent client,
//! the newcomer waits.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{AppState, Bearer, bearer};

/// Most buckets kept at once (per kind).
const MAX_BUCKETS: usize = 65_536;

/// Requests per minute allowed per token and per address (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per bearer token (an access token, or anything presented as one).
    pub per_token: u32,
    /// Per client address (an IPv6 client by its /64).
    pub per_address: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_token: 600,
            per_address: 1200,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key: `rate` per minute, a burst of a tenth of that (at least 5).
pub(crate) struct Buckets {
    rate: f64,
    burst: f64,
    all: Mutex<HashMap<[u8; 16], Bucket>>,
}

impl Buckets {
    pub(crate) fn new(per_minute: u32) -> Self {
        let rate = f64::from(per_minute) / 60.0;
        Self {
            rate,
            burst: (f64::from(per_minute) / 10.0).max(5.0),
            all: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `key`'s bucket, or say how long until one is there.
    pub(crate) fn take(&self, key: [u8; 16], now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(&key) && all.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            all.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if all.len() >= MAX_BUCKETS {
                return Err(Duration::from_secs(1));
            }
        }
        let b = all.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// The limiter of one router.
pub(crate) struct Limiter {
    tokens: Buckets,
    addresses: Buckets,
}

impl Limiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self {
            tokens: Buckets::new(limits.per_token),
            addresses: Buckets::new(limits.per_address),
        }
    }
}

fn address_key(ip: IpAddr) -> [u8; 16] {
    let mut k = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => k[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => k[..4].copy_from_slice(&v4.octets()),
            // One client holds a /64.
            None => k[..8].copy_from_slice(&v6.octets()[..8]),
        },
    }
    k
}

fn token_key(token: &str) -> [u8; 16] {
    let h = blake3::hash(token.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    k
}

/// The middleware: `/health` and the owner pass; everyone else is counted against its
/// address and its token.
pub(crate) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" || matches!(bearer(&state, &req), Bearer::Valid) {
        return next.run(req).await;
    }
    let now = Instant::now();
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let limited = match addr.map(|a| state.limiter.addresses.take(address_key(a), now)) {
        Some(Err(wait)) => Some(("address", wait)),
        _ => match presented.map(|t| state.limiter.tokens.take(token_key(t), now)) {
            Some(Err(wait)) => Some(("token", wait)),
            _ => None,
        },
    };
    let Some((by, wait)) = limited else {
        return next.run(req).await;
    };
    state
        .node
        .metrics()
        .rate_limited
        .get_or_create(&sov_node::metrics::label("by", by))
        .inc();
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let message = format!("too many requests for this {by}; try again in {secs} s");
    let body = if req.uri().path().starts_with("/v1/") {
        serde_json::json!({"error": {
            "message": message, "type": "requests", "param": null, "code": "rate_limit_exceeded"
        }})
    } else {
        serde_json::json!({"error": {"message": message, "code": "rate_limited"}})
    };
    let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_refills_at_its_rate() {
        let b = Buckets::new(60); // 1 per second, a burst of 6
        let t0 = Instant::now();
        for _ in 0..6 {
            b.take([1; 16], t0).unwrap();
        }
        let wait = b.take([1; 16], t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        // Another key has its own bucket.
        b.take([2; 16], t0).unwrap();
        // A second later, one more.
        b.take([1; 16], t0 + Duration::from_secs(1)).unwrap();
        assert!(b.take([1; 16], t0 + Duration::from_secs(1)).is_err());
        // No limit at 0.
        let off = Buckets::new(0);
        for _ in 0..1000 {
            off.take([1; 16], t0).unwrap();
        }
    }
}
