//! The certificate life cycle without a cluster: the plan as a table, the steps over real
//! certificates, and the Secrets a hand edit can leave.

use std::collections::BTreeMap;

use rstest::rstest;

use super::plan::{Observed, Policy, Step, next_step};
use super::secret::{
    Ack, Authority, CA_CERT, CA_KEY, CertState, NEXT_CA_CERT, NEXT_CA_KEY, PREVIOUS_CA_CERT,
    Retired, SecretView, Served, TLS_CERT, TLS_KEY, bundle_holds,
};
use super::steps::Issuing;
use crate::certs::{PemPair, ServiceIdentity};

const DAY: i64 = 86_400;
const NOW: i64 = 2_000_000_000;
const POLICY: Policy = Policy {
    ca_valid: 3650 * DAY,
    cert_valid: 365 * DAY,
    overlap: 60,
    ack_refresh: 300,
    ack_stale: 900,
};

fn authority(id: &str, not_before: i64, not_after: i64) -> Authority {
    Authority {
        pem: PemPair {
            cert_pem: format!("cert {id}"),
            key_pem: format!("key {id}"),
        },
        id: id.to_owned(),
        not_before,
        not_after,
    }
}

/// A settled state: CA "a" a year old, its certificate a month old, this replica and
/// "other" acknowledging it a minute ago.
fn settled() -> CertState {
    let ack = |ca: &str| Ack {
        ca_id: ca.to_owned(),
        at: NOW - 60,
        stale_after: POLICY.ack_stale,
    };
    CertState {
        ca: authority("a", NOW - 365 * DAY, NOW + 3285 * DAY),
        served: Served {
            pem: PemPair {
                cert_pem: "served".into(),
                key_pem: "served key".into(),
            },
            not_before: NOW - 30 * DAY,
            not_after: NOW + 335 * DAY,
            names_match: true,
        },
        next: None,
        previous: None,
        generation: 3,
        phase_since: None,
        rotate_requested: false,
        acks: BTreeMap::from([("me".into(), ack("a")), ("other".into(), ack("a"))]),
    }
}

fn observed(serving_ca: Option<&str>, next_trusted_for: Option<i64>) -> Observed<'_> {
    Observed {
        replica: "me",
        serving_ca,
        next_trusted_for,
        now: NOW,
    }
}

/// A rotation begun an hour ago (by the Secret's clock, which a switch does not go by).
fn rotating() -> CertState {
    CertState {
        next: Some(authority("b", NOW - 100, NOW + 3650 * DAY)),
        phase_since: Some(NOW - 3600),
        ..settled()
    }
}

fn switched(since: i64, other_ack: Option<(&str, i64)>) -> CertState {
    let mut state = CertState {
        ca: authority("b", NOW - 200, NOW + 3650 * DAY),
        previous: Some(Retired {
            cert_pem: "cert a".into(),
            id: "a".into(),
        }),
        phase_since: Some(since),
        ..settled()
    };
    state.acks.insert(
        "me".into(),
        Ack {
            ca_id: "b".into(),
            at: NOW - 10,
            stale_after: POLICY.ack_stale,
        },
    );
    match other_ack {
        Some((ca, at)) => state.acks.insert(
            "other".into(),
            Ack {
                ca_id: ca.into(),
                at,
                stale_after: POLICY.ack_stale,
            },
        ),
        None => state.acks.remove("other"),
    };
    state
}

