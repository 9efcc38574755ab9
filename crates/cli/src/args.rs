//! The command line, as clap sees it. Every flag that makes sense as a setting is also an
//! environment variable (`SOV_…`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// sov: your own AI node. It holds your identity and encrypted data, runs your AI privately,
/// and joins peers to train, share and govern models together.
#[derive(Debug, Parser)]
#[command(name = "sov", version, about, max_term_width = 100)]
pub struct Cli {
    /// The node's home directory (identity, store, config).
    #[arg(long, global = true, env = "SOV_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Read the identity passphrase from this file (otherwise from SOV_PASSPHRASE).
    #[arg(long, global = true, env = "SOV_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// `sov id …`: the identity's key file. Every command that replaces the key file first keeps
/// the previous one as `identity.key.<UTC time>.bak` (mode 0600) in the home.
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Seal the identity with the passphrase from SOV_PASSPHRASE or --passphrase-file,
    /// keeping the same key (and so every object it owns).
    Seal,
    /// Remove the passphrase from a sealed identity (opened with SOV_PASSPHRASE or
    /// --passphrase-file), keeping the same key.
    Unseal,
    /// Copy the key file, as it is (sealed stays sealed), to FILE (a new file, mode 0600).
    Export {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Restore an identity from a key file written by `sov id export` (or a backup).
    Import {
        /// The key file.
        file: PathBuf,
        /// Replace an existing identity (it is kept as a dated backup).
        #[arg(long)]
        force: bool,
        /// With --force, when the home holds a store and FILE is another identity: replace
        /// it anyway (its objects stay readable only with the old key, the backup).
        #[arg(long, requires = "force")]
        discard_data: bool,
    },
}

/// `sov store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read every block and check it against its CID, and that every object is whole; exits
    /// 1 if anything is damaged.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the pack files (the old index is kept beside it): every intact
    /// block is re-indexed, and every object whose blocks are all intact is restored.
    Repair {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this node's identity (an Ed25519 key, named by a did:key) and print its DID.
    Init {
        /// Replace an existing identity (it is kept as a dated backup beside the new one).
        /// To seal an identity with a passphrase, use `sov id seal` instead: it keeps the key.
        #[arg(long)]
        force: bool,
        /// With --force on a home that holds a store: replace the identity anyway, although
        /// the objects it owns stay readable only with the old key (the backup).
        #[arg(long, requires = "force")]
        discard_data: bool,
        /// Use the 32-byte Ed25519 seed in FILE (64 hex characters) instead of a new random one.
        #[arg(long, value_name = "FILE")]
        import_seed: Option<PathBuf>,
    },
    /// Print this node's DID (with --json, its DID document); seal, unseal, back up and
    /// restore the identity.
    Id {
        /// Print the W3C DID document as JSON (after a subcommand: its result as JSON).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<IdCommand>,
    },
    /// Walk through sov on local nodes: identities, encrypted objects, grants, CAR exchange.
    Demo {
        /// Keep the nodes' homes in DIR (new or empty) instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Size of the sample file in MiB.
        #[arg(long, default_value_t = 64, value_name = "N")]
        size_mib: usize,
        /// Where `scripts/fetch-models` put the models (default ~/.cache/sov/models); with
        /// SmolLM2 there, the demo also shares a model between nodes and asks it a question.
        #[arg(long, env = "SOV_MODEL_DIR", value_name = "DIR")]
        models: Option<PathBuf>,
    },
    /// Store, read and share encrypted objects.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run this node on the network.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Federated learning: train models together without pooling data.
    #[command(subcommand)]
    Fl(FlCommand),
    /// Governance: groups that decide by signed votes (promote a model, admit or remove a
    /// member, releases), with certificates anyone can check offline.
    #[command(subcommand)]
    Gov(GovCommand),
    /// Access tokens for clients other than the owner (OAuth 2.0): who may get which
    /// scopes, tokens issued by hand, revocation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Models: import, list, remove, share and pull them.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Answer one prompt with a language model (streams the answer; through the running
    /// node's gateway if one runs, else loaded here).
    Run(RunArgs),
    /// Talk with a language model in the terminal (streaming; /reset clears, /exit or
    /// Ctrl-D quits).
    Chat(ChatArgs),
    /// Check the store, or rebuild its index from its pack files (no node may be running).
    #[command(subcommand)]
    Store(StoreCommand),
    /// List the peers the running node is connected to.
    Peers {
        /// Print a JSON array of {peer_id, did, addrs}.
        #[arg(long)]
        json: bool,
    },
}

/// `sov node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the node in the foreground until Ctrl-C or SIGTERM: joins the network, serves the
    /// API, answers peers, keeps replicas repaired.
    Run(NodeRunArgs),
}

