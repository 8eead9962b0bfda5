//! The pod client's command line, without network namespaces (no root needed).

use std::process::Command;

fn client() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ipmgr-pod"));
    command.env_clear();
    command
}

/// Runs `client` and returns whether it succeeded and its standard error.
fn run(mut client: Command) -> (bool, String) {
    let output = client.output().expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn without_the_agents_url_it_stops_naming_the_variable() {
    let mut command = client();
    command.arg("init");
    let (success, stderr) = run(command);
    assert!(!success);
    assert!(stderr.contains("IPMGR_AGENT_URL"), "{stderr}");
}

#[test]
fn a_flag_only_the_full_helper_takes_is_refused_naming_it() {
    let mut command = client();
    command.env("IPMGR_AGENT_URL", "http://127.0.0.1:9").args([
        "sidecar",
        "--confirm-seconds",
        "5",
    ]);
    let (success, stderr) = run(command);
    assert!(!success);
    assert!(stderr.contains("--confirm-seconds"), "{stderr}");
}

#[test]
fn an_agent_url_that_is_not_http_ip_port_is_an_error_naming_it() {
    let mut command = client();
    command
        .env("IPMGR_AGENT_URL", "https://node1:9472")
        .env("IPMGR_LOG_FORMAT", "text")
        .arg("init");
    let (success, stderr) = run(command);
    assert!(!success);
    assert!(
        stderr.contains("IPMGR_AGENT_URL \"https://node1:9472\""),
        "{stderr}"
    );
}

#[test]
fn ready_follows_the_ready_file() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ready");
    let probe = || {
        let mut command = client();
        command.env("IPMGR_READY_FILE", &file).arg("ready");
        run(command)
    };
    let (success, stderr) = probe();
    assert!(!success && stderr.contains("not ready"), "{stderr}");
    std::fs::write(&file, "ready\n").expect("write");
    assert!(probe().0);
}
