//! `sov node run`, the admin token, and `node.json`, which tells other `sov` commands that a
//! node runs on this home and where its API is.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sov_node::{ConfigFile, Node};

use crate::{args::NodeRunArgs, home::Home, output::note};

/// The running node's description's file name in the home.
pub const NODE_FILE: &str = "node.json";

/// What `node.json` holds while a node runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    /// The API's base URL.
    pub api: String,
    /// The node's PeerId.
    pub peer_id: String,
    /// The node's DID.
    pub did: String,
    /// Multiaddrs peers can dial.
    pub listen: Vec<String>,
    /// The node's process id.
    pub pid: u32,
}

/// The node running on `dir`, if `node.json` names one that answers.
pub fn running(dir: &Path) -> Option<NodeFile> {
    let text = std::fs::read_to_string(dir.join(NODE_FILE)).ok()?;
    let file: NodeFile = serde_json::from_str(&text).ok()?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    agent
        .get(format!("{}/health", file.api))
        .call()
        .ok()
        .filter(|r| r.status() == 200)
        .map(|_| file)
}

/// `sov node run`
pub fn run(home: &Home, args: NodeRunArgs) -> anyhow::Result<()> {
    let keypair = home.keypair()?;
    let mut file = ConfigFile::load(&home.dir)?;
    if !args.listen.is_empty() {
        file.network.listen = args.listen;
    }
    file.network.bootstrap.extend(args.bootstrap);
    if let Some(api) = args.api {
        file.api.address = api;
    }
    if args.no_mdns {
        file.network.mdns = false;
    }
    if let Some(k) = args.replicas {
        file.storage.replicas = k;
    }
    if let Some(p) = args.parallel {
        file.models.parallel = p;
    }
    if let Some(t) = args.threads {
        file.models.threads = t.max(1);
    }
    let config = file.validate()?;
    let token = sov_identity::token::ensure(&home.dir)?;
    init_logging();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = home.dir.clone();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.api)
            .await
            .with_context(|| format!("binding the API to {}", config.api))?;
        let mut api: SocketAddr = listener.local_addr()?;
        // Bound to every interface, local commands still come in through loopback (the API
        // answers loopback host names without configuration).
        if api.ip().is_unspecified() {
            api.set_ip(match api {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let node = Node::start(&dir, keypair, config)
            .await
            .map_err(|e| match e {
                sov_node::Error::Store(sov_node::StoreError::InUse(_)) => anyhow::anyhow!(
                    "a node already runs on {} (see its node.json)",
                    dir.display()
                ),
                e => e.into(),
            })?;
        let listen: Vec<String> = node
            .listen_addrs()
            .await?
            .iter()
            .map(|a| a.to_string())
            .collect();
        let info = NodeFile {
            api: format!("http://{api}"),
            peer_id: node.peer_id().to_string(),
            did: node.did().to_string(),
            listen: listen.clone(),
            pid: std::process::id(),
        };
        let node_file = dir.join(NODE_FILE);
        sov_identity::token::write_private(
            &node_file,
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        let _cleanup = RemoveOnDrop(node_file);
        note!("node {} running", node.did());
        note!("peer id {}", node.peer_id());
        for a in &listen {
            note!("listening on {a}");
        }
        note!(
            "API on http://{api} (token in {})",
            dir.join(sov_identity::token::TOKEN_FILE).display()
        );
        sov_api::serve(listener, node.clone(), &token, shutdown_signal())
            .await
            .context("serving the API")?;
        note!("stopping");
        node.shutdown().await;
        anyhow::Ok(())
    })
}

/// Removes `node.json` however `run` ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logs on stderr; `SOV_LOG` (or `RUST_LOG`) takes an env-filter directive.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOV_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,libp2p_kad=error,sov_node=info,sov_net=info,sov_api=info",
            )
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// A reminder for commands that need a running node.
pub fn require(dir: &Path) -> anyhow::Result<NodeFile> {
    match running(dir) {
        Some(f) => Ok(f),
        None => bail!(
            "no node is running on {}: start one with `sov node run`",
            dir.display()
        ),
    }
}
