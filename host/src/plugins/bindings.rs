//! Host bindings generated from `wit/policy.wit`: the one contract with plugins.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Every host function may trap: that is how a capped import (the log) stops a plugin.
    imports: { default: trappable },
});
