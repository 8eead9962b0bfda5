//! The node's EC2 calls, batched: the pod passes the agent runs for its pods call EC2
//! through [`BatchedEc2`], which hands each call to one worker. The worker takes what
//! arrived within `--batch-window-ms` of the first call, or while its previous batch was in
//! flight, and makes one DescribeNetworkInterfaces for all the lookups and one assign per
//! ENI and address family for all the pods; assigns wait while other pods' lookups are
//! under way (boundedly), so that a crowd of pods shares one assign per ENI. When EC2
//! refuses a merged assign for good, each pod's part is tried on its own, and a refused
//! part address by address, so that every pod gets its own answer and one bad address
//! fails neither its neighbours nor its pod's other addresses.
//!
//! The worker makes each call once, and a batch EC2 is slow to answer holds the next one
//! back for at most ten windows (then both are in flight). A call that EC2 throttled or
//! that failed on the way is retried by the pod whose call it was, with its own backoff
//! (full jitter within the retry budget, [`RetryPolicy`]), and a retried assign is never
//! merged with other pods' calls: one pod's throttled, failing or slow addresses hold
//! neither the worker nor its neighbours' batches, and a neighbour that arrives meanwhile
//! is answered in one call.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipmgr_eni::{EniRecord, ErrorClass, RetryPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::aws::{Ec2Api, Ec2Failure};

/// A pass's view of EC2 through the agent's batching worker (clone it per pod).
#[derive(Debug, Clone)]
pub struct BatchedEc2<E> {
    calls: mpsc::UnboundedSender<Call>,
    /// For the calls that are not batched (unassigning an IPv6 address that moves, the ENI
    /// list of the node): rare, and each pod's own.
    direct: E,
    /// How a pod retries its batched calls that failed.
    retry: RetryPolicy,
}

type Reply<T> = oneshot::Sender<Result<T, Ec2Failure>>;

/// One pod's holder lookup: its addresses, and where its answer goes.
type HolderLookup = (Vec<Ipv4Addr>, Vec<Ipv6Addr>, Reply<Vec<EniRecord>>);

/// One call waiting for its batch.
#[derive(Debug)]
enum Call {
    Assign(Assign),
    Enis {
        ids: Vec<String>,
        reply: Reply<Vec<EniRecord>>,
    },
    Holders {
        vpc_id: String,
        ipv4: Vec<Ipv4Addr>,
        ipv6: Vec<Ipv6Addr>,
        reply: Reply<Vec<EniRecord>>,
    },
}

/// One pod's assign of one family on one ENI.
#[derive(Debug)]
struct Assign {
    eni_id: String,
    addresses: Addresses,
    /// A retry, after this pod's own backoff: sent on its own.
    retry: bool,
    reply: Reply<()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addresses {
    V4(Vec<Ipv4Addr>),
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    fn family(&self) -> u8 {
        match self {
            Addresses::V4(_) => 4,
            Addresses::V6(_) => 6,
        }
    }

    fn len(&self) -> usize {
        match self {
            Addresses::V4(v4) => v4.len(),
            Addresses::V6(v6) => v6.len(),
        }
    }

    /// Each address on its own.
    fn singles(&self) -> Vec<Addresses> {
        match self {
            Addresses::V4(v4) => v4.iter().map(|&a| Addresses::V4(vec![a])).collect(),
            Addresses::V6(v6) => v6.iter().map(|&a| Addresses::V6(vec![a])).collect(),
        }
    }

    /// Adds `other`'s addresses (same family) that are not there yet.
    fn merge(&mut self, other: &Addresses) {
        match (self, other) {
            (Addresses::V4(mine), Addresses::V4(theirs)) => merge_new(mine, theirs),
            (Addresses::V6(mine), Addresses::V6(theirs)) => merge_new(mine, theirs),
            _ => {}
        }
    }
}

fn merge_new<T: PartialEq + Clone>(mine: &mut Vec<T>, theirs: &[T]) {
    for address in theirs {
        if !mine.contains(address) {
            mine.push(address.clone());
        }
    }
}

impl<E: Ec2Api + Clone + Send + Sync + 'static> BatchedEc2<E> {
    /// Starts the worker over `once` (a client that makes each call once); `direct` (a
    /// client that retries within its budget) makes the calls that are not batched, and
    /// each pod retries its batched calls under `retry`. Batches gather for `window` after
    /// their first call.
    pub fn start(once: E, direct: E, retry: RetryPolicy, window: Duration) -> Self {
        let (calls, receiver) = mpsc::unbounded_channel();
        tokio::spawn(work(once, window, receiver));
        BatchedEc2 {
            calls,
            direct,
            retry,
        }
    }
}