#[rstest]
#[case::empty_secret(None, observed(None, None), Some(Step::Initialize))]
#[case::settled(Some(settled()), observed(Some("a"), None), None)]
#[case::not_serving_yet_says_nothing(Some(settled()), observed(None, None), None)]
#[case::new_replica_acknowledges(
    Some(CertState { acks: BTreeMap::new(), ..settled() }),
    observed(Some("a"), None),
    Some(Step::Acknowledge)
)]
#[case::old_acknowledgement_renewed(
    Some(CertState { acks: BTreeMap::from([("me".into(), Ack { ca_id: "a".into(), at: NOW - 300, stale_after: 900 })]), ..settled() }),
    observed(Some("a"), None),
    Some(Step::Acknowledge)
)]
#[case::served_certificate_with_a_third_left(
    Some(CertState { served: Served { not_before: NOW - 250 * DAY, not_after: NOW + 115 * DAY, ..settled().served }, ..settled() }),
    observed(Some("a"), None),
    Some(Step::ReissueServing)
)]
#[case::served_certificate_for_another_name(
    Some(CertState { served: Served { names_match: false, ..settled().served }, ..settled() }),
    observed(Some("a"), None),
    Some(Step::ReissueServing)
)]
#[case::ca_with_a_third_left(
    Some(CertState { ca: authority("a", NOW - 2500 * DAY, NOW + 1150 * DAY), ..settled() }),
    observed(Some("a"), None),
    Some(Step::BeginCaRotation)
)]
#[case::admin_asks_for_a_rotation(
    Some(CertState { rotate_requested: true, ..settled() }),
    observed(Some("a"), None),
    Some(Step::BeginCaRotation)
)]
#[case::next_ca_not_seen_in_the_bundle(Some(rotating()), observed(Some("a"), None), None)]
#[case::next_ca_seen_in_the_bundle_within_the_overlap(
    Some(rotating()),
    observed(Some("a"), Some(59)),
    None
)]
#[case::next_ca_seen_in_the_bundle_for_the_overlap(
    Some(rotating()),
    observed(Some("a"), Some(60)),
    Some(Step::SwitchToNextCa)
)]
#[case::replica_still_serving_the_old_ca_keeps_it(
    Some(switched(NOW - 3600, Some(("a", NOW - 60)))),
    observed(Some("b"), None),
    None
)]
#[case::every_replica_switched_but_within_the_overlap(
    Some(switched(NOW - 30, Some(("b", NOW - 5)))),
    observed(Some("b"), None),
    None
)]
#[case::every_replica_switched(
    Some(switched(NOW - 60, Some(("b", NOW - 5)))),
    observed(Some("b"), None),
    Some(Step::DropPreviousCa)
)]
#[case::a_replica_with_a_longer_staleness_of_its_own_still_holds_it(
    Some(CertState {
        acks: BTreeMap::from([
            ("me".into(), Ack { ca_id: "b".into(), at: NOW - 10, stale_after: 900 }),
            ("other".into(), Ack { ca_id: "a".into(), at: NOW - 900, stale_after: 3000 }),
        ]),
        ..switched(NOW - 60, None)
    }),
    observed(Some("b"), None),
    None
)]
#[case::a_gone_replica_does_not_hold_the_old_ca(
    Some(switched(NOW - 60, Some(("a", NOW - 900)))),
    observed(Some("b"), None),
    Some(Step::DropPreviousCa)
)]
#[case::a_rotation_request_waits_for_the_last_one_to_end(
    Some(CertState { rotate_requested: true, ..switched(NOW - 30, None) }),
    observed(Some("b"), None),
    None
)]
#[case::this_replica_switches_before_the_old_ca_goes(
    Some(switched(NOW - 3600, None)),
    observed(Some("a"), None),
    None
)]
fn plan_takes_one_step_at_a_time(
    #[case] state: Option<CertState>,
    #[case] observed: Observed<'_>,
    #[case] expected: Option<Step>,
) {
    let mut state = state;
    if let (Some(state), Some("a")) = (state.as_mut(), observed.serving_ca)
        && state.previous.is_some()
    {
        // This replica still serves the old CA, and said so.
        state.acks.insert(
            "me".into(),
            Ack {
                ca_id: "a".into(),
                at: NOW - 10,
                stale_after: POLICY.ack_stale,
            },
        );
    }
    assert_eq!(next_step(state.as_ref(), observed, &POLICY), expected);
}

fn identity() -> ServiceIdentity {
    ServiceIdentity {
        service: "ipmgr-webhook".into(),
        namespace: "multus-ipmgr".into(),
        valid_days: 365,
    }
}

fn issuing<'a>(identity: &'a ServiceIdentity, now: i64, floor: u64) -> Issuing<'a> {
    Issuing {
        identity,
        policy: &POLICY,
        replica: "me",
        now,
        generation_floor: floor,
    }
}

