//! The HTTPS admission server: the request side ([`requests`]: routes, per-request limits)
//! and the transport side ([`transport`]: the TLS accept loop, per-connection limits,
//! graceful shutdown).
//!
//! Every resource a client can hold is bounded: connections (`max_connections`, then the
//! listen backlog), the time to finish the TLS handshake and each HTTP/1.1 request's headers,
//! the time a body may take and its size (a declared Content-Length over the cap is refused
//! before anything is read), the time of a whole request, `/mutate` requests in flight
//! (further ones get a fast 503), HTTP/2 streams per connection, and idle connections.

mod requests;
mod transport;

pub use requests::{AppState, RequestLimits, router};
pub use transport::{ServeLimits, serve_tls};