impl<E: Sync> BatchedEc2<E> {
    /// The call `make` builds, through the worker, retried by this pod alone while EC2
    /// throttles it or it fails on the way, within the retry budget.
    async fn send<T>(&self, make: impl Fn(bool, Reply<T>) -> Call) -> Result<T, Ec2Failure> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            if self.calls.send(make(attempts > 0, reply)).is_err() {
                return Err(worker_gone());
            }
            attempts += 1;
            let mut failure = match answer.await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(failure)) => failure,
                Err(_) => return Err(worker_gone()),
            };
            let delay =
                self.retry
                    .next_delay(failure.class, attempts, started.elapsed(), fastrand::f64());
            let Some(delay) = delay else {
                failure.attempts = attempts;
                return Err(failure);
            };
            tracing::warn!(
                action = failure.action,
                target = failure.target,
                code = failure.code,
                class = failure.class.label(),
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                "EC2 call failed, retrying this pod's part on its own"
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn assign(
        &self,
        eni_id: &str,
        addresses: Addresses,
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send + '_ {
        let eni_id = eni_id.to_owned();
        self.send(move |retry, reply| {
            Call::Assign(Assign {
                eni_id: eni_id.clone(),
                addresses: addresses.clone(),
                retry,
                reply,
            })
        })
    }
}

/// The failure of a call the worker can no longer take.
fn worker_gone() -> Ec2Failure {
    Ec2Failure {
        action: "batch",
        target: "the agent's EC2 worker".to_owned(),
        addresses: Vec::new(),
        code: "WorkerStopped".to_owned(),
        message: "the agent is stopping".to_owned(),
        class: ErrorClass::Persistent,
        attempts: 0,
    }
}

