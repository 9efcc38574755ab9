//! `$SOV_HOME/config.toml`: the node's settings, every one optional.
//!
//! ```toml
//! [network]
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW…"]
//! mdns = true
//! max_bulk_message = 67108864   # largest model update a peer may send (64 MiB)
//! max_connections_per_ip = 16   # inbound connections one address may hold (0: no limit)
//!
//! [storage]
//! replicas = 3            # default copies for `sov data add` (peers that pin the blocks)
//! repair_interval_secs = 30
//! accept_pins = true
//! max_replica_bytes = 10737418240          # replicas kept for others (default: a quarter
//!                                          # of the free space when the node starts)
//! max_replica_bytes_per_owner = 2684354560 # of those, for one owner (default: a quarter)
//!
//! [api]
//! address = "127.0.0.1:7878"
//! hosts = []              # Host names accepted besides loopback ones (a node serving
//!                         # others lists its names; "*" turns the check off)
//! rate_per_token = 600    # requests per minute one access token may make (0: no limit)
//! rate_per_address = 1200 # … one client address (an IPv6 /64); the admin token is exempt
//!
//! [models]
//! threads = 1                      # compute threads per loaded model
//! parallel = 4                     # requests one model decodes together (continuous batching)
//! max_loaded_bytes = 8589934592    # weights kept loaded at once (least recently used go first)
//! max_prompt_tokens = 8192          # longest prompt a request may bring
//! request_timeout_secs = 600        # a generation's time budget, queueing included
//! ```

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use sov_net::Multiaddr;

use crate::{Error, Result};

/// The config file's name inside the home.
pub const CONFIG_FILE: &str = "config.toml";

/// The settings as written in `config.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct File {
    /// `[network]`
    pub network: NetworkSection,
    /// `[storage]`
    pub storage: StorageSection,
    /// `[api]`
    pub api: ApiSection,
    /// `[models]`
    pub models: ModelsSection,
}

/// `[models]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsSection {
    /// Compute threads per loaded model.
    pub threads: usize,
    /// Requests one model decodes together; more wait their turn.
    pub parallel: usize,
    /// Bytes of weights kept loaded at once; the least recently used model is unloaded to
    /// make room for another.
    pub max_loaded_bytes: u64,
    /// Longest prompt, in tokens, a request may bring.
    pub max_prompt_tokens: usize,
    /// Seconds a generation may take, from the request to its last token.
    pub request_timeout_secs: u64,
}

impl Default for ModelsSection {
    fn default() -> Self {
        Self {
            threads: 1,
            parallel: DEFAULT_PARALLEL,
            max_loaded_bytes: DEFAULT_MAX_LOADED_BYTES,
            max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT.as_secs(),
        }
    }
}

/// How long a pin mandate holds by default: 7 days.
pub const DEFAULT_PIN_MANDATE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Requests one model decodes together by default (llama.cpp's server has as many slots).
pub const DEFAULT_PARALLEL: usize = 4;
/// Most requests one model may decode together.
pub const MAX_PARALLEL: usize = 64;

/// Default longest prompt: 8,192 tokens.
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 8192;
/// Default time budget of one generation: 10 minutes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Smallest `max_bulk_message` accepted (1 MiB).
pub const MIN_BULK_MESSAGE: usize = 1 << 20;

/// Default budget for loaded models' weights: 8 GiB.
pub const DEFAULT_MAX_LOADED_BYTES: u64 = 8 << 30;

/// `[network]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through.
    pub bootstrap: Vec<String>,
    /// Find peers on the local network by multicast DNS.
    pub mdns: bool,
    /// Ask peers whether we are reachable (AutoNAT).
    pub autonat: bool,
    /// Most connections at once.
    pub max_connections: u32,
    /// Largest message on the bulk protocol (model updates), in bytes.
    pub max_bulk_message: usize,
    /// Most inbound connections from one IP address (an IPv6 /64); 0: no limit.
    pub max_connections_per_ip: u32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            autonat: false,
            max_connections: 256,
            max_bulk_message: sov_net::wire::DEFAULT_MAX_BULK_MESSAGE,
            max_connections_per_ip: 16,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Default replicas for new objects.
    pub replicas: u32,
    /// Seconds between repair passes.
    pub repair_interval_secs: u64,
    /// Accept pin requests from peers (keep their encrypted blocks).
    pub accept_pins: bool,
    /// Most bytes of replicas kept for others (default: a quarter of the free space on the
    /// home's disk when the node starts).
    pub max_replica_bytes: Option<u64>,
    /// Most bytes of replicas kept for any one owner (default: a quarter of the above).
    pub max_replica_bytes_per_owner: Option<u64>,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            replicas: 3,
            repair_interval_secs: 30,
            accept_pins: true,
            max_replica_bytes: None,
            max_replica_bytes_per_owner: None,
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Where the HTTP API listens.
    pub address: String,
    /// Host names (without port) the API answers besides loopback ones: a page on another
    /// name that a browser reaches through DNS rebinding is refused. `"*"`: any.
    pub hosts: Vec<String>,
    /// Requests per minute one access token may make (0: no limit).
    pub rate_per_token: u32,
    /// Requests per minute one client address may make, the owner's excepted (0: no limit).
    pub rate_per_address: u32,
}

