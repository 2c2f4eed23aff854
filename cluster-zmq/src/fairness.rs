//! Fairness of a transport that hands frames to the server's task.

/// Frames a transport hands over before it lets other tasks of its thread run: the server's
/// task would otherwise never yield while frames keep arriving (reading a ready socket
/// touches no tokio resource, so tokio's cooperative budget never runs out), and the task
/// reading the inbox, on the same thread, would starve until the inbox overflows. Below
/// tokio's budget of 128, which bounds what the inbox reader takes per turn.
const YIELD_EVERY: u32 = 64;

/// Counts frames handed over since the last yield (see [`YIELD_EVERY`]).
#[derive(Debug, Default)]
pub(crate) struct Fairness {
    since_yield: u32,
}

impl Fairness {
    /// Whether `try_recv` may hand over another frame before a yield.
    pub(crate) fn may_take(&self) -> bool {
        self.since_yield < YIELD_EVERY
    }

    pub(crate) fn took(&mut self) {
        self.since_yield = self.since_yield.saturating_add(1);
    }

    /// Yields to the runtime if due. Cancel-safe: nothing is taken before it.
    pub(crate) async fn pause_if_due(&mut self) {
        if !self.may_take() {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}