impl<E: Ec2Api + Send> Ec2Api for BatchedEc2<E> {
    fn assign_ipv4(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send {
        self.assign(eni_id, Addresses::V4(addresses.to_vec()))
    }

    fn assign_ipv6(
        &self,
        eni_id: &str,
        addresses: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send {
        self.assign(eni_id, Addresses::V6(addresses.to_vec()))
    }

    fn unassign_ipv4(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send {
        self.direct.unassign_ipv4(eni_id, addresses)
    }

    fn unassign_ipv6(
        &self,
        eni_id: &str,
        addresses: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send {
        self.direct.unassign_ipv6(eni_id, addresses)
    }

    fn node_enis(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<EniRecord>, Ec2Failure>> + Send {
        self.direct.node_enis(instance_id)
    }

    async fn enis(&self, ids: &[String]) -> Result<Vec<EniRecord>, Ec2Failure> {
        self.send(|_, reply| Call::Enis {
            ids: ids.to_vec(),
            reply,
        })
        .await
    }

    async fn holders(
        &self,
        vpc_id: &str,
        ipv4: &[Ipv4Addr],
        ipv6: &[Ipv6Addr],
    ) -> Result<Vec<EniRecord>, Ec2Failure> {
        self.send(|_, reply| Call::Holders {
            vpc_id: vpc_id.to_owned(),
            ipv4: ipv4.to_vec(),
            ipv6: ipv6.to_vec(),
            reply,
        })
        .await
    }
}

/// The worker: batch after batch until every [`BatchedEc2`] is gone. Assigns are held
/// while a batch carries lookups (the pods asking them will assign next, and join the same
/// call), for at most [`hold_limit`] after the first one; a batch of assigns alone, or a
/// hold that ran out, sends every held assign.
async fn work<E: Ec2Api + Clone + Send + Sync + 'static>(
    ec2: E,
    window: Duration,
    mut receiver: mpsc::UnboundedReceiver<Call>,
) {
    let limit = hold_limit(window);
    let mut held: Vec<Call> = Vec::new();
    let mut since: Option<Instant> = None;
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let next = match since {
            None => receiver.recv().await,
            Some(at) => tokio::select! {
                call = receiver.recv() => call,
                () = tokio::time::sleep_until(at + limit) => None,
            },
        };
        let mut batch = Vec::new();
        if let Some(call) = next {
            // What arrives while the previous batch is in flight joins this one; a call EC2
            // is slow to answer holds the next batch back for one hold limit at most.
            if let Some(previous) = in_flight.take() {
                // Past the limit the previous batch goes on, detached.
                let _ = tokio::time::timeout(limit, previous).await;
            }
            tokio::time::sleep(window).await;
            batch.push(call);
        } else if since.is_none() {
            return; // every sender is gone and nothing is held
        }
        while let Ok(call) = receiver.try_recv() {
            batch.push(call);
        }
        let (assigns, mut lookups): (Vec<Call>, Vec<Call>) = batch
            .into_iter()
            .partition(|call| matches!(call, Call::Assign(_)));
        if !assigns.is_empty() {
            since.get_or_insert_with(Instant::now);
            held.extend(assigns);
        }
        let overdue = since.is_some_and(|at| at + limit <= Instant::now());
        if lookups.is_empty() || overdue {
            lookups.append(&mut held);
            since = None;
        }
        in_flight = Some(tokio::spawn(carry_out(ec2.clone(), lookups)));
    }
}

/// How long assigns may wait for the lookups of other pods to finish: ten batch windows,
/// at least 100 ms.
fn hold_limit(window: Duration) -> Duration {
    (window * 10).max(Duration::from_millis(100))
}

/// One batch: every lookup in one DescribeNetworkInterfaces per kind (ENIs by id; holders
/// per VPC), every first assign in one call per ENI and family, every retried assign in a
/// call of its own; all at once.
async fn carry_out<E: Ec2Api>(ec2: E, batch: Vec<Call>) {
    let ec2 = &ec2;
    let mut enis: Vec<(Vec<String>, Reply<Vec<EniRecord>>)> = Vec::new();
    let mut holders: BTreeMap<String, Vec<HolderLookup>> = BTreeMap::new();
    // By ENI, family, and 0 for first attempts or a number of its own for a retry.
    let mut assigns: BTreeMap<(String, u8, usize), Vec<Assign>> = BTreeMap::new();
    for call in batch {
        match call {
            Call::Enis { ids, reply } => enis.push((ids, reply)),
            Call::Holders {
                vpc_id,
                ipv4,
                ipv6,
                reply,
            } => holders.entry(vpc_id).or_default().push((ipv4, ipv6, reply)),
            Call::Assign(assign) => {
                let alone = if assign.retry { assigns.len() + 1 } else { 0 };
                assigns
                    .entry((assign.eni_id.clone(), assign.addresses.family(), alone))
                    .or_default()
                    .push(assign);
            }
        }
    }
    let lookups = async {
        if enis.is_empty() {
            return;
        }
        let mut ids: Vec<String> = Vec::new();
        for (wanted, _) in &enis {
            merge_new(&mut ids, wanted);
        }
        let answer = ec2.enis(&ids).await;
        for (wanted, reply) in enis {
            let mine = answer.clone().map(|records| {
                records
                    .into_iter()
                    .filter(|record| wanted.contains(&record.id))
                    .collect()
            });
            let _ = reply.send(mine);
        }
    };
    let holder_lookups =
        futures::future::join_all(holders.into_iter().map(|(vpc_id, asks)| async move {
            let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
            for (v4, v6, _) in &asks {
                merge_new(&mut ipv4, v4);
                merge_new(&mut ipv6, v6);
            }
            // The union's holders: a superset of each pod's, which vetting filters by address.
            let answer = ec2.holders(&vpc_id, &ipv4, &ipv6).await;
            for (_, _, reply) in asks {
                let _ = reply.send(answer.clone());
            }
        }));
    let assigned =
        futures::future::join_all(assigns.into_values().map(|group| assign_group(ec2, group)));
    futures::join!(lookups, holder_lookups, assigned);
}

/// One assign call for every pod's addresses of one family on one ENI; when EC2 refuses it
/// for good and several pods share it, each pod's part on its own.
async fn assign_group<E: Ec2Api>(ec2: &E, group: Vec<Assign>) {
    let mut merged = group[0].addresses.clone();
    for assign in &group[1..] {
        merged.merge(&assign.addresses);
    }
    let eni_id = group[0].eni_id.clone();
    match call(ec2, &eni_id, &merged).await {
        Err(failure) if group.len() > 1 && failure.class == ErrorClass::Persistent => {
            tracing::warn!(%failure, pods = group.len(), "EC2 refused a batched assign; trying each pod's addresses on their own");
            for assign in group {
                let answer = isolated(ec2, &assign.eni_id, &assign.addresses).await;
                let _ = assign.reply.send(answer);
            }
        }
        answer => {
            for assign in group {
                let _ = assign.reply.send(answer.clone());
            }
        }
    }
}

/// One pod's addresses in one call, and address by address when EC2 refuses that for good:
/// the failure then names only the addresses EC2 refused.
async fn isolated<E: Ec2Api>(
    ec2: &E,
    eni_id: &str,
    addresses: &Addresses,
) -> Result<(), Ec2Failure> {
    match call(ec2, eni_id, addresses).await {
        Err(failure) if addresses.len() > 1 && failure.class == ErrorClass::Persistent => {
            let mut refused: Option<Ec2Failure> = None;
            for single in addresses.singles() {
                if let Err(failure) = call(ec2, eni_id, &single).await {
                    match &mut refused {
                        Some(refused) => refused.addresses.extend(failure.addresses),
                        None => refused = Some(failure),
                    }
                }
            }
            refused.map_or(Ok(()), Err)
        }
        answer => answer,
    }
}

async fn call<E: Ec2Api>(ec2: &E, eni_id: &str, addresses: &Addresses) -> Result<(), Ec2Failure> {
    match addresses {
        Addresses::V4(v4) => ec2.assign_ipv4(eni_id, v4).await,
        Addresses::V6(v6) => ec2.assign_ipv6(eni_id, v6).await,
    }
}
