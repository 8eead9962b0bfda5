use std::fmt;
use std::str::FromStr;

use crate::{annotations, excerpt};

/// How the helper runs in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// First initContainer: assigns the pod's addresses once, before anything else starts.
    Init,
    /// Regular container that keeps watching the pod's addresses.
    Sidecar,
    /// initContainer with `restartPolicy: Always` (Kubernetes 1.29+): app containers start
    /// only after its first assignment succeeded, then it keeps watching.
    NativeSidecar,
    /// No injection for this pod.
    Disabled,
}

impl Mode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [Mode; 4] = [
        Mode::Init,
        Mode::Sidecar,
        Mode::NativeSidecar,
        Mode::Disabled,
    ];

    /// The annotation / flag value naming this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Sidecar => "sidecar",
            Mode::NativeSidecar => "native-sidecar",
            Mode::Disabled => "disabled",
        }
    }

    /// The subcommand this mode runs (`ipmgr-helper` and `ipmgr-pod` have the same ones).
    pub(crate) fn helper_subcommand(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Sidecar | Mode::NativeSidecar | Mode::Disabled => "sidecar",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode value that is none of [`Mode::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation {annotation} has unknown value {value:?}; valid values are init, sidecar, native-sidecar, disabled",
    annotation = annotations::MODE
)]
pub struct UnknownMode {
    /// The rejected value, shortened to an [`excerpt`].
    pub value: String,
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value.trim())
            .ok_or_else(|| UnknownMode {
                value: excerpt(value).into_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("init", Mode::Init)]
    #[case("sidecar", Mode::Sidecar)]
    #[case("native-sidecar", Mode::NativeSidecar)]
    #[case(" disabled ", Mode::Disabled)]
    fn parses_known_modes(#[case] value: &str, #[case] expected: Mode) {
        assert_eq!(value.parse::<Mode>(), Ok(expected));
        assert_eq!(expected.as_str().parse::<Mode>(), Ok(expected));
    }

    #[rstest]
    #[case("Init")]
    #[case("nativeSidecar")]
    #[case("")]
    fn rejects_unknown_modes_naming_annotation_and_values(#[case] value: &str) {
        let message = value
            .parse::<Mode>()
            .expect_err("must be rejected")
            .to_string();
        assert!(message.contains("multus-ipmgr.io/mode"), "{message}");
        assert!(message.contains("native-sidecar"), "{message}");
    }
}
