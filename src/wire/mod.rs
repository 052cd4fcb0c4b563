//! roomcast's own WebSocket layer: the opening handshake, frames, and the
//! stream under them. It keeps no buffers per connection while nothing is
//! in flight, and lets a broadcast write a shared, pre-encoded frame straight
//! into each socket.

pub mod echo;
pub mod frame;
pub mod handshake;
mod out;
mod reader;
mod stream;

pub use frame::{Decoded, Decoder, FrameError, Incoming};
pub use out::OutFrame;
pub use reader::{HoldsStream, ReadError, Reader};
pub use stream::Stream;
