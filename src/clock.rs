//! The app's notion of "now": real UTC time plus an offset that tests move forward instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};

/// Cheap to clone; clones share the offset, so a test that advances its handle moves the app too.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Current UTC time, truncated to microseconds because PostgreSQL keeps no more.
    pub fn now(&self) -> NaiveDateTime {
        self.now_utc().naive_utc()
    }

    pub fn now_utc(&self) -> DateTime<Utc> {
        let t = Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst));
        let micros = t.nanosecond() / 1_000 * 1_000;
        t.with_nanosecond(micros).unwrap_or(t)
    }

    /// How far this clock has been moved ahead of real time (zero outside tests).
    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    /// A time read from the database's clock, moved by this clock's offset: leases use the
    /// database's time so that instances agree, and tests still move it without sleeping.
    pub fn shift(&self, database_now: NaiveDateTime) -> NaiveDateTime {
        let t = database_now + self.offset();
        let micros = t.and_utc().timestamp_subsec_micros() * 1_000;
        t.with_nanosecond(micros).unwrap_or(t)
    }

    /// How far this clock runs ahead of real time (tests move it), in microseconds: added to the
    /// database clock where shared budgets count in it.
    pub fn offset_us(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst).saturating_mul(1_000)
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}
