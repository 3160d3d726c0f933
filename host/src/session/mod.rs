//! Sessions: one device on one route. This far, the inspection pipeline
//! that every session runs its bytes through; the transport issue connects
//! it to sockets.

mod pipeline;

pub use pipeline::{FrameSpan, Inspected, Pipeline, PipelineError};
