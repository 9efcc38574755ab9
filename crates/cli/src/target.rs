//! Where a command runs, picked once: through the API of the node running on this home
//! (redb has one writer, so while a node runs, it is the one that touches the store), or on
//! an offline node opened here for the length of the command. Both are the same `Node`
//! code; the offline one has no network.

use std::future::Future;

use anyhow::Context as _;
use sov_node::{ConfigFile, Node};

use crate::{home::Home, remote::Api};

/// The node a command talks to.
pub enum Target {
    /// A node runs on this home: its API.
    Remote(Api),
    /// No node runs: an offline node, here.
    Local(Local),
}

impl Target {
    /// The running node's API if one answers, else an offline node on the home whose
    /// models compute with `threads` threads (default: the config's).
    pub fn pick(home: &Home, threads: Option<usize>) -> anyhow::Result<Self> {
        match crate::node::running(&home.dir) {
            Some(node) => Ok(Target::Remote(Api::new(home, &node)?)),
            None => Ok(Target::Local(Local::open(home, threads)?)),
        }
    }
}

/// An offline node and the runtime it runs on; closed (store released) when dropped.
pub struct Local {
    runtime: tokio::runtime::Runtime,
    node: Option<Node>,
}

impl Local {
    /// Open the home's node without a network.
    pub fn open(home: &Home, threads: Option<usize>) -> anyhow::Result<Self> {
        let keypair = home.keypair()?;
        let mut config = ConfigFile::load(&home.dir)?.validate()?;
        if let Some(t) = threads {
            config.threads = t.max(1);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let node = runtime.block_on(Node::offline(&home.dir, keypair, config))?;
        Ok(Local {
            runtime,
            node: Some(node),
        })
    }

    /// The node.
    pub fn node(&self) -> &Node {
        self.node
            .as_ref()
            .expect("the node is only taken out when Local is dropped")
    }

    /// Run `work` to its end on the node's runtime.
    pub fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
    }
}