/// Writes `state` into `view` and reads it back, as the next pass would.
fn round_trip(state: &CertState, view: &SecretView) -> (SecretView, CertState) {
    let written = state.written_over(view);
    let read = written
        .state("ipmgr-webhook.multus-ipmgr.svc")
        .expect("what the webhook writes reads back")
        .expect("a state");
    assert_eq!(&read, state);
    (written, read)
}

#[test]
fn a_rotation_trusts_the_new_ca_before_it_signs_and_the_old_one_until_it_stops_being_served() {
    let identity = identity();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let foreign = SecretView {
        resource_version: "7".into(),
        data: BTreeMap::from([("kept.txt".into(), b"not ours".to_vec())]),
        annotations: BTreeMap::from([("team".into(), "net".into())]),
    };
    let first = issuing(&identity, now, 5)
        .apply(Step::Initialize, None)
        .expect("issued");
    assert_eq!(
        first.generation, 6,
        "counts on from the highest generation seen"
    );
    let (view, first) = round_trip(&first, &foreign);
    assert_eq!(view.data["kept.txt"], b"not ours", "keys not ours stay");
    assert_eq!(view.annotations["team"], "net");
    assert!(bundle_holds(
        first.bundle().as_bytes(),
        &first.ca.pem.cert_pem
    ));

    let begun = issuing(&identity, now, 0)
        .apply(
            Step::BeginCaRotation,
            Some(&CertState {
                rotate_requested: true,
                ..first.clone()
            }),
        )
        .expect("issued");
    let (view, begun) = round_trip(&begun, &view);
    let next = begun.next.clone().expect("a next CA");
    assert_eq!(begun.served, first.served, "the new CA signs nothing yet");
    assert!(!begun.rotate_requested, "the request is taken");
    assert!(bundle_holds(
        begun.bundle().as_bytes(),
        &first.ca.pem.cert_pem
    ));
    assert!(bundle_holds(begun.bundle().as_bytes(), &next.pem.cert_pem));

    let switched = issuing(&identity, now + 60, 0)
        .apply(Step::SwitchToNextCa, Some(&begun))
        .expect("issued");
    let (view, switched) = round_trip(&switched, &view);
    assert_eq!(switched.ca.id, next.id);
    assert_ne!(switched.served, first.served, "a certificate of the new CA");
    assert_eq!(
        switched.previous.as_ref().map(|previous| &previous.id),
        Some(&first.ca.id)
    );
    assert!(
        bundle_holds(switched.bundle().as_bytes(), &first.ca.pem.cert_pem),
        "the old CA stays trusted"
    );

    let acknowledged = issuing(&identity, now + 61, 0)
        .apply(Step::Acknowledge, Some(&switched))
        .expect("issued");
    assert_eq!(
        acknowledged.generation, switched.generation,
        "an acknowledgement changes no data"
    );
    let (view, acknowledged) = round_trip(&acknowledged, &view);
    assert_eq!(acknowledged.acks["me"].ca_id, next.id);

    let dropped = issuing(&identity, now + 120, 0)
        .apply(Step::DropPreviousCa, Some(&acknowledged))
        .expect("issued");
    let (_, dropped) = round_trip(&dropped, &view);
    assert!(!bundle_holds(
        dropped.bundle().as_bytes(),
        &first.ca.pem.cert_pem
    ));
    assert_eq!(dropped.bundle(), dropped.ca.pem.cert_pem);
    assert!(dropped.generation > acknowledged.generation);
}

#[test]
fn a_served_certificate_never_outlives_its_ca() {
    let identity = identity();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let state = issuing(&identity, now, 0)
        .apply(Step::Initialize, None)
        .expect("issued");
    let short_ca = CertState {
        ca: Authority {
            not_after: now + 10 * DAY,
            ..state.ca.clone()
        },
        ..state
    };
    let reissued = issuing(&identity, now, 0)
        .apply(Step::ReissueServing, Some(&short_ca))
        .expect("issued");
    assert!(reissued.served.not_after <= now + 10 * DAY);
}

