//! The CPU a Redis server has used (`INFO cpu`: user + system, in seconds), shared by the
//! benchmarks that report Redis's CPU per message.

/// `used_cpu_user + used_cpu_sys` of the server behind `conn`.
pub(crate) async fn redis_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == "used_cpu_user" || k == "used_cpu_sys").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}
