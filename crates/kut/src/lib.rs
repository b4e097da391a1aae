//! kvm-unit-tests as they are, run by ukci: the tests of a tree's
//! `unittests.cfg` ([`cfg`], [`select`]), the QEMU command its `x86/run`
//! builds ([`command`]), what its scripts make of the way QEMU ended and of
//! the result lines ([`decode`]), and a tree built from a source tarball in
//! the per-user cache ([`tree`]). Plain functions; the runner executes.

pub mod cfg;
pub mod command;
pub mod decode;
pub mod select;
pub mod tree;