/// A valid Secret's data, then `edit` applied to it.
fn edited(edit: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> SecretView {
    let identity = identity();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let state = issuing(&identity, now, 0)
        .apply(Step::Initialize, None)
        .expect("issued");
    let mut view = state.written_over(&SecretView::default());
    edit(&mut view.data);
    view
}

fn other_pair() -> (PemPair, PemPair) {
    let identity = identity();
    let far = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let ca = identity.new_authority(far).expect("issued");
    let served = identity.issue_serving(&ca, far).expect("issued");
    (ca, served)
}

#[rstest]
#[case::missing_key(TLS_KEY, "missing", edited(|data| { data.remove(TLS_KEY); }))]
#[case::not_pem(CA_CERT, "no PEM certificate", edited(|data| { data.insert(CA_CERT.into(), b"hello".to_vec()); }))]
#[case::not_utf8(TLS_CERT, "not UTF-8", edited(|data| { data.insert(TLS_CERT.into(), vec![0xff, 0xfe]); }))]
#[case::two_certificates(CA_CERT, "more than one", edited(|data| {
    let twice = [data[CA_CERT].clone(), data[CA_CERT].clone()].concat();
    data.insert(CA_CERT.into(), twice);
}))]
#[case::key_of_another_certificate(TLS_KEY, "does not belong", edited(|data| {
    data.insert(TLS_KEY.into(), other_pair().1.key_pem.into_bytes());
}))]
#[case::signed_by_another_ca(TLS_CERT, "does not verify", edited(|data| {
    let (_, served) = other_pair();
    data.insert(TLS_CERT.into(), served.cert_pem.into_bytes());
    data.insert(TLS_KEY.into(), served.key_pem.into_bytes());
}))]
#[case::served_certificate_as_ca(CA_CERT, "not a CA", edited(|data| {
    let (tls_cert, tls_key) = (data[TLS_CERT].clone(), data[TLS_KEY].clone());
    data.insert(CA_CERT.into(), tls_cert);
    data.insert(CA_KEY.into(), tls_key);
}))]
#[case::next_ca_without_its_key(NEXT_CA_KEY, "missing", edited(|data| {
    data.insert(NEXT_CA_CERT.into(), other_pair().0.cert_pem.into_bytes());
}))]
#[case::both_next_and_previous(NEXT_CA_CERT, "both", edited(|data| {
    let (ca, _) = other_pair();
    data.insert(NEXT_CA_CERT.into(), ca.cert_pem.clone().into_bytes());
    data.insert(NEXT_CA_KEY.into(), ca.key_pem.into_bytes());
    data.insert(PREVIOUS_CA_CERT.into(), ca.cert_pem.into_bytes());
}))]
fn a_secret_edited_into_something_unusable_is_refused_by_key(
    #[case] key: &str,
    #[case] problem: &str,
    #[case] view: SecretView,
) {
    let error = view
        .state("ipmgr-webhook.multus-ipmgr.svc")
        .expect_err("refused");
    assert_eq!(error.key, key, "{error}");
    assert!(error.problem.contains(problem), "{error}");
    assert!(
        error.to_string().contains("nothing was overwritten"),
        "{error}"
    );
}

#[test]
fn an_empty_secret_or_one_with_only_foreign_keys_is_new() {
    let view = SecretView {
        data: BTreeMap::from([("other".into(), b"x".to_vec())]),
        ..SecretView::default()
    };
    assert_eq!(view.state("ipmgr-webhook.multus-ipmgr.svc"), Ok(None));
}

#[test]
fn a_served_certificate_for_another_service_name_is_renewed_not_refused() {
    let view = edited(|_| {});
    let state = view
        .state("renamed.multus-ipmgr.svc")
        .expect("valid")
        .expect("a state");
    assert!(!state.served.names_match);
}

#[test]
fn a_ca_without_its_last_newline_still_gives_a_bundle_of_separate_blocks() {
    let identity = identity();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut state = issuing(&identity, now, 0)
        .apply(Step::Initialize, None)
        .expect("issued");
    let trimmed = state.ca.pem.cert_pem.trim_end().to_owned();
    state.ca.pem.cert_pem = trimmed.clone();
    let begun = issuing(&identity, now, 0)
        .apply(Step::BeginCaRotation, Some(&state))
        .expect("issued");
    let bundle = begun.bundle();
    assert!(
        bundle.contains("-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----"),
        "{bundle}"
    );
    assert!(bundle_holds(bundle.as_bytes(), &trimmed));
    assert!(bundle_holds(
        bundle.as_bytes(),
        &begun.next.expect("next").pem.cert_pem
    ));
}