/// Default requests per minute per access token.
pub const DEFAULT_RATE_PER_TOKEN: u32 = 600;
/// Default requests per minute per client address.
pub const DEFAULT_RATE_PER_ADDRESS: u32 = 1200;

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:7878".into(),
            hosts: Vec::new(),
            rate_per_token: DEFAULT_RATE_PER_TOKEN,
            rate_per_address: DEFAULT_RATE_PER_ADDRESS,
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// mDNS on or off.
    pub mdns: bool,
    /// AutoNAT on or off.
    pub autonat: bool,
    /// Most connections.
    pub max_connections: u32,
    /// Largest bulk message (model updates).
    pub max_bulk_message: usize,
    /// Most inbound connections per IP address (0: no limit; loopback is not limited unless
    /// `limit_loopback`).
    pub max_connections_per_ip: u32,
    /// Limit loopback addresses too (tests of the limit).
    pub limit_loopback: bool,
    /// Default replicas.
    pub replicas: u32,
    /// Time between repair passes.
    pub repair_interval: Duration,
    /// Accept pins from peers.
    pub accept_pins: bool,
    /// Most bytes of replicas kept for others (`None`: a quarter of the free space at start).
    pub max_replica_bytes: Option<u64>,
    /// Most bytes of replicas kept for one owner (`None`: a quarter of the above).
    pub max_replica_bytes_per_owner: Option<u64>,
    /// How long the pin mandates this node signs for its objects hold (renewed at every
    /// repair pass while it runs).
    pub pin_mandate_ttl: Duration,
    /// The API address.
    pub api: SocketAddr,
    /// Host names the API answers besides loopback ones (`"*"`: any).
    pub api_hosts: Vec<String>,
    /// Requests per minute per access token (0: no limit).
    pub api_rate_per_token: u32,
    /// Requests per minute per client address (0: no limit).
    pub api_rate_per_address: u32,
    /// Gossip heartbeat (shorter in tests).
    pub gossip_heartbeat: Duration,
    /// Compute threads per loaded model.
    pub threads: usize,
    /// Requests one model decodes together.
    pub parallel: usize,
    /// Bytes of model weights kept loaded at once.
    pub max_loaded_bytes: u64,
    /// Longest prompt, in tokens.
    pub max_prompt_tokens: usize,
    /// Time budget of one generation.
    pub request_timeout: Duration,
}

