//! Pod churn under the node agents, with the agent's invariants checked while it runs.
//!
//! On `nodes` nodes, each with one Multus ENI and a node agent: pods are created (their
//! address from a shared pool, often the one a pod just gave up, as IPAM reuses them) and
//! made routable by the real `init`, and deleted at random; EC2 throttles Describe and
//! Unassign from small token buckets and, now and then, refuses every such call for a few
//! seconds (the account's bucket drained by others); instance metadata lags EC2, and the
//! agents are restarted now and then. A checker samples EC2 every [`ChurnOptions::sample`] and asserts:
//!
//! - (a) the address of every live pod whose `init` succeeded is on its node's ENI (off for
//!   longer than [`ChurnOptions::off_tolerance`] is a violation);
//! - (b) every address an unassign call took off an ENI was in no live pod on that ENI's node
//!   at that moment (the stand-in's log of unassigned addresses), counting a pod from
//!   [`WATCH_DELIVERY`] after the bed made its object: an agent knows of a pod only once the
//!   API server's watch delivered it, and an unassign it sent before cannot be called back;
//! - (c) every address of a deleted pod leaves its ENI within grace + 2 scans + the retry
//!   budget (+ [`ChurnOptions::slack`]) of the deletion, or of its agent's restart (a new
//!   agent's grace periods start when it does), unless a new pod on the node took it first.
//!
//! Used by the churn benchmark (`cargo bench -p ipmgr-helper --bench churn`) and, shorter,
//! by a root test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::{Background, Interface, Node, TestBed, Topology};

