//! Process ids, message ids and the envelope that carries a message.

/// A node's process id, as listed in the config. Non-negative for real nodes.
pub type Pid = i32;

/// Destination meaning "every peer except the sender".
pub const BROADCAST: Pid = -1;

/// A message id, chosen by the sender (see [`crate::Server::next_msg_id`]).
pub type MsgId = i64;

/// A message with its addressing.
///
/// When sending, `pid` is the destination (a peer, the sender itself, or [`BROADCAST`]);
/// when receiving, `pid` is the sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Envelope<M> {
    /// Destination when sending, sender when received.
    pub pid: Pid,
    /// The message id, carried unchanged from sender to receiver.
    pub msg_id: MsgId,
    /// The message itself.
    pub msg: M,
}

impl<M> Envelope<M> {
    /// Builds an envelope.
    pub fn new(pid: Pid, msg_id: MsgId, msg: M) -> Self {
        Self { pid, msg_id, msg }
    }
}
