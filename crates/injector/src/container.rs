use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use ipmgr_contract::{READY_FILE, RUN_DIR, env as vars};

use crate::{Backend, FirstPassBudget, ManagedInterfaces, Mode, ResourceSettings};

/// Name of the injected container (the name the original how-to used, so hand-added helpers
/// are recognised).
pub const HELPER_CONTAINER_NAME: &str = "aws-ip-mgmt";
/// emptyDir volume holding the helper's readiness file in native-sidecar mode.
pub const RUN_VOLUME_NAME: &str = "aws-ip-mgmt-run";

/// What the container is built from, after per-pod overrides.
pub(crate) struct ContainerSpec<'a> {
    pub(crate) mode: Mode,
    pub(crate) image: &'a str,
    pub(crate) image_pull_policy: &'a str,
    pub(crate) command: &'a str,
    pub(crate) extra_args: &'a [String],
    pub(crate) log_filter: &'a str,
    pub(crate) interfaces: &'a ManagedInterfaces,
    pub(crate) resources: &'a ResourceSettings,
    /// UID and GID: the webhook's, or the proxy's of the mesh the pod is in.
    pub(crate) run_as_user: i64,
    /// The node agent's port with the agent backend; `None`: the helper calls EC2 itself.
    pub(crate) agent_port: Option<u16>,
    pub(crate) first_pass: FirstPassBudget,
}

impl ContainerSpec<'_> {
    /// The helper container for this mode.
    pub(crate) fn container(&self) -> Container {
        let native = self.mode == Mode::NativeSidecar;
        let mut env = vec![
            field_env(vars::NODE_NAME, "spec.nodeName"),
            field_env(vars::POD_NAME, "metadata.name"),
            field_env(vars::POD_NAMESPACE, "metadata.namespace"),
            value_env(vars::MODE, self.mode.as_str()),
            value_env(vars::LOG, self.log_filter),
        ];
        if !self.interfaces.names.is_empty() {
            env.push(value_env(
                vars::INTERFACES,
                &self.interfaces.names.join(","),
            ));
        }
        if self.interfaces.by_mac {
            env.push(value_env(vars::INTERFACES_BY_MAC, "true"));
        }
        let budget = self.first_pass;
        env.push(value_env(
            vars::WAIT_SECONDS,
            &budget.wait_seconds.to_string(),
        ));
        env.push(value_env(
            vars::EC2_RETRY_SECONDS,
            &budget.ec2_retry_seconds.to_string(),
        ));
        if self.agent_port.is_none() {
            env.push(value_env(
                vars::METADATA_RETRY_SECONDS,
                &budget.metadata_retry_seconds.to_string(),
            ));
        }
        if let Some(port) = self.agent_port {
            // Kubernetes expands $(HOST_IP) because it is defined earlier in the list.
            env.push(field_env(vars::HOST_IP, "status.hostIP"));
            env.push(value_env(
                vars::AGENT_URL,
                &format!("http://$({}):{port}", vars::HOST_IP),
            ));
        }
        if native {
            env.push(value_env(vars::READY_FILE, READY_FILE));
        }
        let args = std::iter::once(self.mode.helper_subcommand().to_owned())
            .chain(self.extra_args.iter().cloned())
            .collect();
        Container {
            name: HELPER_CONTAINER_NAME.to_owned(),
            image: Some(self.image.to_owned()),
            image_pull_policy: Some(self.image_pull_policy.to_owned()),
            command: Some(vec![self.command.to_owned()]),
            args: Some(args),
            env: Some(env),
            resources: Some(self.resource_requirements()),
            security_context: Some(self.security_context()),
            restart_policy: native.then(|| "Always".to_owned()),
            startup_probe: native.then(|| self.startup_probe()),
            volume_mounts: native.then(|| {
                vec![VolumeMount {
                    name: RUN_VOLUME_NAME.to_owned(),
                    mount_path: RUN_DIR.to_owned(),
                    ..VolumeMount::default()
                }]
            }),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Container::default()
        }
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        let pair = |cpu: &crate::Quantity, memory: &crate::Quantity| {
            BTreeMap::from([
                ("cpu".to_owned(), K8sQuantity(cpu.to_string())),
                ("memory".to_owned(), K8sQuantity(memory.to_string())),
            ])
        };
        let resources = self.resources;
        ResourceRequirements {
            requests: Some(pair(&resources.cpu_request, &resources.memory_request)),
            limits: Some(pair(&resources.cpu_limit, &resources.memory_limit)),
            ..ResourceRequirements::default()
        }
    }

    /// Meets Pod Security "restricted": non-root, no escalation, no capabilities,
    /// RuntimeDefault seccomp, read-only root filesystem.
    fn security_context(&self) -> SecurityContext {
        SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(self.run_as_user),
            run_as_group: Some(self.run_as_user),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }
    }

    /// Holds the app containers back until the helper's first pass wrote its ready file,
    /// checking every second for as long as that first pass may take
    /// ([`FirstPassBudget::startup_seconds`]), so the kubelet never restarts a helper that
    /// is still within its budgets.
    fn startup_probe(&self) -> Probe {
        let backend = match self.agent_port {
            Some(_) => Backend::Agent,
            None => Backend::Direct,
        };
        let seconds = self.first_pass.startup_seconds(backend);
        Probe {
            exec: Some(ExecAction {
                command: Some(vec![self.command.to_owned(), "ready".to_owned()]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(i32::try_from(seconds).unwrap_or(i32::MAX)),
            timeout_seconds: Some(1),
            ..Probe::default()
        }
    }
}

/// The in-memory volume behind [`READY_FILE`].
pub(crate) fn run_volume() -> Volume {
    Volume {
        name: RUN_VOLUME_NAME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(K8sQuantity("1Mi".to_owned())),
        }),
        ..Volume::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}
