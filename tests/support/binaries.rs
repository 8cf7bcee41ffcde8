//! What the Redis test harnesses share: finding `redis-server` and `redis-cli`, whether CI asks
//! for them, and free loopback ports. Included by `redis_server.rs`, `redis_cluster.rs` and
//! `redis_tls.rs` with `#[path = "binaries.rs"] mod binaries;`.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// The cluster bus of a node listens on its port + 10000.
pub const BUS_OFFSET: u16 = 10000;

/// An executable on `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether `SWITCHBOARD_REQUIRE_CLUSTER` asks for the cluster tests to fail instead of being
/// skipped when Redis is missing (CI sets it).
pub fn cluster_required() -> bool {
    std::env::var_os("SWITCHBOARD_REQUIRE_CLUSTER").is_some_and(|v| v != "0")
}

/// A free loopback port (free when this returns; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port whose cluster bus port (port + 10000) is free too (both free when this
/// returns; good enough for a test, and the harnesses retry a node that cannot bind).
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port > u16::MAX - BUS_OFFSET {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)).is_ok() {
            return port;
        }
    }
}
