//! `tern-conformance`: runs the Tern conformance suite against a broker (`server`) or a client
//! shim (`client`), lists the cases (`list`), and checks a shim's contract (`self-check`).
//!
//! Exit status: 0 conformant, 1 not conformant, 2 harness or usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tern_conformance::expectations::Expectations;
use tern_conformance::runner::{self, RunOptions, Subject};
use tern_conformance::target::{self, Declared, Provision, Target, TlsTarget};
use tern_conformance::{cases, report, requirement_index};

#[derive(Parser)]
#[command(name = "tern-conformance", version, about = "The Tern protocol conformance suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every case with the requirements it covers.
    List {
        /// Machine-readable output (cases, quoted requirements, coverage).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Test a broker: the runner plays every client role.
    Server {
        /// The broker's native listener, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// Connect with TLS (the TLS profile cases run only then).
        #[arg(long, requires = "ca")]
        tls: bool,
        /// PEM file of the CA (or self-signed certificate) to trust.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Name to send as SNI and verify [default: the host part of --addr].
        #[arg(long)]
        server_name: Option<String>,
        /// Provisioning command, run as `CMD <user> <device>`; prints a token.
        #[arg(long, conflicts_with = "provision_http")]
        provision_cmd: Option<String>,
        /// Provisioning endpoint base URL (`POST /v1/admin/tokens`).
        #[arg(long, requires = "admin_key")]
        provision_http: Option<String>,
        /// Bearer key for --provision-http.
        #[arg(long, env = "TERN_ADMIN_KEY")]
        admin_key: Option<String>,
        /// The broker's write/read fan-out threshold (enables the fan-out switch case).
        #[arg(long)]
        read_fanout_threshold: Option<usize>,
        /// The broker's retention max count per conversation (enables the retention case).
        #[arg(long)]
        retention_max_count: Option<u64>,
        /// The broker does not implement rooms.
        #[arg(long)]
        no_rooms: bool,
        /// The broker does not implement the E2EE key directory.
        #[arg(long)]
        no_key_directory: bool,
        /// The broker's MQTT listener, `host:port` (enables the MQTT cases, spec chapter 15).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Test a client: the runner plays the broker and starts the shim once per case.
    Client {
        /// The shim command (split on whitespace), run as `SHIM <case-id> <host:port>`.
        #[arg(long)]
        shim: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write the spec's test vectors (frames, fragments, delivery, packages, E2EE) into a
    /// directory, for implementations to check themselves against.
    Vectors {
        /// Output directory.
        #[arg(long, default_value = "tern-vectors")]
        out: PathBuf,
    },
    /// Check that a shim exits 127 for a case it cannot know.
    SelfCheck {
        /// The shim command.
        #[arg(long)]
        shim: String,
    },
}

#[derive(Args, Clone)]
struct Select {
    /// Run only cases matching this glob (repeatable).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Skip cases matching this glob (repeatable).
    #[arg(long = "skip")]
    skips: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    select: Select,
    /// Multiply every case's time budget and waits (slow machines, debuggers).
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
    /// Seed for randomised cases (printed in every report).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run every selected case N times.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Known deviations of this implementation (TOML).
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Where to write report.json, junit.xml, summary.md and transcripts/.
    #[arg(long, default_value = "tern-conformance-report")]
    report_dir: PathBuf,
    /// Do not print one line per case.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let all = cases::all();
    let index = requirement_index();
    match cli.command {
        Command::List { json, select } => {
            let chosen: Vec<_> = all
                .iter()
                .filter(|c| tern_conformance::case::selected(c.info.id, &select.tests, &select.skips))
                .collect();
            if json {
                let cases: Vec<_> = chosen
                    .iter()
                    .map(|c| {
                        let reqs: Vec<_> = c.info.reqs.iter().map(|id| {
                            let r = index.iter().find(|r| r.id == *id);
                            serde_json::json!({ "id": id, "level": r.map(|r| r.level.as_str()), "text": r.map(|r| r.text.as_str()) })
                        }).collect();
                        serde_json::json!({
                            "id": c.info.id, "role": c.info.role(), "summary": c.info.summary,
                            "timeout_secs": c.info.timeout.as_secs_f64(), "feature": c.info.feature.map(|f| f.name()),
                            "requirements": reqs,
                        })
                    })
                    .collect();
                let coverage = tern_conformance::coverage::Coverage::compute(
                    index,
                    all.iter().flat_map(|c| c.info.reqs.iter().copied()),
                );
                let out =
                    serde_json::json!({ "schema": "tern-conformance-list/1", "cases": cases, "coverage": coverage });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for c in chosen {
                    println!("{}  [{}]", c.info.id, c.info.reqs.join(" "));
                    println!("    {}", c.info.summary);
                    for id in c.info.reqs {
                        if let Some(r) = index.iter().find(|r| r.id == *id) {
                            println!("    {} {}: \"{}\"", r.id, r.level, r.text);
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Vectors { out } => {
            let n = tern_conformance::vectors::write_all(&out)?;
            println!("wrote {n} vector files into {}", out.display());
            Ok(0)
        }
        Command::SelfCheck { shim } => {
            let cmd = split(&shim)?;
            match tern_conformance::shim::self_check(&cmd, std::time::Duration::from_secs(30)).await {
                Ok(()) => {
                    println!("self-check passed: the shim exits 127 for an unknown case");
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("self-check failed: {e}");
                    Ok(1)
                }
            }
        }
        Command::Server {
            addr,
            tls,
            ca,
            server_name,
            provision_cmd,
            provision_http,
            admin_key,
            read_fanout_threshold,
            retention_max_count,
            no_rooms,
            no_key_directory,
            mqtt,
            run,
        } => {
            let provision = match (provision_cmd, provision_http) {
                (Some(cmd), None) => Provision::Command(split(&cmd)?),
                (None, Some(url)) => Provision::Http { url, key: admin_key.unwrap_or_default() },
                _ => anyhow::bail!("give --provision-cmd or --provision-http (README: the provisioning contract)"),
            };
            let tls = if tls {
                let ca = ca.ok_or_else(|| anyhow::anyhow!("--tls needs --ca"))?;
                let pem = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
                let roots = Arc::new(target::roots_from_pem(&pem).map_err(anyhow::Error::msg)?);
                let host =
                    server_name.unwrap_or_else(|| addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).to_string());
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| anyhow::anyhow!("server name {host}: {e}"))?;
                let config = Arc::new(target::client_config(roots.clone(), &[b"tern/1"]).map_err(anyhow::Error::msg)?);
                Some(TlsTarget { config, server_name: name, roots })
            } else {
                None
            };
            let declared = Declared { read_fanout_threshold, retention_max_count, no_rooms, no_key_directory, mqtt };
            let target = Arc::new(Target { addr, tls, provision, declared });
            execute(&all, Subject::Broker(target), run).await
        }
        Command::Client { shim, run } => execute(&all, Subject::Client(split(&shim)?), run).await,
    }
}

fn split(cmd: &str) -> anyhow::Result<Vec<String>> {
    let parts: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    anyhow::ensure!(!parts.is_empty(), "empty command");
    Ok(parts)
}

async fn execute(all: &[cases::Case], subject: Subject, args: RunArgs) -> anyhow::Result<u8> {
    let expectations = match &args.expectations {
        Some(path) => Expectations::parse(&std::fs::read_to_string(path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => Expectations::default(),
    };
    let opts = RunOptions {
        tests: args.select.tests,
        skips: args.select.skips,
        timeout_scale: args.timeout_scale,
        seed: args.seed,
        repeat: args.repeat,
        expectations,
        progress: !args.quiet,
    };
    eprintln!("tern-conformance {}: seed {}", env!("CARGO_PKG_VERSION"), opts.seed);
    let report = runner::run(all, requirement_index(), &subject, &opts).await;
    report::write_all(&report, &args.report_dir)?;
    for e in &report.unmatched_expectations {
        eprintln!("warning: expectation `{e}` matches no case of this run");
    }
    for e in &report.stale_expectations {
        eprintln!("note: expectation `{e}` no longer fails; remove it");
    }
    let counts: Vec<String> = report.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "{}: {} (seed {}); reports in {}",
        report.verdict,
        counts.join(", "),
        report.seed,
        args.report_dir.display()
    );
    Ok(report.exit_code as u8)
}
