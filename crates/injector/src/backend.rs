use crate::Choice;

/// How the injected helper reaches EC2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// It asks the node agent on its node's IP, which alone holds AWS credentials: the
    /// helper gets no AWS setting and needs no instance metadata.
    Agent,
    /// It calls EC2 itself, with the credentials and instance metadata the pod can reach.
    Direct,
}

impl Choice for Backend {
    const SETTING: &'static str = "helper backend";
    const ALL: &'static [Self] = &[Backend::Agent, Backend::Direct];

    fn name(self) -> &'static str {
        match self {
            Backend::Agent => "agent",
            Backend::Direct => "direct",
        }
    }
}
