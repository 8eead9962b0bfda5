//! A test bed for the helper: the AWS stand-in (`testenv/awsenv.py`) runs in a network
//! namespace of its own behind a bridge; each pod is a network namespace whose `eth0` reaches
//! that bridge and whose Multus interfaces are macvlans carrying an ENI's MAC (the kernel
//! here has no ipvlan; to the helper a macvlan with the master's MAC is the same). Needs root.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BRIDGE_ADDRESS: &str = "169.254.100.1";
static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// The topology of the original how-to: node1 has a primary ENI, two Multus ENIs in one
/// subnet (IPv4 + IPv6) and one in a second Multus subnet; node2 has one Multus ENI.
pub fn how_to_topology() -> Value {
    json!({
        "subnets": {
            "node": {"cidr": "10.0.0.0/24"},
            "multus1": {"cidr": "10.0.1.0/24", "ipv6": true},
            "multus2": {"cidr": "10.0.2.0/24"},
        },
        "nodes": {
            "node1": {"enis": ["node", "multus1", "multus1", "multus2"]},
            "node2": {"enis": ["node", "multus1"]},
        },
    })
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One AWS stand-in, its topology, and the pods made against it.
pub struct TestBed {
    id: String,
    aws: Child,
    control_in: Option<ChildStdin>,
    control_out: BufReader<ChildStdout>,
    /// EC2 endpoint, reachable from the pods.
    pub ec2_endpoint: String,
    /// What `/_ctl/topology` answered.
    pub topology: Value,
    namespaces: Vec<String>,
    pods: u32,
}

/// A pod: a network namespace on a node.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its namespace name.
    pub netns: String,
    /// The node it runs on (`node1`...).
    pub node: String,
}