/// What to run.
#[derive(Clone, Debug)]
pub struct ChurnOptions {
    /// The `ipmgr-helper` binary (init and agent).
    pub helper: PathBuf,
    /// Nodes, each with an agent and one Multus ENI.
    pub nodes: usize,
    /// How long pods churn.
    pub duration: Duration,
    /// At most this many live pods per node.
    pub pods_per_node: usize,
    /// The agents' `--release-grace-seconds`.
    pub grace_seconds: u64,
    /// The agents' `--resync-seconds`.
    pub resync_seconds: u64,
    /// The agents' and helpers' `--ec2-retry-seconds`.
    pub retry_seconds: u64,
    /// An agent is restarted this often (a random node's; every other time with SIGKILL).
    pub restart_every: Duration,
    /// This often, every Describe and Unassign call is throttled for `throttle_for`.
    pub throttle_every: Duration,
    /// How long each such window lasts.
    pub throttle_for: Duration,
    /// Instance metadata lags EC2 by this much.
    pub metadata_lag: Duration,
    /// How often the checker samples EC2.
    pub sample: Duration,
    /// How long a live pod's address may be seen off its ENI (sampling jitter).
    pub off_tolerance: Duration,
    /// Added to the bound of (c): the time a scan, a Describe and the call take.
    pub slack: Duration,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for ChurnOptions {
    /// Two nodes of five pods, grace 3 s, resync 2 s, a 20 s retry budget, an agent
    /// restart every 30 s, a 3 s throttle window every 20 s, metadata 2 s behind, samples
    /// every 100 ms; 5 minutes. The helper
    /// is `ipmgr-helper` on the PATH: set `helper`.
    fn default() -> Self {
        ChurnOptions {
            helper: PathBuf::from("ipmgr-helper"),
            nodes: 2,
            duration: Duration::from_secs(300),
            pods_per_node: 5,
            grace_seconds: 3,
            resync_seconds: 2,
            retry_seconds: 20,
            restart_every: Duration::from_secs(30),
            throttle_every: Duration::from_secs(20),
            throttle_for: Duration::from_secs(3),
            metadata_lag: Duration::from_secs(2),
            sample: Duration::from_millis(100),
            off_tolerance: Duration::from_secs(1),
            slack: Duration::from_secs(5),
            seed: 1,
        }
    }
}

/// What happened, and every violation found.
#[derive(Debug, Default)]
pub struct ChurnReport {
    /// How long the churn ran.
    pub ran: Duration,
    /// Pods created.
    pub created: usize,
    /// Pods deleted.
    pub deleted: usize,
    /// Pods created with an address a deleted pod had carried.
    pub reused: usize,
    /// Inits that exited 0.
    pub routable: usize,
    /// Inits that failed (with throttling they may run out of budget; not a violation of
    /// the agent's invariants, reported).
    pub init_failures: usize,
    /// Inits that exited 0 with the address on no ENI: `init` decided from instance
    /// metadata, which still listed an address the agent had released (metadata lags
    /// EC2). The helper's bug, not the agent's: reported, not counted as a violation.
    pub init_unplaced: usize,
    /// Addresses the agents released.
    pub releases: usize,
    /// Agent restarts.
    pub restarts: usize,
    /// Windows in which every Describe and Unassign call was throttled.
    pub throttle_windows: usize,
    /// EC2 calls throttled, by action.
    pub throttled: Value,
    /// Deleted pods' addresses released, seconds from deletion: median and maximum.
    pub release_latency: (f64, f64),
    /// Deleted pods' addresses still waiting (within their bound) at the end.
    pub pending_at_end: usize,
    /// Every violation, described.
    pub violations: Vec<String>,
}

/// One pod of the churn.
#[derive(Debug)]
struct ChurnPod {
    pod: crate::Pod,
    address: String,
    /// Its init, while it runs.
    init: Option<Child>,
    /// When its init succeeded.
    routable: bool,
    /// Since when the checker has seen its address off its ENI.
    off_since: Option<Instant>,
}

/// A deleted pod's address waiting to leave its ENI.
#[derive(Debug)]
struct Leaving {
    deleted: Instant,
    deadline: Instant,
}

/// Runs the churn and checks the invariants. Needs root.
pub fn run(options: &ChurnOptions) -> ChurnReport {
    let mut churn = Churn::start(options);
    churn.run();
    churn.finish()
}

struct Churn<'a> {
    options: &'a ChurnOptions,
    bed: TestBed,
    rng: fastrand::Rng,
    nodes: Vec<Node>,
    enis: Vec<String>,
    agents: Vec<Background>,
    /// Live pods per node index.
    pods: Vec<Vec<ChurnPod>>,
    /// Addresses no live pod carries, most recently freed last.
    free: Vec<String>,
    /// Every (node, address, from, until) a pod carried, for (b); `until` None while live.
    carried: Vec<(usize, String, f64, Option<f64>)>,
    leaving: BTreeMap<(usize, String), Leaving>,
    latencies: Vec<f64>,
    report: ChurnReport,
    counter: usize,
}

/// How long after the bed makes a pod's object its agent may not know of it yet: the API
/// server's watch delivery. In a cluster the window is wider and harmless: the pod's
/// address exists only from its CNI ADD on, seconds after its object, and its helper
/// assigns it after that. An unassign landing within the window was decided without the
/// pod (the churn test once saw one 7 ms after the object).
pub const WATCH_DELIVERY: Duration = Duration::from_millis(100);

/// The time now, as the stand-in logs it (seconds since the epoch).
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