/// `sov node run` flags; each overrides `config.toml`.
#[derive(Debug, clap::Args)]
pub struct NodeRunArgs {
    /// Listen on this multiaddr (repeatable; replaces the configured list).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "SOV_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,
    /// Join the network through this peer (repeatable; added to the configured list).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "SOV_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
    /// Serve the HTTP API on ADDR (port 0 picks a free port; default 127.0.0.1:7878).
    #[arg(long, value_name = "ADDR", env = "SOV_API")]
    pub api: Option<String>,
    /// Do not look for peers on the local network (multicast DNS).
    #[arg(long, env = "SOV_NO_MDNS")]
    pub no_mdns: bool,
    /// Default replicas for objects added through this node.
    #[arg(long, value_name = "K", env = "SOV_REPLICAS")]
    pub replicas: Option<u32>,
    /// Compute threads per served model (default: 1).
    #[arg(long, value_name = "N", env = "SOV_THREADS")]
    pub threads: Option<usize>,
    /// Requests one model decodes together (default: 4; more wait their turn).
    #[arg(long, value_name = "N", env = "SOV_PARALLEL")]
    pub parallel: Option<usize>,
}

/// `sov model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Store a GGUF file or a Hugging Face folder (config.json, model.safetensors,
    /// tokenizer.json) as a model with a signed manifest; prints the model id (last line).
    Import {
        /// FILE.gguf or DIR.
        path: PathBuf,
        /// The name to serve it under (default: the file or folder name).
        #[arg(long)]
        name: Option<String>,
        /// Its licence (an SPDX expression, e.g. Apache-2.0).
        #[arg(long)]
        license: Option<String>,
        /// A chat template (a Jinja file) to use instead of the GGUF file's own, as
        /// llama.cpp's --chat-template-file; one with tool syntax (Qwen 2.5's, Hermes')
        /// makes tool calls use it.
        #[arg(long, value_name = "FILE")]
        chat_template: Option<PathBuf>,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the models here (or, with --offered, the ones peers offer).
    Ls {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// The models peers offered on the network (pull one by its id); needs a running
        /// node.
        #[arg(long)]
        offered: bool,
    },
    /// Remove a model (and its objects no other model uses).
    Rm {
        /// Name or id.
        model: String,
    },
    /// Let another node pull a model (grants its manifest and objects to that DID).
    Share {
        /// Name or id.
        model: String,
        /// The reader's did:key.
        did: String,
    },
    /// A model's manifest: what it is, who signed it (checked again), and for a
    /// federation's model its round, contributors, transcript and privacy.
    Show {
        /// Name or id.
        model: String,
        /// The manifest as JSON, with `signature_valid`.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a classifier on a data file: rows, accuracy, loss.
    Eval {
        /// Name or id.
        model: String,
        /// A CSV file (header row, features, `label`), IMAGES,LABELS, a shard (digits:1/5)
        /// or a built-in test split (digits:test).
        #[arg(long, value_name = "PATH")]
        data: String,
        /// The label column of a CSV file.
        #[arg(long, value_name = "NAME")]
        label_column: Option<String>,
        /// Standardise the features with the file's own mean and deviation.
        #[arg(long)]
        standardize: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a model from peers by id, verifying its signed manifest (needs a running node).
    Pull {
        /// The model id (its manifest's object id).
        id: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Sampling flags shared by `sov run` and `sov chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature (0: always the most likely token).
    #[arg(
        long,
        default_value_t = 0.8,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40, value_name = "K")]
    pub top_k: usize,
    /// Keep the most likely tokens up to probability P.
    #[arg(long, default_value_t = 0.95, value_name = "P")]
    pub top_p: f32,
    /// Drop tokens less likely than P times the best one.
    #[arg(long, default_value_t = 0.05, value_name = "P")]
    pub min_p: f32,
    /// Penalise repeating recent tokens (1: off).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub repeat_penalty: f32,
    /// Seed of the sampler (default: random).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// A system message put first.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
}

/// `sov run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model name or id.
    pub model: String,
    /// The prompt (a user message, through the model's chat template).
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Complete the prompt as plain text instead of answering it as a chat message.
    #[arg(long)]
    pub raw: bool,
    /// Compute threads for this run (default: 1; loaded here only).
    #[arg(long, value_name = "N", env = "SOV_THREADS")]
    pub threads: Option<usize>,
    /// Print one JSON line at the end: {text, prompt_tokens, completion_tokens,
    /// prompt_tokens_per_s, decode_tokens_per_s}, instead of streaming the text.
    #[arg(long)]
    pub json: bool,
}

/// `sov chat` flags.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Model name or id.
    pub model: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Compute threads (default: 1; loaded here only).
    #[arg(long, value_name = "N", env = "SOV_THREADS")]
    pub threads: Option<usize>,
}

/// `sov data …`
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Encrypt a file into the store; prints the object id (last line).
    Add {
        /// The file to add (`-` for standard input).
        path: PathBuf,
        /// The name readers see (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Have K peers pin the encrypted blocks (default from config.toml: 3).
        #[arg(long, value_name = "K")]
        replicas: Option<u32>,
        /// Print a JSON object instead of the id.
        #[arg(long)]
        json: bool,
    },
    /// Decrypt an object to a file or standard output.
    Get {
        /// The object id (`b…`).
        id: String,
        /// Write to PATH instead of standard output.
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// List the objects in the store.
    Ls {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove an object (and every block no other object uses).
    Rm {
        /// The object id.
        id: String,
    },
    /// Let another DID read an object (wraps its key for their key-agreement key).
    Grant {
        /// The object id.
        id: String,
        /// The reader's did:key.
        did: String,
    },
    /// Write an object (manifest, grants, encrypted blocks) to a CAR v1 file.
    Export {
        /// The object id.
        id: String,
        /// The CAR file to write.
        #[arg(short, long, value_name = "FILE.car")]
        output: PathBuf,
    },
    /// Verify and import an object from a CAR v1 file; prints its id.
    Import {
        /// The CAR file.
        file: PathBuf,
        /// Print a JSON object instead of the id.
        #[arg(long)]
        json: bool,
    },
}

/// `sov fl …`
#[derive(Debug, Subcommand)]
pub enum FlCommand {
    /// Run N clients in this process through the real round code (local training,
    /// aggregation, attacks) and report each round.
    Simulate(Box<SimulateArgs>),
    /// Found a federation with this node as its creator and first member; other nodes
    /// join it with `sov fl join ID`. Training starts once --min-clients members are
    /// connected.
    Create(Box<CreateArgs>),
    /// Join a federation a connected peer is in: this node's data is checked against the
    /// federation's task, then the creator admits it.
    Join(JoinArgs),
    /// A federation's progress: round, accuracy, ε, the next aggregator, members, and the
    /// accuracy and ε of every round.
    Status {
        /// The federation's id.
        federation: String,
        /// Keep printing rounds as they close, until training ends.
        #[arg(long)]
        follow: bool,
        /// The status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The federations this node is in.
    Ls {
        /// As a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stop taking part in a federation and forget its records here.
    Leave {
        /// The federation's id.
        federation: String,
    },
}

/// Where a member's data comes from (`sov fl create` and `join`).
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// This member's data, which never leaves the node: a CSV file (header row, numeric
    /// features, an integer `label` column), an IDX pair IMAGES,LABELS, or a shard of a
    /// built-in data set for tests and demos (digits:I/N, fashion-mnist:I/N, mnist:I/N).
    #[arg(long, value_name = "PATH", alias = "dataset-shard")]
    pub data: String,
    /// The label column of a CSV file (default `label`).
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Standardise the features with this member's own mean and deviation.
    #[arg(long)]
    pub standardize: bool,
}

/// `sov fl create` flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// digits, fashion-mnist, mnist, or csv:FEATURES:CLASSES for a table.
    #[arg(long)]
    pub task: String,
    /// A group (`sov gov create`) whose votes decide who may join (its members) and who is
    /// removed; without it, the creator admits whoever asks.
    #[arg(long, value_name = "GROUP")]
    pub governed_by: Option<String>,
    /// A name for people (default: the task's).
    #[arg(long)]
    pub name: Option<String>,
    /// logreg, mlp:H[,H2…] or cnn.
    #[arg(long, default_value = "mlp:32")]
    pub model: String,
    /// Rounds to run at most.
    #[arg(long, default_value_t = 20, value_name = "R")]
    pub rounds: u32,
    /// fedavg, fedprox:MU, median, trimmed-mean:BETA, krum:F[,M], centered-clip:TAU[,L] or
    /// screened-mean:F (fedadam and fedyogi keep state on an aggregator that rotates).
    #[arg(long, default_value = "fedavg")]
    pub strategy: String,
    /// The recommended robust recipe for --min-clients members, a fifth of them assumed
    /// to attack (or --robust-f).
    #[arg(long, conflicts_with_all = ["secagg", "dp_noise"])]
    pub robust: bool,
    /// With --robust: how many members per round may be attackers.
    #[arg(long, value_name = "F", requires = "robust")]
    pub robust_f: Option<usize>,
    /// Secure aggregation: the round's aggregator learns only the sum of the updates.
    #[arg(long)]
    pub secagg: bool,
    /// Neighbours per member, even (SecAgg+); default: every other member of the round.
    #[arg(long, value_name = "K", requires = "secagg")]
    pub secagg_neighbours: Option<u32>,
    /// Shares needed to rebuild a member's secrets: more than two thirds of its holders.
    #[arg(long, value_name = "T", requires = "secagg")]
    pub secagg_threshold: Option<u32>,
    /// Differential privacy: noise multiplier z.
    #[arg(long, value_name = "Z", requires = "dp_clip")]
    pub dp_noise: Option<String>,
    /// Differential privacy: clip each member's update to this L2 norm.
    #[arg(long, value_name = "C", requires = "dp_noise")]
    pub dp_clip: Option<String>,
    /// δ of the (ε, δ) reported.
    #[arg(long, value_name = "D", default_value = "1e-5")]
    pub dp_delta: String,
    /// Stop training before ε would pass this.
    #[arg(long, value_name = "E", requires = "dp_noise")]
    pub epsilon_budget: Option<String>,
    /// Members needed for a round.
    #[arg(long, default_value_t = 2, value_name = "M")]
    pub min_clients: u32,
    /// Seconds a round may take before the next aggregator takes over.
    #[arg(long, default_value_t = 60, value_name = "T")]
    pub round_timeout: u64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2, value_name = "E")]
    pub local_epochs: u32,
    /// Local learning rate.
    #[arg(long, default_value = "0.1", value_name = "LR")]
    pub lr: String,
    /// Local batch size.
    #[arg(long, default_value_t = 16, value_name = "B")]
    pub batch: u32,
    #[command(flatten)]
    pub member: MemberArgs,
    /// `{"id": …}` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sov fl join` flags.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The federation's id.
    pub federation: String,
    #[command(flatten)]
    pub member: MemberArgs,
    /// The status after joining, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sov fl simulate` flags.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// digits (built in), fashion-mnist or mnist.
    #[arg(long, default_value = "digits")]
    pub dataset: String,
    /// Train on your own table instead: a CSV file with a header row, numeric feature
    /// columns and an integer class label (column `label`, or --label-column); a quarter of
    /// each class is held out for testing.
    #[arg(long, value_name = "FILE.csv", conflicts_with_all = ["split_file", "data_dir"])]
    pub data: Option<PathBuf>,
    /// The label column of --data.
    #[arg(long, value_name = "NAME", requires = "data")]
    pub label_column: Option<String>,
    /// Standardise --data's features (mean 0, deviation 1, from the training rows).
    #[arg(long, requires = "data")]
    pub standardize: bool,
    /// Test on this CSV file (same columns) and train on all of --data, instead of holding
    /// out a quarter of --data.
    #[arg(long, value_name = "FILE.csv", requires = "data")]
    pub test: Option<PathBuf>,
    /// Where fashion-mnist/ and mnist/ are looked for (default ~/.cache/sov/data;
    /// Fashion-MNIST also in /usr/share/datasets).
    #[arg(long, env = "SOV_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of clients (default 10; with --split-file, the file's).
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Rounds to run.
    #[arg(long, default_value_t = 10, value_name = "R")]
    pub rounds: usize,
    /// Share of clients selected each round.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub fraction: f64,
    /// iid, dirichlet:A or shards:S.
    #[arg(long, default_value = "dirichlet:0.5", conflicts_with = "split_file")]
    pub partition: String,
    /// Exact test rows and client rows of the digits (JSON from Flower's export_split.py).
    #[arg(long, value_name = "FILE")]
    pub split_file: Option<PathBuf>,
    /// logreg, mlp:H[,H2…] or cnn.
    #[arg(long, default_value = "mlp:64")]
    pub model: String,
    /// Local epochs per round.
    #[arg(long, default_value_t = 5, value_name = "E")]
    pub local_epochs: usize,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.1, value_name = "LR")]
    pub lr: f32,
    /// Local batch size.
    #[arg(long, default_value_t = 16, value_name = "B")]
    pub batch: usize,
    /// Local optimiser: sgd, sgd:MOMENTUM or adam.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    /// fedavg, fedprox:MU, fedadam, fedyogi, median, trimmed-mean:BETA, krum:F[,M],
    /// centered-clip:TAU[,L] or screened-mean:F.
    #[arg(long, default_value = "fedavg")]
    pub strategy: String,
    /// The recommended robust recipe (docs/ROBUSTNESS.md): the screened mean, set for the
    /// number of clients and the attackers assumed (--robust-f, else --malicious, else 20 %).
    #[arg(long, conflicts_with = "pre_aggregate")]
    pub robust: bool,
    /// With --robust: how many of the clients may be attackers.
    #[arg(long, value_name = "F", requires = "robust")]
    pub robust_f: Option<usize>,
    /// A step before the rule that helps robust rules on heterogeneous data: bucket:S
    /// (average random buckets of S updates), nnm:F (nearest-neighbour mixing) or
    /// median-norm (clip every update to the round's median update norm).
    #[arg(long, value_name = "PRE")]
    pub pre_aggregate: Option<String>,
    /// Chance that a selected client drops out (with --secagg, at a random stage of the
    /// protocol; the round recovers while enough clients remain).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub dropout: f64,
    /// Secure aggregation: the aggregator learns only the sum of the updates.
    #[arg(long)]
    pub secagg: bool,
    /// Shares needed to rebuild a client's secrets: more than two thirds of its holders
    /// (the default is the least allowed).
    #[arg(long, value_name = "T", requires = "secagg")]
    pub secagg_threshold: Option<u32>,
    /// Neighbours per client, even (SecAgg+); default: every other selected client.
    #[arg(long, value_name = "K", requires = "secagg")]
    pub secagg_neighbours: Option<u32>,
    /// Differential privacy: noise multiplier z (noise std z·C on the sum of updates).
    #[arg(long, value_name = "Z", requires = "dp_clip")]
    pub dp_noise: Option<f64>,
    /// Differential privacy: clip each client's update to this L2 norm.
    #[arg(long, value_name = "C", requires = "dp_noise")]
    pub dp_clip: Option<f64>,
    /// δ of the (ε, δ) reported.
    #[arg(long, value_name = "D", default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// Clip every update to this L2 norm.
    #[arg(long, value_name = "C")]
    pub clip: Option<f32>,
    /// Share of clients that are malicious.
    #[arg(long, default_value_t = 0.0, value_name = "P", requires = "attack")]
    pub malicious: f64,
    /// What malicious clients do: sign-flip, scale:S, noise, label-flip, backdoor, alie,
    /// ipm:EPS (these two see the honest updates of the round and collude) or absent (they
    /// send nothing: what the honest clients learn alone, the baseline for defences).
    #[arg(long)]
    pub attack: Option<String>,
    /// Seed of every random choice (partition, initialisation, shuffles, selection), but
    /// DP noise and the Poisson sample, which come from the operating system.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Draw DP noise and the Poisson sample from --seed too, to repeat a run exactly. The
    /// ε reported then does not hold: anyone who knows the seed removes the noise.
    #[arg(long, requires = "dp_noise")]
    pub reproducible_noise: bool,
    /// One JSON object per round and a final one, instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sov gov …`
