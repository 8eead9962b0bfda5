//! The agent's listeners. The default address, `[::]`, takes both address families on one
//! socket (IPV6_V6ONLY off, whatever `net.ipv6.bindv6only` says), so that pods reach the
//! agent on an IPv4, an IPv6 and a dual-stack cluster alike; IPv4 callers show as
//! IPv4-mapped addresses, which the pod API maps back. A node whose kernel has IPv6 off
//! gets `0.0.0.0` instead, with a warning.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::errno::Errno;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Connections the kernel queues before the agent accepts them.
const BACKLOG: i32 = 1024;

/// A listener on `address`; on `[::]`, one that takes IPv4 too.
pub(super) fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    if address.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return listen(address, false);
    }
    match listen(address, true) {
        Err(error) if error.raw_os_error() == Some(Errno::EAFNOSUPPORT as i32) => {
            let ipv4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), address.port());
            tracing::warn!(%address, %ipv4, "IPv6 is off in this kernel: listening on IPv4 only");
            listen(ipv4, false)
        }
        other => other,
    }
}

fn listen(address: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_and_ipv6_callers() {
        let listener = bind("[::]:0".parse().expect("address")).expect("bind");
        let port = listener.local_addr().expect("address").port();
        for caller in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let connect = tokio::net::TcpStream::connect((caller, port));
            let (connected, accepted) = tokio::join!(connect, listener.accept());
            connected.expect("connects");
            let (_, peer) = accepted.expect("accepted");
            assert_eq!(peer.ip().to_canonical(), caller);
        }
    }
}
