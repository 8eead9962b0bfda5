//! The helper's command line, without network namespaces (no root needed).

use std::process::Command;

fn helper() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ipmgr-helper"));
    command.env_clear();
    command
}

#[test]
fn an_invalid_log_filter_is_an_error_naming_the_setting() {
    let output = helper()
        .env("IPMGR_LOG", "info,=[")
        .arg("init")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid log filter \"info,=[\" (--log / IPMGR_LOG)"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_proxy_stops_both_roles_at_start_naming_the_variable() {
    let netns = std::env::temp_dir();
    for role in [
        &["init"][..],
        &["agent", "--netns-dir", &netns.to_string_lossy()],
    ] {
        let output = helper()
            .env("HTTPS_PROXY", "socks5://user:secret@proxy:1080")
            .env("IPMGR_POD_LISTEN", "off")
            .env("IPMGR_METRICS_LISTEN", "127.0.0.1:0")
            .args(role)
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{role:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("HTTPS_PROXY is not an HTTP proxy URL"),
            "{role:?}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

#[test]
fn ready_answers_from_the_ready_file() {
    let dir = std::env::temp_dir().join(format!("ipmgr-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("ready");
    let _ = std::fs::remove_file(&file);
    let probe = || {
        helper()
            .env("IPMGR_READY_FILE", &file)
            .arg("ready")
            .output()
            .expect("runs")
    };
    let before = probe();
    assert!(!before.status.success());
    assert!(String::from_utf8_lossy(&before.stderr).contains("does not exist yet"));
    std::fs::write(&file, b"ready\n").expect("write");
    assert!(probe().status.success());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
