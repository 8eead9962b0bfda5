//! Waiting for instance metadata to show what EC2 accepted, over a lagging in-memory
//! metadata.

use ipmgr_eni::Assignment;
use pretty_assertions::assert_eq;

use super::wait_to_show;
use crate::fakes::{FakeMetadata, node};

#[tokio::test]
async fn confirmation_waits_for_lagging_metadata_and_says_what_it_never_showed() {
    let assigned = Assignment {
        eni_id: "eni-multus".to_owned(),
        address: "10.0.1.50".parse().expect("ip"),
    };
    let window = std::time::Duration::from_millis(60);
    let lagging = FakeMetadata::showing(node());
    let missing = wait_to_show(&lagging, &node(), std::slice::from_ref(&assigned), window)
        .await
        .expect("metadata answers");
    assert_eq!(
        missing,
        vec![assigned.clone()],
        "never shown within the window"
    );
    let mut caught_up = node();
    caught_up.enis[1]
        .ipv4
        .push("10.0.1.50".parse().expect("ip"));
    let missing = wait_to_show(
        &FakeMetadata::showing(caught_up),
        &node(),
        &[assigned],
        window,
    )
    .await
    .expect("metadata answers");
    assert_eq!(missing, vec![], "shown: confirmed");
}
