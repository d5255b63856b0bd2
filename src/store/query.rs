//! The one door to PostgreSQL: every statement refit runs is built here. The wrappers take the
//! SQL as `&'static str` — text fixed when refit is compiled — so a value can reach a statement
//! only as a bound parameter; formatting one into SQL would take an explicit leak. `clippy.toml`
//! refuses sqlx's own entry points everywhere else (`cargo clippy -D warnings`), and the test
//! below fails if that configuration is lost. This replaces scanning the source for SQL, and
//! lets statements be shared as constants.
#![allow(clippy::disallowed_methods)]

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, PgConnection, Postgres};

/// A statement whose values are bound (`sqlx::query`).
pub(crate) fn query<'q>(sql: &'static str) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql)
}

/// A statement whose rows are read into `O` (`sqlx::query_as`).
pub(crate) fn query_as<'q, O>(sql: &'static str) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql)
}

/// A statement whose rows are one column each (`sqlx::query_scalar`).
pub(crate) fn query_scalar<'q, O>(sql: &'static str) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql)
}

/// `name` as a PostgreSQL identifier: in double quotes, any double quote doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database `name` (`refit demo`). The one statement with runtime text: an
/// identifier cannot be bound, so it is quoted as PostgreSQL quotes identifiers.
pub(crate) async fn create_database(conn: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    let sql = format!("CREATE DATABASE {}", quote_identifier(name));
    sqlx::query(&sql).execute(conn).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deleting or weakening the lint configuration fails here, not silently.
    #[test]
    fn every_sqlx_entry_point_is_disallowed_outside_this_module() {
        let config: toml::Value = toml::from_str(include_str!("../../clippy.toml")).unwrap();
        let disallowed: Vec<&str> = config["disallowed-methods"]
            .as_array()
            .expect("clippy.toml lists disallowed-methods")
            .iter()
            .filter_map(|entry| entry.get("path").and_then(toml::Value::as_str))
            .collect();
        for entry in [
            "sqlx::query",
            "sqlx::query_as",
            "sqlx::query_scalar",
            "sqlx::query_with",
            "sqlx::query_as_with",
            "sqlx::query_scalar_with",
            "sqlx::raw_sql",
        ] {
            assert!(
                disallowed.contains(&entry),
                "clippy.toml must disallow {entry}"
            );
        }
    }

    #[test]
    fn identifiers_are_quoted_as_postgresql_does() {
        assert_eq!(quote_identifier("refit"), "\"refit\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier("x\"; DROP"), "\"x\"\"; DROP\"");
    }
}
