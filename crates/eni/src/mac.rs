use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, written the way instance metadata writes it
/// (`0a:1b:2c:3d:4e:5f`, lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not six colon-separated hex octets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets such as 0a:1b:2c:3d:4e:5f)")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || InvalidMac(text.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = text.trim().split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(error)?;
            if part.len() != 2 {
                return Err(error());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn round_trips_in_lower_case() {
        let mac: MacAddr = "0A:1b:2c:3d:4e:5F".parse().expect("valid");
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
    }

    #[rstest]
    #[case("")]
    #[case("0a:1b:2c:3d:4e")]
    #[case("0a:1b:2c:3d:4e:5f:60")]
    #[case("0a-1b-2c-3d-4e-5f")]
    #[case("0a:1b:2c:3d:4e:zz")]
    #[case("a:1b:2c:3d:4e:5f")]
    fn rejects_malformed(#[case] text: &str) {
        assert!(text.parse::<MacAddr>().is_err());
    }
}
