//! Recently trained models kept loaded between a user's retrains, so the next retrain skips
//! fetching the artifact from PostgreSQL and deserialising it (which costs more than training
//! once models grow, see BENCHMARKS.md).
//!
//! An entry is only used for the exact stored row it was made from: the registry head names the
//! active version and the identity of its row (`xmin`, which changes whenever the row is
//! written), so a promotion, a rollback, an import, another replica's retrain or a rewritten
//! artifact all miss and the artifact is loaded from the database as before.
//!
//! A retrain *takes* its user's entry (training mutates the booster) and puts the new model back
//! after its commit; a rejected or failed retrain puts nothing back. The cache is bounded by the
//! artifacts' total size and forgets the least recently used models first.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::xgboost::Booster;

/// Loaded models by user, bounded in bytes.
pub(crate) struct ModelCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    /// Incremented on every put: an entry's `used` orders the evictions.
    clock: u64,
}

struct Entry {
    version: i32,
    /// The version row's identity when it was stored.
    row: i64,
    booster: Booster,
    bytes: usize,
    used: u64,
}

/// What the cache holds (for the tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) models: usize,
    pub(crate) bytes: usize,
}

impl ModelCache {
    /// A cache of at most `budget` bytes of artifacts (0 keeps nothing).
    pub(crate) fn new(budget: usize) -> Self {
        ModelCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Takes the user's model out of the cache if it is `version` stored in row `row`; an entry
    /// for anything else is stale and dropped.
    pub(crate) fn take(&self, user_id: &str, version: i32, row: Option<i64>) -> Option<Booster> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let entry = inner.entries.remove(user_id)?;
        inner.bytes -= entry.bytes;
        (Some(entry.row) == row && entry.version == version).then_some(entry.booster)
    }

    /// Keeps the user's newly committed model, evicting the least recently used ones beyond the
    /// budget. `bytes` is its artifact's size.
    pub(crate) fn put(
        &self,
        user_id: &str,
        version: i32,
        row: i64,
        booster: Booster,
        bytes: usize,
    ) {
        if bytes > self.budget {
            return;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.clock += 1;
        let entry = Entry {
            version,
            row,
            booster,
            bytes,
            used: inner.clock,
        };
        if let Some(old) = inner.entries.insert(user_id.to_owned(), entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(user, _)| user.clone())
            else {
                break;
            };
            let evicted = inner.entries.remove(&oldest).expect("just found");
            inner.bytes -= evicted.bytes;
        }
    }

    #[cfg(test)]
    pub(crate) fn usage(&self) -> Usage {
        let inner = self.inner.lock().expect("not poisoned");
        Usage {
            models: inner.entries.len(),
            bytes: inner.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::xgboost::Matrix;

    fn booster() -> Booster {
        let names = vec!["x".to_owned()];
        let data = Matrix::dense(&[1.0, 2.0], 2, &names).unwrap();
        Booster::new(&[&data]).unwrap()
    }

    #[test]
    fn an_entry_is_used_only_for_its_own_version_and_row() {
        let cache = ModelCache::new(1000);
        cache.put("a", 3, 77, booster(), 100);
        assert!(cache.take("a", 3, Some(78)).is_none(), "rewritten row");
        assert_eq!(cache.usage().models, 0, "a stale entry is dropped");
        cache.put("a", 3, 77, booster(), 100);
        assert!(cache.take("a", 4, Some(77)).is_none(), "another version");
        cache.put("a", 3, 77, booster(), 100);
        assert!(cache.take("a", 3, Some(77)).is_some());
        assert!(cache.take("a", 3, Some(77)).is_none(), "taken, not copied");
    }

    #[test]
    fn the_least_recently_stored_models_go_first_beyond_the_budget() {
        let cache = ModelCache::new(250);
        cache.put("a", 1, 1, booster(), 100);
        cache.put("b", 1, 1, booster(), 100);
        cache.put("c", 1, 1, booster(), 100);
        assert_eq!(
            cache.usage(),
            Usage {
                models: 2,
                bytes: 200
            }
        );
        assert!(cache.take("a", 1, Some(1)).is_none(), "evicted");
        assert!(cache.take("c", 1, Some(1)).is_some());
        cache.put("big", 1, 1, booster(), 300);
        assert_eq!(cache.usage().models, 1, "larger than the budget: not kept");
    }
}
