//! The namespaces a caller may be in, without a route to its pod IP.

use super::*;

#[test]
fn without_a_route_the_candidates_are_the_carriers_seen_and_the_entries_made_since() {
    let dir = tempfile::tempdir().expect("dir");
    for name in ["carrier", "other", "new"] {
        File::create(dir.path().join(name)).expect("entry");
    }
    let directory = NetnsDirectory::new(dir.path().to_owned());
    let pod_ip: IpAddr = "192.168.0.5".parse().expect("ip");
    let elsewhere: IpAddr = "192.168.0.6".parse().expect("ip");
    *directory.scanned.lock().expect("scanned") = HashMap::from([
        (dir.path().join("carrier"), vec![pod_ip]),
        (dir.path().join("other"), vec![elsewhere]),
        (dir.path().join("gone"), vec![pod_ip]),
    ]);
    let mut candidates = directory.candidates(pod_ip).expect("candidates");
    candidates.sort();
    assert_eq!(
        candidates,
        vec![dir.path().join("carrier"), dir.path().join("new")]
    );
}
