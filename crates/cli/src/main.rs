//! `sov`: a self-sovereign AI node. This binary is layer 4: it parses the command line,
//! validates it once into typed values, and calls the library crates. `anyhow` lives here only.

mod args;
mod data;
mod demo;
mod federation;
mod files;
mod fl;
mod gov;
mod home;
mod model;
mod node;
mod remote;
mod store;
mod target;
mod token;

mod output;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    fix_thread_count();
    // A panic is a bug (or a store file damaged outside sov, on which redb may panic): say so
    // in one line like every other error, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal error (a bug, or a damaged store): {msg}");
    }));
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's message (some span lines, e.g. the missing arguments), without
            // its usage block.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            let message = if message.is_empty() {
                "invalid arguments".to_string()
            } else {
                message.join(" ")
            };
            eprintln!("{message} (see `sov --help`)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line: "what: why: root cause".
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<()> {
    let home = || home::Home::resolve(cli.home.clone(), cli.passphrase_file.clone());
    match cli.command {
        args::Command::Init {
            force,
            discard_data,
            import_seed,
        } => home::init(&home()?, force, discard_data, import_seed.as_deref()),
        args::Command::Id { json, action } => match action {
            None => home::id(&home()?, json),
            Some(action) => home::id_action(&home()?, action, json),
        },
        args::Command::Data(cmd) => match target::Target::pick(&home()?, None)? {
            target::Target::Remote(api) => remote::data(&api, cmd),
            target::Target::Local(local) => data::run(&local, cmd),
        },
        args::Command::Demo {
            dir,
            size_mib,
            models,
        } => demo::run(dir, size_mib, models),
        args::Command::Fl(cmd @ args::FlCommand::Simulate(_)) => fl::run(cmd),
        args::Command::Fl(cmd) => federation::run(&home()?, cmd),
        args::Command::Gov(args::GovCommand::Verify { cert, json }) => gov::verify(&cert, json),
        args::Command::Gov(cmd) => gov::run(&home()?, cmd),
        args::Command::Token(cmd) => token::run(&home()?, cmd),
        args::Command::Node(args::NodeCommand::Run(args)) => node::run(&home()?, args),
        args::Command::Model(cmd) => model::run(&home()?, cmd),
        args::Command::Run(args) => model::run_prompt(&home()?, args),
        args::Command::Chat(args) => model::chat(&home()?, args),
        args::Command::Store(args::StoreCommand::Check { json }) => {
            if store::check(&home()?, json)? {
                Ok(())
            } else {
                anyhow::bail!("the store is damaged (see above)")
            }
        }
        args::Command::Store(args::StoreCommand::Repair { json }) => store::repair(&home()?, json),
        args::Command::Peers { json } => {
            let home = home()?;
            let running = node::require(&home.dir)?;
            remote::peers(&remote::Api::new(&home, &running)?, json)
        }
    }
}

/// candle's f32 matmul asks for the thread count on every call, and without
/// `RAYON_NUM_THREADS` it re-reads /proc/cpuinfo each time (~80 µs: more than a whole
/// training step of a small model). Fix the count once, to what rayon would pick anyway.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the first statement of `main`; no other thread exists yet that could read
        // the environment at the same time.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
}

/// A closed stdout (`sov data get ID | head`) is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<sov_node::StoreError>().is_some_and(|s| {
                matches!(s, sov_node::StoreError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
            || c.downcast_ref::<sov_node::Error>().is_some_and(|n| {
                matches!(n, sov_node::Error::Store(sov_node::StoreError::Io(io)) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}
