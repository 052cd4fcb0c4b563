//! The newest messages of the `global` room, kept in memory by the embedded
//! store so that a welcome (which carries them) is answered without a trip
//! to the database's writer.
//!
//! Only the writer (a thread, or a task for an in-memory database) changes
//! it, in the same order as the database: it is filled by a read there,
//! grows with every commit, and is forgotten after a prune. Others only read
//! it, and only while no append waits for its commit: a read must see every message
//! appended before it, as a read queued behind the appends does.

use super::HistoryPage;
use crate::protocol::Message;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Messages kept; longer pages are read from the database.
pub const KEPT: usize = 100;

#[derive(Debug, Default)]
pub struct NewestGlobal {
    state: Mutex<Option<Kept>>,
    /// Appends (of any room) queued and not yet committed.
    uncommitted: AtomicUsize,
}

#[derive(Debug)]
struct Kept {
    /// Oldest first, at most [`KEPT`].
    messages: VecDeque<Message>,
    /// The room holds messages older than the first kept one.
    older: bool,
}

impl NewestGlobal {
    /// The newest `limit` messages, oldest first; `None` when they are not
    /// all known here.
    pub fn page(&self, limit: usize) -> Option<HistoryPage> {
        if self.uncommitted.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = state.as_ref()?;
        if limit > kept.messages.len() && kept.older {
            return None;
        }
        let skip = kept.messages.len().saturating_sub(limit);
        Some(HistoryPage {
            messages: kept.messages.iter().skip(skip).cloned().collect(),
            has_more: skip > 0 || kept.older,
        })
    }

    /// Whether [`NewestGlobal::fill`] is needed.
    pub fn is_known(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Starts from a page of the newest [`KEPT`] messages just read.
    pub fn fill(&self, page: HistoryPage) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(Kept {
            messages: page.messages.into(),
            older: page.has_more,
        });
    }

    /// An append was queued.
    pub fn appending(&self) {
        self.uncommitted.fetch_add(1, Ordering::SeqCst);
    }

    /// `count` queued appends were committed (or failed), after their
    /// messages were pushed.
    pub fn settled(&self, count: usize) {
        self.uncommitted.fetch_sub(count, Ordering::SeqCst);
    }

    /// A message of `global` was committed.
    pub fn push(&self, message: &Message) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = state.as_mut() {
            kept.messages.push_back(message.clone());
            if kept.messages.len() > KEPT {
                kept.messages.pop_front();
                kept.older = true;
            }
        }
    }

    /// Messages were deleted: read the room again when next asked.
    pub fn forget(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
