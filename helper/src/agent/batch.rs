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
        tokio::spawn(worker::work(once, window, receiver));
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

#[path = "batch_worker.rs"]
mod worker;