impl File {
    /// Read `config.toml` from `home`; a missing file means all defaults.
    pub fn load(home: &Path) -> Result<Self> {
        let path = home.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    /// Check every value and turn it into its typed form.
    pub fn validate(&self) -> Result<Config> {
        let addrs = |what: &str, list: &[String]| -> Result<Vec<Multiaddr>> {
            list.iter()
                .map(|a| {
                    a.parse::<Multiaddr>()
                        .map_err(|e| Error::Config(format!("{what} address {a:?}: {e}")))
                })
                .collect()
        };
        if self.network.max_bulk_message < MIN_BULK_MESSAGE {
            return Err(Error::Config(format!(
                "network.max_bulk_message must be at least {MIN_BULK_MESSAGE} bytes"
            )));
        }
        if self.models.max_prompt_tokens == 0 || self.models.request_timeout_secs == 0 {
            return Err(Error::Config(
                "models.max_prompt_tokens and models.request_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if !(1..=MAX_PARALLEL).contains(&self.models.parallel) {
            return Err(Error::Config(format!(
                "models.parallel must be 1 to {MAX_PARALLEL}"
            )));
        }
        if self.models.threads == 0 {
            return Err(Error::Config("models.threads must be at least 1".into()));
        }
        if self.storage.replicas > crate::quota::MAX_REPLICAS {
            return Err(Error::Config(format!(
                "storage.replicas must be at most {}",
                crate::quota::MAX_REPLICAS
            )));
        }
        if self.storage.repair_interval_secs == 0 {
            return Err(Error::Config(
                "storage.repair_interval_secs must be at least 1".into(),
            ));
        }
        Ok(Config {
            listen: addrs("listen", &self.network.listen)?,
            bootstrap: addrs("bootstrap", &self.network.bootstrap)?,
            mdns: self.network.mdns,
            autonat: self.network.autonat,
            max_connections: self.network.max_connections.max(8),
            max_bulk_message: self.network.max_bulk_message,
            max_connections_per_ip: self.network.max_connections_per_ip,
            limit_loopback: false,
            replicas: self.storage.replicas,
            repair_interval: Duration::from_secs(self.storage.repair_interval_secs),
            accept_pins: self.storage.accept_pins,
            max_replica_bytes: self.storage.max_replica_bytes,
            max_replica_bytes_per_owner: self.storage.max_replica_bytes_per_owner,
            pin_mandate_ttl: DEFAULT_PIN_MANDATE_TTL,
            api: self
                .api
                .address
                .parse()
                .map_err(|e| Error::Config(format!("api address {:?}: {e}", self.api.address)))?,
            api_hosts: self
                .api
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            api_rate_per_token: self.api.rate_per_token,
            api_rate_per_address: self.api.rate_per_address,
            gossip_heartbeat: Duration::from_secs(1),
            threads: self.models.threads,
            parallel: self.models.parallel,
            max_loaded_bytes: self.models.max_loaded_bytes,
            max_prompt_tokens: self.models.max_prompt_tokens,
            request_timeout: Duration::from_secs(self.models.request_timeout_secs),
        })
    }
}

impl Config {
    /// Loopback only, no mDNS, fast repair: for tests and the demo.
    pub fn loopback() -> Self {
        Self {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mdns: false,
            autonat: false,
            max_connections: 256,
            max_bulk_message: sov_net::wire::DEFAULT_MAX_BULK_MESSAGE,
            max_connections_per_ip: 16,
            limit_loopback: false,
            replicas: 3,
            repair_interval: Duration::from_secs(2),
            accept_pins: true,
            max_replica_bytes: None,
            max_replica_bytes_per_owner: None,
            pin_mandate_ttl: DEFAULT_PIN_MANDATE_TTL,
            api: "127.0.0.1:0".parse().expect("valid address"),
            api_hosts: Vec::new(),
            api_rate_per_token: DEFAULT_RATE_PER_TOKEN,
            api_rate_per_address: DEFAULT_RATE_PER_ADDRESS,
            gossip_heartbeat: Duration::from_millis(200),
            threads: 1,
            parallel: DEFAULT_PARALLEL,
            max_loaded_bytes: DEFAULT_MAX_LOADED_BYTES,
            max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let c = File::default().validate().unwrap();
        assert_eq!(c.replicas, 3);
        assert_eq!(c.api.to_string(), "127.0.0.1:7878");
        let mut f = File::default();
        f.network.bootstrap = vec!["not an address".into()];
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("bootstrap address \"not an address\""), "{e}");
        let e = toml::from_str::<File>("[network]\nlisten = 3").unwrap_err();
        assert!(e.message().contains("invalid type"), "{e}");
        assert!(toml::from_str::<File>("[storage]\nreplica = 2").is_err());
    }
}
