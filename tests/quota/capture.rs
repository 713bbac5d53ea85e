//! A tracing layer that records `WARN` and `DEBUG` events with their fields, per test thread.
//!
//! The layer sits in the global default subscriber and hands each event to the recorder of the
//! thread that emits it. A global subscriber avoids the race between thread-local subscribers and
//! tracing's per-callsite interest cache when tests run in parallel. Tests run on current-thread
//! runtimes, so the quota layers emit their events on the test's own thread.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The fields of one recorded event: strings as they are, other values formatted with `Debug`.
pub(crate) type Fields = BTreeMap<String, String>;

thread_local! {
    static RECORDER: RefCell<Option<Warnings>> = const { RefCell::new(None) };
}

/// Recorded events of one test, each with its level.
#[derive(Clone, Default)]
pub(crate) struct Warnings(Arc<Mutex<Vec<(Level, Fields)>>>);

/// Stops recording on this thread when dropped.
pub(crate) struct RecordingGuard;

impl Drop for RecordingGuard {
    fn drop(&mut self) {
        RECORDER.with(|recorder| recorder.borrow_mut().take());
    }
}

impl Warnings {
    /// Records the warnings emitted on this thread until the guard drops.
    pub(crate) fn install() -> (Self, RecordingGuard) {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(CaptureLayer);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber");
        });
        let warnings = Self::default();
        RECORDER.with(|recorder| *recorder.borrow_mut() = Some(warnings.clone()));
        (warnings, RecordingGuard)
    }

    /// Returns the fields of every `WARN` event.
    pub(crate) fn all(&self) -> Vec<Fields> {
        self.at_level(Level::WARN)
    }

    /// Returns the number of `WARN` events.
    pub(crate) fn count(&self) -> usize {
        self.all().len()
    }

    /// Returns the fields of every event at `level`.
    pub(crate) fn at_level(&self, level: Level) -> Vec<Fields> {
        let events = self.0.lock().expect("capture lock");
        events
            .iter()
            .filter(|(event_level, _)| *event_level == level)
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

struct CaptureLayer;

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level != Level::WARN && level != Level::DEBUG {
            return;
        }
        let Some(warnings) = RECORDER.with(|recorder| recorder.borrow().clone()) else {
            return;
        };
        let mut visitor = FieldVisitor(Fields::new());
        event.record(&mut visitor);
        warnings
            .0
            .lock()
            .expect("capture lock")
            .push((level, visitor.0));
    }
}

struct FieldVisitor(Fields);

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
