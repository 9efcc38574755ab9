//! `sov fl create | join | status | ls | leave`: federations across nodes, through the
//! running node's API (or, for what needs no network, an offline node on this home).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sov_api::{CreateFederation, CreatedFederation, JoinFederation};
use sov_learn::federation::{DpPolicy, Policy, SecAggPolicy, Task};
use sov_node::{FederationStatus, Membership};

use crate::{
    args::{CreateArgs, FlCommand, MemberArgs},
    home::Home,
    output::{note, say},
    target::Target,
};

pub fn run(home: &Home, cmd: FlCommand) -> Result<()> {
    let target = Target::pick(home, None)?;
    if let Target::Local(l) = &target {
        l.block_on(l.node().fl_resume());
    }
    match cmd {
        FlCommand::Simulate(_) => unreachable!("simulate runs without a home"),
        FlCommand::Create(a) => create(&target, *a),
        FlCommand::Join(a) => {
            let member = membership(a.member)?;
            let Target::Remote(api) = &target else {
                bail!("joining needs the network: start the node first (`sov node run`)");
            };
            note!(
                "asking the federation's members for its record, then its creator to admit this node…"
            );
            let s: FederationStatus = api.post_json(
                &format!("/api/v1/federations/{}/join", a.federation),
                &JoinFederation { member },
            )?;
            if a.json {
                say!("{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                say!("joined {} ({}): {} members", s.id, s.name, s.members.len())?;
                say!("follow the training with `sov fl status {} --follow`", s.id)?;
            }
            Ok(())
        }
        FlCommand::Status {
            federation,
            follow,
            json,
        } => {
            let get = || -> Result<FederationStatus> { status(&target, &federation) };
            if !follow {
                let s = get()?;
                if json {
                    say!("{}", serde_json::to_string_pretty(&s)?)?;
                } else {
                    print_status(&s)?;
                }
                return Ok(());
            }
            let mut shown = 0;
            loop {
                let s = get()?;
                for h in s.history.iter().skip(shown) {
                    if json {
                        say!("{}", serde_json::to_string(h)?)?;
                    } else {
                        say!(
                            "round {:>3}/{}  accuracy {}  ε {}  {} contributors  aggregator {}",
                            h.round,
                            s.rounds,
                            percent(h.accuracy),
                            h.epsilon.map_or("-".into(), |e| format!("{e:.2}")),
                            h.contributors.len(),
                            short(&h.aggregator)
                        )?;
                    }
                }
                shown = s.history.len();
                if s.finished {
                    if !json {
                        print_status(&s)?;
                    }
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        FlCommand::Ls { json } => {
            let all: Vec<FederationStatus> = match &target {
                Target::Remote(api) => api.get_json("/api/v1/federations")?,
                Target::Local(l) => l.block_on(l.node().fl_list())?,
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?)?;
            } else if all.is_empty() {
                note!("this node is in no federation (`sov fl create` or `sov fl join`)");
            } else {
                for s in &all {
                    say!(
                        "{}  {:<20} round {:>3}/{:<3} accuracy {}  {} members{}",
                        s.id,
                        s.name,
                        s.round,
                        s.rounds,
                        percent(s.accuracy),
                        s.members.len(),
                        if s.finished { "  finished" } else { "" }
                    )?;
                }
            }
            Ok(())
        }
        FlCommand::Leave { federation } => {
            match &target {
                Target::Remote(api) => {
                    let _: serde_json::Value =
                        api.delete_json(&format!("/api/v1/federations/{federation}"))?;
                }
                Target::Local(l) => {
                    let id = federation
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{federation:?} is not a federation id"))?;
                    l.block_on(l.node().fl_leave(&id))?;
                }
            }
            say!("left {federation}")?;
            Ok(())
        }
    }
}

fn status(target: &Target, federation: &str) -> Result<FederationStatus> {
    match target {
        Target::Remote(api) => api.get_json(&format!("/api/v1/federations/{federation}")),
        Target::Local(l) => {
            let id = federation
                .parse()
                .map_err(|_| anyhow::anyhow!("{federation:?} is not a federation id"))?;
            Ok(l.block_on(l.node().fl_status(&id))?)
        }
    }
}

/// A member's data, with a file's path made absolute (the node may run elsewhere).
fn membership(m: MemberArgs) -> Result<Membership> {
    let path = std::path::Path::new(&m.data);
    let data = if path.is_file() {
        std::fs::canonicalize(path)
            .with_context(|| format!("reading {}", m.data))?
            .to_string_lossy()
            .into_owned()
    } else if let Some((images, labels)) = m.data.split_once(',')
        && std::path::Path::new(images).is_file()
    {
        let abs = |p: &str| -> Result<String> {
            Ok(std::fs::canonicalize(p)
                .with_context(|| format!("reading {p}"))?
                .to_string_lossy()
                .into_owned())
        };
        format!("{},{}", abs(images)?, abs(labels)?)
    } else {
        m.data
    };
    Ok(Membership {
        data,
        label_column: m.label_column,
        standardize: m.standardize,
    })
}

/// `--task`: the data kind, input shape and classes.
fn task(spec: &str, model: String) -> Result<Task> {
    let (data, input, classes) = match spec {
        "digits" => ("digits", [1, 8, 8], 10),
        "fashion-mnist" | "mnist" => (spec, [1, 28, 28], 10),
        other => {
            let bad = || {
                anyhow::anyhow!(
                    "--task {other:?}: expected digits, fashion-mnist, mnist or \
                     csv:FEATURES:CLASSES"
                )
            };
            let rest = other.strip_prefix("csv:").ok_or_else(bad)?;
            let (f, c) = rest.split_once(':').ok_or_else(bad)?;
            let f: u32 = f.parse().map_err(|_| bad())?;
            let c: u32 = c.parse().map_err(|_| bad())?;
            ("csv", [1, 1, f], c)
        }
    };
    Ok(Task {
        data: data.into(),
        input,
        classes,
        model,
    })
}

fn create(target: &Target, a: CreateArgs) -> Result<()> {
    let task = task(&a.task, a.model)?;
    let strategy = if a.robust {
        if a.strategy != "fedavg" {
            bail!(
                "--robust picks the rule itself: drop --strategy {}",
                a.strategy
            );
        }
        let clients = a.min_clients as usize;
        let share = match a.robust_f {
            Some(f) if 2 * f >= clients => bail!(
                "--robust-f {f}: robust aggregation needs a majority of honest members (fewer \
                 than {} of --min-clients {clients})",
                clients.div_ceil(2)
            ),
            Some(f) => f as f64 / clients as f64,
            None => 0.2,
        };
        sov_learn::strategy::robust(clients, share)?.to_string()
    } else {
        a.strategy
    };
    let policy = Policy {
        rounds: a.rounds,
        strategy,
        min_clients: a.min_clients,
        secagg: a.secagg.then_some(SecAggPolicy {
            neighbours: a.secagg_neighbours,
            threshold: a.secagg_threshold,
        }),
        dp: match (a.dp_noise, a.dp_clip) {
            (Some(noise), Some(clip)) => Some(DpPolicy {
                noise,
                clip,
                delta: a.dp_delta,
            }),
            _ => None,
        },
        epsilon_budget: a.epsilon_budget,
        local_epochs: a.local_epochs,
        learning_rate: a.lr,
        batch: a.batch,
        round_timeout_ms: a.round_timeout.saturating_mul(1000),
    };
    let name = a.name.unwrap_or_else(|| format!("{} federation", a.task));
    let member = membership(a.member)?;
    let id = match target {
        Target::Remote(api) => {
            let c: CreatedFederation = api.post_json(
                "/api/v1/federations",
                &CreateFederation {
                    name,
                    task,
                    policy,
                    member,
                    governance: a.governed_by.clone(),
                },
            )?;
            c.id
        }
        Target::Local(l) => {
            let governance = a
                .governed_by
                .as_deref()
                .map(|g| {
                    g.parse()
                        .map_err(|_| anyhow::anyhow!("{g:?} is not a group id"))
                })
                .transpose()?;
            if governance.is_some() {
                l.block_on(l.node().gov_resume());
            }
            l.block_on(l.node().fl_create(&name, task, policy, member, governance))?
                .to_string()
        }
    };
    if a.json {
        say!("{}", serde_json::json!({ "id": id }))?;
    } else {
        say!("{id}")?;
        note!(
            "federation created; others join with `sov fl join {id} --data …`; training starts \
             once {} members are connected",
            a.min_clients
        );
    }
    Ok(())
}

fn percent(a: Option<f64>) -> String {
    a.map_or("-".into(), |a| format!("{:.1} %", a * 100.0))
}

/// The end of a DID, enough to tell members apart.
fn short(did: &str) -> String {
    let tail: String = did
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// A row of block characters for `values` between `lo` and `hi`.
fn sparkline(values: &[f64], lo: f64, hi: f64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let span = (hi - lo).max(1e-12);
    values
        .iter()
        .map(|v| {
            let i = (((v - lo) / span) * 7.0).round().clamp(0.0, 7.0) as usize;
            BARS[i]
        })
        .collect()
}

fn print_status(s: &FederationStatus) -> Result<()> {
    say!("{}  {}", s.id, s.name)?;
    say!(
        "round      {}/{}{}",
        s.round,
        s.rounds,
        if s.finished { " (finished)" } else { "" }
    )?;
    say!("accuracy   {}", percent(s.accuracy))?;
    if let Some(e) = s.epsilon {
        let budget = s
            .epsilon_budget
            .map_or(String::new(), |b| format!(" of a budget of {b}"));
        say!(
            "ε          {e:.2}{budget} (δ = {})",
            s.delta.unwrap_or_default()
        )?;
    }
    say!(
        "aggregation {}",
        if s.secure {
            "secure (the aggregator sees only the sum)"
        } else {
            "in the clear"
        }
    )?;
    say!(
        "members    {} ({} live here){}",
        s.members.len(),
        s.live.len(),
        s.aggregator
            .as_deref()
            .filter(|_| !s.finished)
            .map_or(String::new(), |a| format!("; next aggregator {}", short(a)))
    )?;
    say!(
        "model      {}{}",
        &s.model[..16.min(s.model.len())],
        if s.has_model { "" } else { " (not here yet)" }
    )?;
    say!("data       {}", s.data)?;
    let acc: Vec<f64> = s.history.iter().filter_map(|h| h.accuracy).collect();
    if acc.len() >= 2 {
        say!("accuracy   {} (0 to 100 %)", sparkline(&acc, 0.0, 1.0))?;
    }
    let eps: Vec<f64> = s.history.iter().filter_map(|h| h.epsilon).collect();
    if let (true, Some(max)) = (eps.len() >= 2, eps.last()) {
        say!("ε          {} (0 to {max:.1})", sparkline(&eps, 0.0, *max))?;
    }
    Ok(())
}
