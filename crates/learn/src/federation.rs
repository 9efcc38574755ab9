//! Federations: the signed genesis record that defines one (its CID is the federation id),
//! and the order in which members are asked to aggregate each round.
//!
//! A genesis record names the task (data kind, input shape, classes, model), the policy
//! (rounds, strategy, minimum clients, secure aggregation, differential privacy, an ε
//! budget, local training, the round timeout) and the founding members with their roles. It
//! is signed by its creator, who must be named in it as the creator. Canonical DAG-CBOR
//! has no floats, so real numbers are decimal strings as a user types them (`"1.1"`), parsed
//! and checked by [`Genesis::validate`]; the record is what every member checks before it
//! joins, so it is refused whole when any part of it does not make sense.
//!
//! Each round's aggregator is chosen by rendezvous hashing over the live members
//! ([`aggregators`]): anyone who knows the federation, the round and who is live computes the
//! same order, so a member can tell a legitimate aggregator from an impostor, and when the
//! first does not close the round in time, the next in the order takes over.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sov_core::{Codec, ContentId, Did, Message, Signed};

use crate::{
    Error, Result,
    dp::DpConfig,
    model::{Arch, ModelSpec},
    strategy::Strategy,
};

/// Most founding members a genesis record names.
pub const MAX_MEMBERS: usize = 1024;
/// Most rounds a federation may plan.
pub const MAX_ROUNDS: u32 = 100_000;
/// Longest name.
pub const MAX_NAME: usize = 64;
/// Bounds of the round timeout, in milliseconds.
pub const ROUND_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// The data kinds a task may name: the built-in data sets, or members' own tables.
pub const DATA_KINDS: [&str; 4] = ["digits", "fashion-mnist", "mnist", "csv"];

/// What the federation learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// One of [`DATA_KINDS`].
    pub data: String,
    /// Channels, height, width of one example (a table: `[1, 1, features]`).
    pub input: [u32; 3],
    /// How many classes.
    pub classes: u32,
    /// `logreg`, `mlp:H[,H…]` or `cnn`.
    pub model: String,
}

/// Secure aggregation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecAggPolicy {
    /// Neighbours per client (`None`: every other selected client).
    pub neighbours: Option<u32>,
    /// Shares needed to rebuild a secret (`None`: the smallest safe threshold).
    pub threshold: Option<u32>,
}

/// Differential privacy settings, as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpPolicy {
    /// The noise multiplier `z`.
    pub noise: String,
    /// The clipping norm `C`.
    pub clip: String,
    /// δ.
    pub delta: String,
}

/// How the federation trains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rounds to run.
    pub rounds: u32,
    /// The aggregation rule, as `sov fl simulate --strategy` takes it.
    pub strategy: String,
    /// Fewest clients whose updates a round needs.
    pub min_clients: u32,
    /// Secure aggregation, if on.
    pub secagg: Option<SecAggPolicy>,
    /// Differential privacy, if on.
    pub dp: Option<DpPolicy>,
    /// ε at which training stops (with DP), as a decimal string.
    pub epsilon_budget: Option<String>,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Learning rate, as a decimal string.
    pub learning_rate: String,
    /// Batch size.
    pub batch: u32,
    /// How long a round may take before the next aggregator takes over, in milliseconds.
    pub round_timeout_ms: u64,
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Made the federation and admits members (until governance takes over).
    Creator,
    /// Trains, and aggregates when its turn comes.
    Member,
}

/// A member: its DID and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member.
    pub did: Did,
    /// What it does.
    pub role: Role,
}

/// The record that founds a federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// A name for people.
    pub name: String,
    /// When it was made (Unix seconds); also what makes two otherwise equal federations
    /// different ones.
    pub created: u64,
    /// What it learns.
    pub task: Task,
    /// How.
    pub policy: Policy,
    /// The founding members (the creator among them).
    pub members: Vec<Member>,
    /// The group (`sov gov`, its id) whose votes decide who may join and who is removed;
    /// `None`: the creator admits whoever asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<ContentId>,
}

