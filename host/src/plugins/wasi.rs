//! WASI for plugins: the shapes Rust's standard library imports, with
//! nothing granted, and nothing that waits.
//!
//! wasmtime-wasi's synchronous WASI serves each call that may wait (on a
//! pollable, a blocking stream operation, the drop of a stream) by running
//! a future to completion on the current tokio runtime. On an async worker,
//! where the appliance calls a parser on a small chunk, that panics the
//! worker; anywhere else it waits for as long as the plugin asks, and the
//! epoch deadline, which stops wasm, does not stop host code. A plugin has
//! nothing to wait for: its stdin is empty, its stdout and stderr discard
//! what they get, it has no files and no sockets. So those calls are served
//! here, without waiting: waiting on a pollable is a fault, a blocking
//! write is discarded, a blocking read finds the stream closed, a dropped
//! stream is dropped.

use wasmtime::Result;
use wasmtime::component::{Linker, Resource, ResourceType, Val};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use super::Fault;
use super::host::PluginState;

/// The version of `wasi:io` wasmtime-wasi serves. A plugin's import of an
/// earlier 0.2 version links to it. The tests of the hostile plugin's
/// `trap` and `sleep` fail if this stops matching what wasmtime-wasi
/// defines.
const IO: &str = "0.2.12";

/// Add WASI to `linker`, with every call that could wait served here.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let served = never_wait(linker);
    linker.allow_shadowing(false);
    served
}

fn never_wait(linker: &mut Linker<PluginState>) -> Result<()> {
    let mut poll = linker.instance(&format!("wasi:io/poll@{IO}"))?;
    for name in ["poll", "[method]pollable.block", "[method]pollable.ready"] {
        poll.func_new(name, |_, _, _, _| {
            Err(wasmtime::Error::new(Fault::Blocked("wasi:io/poll")))
        })?;
    }
    let mut streams = linker.instance(&format!("wasi:io/streams@{IO}"))?;
    for name in [
        "[method]output-stream.blocking-write-and-flush",
        "[method]output-stream.blocking-write-zeroes-and-flush",
        "[method]output-stream.blocking-flush",
    ] {
        streams.func_new(name, |_, _, _, results| answer(results, Ok(None)))?;
    }
    for name in [
        "[method]output-stream.blocking-splice",
        "[method]input-stream.blocking-read",
        "[method]input-stream.blocking-skip",
    ] {
        streams.func_new(name, |_, _, _, results| {
            answer(results, Err(Some(Box::new(closed()))))
        })?;
    }
    streams.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut store, rep| {
            let table = store.data_mut().ctx().table;
            table.delete(Resource::<DynOutputStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    streams.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut store, rep| {
            let table = store.data_mut().ctx().table;
            table.delete(Resource::<DynInputStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    Ok(())
}

/// Set the one result of a stream function, `result<T, stream-error>`.
fn answer(results: &mut [Val], result: Result<Option<Box<Val>>, Option<Box<Val>>>) -> Result<()> {
    let [slot] = results else {
        return Err(wasmtime::Error::msg(
            "a WASI stream function has one result",
        ));
    };
    *slot = Val::Result(result);
    Ok(())
}

/// `stream-error.closed`.
fn closed() -> Val {
    Val::Variant("closed".into(), None)
}
