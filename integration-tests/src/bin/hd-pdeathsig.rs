//! `hd-pdeathsig PARENT_PID PROGRAM [ARGS...]`: runs PROGRAM so that it dies with the test that
//! started it.
//!
//! The harness ([`hotdeploy_integration_tests::proc`]) starts every child through this launcher.
//! It asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`), checks that
//! the parent is still `PARENT_PID` (it may have died before the request was made, and then
//! nothing would ever send the signal), and `exec`s PROGRAM, which keeps the setting. So a
//! coordinator, agent, HAProxy or etcd started by a test is killed even when the test process
//! itself is, by nextest's timeout, by Ctrl-C, or by `kill -9`, when no `Drop` runs.
//!
//! The kernel sends the signal when the *thread* that forked the launcher exits, not the whole
//! process: a child must be started from a thread that lives as long as the child should (the
//! test's own thread, or a runtime's worker).
//!
//! This is a separate program, not a `pre_exec` hook, so that the workspace needs no `unsafe`.

use nix::sys::signal::Signal;
use nix::unistd::getppid;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(parent), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: hd-pdeathsig PARENT_PID PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let Some(parent) = parent.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        eprintln!("hd-pdeathsig: PARENT_PID must be a number, got {parent:?}");
        return ExitCode::from(2);
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("hd-pdeathsig: prctl(PR_SET_PDEATHSIG): {e}");
        return ExitCode::from(127);
    }
    if getppid().as_raw() != parent {
        eprintln!("hd-pdeathsig: parent {parent} is gone; not starting {program:?}");
        return ExitCode::from(1);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("hd-pdeathsig: cannot run {program:?}: {err}");
    ExitCode::from(127)
}
