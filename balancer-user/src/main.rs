//! `balancer`: the gateway daemon and its CLI.
fn main() {}