impl<'a> Churn<'a> {
    fn start(options: &'a ChurnOptions) -> Churn<'a> {
        let nodes: serde_json::Map<String, Value> = (1..=options.nodes)
            .map(|index| {
                (
                    format!("node{index}"),
                    json!({"enis": [{"subnet": "node"}, {"subnet": "multus", "multus": true}]}),
                )
            })
            .collect();
        let mut bed = TestBed::start(Topology::Inline(json!({
            "vpc_cidr": "10.0.0.0/16",
            "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.1.0/24"}},
            "nodes": nodes,
        })));
        // The account's buckets for the calls the agents make, scaled down (AWS: Describe
        // 100 + 20/s, Unassign 100 + 5/s) so that bursts are throttled while the churn still
        // gets through; metadata behind EC2.
        bed.control(
            "POST",
            "config",
            json!({
                "eni_ipv4_limit": 50,
                "imds_delay_ms": options.metadata_lag.as_millis() as u64,
                "buckets": {"describe": [10, 4], "UnassignPrivateIpAddresses": [2, 1]},
            }),
        );
        let names: Vec<String> = (1..=options.nodes).map(|i| format!("node{i}")).collect();
        let enis = names.iter().map(|name| bed.eni_id(name, "eth1")).collect();
        let nodes: Vec<Node> = names.iter().map(|name| bed.node(name)).collect();
        // Every node runs some pod besides the churned ones.
        for name in &names {
            bed.pod(name, &format!("bystander-{name}"), &[]);
        }
        let pool = options.nodes * options.pods_per_node * 2;
        let free = (0..pool).map(|i| format!("10.0.1.{}", 20 + i)).collect();
        let mut churn = Churn {
            options,
            rng: fastrand::Rng::with_seed(options.seed),
            pods: (0..options.nodes).map(|_| Vec::new()).collect(),
            agents: Vec::new(),
            nodes,
            enis,
            bed,
            free,
            carried: Vec::new(),
            leaving: BTreeMap::new(),
            latencies: Vec::new(),
            report: ChurnReport::default(),
            counter: 0,
        };
        churn.agents = (0..options.nodes).map(|n| churn.agent(n)).collect();
        churn
    }

    /// The retry settings of every helper and agent of the churn: short, so that the
    /// throttled calls come back within the run.
    fn retry_args(&self) -> Vec<String> {
        [
            "--ec2-retry-seconds",
            &self.options.retry_seconds.to_string(),
            "--ec2-throttle-backoff-min-ms",
            "1000",
            "--ec2-backoff-max-seconds",
            "3",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn agent(&self, node: usize) -> Background {
        let dir = self.nodes[node]
            .netns_dir
            .to_str()
            .expect("UTF-8 path")
            .to_owned();
        let mut args: Vec<String> = [
            "agent",
            "--netns-dir",
            &dir,
            "--release-grace-seconds",
            &self.options.grace_seconds.to_string(),
            "--resync-seconds",
            &self.options.resync_seconds.to_string(),
            "--metrics-listen",
            "127.0.0.1:9471",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.retry_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::env::temp_dir().join(format!("{}-churn-agent.log", self.nodes[node].netns));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        Background(
            self.bed
                .command(&self.nodes[node], &self.options.helper, &args)
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .expect("agent starts"),
        )
    }

    fn run(&mut self) {
        let started = Instant::now();
        let mut next_restart = started + self.options.restart_every;
        let mut next_throttle = started + self.options.throttle_every;
        let mut restarts_killed = false;
        while started.elapsed() < self.options.duration {
            let tick = Instant::now();
            self.reap_inits();
            self.act();
            if tick >= next_restart {
                let node = self.rng.usize(..self.options.nodes);
                if restarts_killed {
                    let _ = self.agents[node].0.kill();
                    let _ = self.agents[node].0.wait();
                } else {
                    self.agents[node].terminate(Duration::from_secs(5));
                }
                restarts_killed = !restarts_killed;
                self.agents[node] = self.agent(node);
                self.report.restarts += 1;
                // A new agent remembers nothing: its grace periods start now.
                let restarted = Instant::now() + self.bound();
                for ((on, _), leaving) in &mut self.leaving {
                    if *on == node {
                        leaving.deadline = leaving.deadline.max(restarted);
                    }
                }
                next_restart = Instant::now() + self.options.restart_every;
            }
            if tick >= next_throttle {
                for action in ["DescribeNetworkInterfaces", "UnassignPrivateIpAddresses"] {
                    self.bed.control(
                        "POST",
                        "faults",
                        json!({"action": action, "code": "RequestLimitExceeded", "status": 503,
                               "seconds": self.options.throttle_for.as_secs_f64()}),
                    );
                }
                self.report.throttle_windows += 1;
                next_throttle = Instant::now() + self.options.throttle_every;
            }
            self.sample();
            if let Some(left) = self.options.sample.checked_sub(tick.elapsed()) {
                std::thread::sleep(left);
            }
        }
        self.report.ran = started.elapsed();
    }

    /// At most one change a tick: create a pod, or delete one whose init ended.
    fn act(&mut self) {
        let node = self.rng.usize(..self.options.nodes);
        let roll = self.rng.f64();
        let live = self.pods[node].len();
        if roll < 0.12 && live < self.options.pods_per_node && !self.free.is_empty() {
            self.create(node);
        } else if roll > 0.9 {
            let done: Vec<usize> = (0..live)
                .filter(|&i| self.pods[node][i].init.is_none())
                .collect();
            if !done.is_empty() {
                let index = done[self.rng.usize(..done.len())];
                self.delete(node, index);
            }
        }
    }

    fn create(&mut self, node: usize) {
        // Half the time the address a pod gave up last (IPAM reuses it), else any.
        let index = if self.rng.bool() {
            self.free.len() - 1
        } else {
            self.rng.usize(..self.free.len())
        };
        let address = self.free.remove(index);
        self.counter += 1;
        let name = format!("churn{}", self.counter);
        let node_name = self.nodes[node].name.clone();
        let cidr = format!("{address}/24");
        let pod = self.bed.pod(
            &node_name,
            &name,
            &[Interface::on_eni("net1", "eth1", &[&cidr])],
        );
        let carried_from = wall();
        if self.carried.iter().any(|(_, a, _, _)| a == &address) {
            self.report.reused += 1;
        }
        self.leaving.remove(&(node, address.clone()));
        self.carried
            .push((node, address.clone(), carried_from, None));
        let mut args = vec!["init".to_owned()];
        args.extend(self.retry_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let init = self
            .bed
            .command(&pod, &self.options.helper, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("init starts");
        self.pods[node].push(ChurnPod {
            pod,
            address,
            init: Some(init),
            routable: false,
            off_since: None,
        });
        self.report.created += 1;
    }

    fn delete(&mut self, node: usize, index: usize) {
        let gone = self.pods[node].remove(index);
        let until = wall();
        self.bed.delete_pod(&gone.pod);
        for entry in &mut self.carried {
            if entry.0 == node && entry.1 == gone.address && entry.3.is_none() {
                entry.3 = Some(until);
            }
        }
        let bound = self.bound();
        let now = Instant::now();
        if gone.routable {
            self.leaving.insert(
                (node, gone.address.clone()),
                Leaving {
                    deleted: now,
                    deadline: now + bound,
                },
            );
        }
        self.free.push(gone.address);
        self.report.deleted += 1;
    }

    /// Takes in the inits that ended. An init that exited 0 made its pod routable only if
    /// EC2 holds the address on the node's ENI then: one that trusted lagging metadata and
    /// left it on no ENI is counted apart (not the agent's doing: it gave the address back
    /// while no pod carried it).
    /// How long a deleted pod's address may stay on its ENI: grace + 2 scans + the retry
    /// budget + slack, from the deletion or from the restart of its node's agent.
    fn bound(&self) -> Duration {
        Duration::from_secs(
            self.options.grace_seconds
                + 2 * self.options.resync_seconds
                + self.options.retry_seconds,
        ) + self.options.slack
    }

    fn reap_inits(&mut self) {
        for node in 0..self.pods.len() {
            for index in 0..self.pods[node].len() {
                let pod = &mut self.pods[node][index];
                let Some(init) = pod.init.as_mut() else {
                    continue;
                };
                let Ok(Some(status)) = init.try_wait() else {
                    continue;
                };
                pod.init = None;
                if !status.success() {
                    self.report.init_failures += 1;
                    continue;
                }
                let address = pod.address.clone();
                if self.bed.holds(&self.enis[node], &address) {
                    self.pods[node][index].routable = true;
                    self.report.routable += 1;
                } else {
                    self.report.init_unplaced += 1;
                }
            }
        }
    }

    /// One look at EC2: (a) for the live pods, (c) for the deleted ones.
    fn sample(&mut self) {
        let held: Vec<BTreeSet<String>> = self
            .enis
            .clone()
            .iter()
            .map(|eni| self.bed.eni_addresses(eni).0.into_iter().collect())
            .collect();
        let now = Instant::now();
        for (node, pods) in self.pods.iter_mut().enumerate() {
            for pod in pods.iter_mut().filter(|pod| pod.routable) {
                if held[node].contains(&pod.address) {
                    pod.off_since = None;
                    continue;
                }
                let since = *pod.off_since.get_or_insert(now);
                if now.duration_since(since) > self.options.off_tolerance {
                    self.report.violations.push(format!(
                        "(a) live pod {} on {}: {} off its ENI {} for {:?}",
                        pod.pod.name,
                        self.nodes[node].name,
                        pod.address,
                        self.enis[node],
                        now.duration_since(since)
                    ));
                    pod.off_since = None; // once per episode
                }
            }
        }
        let gone: Vec<(usize, String)> = self
            .leaving
            .keys()
            .filter(|(node, address)| !held[*node].contains(address))
            .cloned()
            .collect();
        for key in gone {
            if let Some(leaving) = self.leaving.remove(&key) {
                self.latencies
                    .push(now.duration_since(leaving.deleted).as_secs_f64());
            }
        }
        let late: Vec<(usize, String)> = self
            .leaving
            .iter()
            .filter(|(_, leaving)| now > leaving.deadline)
            .map(|(key, _)| key.clone())
            .collect();
        for (node, address) in late {
            self.leaving.remove(&(node, address.clone()));
            self.report.violations.push(format!(
                "(c) {address} of a deleted pod still on {} past grace + 2 scans + retry budget",
                self.enis[node]
            ));
        }
    }

    fn finish(mut self) -> ChurnReport {
        for agent in &mut self.agents {
            agent.terminate(Duration::from_secs(5));
        }
        for pod in self.pods.iter_mut().flatten() {
            if let Some(init) = pod.init.as_mut() {
                let _ = init.kill();
                let _ = init.wait();
            }
        }
        let released = self.bed.control("GET", "released", Value::Null);
        let node_of = |eni: &str| self.enis.iter().position(|id| id == eni);
        for entry in released["released"].as_array().expect("released") {
            let (at, eni, address) = (
                entry[0].as_f64().expect("time"),
                entry[1].as_str().expect("ENI"),
                entry[2].as_str().expect("address"),
            );
            self.report.releases += 1;
            let Some(node) = node_of(eni) else { continue };
            let known_from = |from: f64| from + WATCH_DELIVERY.as_secs_f64();
            let carrier = self.carried.iter().find(|(n, a, from, until)| {
                *n == node
                    && a == address
                    && known_from(*from) < at
                    && until.is_none_or(|until| at < until)
            });
            if let Some((_, _, from, _)) = carrier {
                self.report.violations.push(format!(
                    "(b) {address} taken off {eni} at {at:.3} while a pod on {} carried it (since {from:.3})",
                    self.nodes[node].name
                ));
            }
        }
        self.report.pending_at_end = self.leaving.len();
        self.report.throttled = self.bed.control("GET", "throttled", Value::Null);
        self.latencies.sort_by(f64::total_cmp);
        if let Some(&max) = self.latencies.last() {
            self.report.release_latency = (self.latencies[self.latencies.len() / 2], max);
        }
        self.report
    }
}
