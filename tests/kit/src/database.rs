//! A PostgreSQL database of its own, on the server of an admin URL: created empty (the caller
//! migrates it) and dropped with `FORCE`, so open connections never keep it alive.

use sqlx::PgPool;

/// The URL of database `name` on the server of `admin_url`.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let server = admin_url
        .rsplit_once('/')
        .expect("a database URL ends in /<database>")
        .0;
    format!("{server}/{name}")
}

/// Creates database `name` (an identifier, not quoted) and returns its URL.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    let admin = PgPool::connect(admin_url).await?;
    let created = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await;
    admin.close().await;
    created?;
    Ok(database_url(admin_url, name))
}

/// Drops database `name` if it exists, closing whatever is still connected to it.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let admin = PgPool::connect(admin_url).await?;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
    dropped.map(drop)
}