impl Message for Genesis {
    const TAG: &'static str = "sov/federation/1";
}

/// A real number from a record: a finite decimal.
fn real(what: &str, s: &str) -> Result<f64> {
    if s.len() > 32 {
        return Err(Error::Spec(format!("{what}: too long a number")));
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::Spec(format!("{what} {s:?} is not a number")))
}

impl Genesis {
    /// Check everything a member relies on: a name, a known data kind, a model that fits the
    /// input and classes, a strategy sov knows, sane numbers, a safe SecAgg threshold, one
    /// creator, no member twice. Says what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME {
            return Err(Error::Spec(format!(
                "a federation's name has 1 to {MAX_NAME} bytes"
            )));
        }
        if !DATA_KINDS.contains(&self.task.data.as_str()) {
            return Err(Error::Spec(format!(
                "data {:?}: expected one of {}",
                self.task.data,
                DATA_KINDS.join(", ")
            )));
        }
        self.model_spec()?;
        let p = &self.policy;
        if !(1..=MAX_ROUNDS).contains(&p.rounds) {
            return Err(Error::Spec(format!("rounds: 1 to {MAX_ROUNDS}")));
        }
        self.strategy()?;
        if p.min_clients == 0 || p.min_clients as usize > MAX_MEMBERS {
            return Err(Error::Spec(format!(
                "minimum clients per round: 1 to {MAX_MEMBERS}"
            )));
        }
        if let Some(s) = &p.secagg {
            if s.neighbours == Some(0) {
                return Err(Error::Spec("secure aggregation needs neighbours".into()));
            }
            if let (Some(k), Some(t)) = (s.neighbours, s.threshold) {
                let holders = k as usize + 1;
                let min = crate::secagg::min_threshold(holders);
                if (t as usize) < min || t as usize > holders {
                    return Err(Error::Spec(format!(
                        "SecAgg threshold {t} with {k} neighbours: {min} to {holders} (more than \
                         two thirds of the holders, or a malicious aggregator can unmask a client)"
                    )));
                }
            }
        }
        let dp = self.dp()?;
        match (&p.epsilon_budget, dp) {
            (Some(_), None) => {
                return Err(Error::Spec("an ε budget needs differential privacy".into()));
            }
            (Some(e), Some(_)) if real("ε budget", e)? <= 0.0 => {
                return Err(Error::Spec(format!("ε budget {e} must be > 0")));
            }
            _ => {}
        }
        if p.local_epochs == 0 || p.local_epochs > 1000 {
            return Err(Error::Spec("local epochs: 1 to 1000".into()));
        }
        let lr = real("learning rate", &p.learning_rate)?;
        if !(lr > 0.0 && lr <= 100.0) {
            return Err(Error::Spec(format!(
                "learning rate {lr} must be in (0, 100]"
            )));
        }
        if p.batch == 0 || p.batch > 1 << 20 {
            return Err(Error::Spec("batch size: 1 to 2^20".into()));
        }
        if !ROUND_TIMEOUT_MS.contains(&p.round_timeout_ms) {
            return Err(Error::Spec(
                "round timeout: 1 s to 24 h (in milliseconds)".into(),
            ));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(Error::Spec(format!(
                "{} members: at most {MAX_MEMBERS} found a federation",
                self.members.len()
            )));
        }
        let creators = self
            .members
            .iter()
            .filter(|m| m.role == Role::Creator)
            .count();
        if creators != 1 {
            return Err(Error::Spec(format!(
                "{creators} creators named: a federation has exactly one"
            )));
        }
        let mut dids: Vec<String> = self.members.iter().map(|m| m.did.to_string()).collect();
        dids.sort_unstable();
        if let Some(w) = dids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Spec(format!("{} is named twice", w[0])));
        }
        Ok(())
    }

    /// The creator's DID (the record is valid only with exactly one).
    pub fn creator(&self) -> Option<Did> {
        self.members
            .iter()
            .find(|m| m.role == Role::Creator)
            .map(|m| m.did)
    }

    /// The model every member trains.
    pub fn model_spec(&self) -> Result<ModelSpec> {
        let t = &self.task;
        let input = t.input.map(|x| x as usize);
        ModelSpec::new(Arch::from_str(&t.model)?, input, t.classes as usize)
    }

    /// The aggregation rule.
    pub fn strategy(&self) -> Result<Strategy> {
        Strategy::from_str(&self.policy.strategy)
    }

    /// The DP settings, checked.
    pub fn dp(&self) -> Result<Option<DpConfig>> {
        let Some(d) = &self.policy.dp else {
            return Ok(None);
        };
        let cfg = DpConfig {
            noise: real("DP noise", &d.noise)?,
            clip: real("DP clip", &d.clip)?,
            delta: real("δ", &d.delta)?,
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }

    /// The ε budget, if one is set.
    pub fn epsilon_budget(&self) -> Result<Option<f64>> {
        self.policy
            .epsilon_budget
            .as_deref()
            .map(|e| real("ε budget", e))
            .transpose()
    }

    /// This genesis with policy `changes` applied (a governing group's votes), checked
    /// whole. Only [`POLICY_KEYS`] may change: the task, the strategy, secure aggregation
    /// and differential privacy are what members joined for, and the ε already spent was
    /// accounted under them.
    pub fn with_changes(
        &self,
        changes: &std::collections::BTreeMap<String, String>,
    ) -> Result<Genesis> {
        let mut g = self.clone();
        let whole = |k: &str, v: &str| -> Result<u64> {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::Spec(format!("{k}: {v:?} is not a whole number")))
        };
        let small = |k: &str, v: &str| -> Result<u32> {
            u32::try_from(whole(k, v)?).map_err(|_| Error::Spec(format!("{k}: {v} is too large")))
        };
        for (k, v) in changes {
            match k.as_str() {
                "rounds" => g.policy.rounds = small(k, v)?,
                "min_clients" => g.policy.min_clients = small(k, v)?,
                "local_epochs" => g.policy.local_epochs = small(k, v)?,
                "batch" => g.policy.batch = small(k, v)?,
                "learning_rate" => {
                    real("learning rate", v)?;
                    g.policy.learning_rate = v.trim().to_owned();
                }
                "round_timeout_ms" => g.policy.round_timeout_ms = whole(k, v)?,
                "epsilon_budget" if v.trim() == "none" => g.policy.epsilon_budget = None,
                "epsilon_budget" => {
                    real("ε budget", v)?;
                    g.policy.epsilon_budget = Some(v.trim().to_owned());
                }
                _ => {
                    return Err(Error::Spec(format!(
                        "{k:?} cannot change: a vote may change {}",
                        POLICY_KEYS.join(", ")
                    )));
                }
            }
        }
        g.validate()?;
        Ok(g)
    }
}

