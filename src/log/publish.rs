//! What the writer shows the rest of meterd: the segments readers may
//! read, the stream's end position, its health and the index's size. Set
//! when a stream is (re)opened and after every change of its segments.

use std::sync::{Arc, PoisonError, RwLock};

use super::chain::Head;
use super::state::Opened;
use super::writer::{State, Writer};
use super::{ActiveMeta, SegmentView, View};

// === impl Writer ===

impl Writer {
    /// Makes a freshly opened stream the writer's state and shows it:
    /// its segments, its end and its health.
    pub(super) fn install(&mut self, opened: Opened) {
        let Opened {
            sealed,
            mut active,
            active_bytes_before,
            head,
        } = opened;
        self.set_head(head);
        if let Some(c) = active.commits.last() {
            self.last_received = self.last_received.max(c.received);
        }
        let meta = Arc::new(ActiveMeta {
            first: active.first,
            data: active.data.clone(),
            commits: RwLock::new(std::mem::take(&mut active.commits)),
            checks: RwLock::new(std::mem::take(&mut active.checks)),
            bytes_before: active_bytes_before,
        });
        let end = active.first + active.count - 1;
        // As durable as the disk makes it: nothing of it failed to sync yet.
        self.synced = (active.first, active.len, active.times_len);
        self.state = Some(State {
            sealed,
            active,
            meta,
        });
        self.publish();
        self.shared.end.send_if_modified(|e| {
            let changed = *e != end;
            *e = end;
            changed
        });
    }

    /// The newest seal, for the next seal's link and for `Head`.
    pub(super) fn set_head(&mut self, head: Option<Head>) {
        self.head = head;
        *self
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = head;
    }

    /// Shows the segments to readers.
    pub(super) fn publish(&self) {
        let Some(st) = &self.state else { return };
        let filters: usize = st
            .sealed
            .iter()
            .filter_map(|s| s.keys.as_ref())
            .map(|k| k.index.resident_bytes())
            .sum();
        self.shared
            .filter_bytes
            .store(filters as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.active_keys.store(
            st.active.keys.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let view = View {
            sealed: st
                .sealed
                .iter()
                .map(|s| SegmentView {
                    summary: s.summary,
                    written_len: s.written_len,
                    bytes_before: s.bytes_before,
                })
                .collect(),
            active: st.meta.clone(),
        };
        let bounds = (view.first(), view.active.first);
        *self
            .shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        self.shared.segments.send_if_modified(|b| {
            let changed = *b != bounds;
            *b = bounds;
            changed
        });
    }
}
