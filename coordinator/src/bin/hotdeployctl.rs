//! `hotdeployctl`: operate a hotdeploy fleet (see `hotdeploy_coordinator::ctl`).

use clap::Parser;
use hotdeploy_coordinator::ctl::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    hotdeploy_common::telemetry::init();
    std::process::exit(ctl::run(cli).await);
}
