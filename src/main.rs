//! The `credvend` binary: one executable for every role (operator, agent, tooling).
//!
//! `main` stays thin: parse the command line, install the TLS crypto provider and logging,
//! hand over to the library, and turn an error into one log line (in the chosen log format,
//! each cause once) and a non-zero exit code.
//!
//! The agent (and its exchange process) runs on a current-thread runtime: it is a sidecar in every pod, its work is a few
//! requests and one STS call per half hour, and a runtime with one worker per node core would
//! start 96 threads on a 96-core node in every pod. The operator serves the whole cluster's
//! admissions and keeps the multi-threaded runtime.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Short-lived AWS credentials for Kubernetes pods.
#[derive(Parser)]
#[command(name = "credvend", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-pod credential agent (the injected sidecar).
    Agent(Box<credvend::agent::Args>),
    /// One refresh's STS calls, in a child process of the agent (which runs it; not by hand).
    #[command(name = credvend::agent::exchange_process::SUBCOMMAND, hide = true)]
    AgentExchange(credvend::agent::exchange_child::ExchangeArgs),
    /// Run the operator: the AWSRoleBinding controller and the mutating webhook.
    Operator(Box<credvend::operator::OperatorArgs>),
    /// Print the AWSRoleBinding CustomResourceDefinition as YAML
    /// (`credvend crd > crds/awsrolebinding.yaml`).
    Crd,
    /// Print the IAM trust policy each role of a binding needs (reads the binding and the
    /// cluster's OIDC issuer from the API server).
    TrustPolicy(credvend::trust_policy::command::TrustPolicyArgs),
}

/// Threads the agent may start for blocking work (reading the token file, DNS lookups); they
/// exit when idle.
const AGENT_BLOCKING_THREADS: usize = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the whole process (kube, the AWS SDK and the webhook use rustls).
    // Not in the agent, which serves plain HTTP on loopback and leaves TLS to its exchange
    // processes: initialising the crypto library would page its code into every pod's agent.
    if !matches!(cli.command, Command::Agent(_)) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    match cli.command {
        Command::Agent(args) => {
            credvend::telemetry::init(args.log_format);
            exit("agent", on_agent_runtime(credvend::agent::run(*args)))
        }
        Command::AgentExchange(args) => {
            credvend::telemetry::init(args.log_format);
            exit(
                credvend::agent::exchange_process::SUBCOMMAND,
                on_agent_runtime(credvend::agent::exchange_child::run()),
            )
        }
        Command::Operator(args) => {
            credvend::telemetry::init(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            let result = match runtime {
                Ok(rt) => rt
                    .block_on(credvend::operator::run(*args))
                    .map_err(Into::into),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error>),
            };
            exit("operator", result)
        }
        Command::TrustPolicy(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match runtime {
                Ok(rt) => rt
                    .block_on(credvend::trust_policy::command::run(args))
                    .map_err(Into::into),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error>),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", credvend::telemetry::error_chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd => match credvend::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", credvend::telemetry::error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs `work` on the agent's runtime: one thread, and a few for blocking work.
fn on_agent_runtime<E>(
    work: impl Future<Output = Result<(), E>>,
) -> Result<(), Box<dyn std::error::Error>>
where
    E: std::error::Error + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(AGENT_BLOCKING_THREADS)
        .build()?;
    runtime.block_on(work).map_err(Into::into)
}

fn exit(command: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            credvend::telemetry::report_fatal(command, e.as_ref());
            ExitCode::FAILURE
        }
    }
}
