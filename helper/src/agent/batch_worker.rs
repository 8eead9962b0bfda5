//! The batching worker behind [`super::BatchedEc2`]: what arrived within a window (or while
//! the previous batch was in flight) goes out as one lookup and one assign per ENI and
//! address family; a merged assign EC2 refuses for good is split per pod, then per address.

use std::collections::BTreeMap;
use std::time::Duration;

use ipmgr_eni::{EniRecord, ErrorClass};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Addresses, Assign, Call, HolderLookup, Reply, merge_new};
use crate::aws::{Ec2Api, Ec2Failure};

/// The worker: batch after batch until every [`BatchedEc2`] is gone. Assigns are held
/// while a batch carries lookups (the pods asking them will assign next, and join the same
/// call), for at most [`hold_limit`] after the first one; a batch of assigns alone, or a
/// hold that ran out, sends every held assign.
pub(super) async fn work<E: Ec2Api + Clone + Send + Sync + 'static>(
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