impl TestBed {
    /// Starts the stand-in in a fresh namespace and builds `topology`.
    pub fn start(topology: Value) -> TestBed {
        let number = NEXT_BED.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}", (std::process::id() % 0xfffff) * 16 + number % 16);
        let aws_netns = format!("ipmgr-{id}-aws");
        ip(&["netns", "add", &aws_netns]);
        ip(&["-n", &aws_netns, "link", "set", "lo", "up"]);
        ip(&["-n", &aws_netns, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &aws_netns,
            "addr",
            "add",
            &format!("{BRIDGE_ADDRESS}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &aws_netns, "link", "set", "br0", "up"]);
        let python = std::env::var("IPMGR_TESTENV_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".venv/bin/python"));
        assert!(
            python.exists(),
            "{} missing: run scripts/test, or set IPMGR_TESTENV_PYTHON to a Python with tests/requirements.txt",
            python.display()
        );
        let mut aws = Command::new("ip")
            .args(["netns", "exec", &aws_netns])
            .arg(&python)
            .arg(repo_root().join("testenv/awsenv.py"))
            .args(["--host", BRIDGE_ADDRESS, "--control", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("awsenv starts");
        let control_in = aws.stdin.take();
        let mut control_out = BufReader::new(aws.stdout.take().expect("stdout"));
        let mut first = String::new();
        control_out
            .read_line(&mut first)
            .expect("awsenv announces itself");
        let ready: Value = serde_json::from_str(&first).expect("awsenv's first line is JSON");
        let mut bed = TestBed {
            id,
            aws,
            control_in,
            control_out,
            ec2_endpoint: ready["ec2_endpoint"].as_str().expect("endpoint").to_owned(),
            topology: Value::Null,
            namespaces: vec![aws_netns],
            pods: 0,
        };
        bed.topology = bed.control("POST", "topology", topology);
        bed
    }

    fn aws_netns(&self) -> &str {
        &self.namespaces[0]
    }

    /// One control call to the stand-in; panics unless it answered 200.
    pub fn control(&mut self, method: &str, path: &str, body: Value) -> Value {
        let request = json!({"method": method, "path": path, "body": body});
        let input = self.control_in.as_mut().expect("control input open");
        writeln!(input, "{request}").expect("control written");
        input.flush().expect("control flushed");
        let mut line = String::new();
        self.control_out
            .read_line(&mut line)
            .expect("control answered");
        let answer: Value = serde_json::from_str(&line).expect("control answer is JSON");
        assert_eq!(answer["status"], 200, "control {method} {path}: {answer}");
        answer["body"].clone()
    }

    /// ENI `index` (device index) of `node`.
    pub fn eni(&self, node: &str, index: usize) -> &Value {
        &self.topology["nodes"][node]["enis"][index]
    }

    /// The IPv6 prefix of the multus1 subnet, e.g. `2400:6500:1:100::`.
    pub fn ipv6_prefix(&self) -> String {
        let cidr = self.topology["subnets"]["multus1"]["ipv6_cidr"]
            .as_str()
            .expect("IPv6 subnet");
        cidr.split('/').next().expect("prefix").to_owned()
    }

    /// The addresses EC2 says ENI `eni_id` holds: (IPv4, IPv6).
    pub fn eni_addresses(&mut self, eni_id: &str) -> (Vec<String>, Vec<String>) {
        let answer = self.control("GET", &format!("eni/{eni_id}"), Value::Null);
        let list = |key: &str| {
            answer[key]
                .as_array()
                .expect("list")
                .iter()
                .map(|value| value.as_str().expect("address").to_owned())
                .collect()
        };
        (list("ipv4"), list("ipv6"))
    }

    /// Whether ENI `eni_id` holds `address` (IPv4 or IPv6) now.
    pub fn holds(&mut self, eni_id: &str, address: &str) -> bool {
        let (ipv4, ipv6) = self.eni_addresses(eni_id);
        ipv4.iter().chain(&ipv6).any(|held| held == address)
    }

    /// Polls until `eni_id` holds `address` (or, with `held: false`, no longer does);
    /// returns how long it took, or `None` after `limit`.
    pub fn wait_until(
        &mut self,
        eni_id: &str,
        address: &str,
        held: bool,
        limit: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.holds(eni_id, address) == held {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// EC2 calls by action since the last reset.
    pub fn calls(&mut self) -> Value {
        self.control("GET", "calls", Value::Null)
    }

    /// Forgets the call counts.
    pub fn reset_calls(&mut self) {
        self.control("POST", "calls/reset", Value::Null);
    }

    /// A pod on `node`: a namespace whose eth0 reaches the stand-in.
    pub fn pod(&mut self, node: &str) -> Pod {
        self.pods += 1;
        let netns = format!("ipmgr-{}-p{}", self.id, self.pods);
        let host_side = format!("im{}p{}", self.id, self.pods);
        ip(&["netns", "add", &netns]);
        self.namespaces.push(netns.clone());
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        let aws_netns = self.aws_netns().to_owned();
        ip(&["link", "set", &host_side, "netns", &aws_netns]);
        ip(&[
            "-n", &aws_netns, "link", "set", &host_side, "master", "br0", "up",
        ]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("169.254.100.{}/24", 10 + self.pods),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        Pod {
            netns,
            node: node.to_owned(),
        }
    }

    /// Adds interface `name` to `pod`: a macvlan carrying `mac`, with `addresses` (CIDR form).
    pub fn add_interface(&mut self, pod: &Pod, name: &str, mac: &str, addresses: &[&str]) {
        let parent = format!("im{}x", self.id);
        if Command::new("ip")
            .args(["link", "show", &parent])
            .output()
            .is_ok_and(|output| !output.status.success())
        {
            ip(&[
                "link",
                "add",
                &parent,
                "type",
                "veth",
                "peer",
                "name",
                &format!("im{}y", self.id),
            ]);
            ip(&["link", "set", &parent, "up"]);
        }
        let temporary = format!("im{}m{}", self.id, name.trim_start_matches("net"));
        ip(&[
            "link", "add", "link", &parent, "name", &temporary, "address", mac, "type", "macvlan",
            "mode", "bridge",
        ]);
        ip(&["link", "set", &temporary, "netns", &pod.netns]);
        ip(&["-n", &pod.netns, "link", "set", &temporary, "name", name]);
        for address in addresses {
            self.add_address(pod, name, address);
        }
        ip(&["-n", &pod.netns, "link", "set", name, "up"]);
    }

    /// Adds one address (CIDR form) to an interface of `pod`.
    pub fn add_address(&self, pod: &Pod, interface: &str, address: &str) {
        let mut args = vec![
            "-n",
            pod.netns.as_str(),
            "addr",
            "add",
            address,
            "dev",
            interface,
        ];
        if address.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Removes one address (CIDR form) from an interface of `pod`.
    pub fn remove_address(&self, pod: &Pod, interface: &str, address: &str) {
        ip(&["-n", &pod.netns, "addr", "del", address, "dev", interface]);
    }

    /// `ipmgr-helper args...` inside `pod`, with only the standard AWS variables pointing at
    /// the stand-in (credentials come from the node role through instance metadata).
    pub fn helper(&self, pod: &Pod, args: &[&str]) -> Command {
        let imds = self.topology["nodes"][&pod.node]["imds_endpoint"]
            .as_str()
            .expect("IMDS endpoint");
        self.helper_with_imds(pod, imds, args)
    }

    /// [`Self::helper`] with another instance metadata endpoint.
    pub fn helper_with_imds(&self, pod: &Pod, imds: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &pod.netns, "env", "-i"])
            .arg(format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}"))
            .arg(format!("AWS_ENDPOINT_URL_EC2={}", self.ec2_endpoint))
            .arg(helper_binary())
            .args(args)
            .stdin(Stdio::null());
        command
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        drop(self.control_in.take()); // end of input stops the stand-in
        stop_within(&mut self.aws, Duration::from_secs(5));
        for netns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("im{}x", self.id)])
            .output();
    }
}

/// A background process (a sidecar) that is killed if the test ends without stopping it.
pub struct Background(pub Child);

impl Background {
    /// Sends SIGTERM and waits up to `limit` for the exit; true when it exited with 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        stop_within(&mut self.0, limit);
        self.0.wait().is_ok_and(|status| status.success())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits up to `limit` for `child` to exit, then kills it.
pub fn stop_within(child: &mut Child, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The helper under test: `IPMGR_HELPER_BIN` when set (for example the `dist` build the
/// image ships), else the one cargo built for this test or bench.
pub fn helper_binary() -> PathBuf {
    std::env::var_os("IPMGR_HELPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ipmgr-helper")))
}

/// Output of a finished helper, with its standard error as text.
pub fn finish(mut command: Command) -> (Output, String, Duration) {
    let started = Instant::now();
    let output = command.output().expect("helper runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr, started.elapsed())
}

/// The one-line reason the helper printed last on failure.
pub fn reason(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("ipmgr-helper: "))
        .unwrap_or_default()
}
