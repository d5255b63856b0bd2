//! A PostgreSQL database of its own, on the server of an admin URL: created empty (the caller
//! migrates it) and dropped with `FORCE`, so open connections never keep it alive.

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
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

/// Creates database `name` (see [`create_database`]) with refit's migrations applied; returns
/// its URL and a pool of `options` on it.
pub async fn create_migrated_database(
    admin_url: &str,
    name: &str,
    options: PgPoolOptions,
) -> anyhow::Result<(String, PgPool)> {
    let url = create_database(admin_url, name)
        .await
        .context("PostgreSQL reachable (make services)")?;
    let pool = options.connect(&url).await?;
    refit::store::migrate(&pool).await?;
    Ok((url, pool))
}

/// Drops database `name` if it exists, closing whatever is still connected to it.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let admin = PgPool::connect(admin_url).await?;
    let dropped = drop_on(&admin, name).await;
    admin.close().await;
    dropped
}

/// Drops every database whose name starts with `prefix` (e.g. those an interrupted run left
/// behind); returns their names. A database that cannot be dropped is skipped.
pub async fn drop_databases_with_prefix(
    admin_url: &str,
    prefix: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let admin = PgPool::connect(admin_url).await?;
    let names: Result<Vec<String>, _> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(prefix)
            .fetch_all(&admin)
            .await;
    let mut dropped = Vec::new();
    for name in names.iter().flatten() {
        if drop_on(&admin, name).await.is_ok() {
            dropped.push(name.clone());
        }
    }
    admin.close().await;
    names.map(|_| dropped)
}

async fn drop_on(admin: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin)
        .await
        .map(drop)
}