/// The settings of a federation's policy that its governing group may change by vote.
pub const POLICY_KEYS: [&str; 7] = [
    "rounds",
    "min_clients",
    "local_epochs",
    "learning_rate",
    "batch",
    "round_timeout_ms",
    "epsilon_budget",
];

/// A genesis block checked: canonical, signed by the creator it names, valid. Returns the
/// federation id (the block's CID) and the record.
pub fn open_genesis(bytes: &[u8]) -> Result<(ContentId, Genesis)> {
    let signed = Signed::<Genesis>::decode(bytes)
        .map_err(|e| Error::Spec(format!("not a federation record: {e}")))?;
    let genesis = signed.body();
    genesis.validate()?;
    if genesis.creator() != Some(signed.signer()) {
        return Err(Error::Spec(format!(
            "the federation record is signed by {}, not by the creator it names",
            signed.signer()
        )));
    }
    Ok((ContentId::of(Codec::DagCbor, bytes), signed.into_body()))
}

/// The order in which `live` members are asked to aggregate round `round` of federation
/// `federation`: by `BLAKE3(federation ‖ round ‖ DID)`, highest first (rendezvous hashing).
/// The first aggregates; if it does not close the round in time, the second takes over, and
/// so on. Every member computes the same order from the same live set, and a member's place
/// changes from round to round, so the role rotates.
pub fn aggregators(federation: &ContentId, round: u32, live: &[Did]) -> Vec<Did> {
    let mut ranked: Vec<([u8; 32], Did)> = live
        .iter()
        .map(|d| {
            let mut h = blake3::Hasher::new_derive_key("sov 2026-12 federation aggregator order");
            h.update(&federation.to_bytes());
            h.update(&round.to_be_bytes());
            h.update(d.public_bytes());
            (*h.finalize().as_bytes(), *d)
        })
        .collect();
    ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ed25519_dalek::SigningKey;

    use super::*;

    struct Key(SigningKey);

    impl sov_core::Signer for Key {
        fn did(&self) -> Did {
            Did::from_public_key(&self.0.verifying_key()).unwrap()
        }
        fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
            ed25519_dalek::Signer::sign(&self.0, message)
        }
    }

    fn key(i: u8) -> Key {
        Key(SigningKey::from_bytes(&[i; 32]))
    }

    fn genesis(creator: &Key) -> Genesis {
        use sov_core::Signer as _;
        Genesis {
            name: "digits together".into(),
            created: 1_790_000_000,
            task: Task {
                data: "digits".into(),
                input: [1, 8, 8],
                classes: 10,
                model: "mlp:64".into(),
            },
            policy: Policy {
                rounds: 20,
                strategy: "fedavg".into(),
                min_clients: 3,
                secagg: Some(SecAggPolicy {
                    neighbours: Some(4),
                    threshold: Some(4),
                }),
                dp: Some(DpPolicy {
                    noise: "1.0".into(),
                    clip: "0.5".into(),
                    delta: "1e-5".into(),
                }),
                epsilon_budget: Some("8".into()),
                local_epochs: 1,
                learning_rate: "0.1".into(),
                batch: 32,
                round_timeout_ms: 30_000,
            },
            members: vec![
                Member {
                    did: creator.did(),
                    role: Role::Creator,
                },
                Member {
                    did: key(2).did(),
                    role: Role::Member,
                },
            ],
            governance: None,
        }
    }

    #[test]
    fn a_vote_changes_only_what_members_may_change() {
        let g = genesis(&key(1));
        let mut c = std::collections::BTreeMap::new();
        c.insert("rounds".to_string(), "7".to_string());
        c.insert("learning_rate".to_string(), "0.05".to_string());
        c.insert("epsilon_budget".to_string(), "none".to_string());
        let changed = g.with_changes(&c).unwrap();
        assert_eq!(changed.policy.rounds, 7);
        assert_eq!(changed.policy.learning_rate, "0.05");
        assert_eq!(changed.policy.epsilon_budget, None);
        assert_eq!(changed.policy.dp, g.policy.dp);
        for (k, v) in [
            ("strategy", "median"),
            ("rounds", "0"),
            ("learning_rate", "x"),
            ("dp", "off"),
        ] {
            let mut bad = std::collections::BTreeMap::new();
            bad.insert(k.to_string(), v.to_string());
            assert!(g.with_changes(&bad).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn a_signed_genesis_opens_and_its_cid_is_the_federation_id() {
        let creator = key(1);
        let g = genesis(&creator);
        g.validate().unwrap();
        let bytes = Signed::sign(g.clone(), &creator).unwrap().encode().unwrap();
        let (id, opened) = open_genesis(&bytes).unwrap();
        assert_eq!(opened, g);
        assert_eq!(id, ContentId::of(Codec::DagCbor, &bytes));
        assert_eq!(opened.dp().unwrap().unwrap().noise, 1.0);
        assert_eq!(opened.epsilon_budget().unwrap(), Some(8.0));
        // Signed by a member who is not the creator: refused.
        let other = Signed::sign(g, &key(2)).unwrap().encode().unwrap();
        assert!(
            open_genesis(&other)
                .unwrap_err()
                .to_string()
                .contains("not by the creator")
        );
        assert!(open_genesis(b"junk").is_err());
    }

    #[test]
    fn every_unsafe_or_senseless_setting_is_refused_with_its_reason() {
        let creator = key(1);
        type Edit = fn(&mut Genesis);
        let cases: [(Edit, &str); 16] = [
            (|g| g.name = " ".into(), "name"),
            (|g| g.task.data = "imagenet".into(), "data \"imagenet\""),
            (
                |g| g.task.model = "transformer".into(),
                "model \"transformer\"",
            ),
            (|g| g.task.input = [1, 1, 3], "CNN"),
            (|g| g.policy.rounds = 0, "rounds"),
            (|g| g.policy.strategy = "best".into(), "strategy \"best\""),
            (|g| g.policy.min_clients = 0, "minimum clients"),
            (
                |g| {
                    g.policy.secagg = Some(SecAggPolicy {
                        neighbours: Some(6),
                        threshold: Some(4),
                    })
                },
                "SecAgg threshold 4 with 6 neighbours: 5 to 7",
            ),
            (
                |g| g.policy.dp.as_mut().unwrap().clip = "0".into(),
                "clipping norm",
            ),
            (
                |g| g.policy.dp.as_mut().unwrap().noise = "NaN".into(),
                "DP noise \"NaN\" is not a number",
            ),
            (|g| g.policy.dp.as_mut().unwrap().delta = "1".into(), "δ"),
            (
                |g| g.policy.dp = None,
                "an ε budget needs differential privacy",
            ),
            (|g| g.policy.learning_rate = "-1".into(), "learning rate"),
            (|g| g.policy.round_timeout_ms = 10, "round timeout"),
            (|g| g.members[1].role = Role::Creator, "2 creators"),
            (|g| g.members.push(g.members[1].clone()), "named twice"),
        ];
        for (edit, want) in cases {
            let mut g = genesis(&creator);
            if want == "CNN" {
                g.task.model = "cnn".into();
            }
            edit(&mut g);
            let e = g.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn the_aggregator_order_is_shared_rotates_and_fails_over() {
        let fed = ContentId::of(Codec::DagCbor, b"a federation");
        let members: Vec<Did> = (1..=10).map(|i| sov_core::Signer::did(&key(i))).collect();
        // Everyone computes the same order, whatever order they list the members in.
        let mut shuffled = members.clone();
        shuffled.reverse();
        assert_eq!(
            aggregators(&fed, 3, &members),
            aggregators(&fed, 3, &shuffled)
        );
        assert_eq!(aggregators(&fed, 3, &members).len(), 10);
        // Failover: without the first, the second comes first, the rest unchanged.
        let order = aggregators(&fed, 3, &members);
        let live: Vec<Did> = members.iter().copied().filter(|d| *d != order[0]).collect();
        assert_eq!(aggregators(&fed, 3, &live), order[1..]);
        // It rotates: over 1,000 rounds each of 10 members aggregates about 100 times.
        let mut firsts: HashMap<Did, usize> = HashMap::new();
        for round in 0..1000 {
            *firsts
                .entry(aggregators(&fed, round, &members)[0])
                .or_default() += 1;
        }
        assert_eq!(firsts.len(), 10);
        assert!(
            firsts.values().all(|&n| (60..=140).contains(&n)),
            "{firsts:?}"
        );
        // Another federation, another order.
        let other = ContentId::of(Codec::DagCbor, b"another");
        assert!(
            (0..20).any(|r| aggregators(&fed, r, &members) != aggregators(&other, r, &members))
        );
    }
}
