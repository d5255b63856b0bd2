//! Where the shared servers are (as `make services` starts them and exports their addresses),
//! and free loopback ports for servers a test or a bench starts itself.

/// Environment variable `name`'s value, or `default` where it is unset or blank.
pub fn var_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The PostgreSQL server's admin URL (`REFIT_TEST_DATABASE_URL`): databases of their own are
/// created and dropped through it.
pub fn admin_url() -> String {
    var_or(
        "REFIT_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The Redis server's URL (`REDIS_URL`).
pub fn redis_url() -> String {
    var_or("REDIS_URL", "redis://127.0.0.1:6379")
}

/// The Kafka-compatible broker's bootstrap servers (`KAFKA_BROKERS`).
pub fn brokers() -> String {
    var_or("KAFKA_BROKERS", "127.0.0.1:19092")
}

/// The Python with xgboost the tests compare against (`REFIT_PYTHON`, made by install-deps.sh).
pub fn python() -> String {
    std::env::var("REFIT_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/refit/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    })
}

/// A loopback port nothing listens on right now (the OS's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
