//! The scheduler's knowledge of pending actuals: what a notification says ([`Arrival`]), how a
//! worker left its user ([`Finished`]), and the per-user counts and the queue of due users
//! ([`Pending`]). Pure state: no I/O, unit-tested here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::store;

/// Users whose pending count the scheduler remembers at most (beyond: counted again when they are
/// notified).
const MAX_KNOWN_USERS: usize = 100_000;

/// What the listener tells the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// `count` actuals of the user became pending (`None`: how many is not known).
    Actuals { user_id: String, count: Option<i64> },
    /// Notifications may have been missed: scan everything.
    Rescan,
}

impl Arrival {
    /// Reads a notification of the ingest: one entry per user,
    /// `<count>:<first actual id>:<user id's length in bytes>:<user id>`, back to back (the ingest
    /// sends one notification per ingest, or a few when its users' ids exceed NOTIFY's 8,000
    /// bytes). Also reads what earlier versions sent: `<count>:<first actual id>:<user id>`, one
    /// user per notification, and an empty payload (a user id too long to notify, before
    /// migration 20261201000008).
    pub(crate) fn parse(payload: &str) -> Vec<Self> {
        if payload.is_empty() {
            return vec![Arrival::Rescan];
        }
        entries(payload).unwrap_or_else(|| vec![Self::parse_one(payload)])
    }

    /// `<count>:<first actual id>:<user id>`, or anything else as a user id to ask the database
    /// about.
    fn parse_one(payload: &str) -> Self {
        let mut parts = payload.splitn(3, ':');
        let count = parts.next().and_then(|n| n.parse::<i64>().ok());
        let first = parts.next().and_then(|f| f.parse::<i64>().ok());
        match (count, first, parts.next()) {
            (Some(count), Some(_), Some(user_id)) => Arrival::Actuals {
                user_id: user_id.to_owned(),
                count: Some(count),
            },
            // Not this schema's payload (e.g. a bare user id): ask the database.
            _ => Arrival::Actuals {
                user_id: payload.to_owned(),
                count: None,
            },
        }
    }
}

/// The entries of an ingest's notification; `None` unless the whole payload is entries.
fn entries(mut rest: &str) -> Option<Vec<Arrival>> {
    let mut arrivals = Vec::new();
    while !rest.is_empty() {
        let (count, after) = rest.split_once(':')?;
        let (first, after) = after.split_once(':')?;
        let (bytes, after) = after.split_once(':')?;
        first.parse::<i64>().ok()?;
        let bytes: usize = bytes.parse().ok()?;
        let user_id = after.get(..bytes)?;
        arrivals.push(Arrival::Actuals {
            user_id: user_id.to_owned(),
            count: Some(count.parse().ok()?),
        });
        rest = &after[bytes..];
    }
    Some(arrivals)
}

/// How a worker left its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// This many actuals are still pending, as far as the worker knows.
    Remaining(i64),
    /// The user backs off after a failure: the full scan brings it back when it may retry.
    BackingOff,
    /// Unknown (another replica holds the user, or an error): the next arrival or scan tells.
    Unknown,
}