#[derive(Debug, Subcommand)]
pub enum GovCommand {
    /// Found a group of MEMBERS (this node is one), deciding by a rule; its record goes to
    /// every member's node. Prints its id.
    Create {
        /// The members' did:keys, comma-separated (this node is added if missing).
        #[arg(long, value_delimiter = ',', value_name = "DID,DID,…")]
        members: Vec<String>,
        /// Roles (committees) as DID=ROLE, comma-separated; others are `member`.
        #[arg(long, value_delimiter = ',', value_name = "DID=ROLE,…")]
        roles: Vec<String>,
        /// Weights as DID=N, comma-separated; others weigh 1.
        #[arg(long, value_delimiter = ',', value_name = "DID=N,…")]
        weights: Vec<String>,
        /// Share of all members' weight that must vote yes, N/M (e.g. 2/3).
        #[arg(long, value_name = "N/M", conflicts_with = "rule")]
        threshold: Option<String>,
        /// A rule over committees, e.g. "maintainers 2/3 AND contributors majority"
        /// (default: majority).
        #[arg(long, value_name = "RULE")]
        rule: Option<String>,
        /// The group's name: a promoted model is served under it on /v1.
        #[arg(long, default_value = "group")]
        name: String,
        /// How long proposals stay open unless they say otherwise (90s, 10m, 2h, 7d).
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        voting: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Propose something to GROUP. Prints the proposal's id.
    Propose {
        /// The group's id.
        group: String,
        /// What to propose.
        #[command(subcommand)]
        what: ProposeWhat,
        /// How long it stays open (90s, 10m, 2h, 7d; default: the group's).
        #[arg(long, global = true, value_name = "DURATION")]
        deadline: Option<String>,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Vote on a proposal: yes, no or abstain. A vote is final.
    Vote {
        /// The proposal's id.
        proposal: String,
        /// yes, no or abstain.
        choice: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The groups this node is in, or GROUP's proposals.
    Ls {
        /// A group's id: its proposals.
        group: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// A proposal: status (open, passed, rejected, expired), the count of each committee,
    /// the votes, and what this node enacted.
    Show {
        /// The proposal's id.
        proposal: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Write the proposal's certificate (once decided) to FILE.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
    /// Check a certificate offline (no node, no network): exit 0 and the outcome if it
    /// holds.
    Verify {
        /// The certificate (from `sov gov show --cert`).
        cert: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// What `sov gov propose GROUP` proposes.
#[derive(Debug, Subcommand)]
pub enum ProposeWhat {
    /// Serve this model (a manifest id) under the group's name on every member's node.
    Promote {
        /// The model's manifest id (`sov model ls`).
        model: String,
    },
    /// Make DID a member.
    Admit {
        /// Its did:key.
        did: String,
        /// Its role (committee).
        #[arg(long, default_value = "member")]
        role: String,
        /// Its weight.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove DID, for good.
    Remove {
        /// Its did:key.
        did: String,
    },
    /// Change a federation's settings.
    Policy {
        /// The federation's id.
        federation: String,
        /// KEY=VALUE settings.
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// The group's gateway policy: clients it names get access tokens from any member node,
    /// honoured by every member (replaces an earlier policy; none: no one).
    Gateway {
        /// WHO=SCOPE,SCOPE (WHO: a did:key, role:NAME or members), e.g.
        /// `--allow members=infer --allow did:key:z…=predict`.
        #[arg(long, value_name = "WHO=SCOPES")]
        allow: Vec<String>,
    },
    /// A release: members' nodes fetch the artifact and check it.
    Release {
        /// What is released.
        name: String,
        /// Its version.
        version: String,
        /// The artifact's object id.
        object: String,
    },
    /// A proposal in words.
    Custom {
        /// The text.
        #[arg(long)]
        text: String,
    },
}

/// `sov token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Let DID (or the members of a group this node is in, with --group) get access tokens
    /// with these scopes at /oauth/token; kept in $SOV_HOME/policy.toml (an empty --scope
    /// takes the rule out). Scopes: infer, embed, predict, data:read, data:write, fl:join,
    /// gov:vote, admin.
    Allow {
        /// The client's did:key.
        #[arg(required_unless_present = "group")]
        did: Option<String>,
        /// Or the members of this group (its name or id).
        #[arg(long, conflicts_with = "did")]
        group: Option<String>,
        /// With --group: only members with this role.
        #[arg(long, requires = "group")]
        role: Option<String>,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "SCOPE,…")]
        scope: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Issue an access token to DID by hand (prints it).
    Issue {
        /// The client's did:key.
        #[arg(long)]
        to: String,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "SCOPE,…", required = true)]
        scope: Vec<String>,
        /// How long it lives (90s, 15m, 1h; at most 1h).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (`sov token ls`).
    Revoke {
        /// The token's id (jti).
        jti: String,
    },
    /// The allow list and the tokens issued that have not expired.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}
