//! Following the API server into the agent's view ([`NodePods`]): the node's pods and the
//! namespaces, each through a [`mirror`], once the Kubernetes client can be built.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::cluster::NodePods;
use super::mirror::{Sink, mirror};

/// How long to wait before building the Kubernetes client again after it failed.
const CLIENT_RETRY: Duration = Duration::from_secs(10);

/// The pods' mirror writes into the view.
struct PodSink(NodePods);

impl Sink<Pod> for PodSink {
    fn replace(&self, objects: Vec<Pod>) {
        self.0.replace(&objects);
    }
    fn apply(&self, object: Pod) {
        self.0.apply(&object);
    }
    fn delete(&self, object: Pod) {
        self.0.delete(&object);
    }
    fn confirm(&self) {
        self.0.confirm_pods();
    }
}

/// The namespaces' mirror writes the grants into the view.
struct NamespaceSink(NodePods);

impl Sink<Namespace> for NamespaceSink {
    fn replace(&self, objects: Vec<Namespace>) {
        self.0.replace_namespaces(&objects);
    }
    fn apply(&self, object: Namespace) {
        self.0.apply_namespace(&object);
    }
    fn delete(&self, object: Namespace) {
        self.0.delete_namespace(&object);
    }
    fn confirm(&self) {
        self.0.confirm_namespaces();
    }
}

/// The Kubernetes client, built once it can be (KUBECONFIG, else the in-cluster service
/// account, as kube's `Config::infer` finds them), shared by the mirrors, the lookups
/// of other nodes' pods and the capacity's advertiser.
pub(super) type SharedClient = Arc<tokio::sync::OnceCell<kube::Client>>;

/// The Kubernetes client, built by whichever of its users asks first, trying again until
/// it can be.
pub(super) async fn client(shared: &SharedClient) -> kube::Client {
    shared
        .get_or_init(|| async {
            loop {
                match kube::Client::try_default().await {
                    Ok(client) => break client,
                    Err(error) => {
                        tracing::error!(%error, "cannot build the Kubernetes client (KUBECONFIG or the in-cluster service account); the pod API answers 503 and the capacity is not advertised until it can");
                        tokio::time::sleep(CLIENT_RETRY).await;
                    }
                }
            }
        })
        .await
        .clone()
}

/// Follows the pods of `node_name` and every namespace's grant into `pods` for the agent's
/// lifetime, relisting when a watch fails or stays quiet for longer than `stale`; sets
/// `client` once built. Never returns.
pub(super) async fn follow(
    pods: NodePods,
    node_name: String,
    stale: Duration,
    client: SharedClient,
) {
    let built = self::client(&client).await;
    let node_pods = mirror(
        kube::Api::<Pod>::all(built.clone()),
        Some(format!("spec.nodeName={node_name}")),
        stale,
        PodSink(pods.clone()),
        "the node's pods",
    );
    let namespaces = mirror(
        kube::Api::<Namespace>::all(built),
        None,
        stale,
        NamespaceSink(pods),
        "the namespaces",
    );
    futures::future::join(node_pods, namespaces).await;
}
