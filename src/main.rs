//! The `credvend` binary: one executable for every role (operator, agent, tooling).
//!
//! `main` stays thin: parse the command line, install the TLS crypto provider and logging,
//! hand over to the library, and turn an error into a message and a non-zero exit code.

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
    /// Run the operator: the AWSRoleBinding controller and the mutating webhook.
    Operator(Box<credvend::operator::OperatorArgs>),
    /// Print the AWSRoleBinding CustomResourceDefinition as YAML
    /// (`credvend crd > crds/awsrolebinding.yaml`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for the whole process (kube, the AWS SDK and the webhook use rustls).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Agent(args) => {
            credvend::telemetry::init(args.log_format);
            runtime.block_on(credvend::agent::run(*args))?;
        }
        Command::Operator(args) => {
            credvend::telemetry::init(args.log_format);
            runtime.block_on(credvend::operator::run(*args))?;
        }
        Command::Crd => print!("{}", credvend::crd::crd_yaml()?),
    }
    Ok(())
}