/// The scheduler's knowledge of pending actuals (see the module docs). Counts may run high
/// (another replica consumed rows) — that costs one retrain attempt that finds too few — but
/// never low while notifications arrive, so no due user waits for the safety-net scan.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    threshold: i64,
    /// Pending actuals per user not in flight: the last count read plus the arrivals since.
    known: HashMap<String, i64>,
    /// Users to count in the database before they can be scheduled.
    pub(crate) unknown: HashSet<String>,
    /// Users backing off after a failed retrain, since when: left to the full scan.
    backing_off: HashMap<String, Instant>,
    /// Users being retrained → notified again meanwhile.
    in_flight: HashMap<String, bool>,
    /// Due users in the order they became due (their counts stay in `known`).
    pub(crate) queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Pending {
    pub(crate) fn new(threshold: i64) -> Self {
        Pending {
            threshold,
            ..Default::default()
        }
    }

    /// A notification: `count` actuals of the user became pending.
    pub(crate) fn arrived(&mut self, user_id: String, count: Option<i64>) {
        if let Some(notified) = self.in_flight.get_mut(&user_id) {
            *notified = true;
            return;
        }
        if self.backing_off.contains_key(&user_id) {
            return;
        }
        match (self.known.get_mut(&user_id), count) {
            (Some(known), Some(count)) => {
                *known += count;
                let pending = *known;
                self.due_if(user_id, pending);
            }
            _ => {
                self.known.remove(&user_id);
                self.unknown.insert(user_id);
            }
        }
    }

    /// Counts read from the database for `asked` (users with no pending actual are absent).
    pub(crate) fn counted(&mut self, asked: &[String], counts: Vec<store::actuals::PendingCount>) {
        let mut counts: HashMap<String, store::actuals::PendingCount> =
            counts.into_iter().map(|c| (c.user_id.clone(), c)).collect();
        for user_id in asked {
            let (pending, backing_off) = counts
                .remove(user_id)
                .map_or((0, false), |c| (c.pending, c.backing_off));
            if let Some(notified) = self.in_flight.get_mut(user_id) {
                *notified = true;
            } else if backing_off {
                self.known.remove(user_id);
                self.backing_off.insert(user_id.clone(), Instant::now());
            } else {
                self.known.insert(user_id.clone(), pending);
                self.due_if(user_id.clone(), pending);
            }
        }
    }

    /// The full scan's due users (backing-off users excluded by the query); stale users are
    /// due whatever their count.
    pub(crate) fn scanned(&mut self, due: Vec<store::actuals::DueUser>) {
        self.forget_idle();
        for user in due {
            self.backing_off.remove(&user.user_id);
            if let Some(notified) = self.in_flight.get_mut(&user.user_id) {
                *notified = true;
            } else {
                self.known.insert(user.user_id.clone(), user.pending);
                match user.stale {
                    true => self.queue_once(user.user_id),
                    false => self.due_if(user.user_id, user.pending),
                }
            }
        }
    }

    /// Keeps the per-user maps from growing with every user ever seen: a back-off is forgotten
    /// once the longest back-off has passed (the scan brings the user back when it may retry);
    /// past [`MAX_KNOWN_USERS`] remembered counts, users with nothing pending are forgotten, then
    /// every count not queued (a forgotten user's next arrival is counted in the database).
    fn forget_idle(&mut self) {
        self.backing_off
            .retain(|_, since| since.elapsed() < crate::retrain::MAX_FAILURE_BACKOFF);
        if self.known.len() > MAX_KNOWN_USERS {
            self.known.retain(|_, pending| *pending > 0);
        }
        if self.known.len() > MAX_KNOWN_USERS {
            let queued = &self.queued;
            self.known.retain(|user, _| queued.contains(user));
        }
    }

    /// Users the scheduler holds state for.
    #[cfg(test)]
    fn users_held(&self) -> usize {
        self.known.len() + self.backing_off.len() + self.in_flight.len() + self.unknown.len()
    }

    /// A worker ended.
    pub(crate) fn finished(&mut self, user_id: String, finished: Finished) {
        let notified = self.in_flight.remove(&user_id).unwrap_or(false);
        match finished {
            Finished::BackingOff => {
                self.known.remove(&user_id);
                self.backing_off.insert(user_id, Instant::now());
            }
            Finished::Remaining(_) if notified => {
                self.unknown.insert(user_id);
            }
            Finished::Remaining(pending) => {
                self.known.insert(user_id.clone(), pending);
                self.due_if(user_id, pending);
            }
            Finished::Unknown => {
                self.known.remove(&user_id);
                if notified {
                    self.unknown.insert(user_id);
                }
            }
        }
    }

    /// The next due user to run; it is in flight from now on.
    pub(crate) fn start_next(&mut self) -> Option<store::actuals::DueUser> {
        let user_id = self.queue.pop_front()?;
        self.queued.remove(&user_id);
        let pending = self.known.remove(&user_id).unwrap_or(self.threshold);
        self.in_flight.insert(user_id.clone(), false);
        Some(store::actuals::DueUser {
            stale: pending < self.threshold,
            user_id,
            pending,
        })
    }

    fn due_if(&mut self, user_id: String, pending: i64) {
        if pending >= self.threshold {
            self.queue_once(user_id);
        }
    }

    fn queue_once(&mut self, user_id: String) {
        if self.queued.insert(user_id.clone()) {
            self.queue.push_back(user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(user: &str, pending: i64, backing_off: bool) -> store::actuals::PendingCount {
        store::actuals::PendingCount {
            user_id: user.into(),
            pending,
            backing_off,
        }
    }

    fn actuals(user_id: &str, count: i64) -> Arrival {
        Arrival::Actuals {
            user_id: user_id.into(),
            count: Some(count),
        }
    }

    #[test]
    fn an_ingests_notification_is_read_as_one_arrival_per_user() {
        let odd = "a:b\n2:3:é🚲";
        let payload = format!("3:17:5:alice50:20:{}:{odd}1:99:3:bob", odd.len());
        assert_eq!(
            Arrival::parse(&payload),
            [actuals("alice", 3), actuals(odd, 50), actuals("bob", 1)]
        );
    }

    #[test]
    fn notifications_of_earlier_versions_are_still_read() {
        assert_eq!(
            Arrival::parse("3:17:user:with:colons"),
            [actuals("user:with:colons", 3)]
        );
        assert_eq!(Arrival::parse(""), [Arrival::Rescan]);
        let unknown = Arrival::Actuals {
            user_id: "alice".into(),
            count: None,
        };
        assert_eq!(Arrival::parse("alice"), [unknown]);
        // A length that does not fit the payload: not an entry list.
        assert_eq!(Arrival::parse("3:17:9:bob"), [actuals("9:bob", 3)]);
    }

    #[test]
    fn a_user_is_counted_once_then_due_exactly_when_arrivals_reach_the_threshold() {
        let mut p = Pending::new(50);
        p.arrived("a".into(), Some(1));
        assert!(
            p.unknown.contains("a"),
            "an unknown user is counted in the database"
        );
        let asked: Vec<String> = p.unknown.drain().collect();
        p.counted(&asked, vec![count("a", 47, false)]);
        assert!(p.queue.is_empty());
        p.arrived("a".into(), Some(2));
        assert!(
            p.queue.is_empty() && p.unknown.is_empty(),
            "49: no query, not due"
        );
        p.arrived("a".into(), Some(3));
        let due = p.start_next().expect("52 pending: due");
        assert_eq!((due.user_id.as_str(), due.pending), ("a", 52));
        assert!(p.start_next().is_none());
    }

    #[test]
    fn arrivals_during_a_retrain_are_counted_again_afterwards() {
        let mut p = Pending::new(50);
        p.scanned(vec![store::actuals::DueUser {
            user_id: "a".into(),
            pending: 60,
            stale: false,
        }]);
        p.start_next().unwrap();
        p.arrived("a".into(), Some(45));
        assert!(p.unknown.is_empty(), "in flight: remembered, not queried");
        p.finished("a".into(), Finished::Remaining(10));
        assert!(
            p.unknown.contains("a"),
            "notified while in flight: counted again"
        );

        let mut p = Pending::new(50);
        p.scanned(vec![store::actuals::DueUser {
            user_id: "b".into(),
            pending: 50,
            stale: false,
        }]);
        p.start_next().unwrap();
        p.finished("b".into(), Finished::Remaining(0));
        p.arrived("b".into(), Some(50));
        assert_eq!(
            p.start_next().map(|u| u.pending),
            Some(50),
            "the worker's count is the base"
        );
    }

    #[test]
    fn a_stale_user_found_by_the_scan_is_due_below_the_threshold() {
        let mut p = Pending::new(50);
        p.scanned(vec![store::actuals::DueUser {
            user_id: "quiet".into(),
            pending: 3,
            stale: true,
        }]);
        let due = p.start_next().expect("stale: due");
        assert_eq!(
            (due.user_id.as_str(), due.pending, due.stale),
            ("quiet", 3, true)
        );
        p.scanned(vec![store::actuals::DueUser {
            user_id: "few".into(),
            pending: 3,
            stale: false,
        }]);
        assert!(
            p.start_next().is_none(),
            "not stale and below the threshold"
        );
    }

    #[test]
    fn the_per_user_maps_stay_bounded_when_users_go_quiet() {
        let mut p = Pending::new(50);
        let quiet: Vec<String> = (0..MAX_KNOWN_USERS + 10).map(|i| format!("u{i}")).collect();
        p.counted(&quiet, Vec::new());
        p.counted(&["trickle".into()], vec![count("trickle", 7, false)]);
        assert_eq!(p.users_held(), MAX_KNOWN_USERS + 11);
        p.scanned(Vec::new());
        assert_eq!(
            p.users_held(),
            1,
            "past the cap, users with nothing pending are forgotten"
        );
        // A forgotten user's next arrival is counted in the database, not lost; a remembered
        // count goes on from where it was.
        p.arrived("u1".into(), Some(3));
        assert!(p.unknown.contains("u1"));
        p.arrived("trickle".into(), Some(43));
        assert_eq!(p.start_next().map(|u| u.pending), Some(50));
    }

    #[test]
    fn a_backing_off_user_waits_for_the_full_scan() {
        let mut p = Pending::new(50);
        p.counted(&["a".into(), "b".into()], vec![count("a", 80, true)]);
        assert!(p.queue.is_empty(), "backing off: not scheduled");
        p.arrived("a".into(), Some(10));
        assert!(p.queue.is_empty() && p.unknown.is_empty());
        p.scanned(vec![store::actuals::DueUser {
            user_id: "a".into(),
            pending: 90,
            stale: false,
        }]);
        assert_eq!(p.start_next().map(|u| u.user_id), Some("a".into()));
        p.finished("a".into(), Finished::BackingOff);
        p.arrived("a".into(), Some(50));
        assert!(p.queue.is_empty());
        // "b" had nothing pending: its next arrival is counted from zero.
        p.arrived("b".into(), Some(50));
        assert_eq!(p.start_next().map(|u| u.user_id), Some("b".into()));
    }
}
